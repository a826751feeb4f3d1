// exvae_fast::cache_update_: scattered in-place write of rows into a latent cache.
//
// Shared between the CPU implementation (cache_update.cpp, which also holds the schema) and
// the CUDA one (cache_update_cuda.cu). See cache_update.cpp for the op's contract.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>

#include <optional>

namespace exvae_fast {

// Storage dtypes of a cache, which are also the accepted dtypes of `values` (the Python
// wrapper converts float64 values to the storage dtype first, as the torch reference does).
#define EXVAE_DISPATCH_STORAGE_TYPES(TYPE, NAME, ...)           \
  AT_DISPATCH_SWITCH(                                           \
      TYPE, NAME,                                               \
      AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__)      \
      AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__)       \
      AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__))

// The tensors an update reads, after validation. `values` and `indices` are the caller's
// tensors, or private copies of them when they share memory with a tensor the op writes
// (so reading them never races with the writes).
struct CacheUpdateInputs {
  at::Tensor indices;
  at::Tensor values;
};

// Checks every argument (TORCH_CHECK, messages start with the argument's name) except the
// index range, which needs the data: shapes, dtypes, devices, contiguity, overlaps, step.
// Touches no tensor data.
CacheUpdateInputs check_cache_update_args(
    const at::Tensor& cache,
    const at::Tensor& indices,
    const at::Tensor& values,
    const std::optional<at::Tensor>& norms,
    const std::optional<at::Tensor>& stamps,
    int64_t step);

}  // namespace exvae_fast
