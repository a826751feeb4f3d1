// exvae_fast::cache_update_, CUDA kernels (contract: cache_update.cpp).
//
// Duplicates are resolved on the device, with O(K) work and no O(N) clearing, in three
// kernels on one stream (no memset, no host work between them):
//   1. reset:  last[indices[k]] = -1 for every in-range k (only the rows this call names are
//              ever read, so the [N] scratch needs no other initialisation); one thread clears
//              the out-of-range flag.
//   2. claim:  atomicMax(&last[indices[k]], k): each row ends up with its last position;
//              out-of-range indices raise the flag instead (after the reset cleared it).
//   3. write:  one warp per position k; the warp whose k is its row's last position converts
//              and writes the row, reduces its squared norm and writes norms and stamps.
// The write kernel writes nothing when the flag is up; with check_range the host then reads
// the flag (one 4-byte copy, which waits for the kernels) and raises with the offending
// range, so such a call synchronises the stream once; without, it never synchronises.
#include "cache_update.h"

#include <ATen/ops/aminmax.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

namespace exvae_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpSize = 32;
constexpr int kWarpsPerBlock = kThreads / kWarpSize;
constexpr int64_t kMaxBlocks = 65535;  // grid-stride loops cover the rest

int64_t blocks_for(int64_t work_items, int64_t items_per_block) {
  return std::min(kMaxBlocks, std::max<int64_t>(1, (work_items + items_per_block - 1) / items_per_block));
}

__global__ void reset_kernel(const int64_t* __restrict__ indices, int64_t count, int64_t size,
                             int32_t* __restrict__ last, int32_t* __restrict__ out_of_range) {
  const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (first == 0) {
    *out_of_range = 0;  // raised by claim_kernel, which starts after this kernel ends
  }
  for (int64_t k = first; k < count; k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = indices[k];
    if (row >= 0 && row < size) {
      last[row] = -1;
    }
  }
}

__global__ void claim_kernel(const int64_t* __restrict__ indices, int64_t count, int64_t size,
                             int32_t* __restrict__ last, int32_t* __restrict__ out_of_range) {
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < count;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = indices[k];
    if (row < 0 || row >= size) {
      *out_of_range = 1;
    } else {
      atomicMax(last + row, static_cast<int32_t>(k));
    }
  }
}

template <typename cache_t, typename value_t>
__global__ void write_kernel(cache_t* __restrict__ cache, const int64_t* __restrict__ indices,
                             const value_t* __restrict__ values,
                             const int32_t* __restrict__ last,
                             const int32_t* __restrict__ out_of_range,
                             float* __restrict__ norms, int64_t* __restrict__ stamps,
                             int64_t step, int64_t count, int64_t dim) {
  if (*out_of_range != 0) {
    return;  // the host raises; nothing may be written
  }
  const int lane = threadIdx.x % kWarpSize;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + threadIdx.x / kWarpSize;
       k < count; k += warps) {
    const int64_t row = indices[k];
    if (last[row] != static_cast<int32_t>(k)) {
      continue;  // warp-uniform: a later position writes this row
    }
    const value_t* src = values + k * dim;
    cache_t* dst = cache + row * dim;
    float sum = 0.0f;
    for (int64_t c = lane; c < dim; c += kWarpSize) {
      const cache_t stored = static_cast<cache_t>(static_cast<float>(src[c]));
      dst[c] = stored;
      const float x = static_cast<float>(stored);
      sum = fmaf(x, x, sum);
    }
    // fixed butterfly order: the norm is the same bit for bit on every run
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
      sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    }
    if (lane == 0) {
      if (norms != nullptr) {
        norms[row] = sum;
      }
      if (stamps != nullptr) {
        stamps[row] = step;
      }
    }
  }
}

void cache_update_cuda(const at::Tensor& cache, const at::Tensor& indices,
                       const at::Tensor& values, const std::optional<at::Tensor>& norms,
                       const std::optional<at::Tensor>& stamps, int64_t step,
                       bool check_range) {
  // checked first: this kernel also runs when cache is on the CPU but another argument is
  // on CUDA, and then the check names that argument (a CUDAGuard for a CPU device would raise
  // an internal error instead)
  const CacheUpdateInputs inputs =
      check_cache_update_args(cache, indices, values, norms, stamps, step);
  const c10::cuda::CUDAGuard guard(cache.device());
  const int64_t count = inputs.indices.size(0);
  if (count == 0) {
    return;
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t size = cache.size(0);
  const int64_t dim = cache.size(1);

  // [0, N): last position per row (only named rows are initialised); [N]: out-of-range flag
  at::Tensor scratch = at::empty({size + 1}, cache.options().dtype(at::kInt));
  int32_t* last = scratch.data_ptr<int32_t>();
  int32_t* out_of_range = last + size;

  const int64_t* rows = inputs.indices.const_data_ptr<int64_t>();
  const int64_t scan_blocks = blocks_for(count, kThreads);
  reset_kernel<<<scan_blocks, kThreads, 0, stream>>>(rows, count, size, last, out_of_range);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  claim_kernel<<<scan_blocks, kThreads, 0, stream>>>(rows, count, size, last, out_of_range);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  float* norms_out = norms.has_value() ? norms->data_ptr<float>() : nullptr;
  int64_t* stamps_out = stamps.has_value() ? stamps->data_ptr<int64_t>() : nullptr;
  const int64_t write_blocks = blocks_for(count, kWarpsPerBlock);
  EXVAE_DISPATCH_STORAGE_TYPES(cache.scalar_type(), "cache_update_", [&] {
    using cache_t = scalar_t;
    EXVAE_DISPATCH_STORAGE_TYPES(inputs.values.scalar_type(), "cache_update_", [&] {
      write_kernel<cache_t, scalar_t><<<write_blocks, kThreads, 0, stream>>>(
          cache.data_ptr<cache_t>(), rows, inputs.values.const_data_ptr<scalar_t>(), last,
          out_of_range, norms_out, stamps_out, step, count, dim);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });

  if (!check_range) {
    return;  // the caller checked the range; an out-of-range call wrote nothing
  }
  int32_t flag = 0;
  c10::cuda::memcpy_and_sync(&flag, out_of_range, sizeof(int32_t), cudaMemcpyDeviceToHost, stream);
  if (flag != 0) {
    const auto [low, high] = at::aminmax(inputs.indices);
    TORCH_CHECK(false, "indices: expected values in [0, ", size, "), got values in [",
                low.item<int64_t>(), ", ", high.item<int64_t>(), "]");
  }
}

}  // namespace
}  // namespace exvae_fast

TORCH_LIBRARY_IMPL(exvae_fast, CUDA, m) {
  m.impl("cache_update_", &exvae_fast::cache_update_cuda);
}
