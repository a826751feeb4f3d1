// exvae_fast::cache_update_ (schema, argument checks, CPU kernel, ADInplaceOrView kernel).
//
// cache_update_(cache, indices, values, norms, stamps, step, check_range=True) writes values[k] into
// cache[indices[k]] for every k, in place. Where an index repeats, its last occurrence wins,
// whatever the thread schedule: duplicates are resolved inside the op, by finding for each
// written row the last position that names it, and only that position writes the row.
// In the same pass, every written row gets norms[row] = squared L2 norm of the row as stored
// (after the conversion to the storage dtype, accumulated in float32 or wider) and
// stamps[row] = step. norms and stamps are optional and independent. Like torch's in-place
// ops, it bumps the version counters of the tensors it writes (its ADInplaceOrView kernel).
//
//   cache   [N, d]  float32 | float16 | bfloat16, contiguous          (written)
//   indices [K]     int64 in [0, N), contiguous
//   values  [K, d]  float32 | float16 | bfloat16, contiguous; converted on write
//   norms   [N]     float32, contiguous                               (written, optional)
//   stamps  [N]     int64, contiguous                                 (written, optional)
//   step    int >= 0
//   check_range  bool: raise on an index outside [0, N). On CUDA the verdict is computed on
//           the device and read back (the call's one synchronisation); a caller that has
//           checked the range already (the Python op validates every argument first) passes
//           False to skip that read: a call with an out-of-range index then writes nothing
//           and raises nothing. The CPU path checks on the host either way (no cost).
//
// Every check runs before any tensor is written; a failed check raises c10::Error (a Python
// RuntimeError) whose message starts with the argument's name.
#include "cache_update.h"

#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

namespace exvae_fast {
namespace {

bool is_storage_dtype(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16;
}

void check_common(const at::Tensor& t, const char* name, const at::Tensor& cache) {
  TORCH_CHECK(t.device() == cache.device(), name, ": expected a tensor on ", cache.device(),
              " (the device of cache), got ", t.device());
  TORCH_CHECK(t.is_contiguous(), name, ": expected a contiguous tensor");
}

void check_per_row(const at::Tensor& t, const char* name, at::ScalarType dtype,
                   const at::Tensor& cache) {
  TORCH_CHECK(t.scalar_type() == dtype, name, ": expected dtype ", dtype, ", got ",
              t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == cache.size(0), name, ": expected shape [",
              cache.size(0), "] (one entry per cache row), got ", t.sizes());
  check_common(t, name, cache);
}

void check_disjoint(const at::Tensor& a, const char* a_name, const at::Tensor& b,
                    const char* b_name) {
  TORCH_CHECK(at::get_overlap_status(a, b) == at::MemOverlapStatus::No, a_name,
              ": shares memory with ", b_name, ", and the op writes both");
}

// A read-only input that shares memory with a written tensor is copied first, so the
// writes cannot change what is still to be read.
at::Tensor snapshot_if_overlapping(const at::Tensor& input,
                                   const std::vector<const at::Tensor*>& written) {
  for (const at::Tensor* out : written) {
    if (at::get_overlap_status(input, *out) != at::MemOverlapStatus::No) {
      return input.clone();
    }
  }
  return input;
}

// The set of rows already met while scanning one call's indices: open addressing with
// linear probing at load factor <= 1/2, so memory and time are O(K) however large the
// cache is.
class RowSet {
 public:
  explicit RowSet(int64_t count) {
    int bits = 3;
    while ((int64_t{1} << bits) < 2 * count) {
      ++bits;
    }
    shift_ = 64 - bits;
    mask_ = (uint64_t{1} << bits) - 1;
    rows_.assign(mask_ + 1, kEmpty);
  }

  // Adds `row` (>= 0); true when it was not in the set yet.
  bool insert(int64_t row) {
    // Fibonacci hashing: the top bits of row * 2^64/phi spread consecutive rows apart
    uint64_t slot = (static_cast<uint64_t>(row) * 0x9E3779B97F4A7C15ull) >> shift_;
    while (rows_[slot] != kEmpty) {
      if (rows_[slot] == row) {
        return false;
      }
      slot = (slot + 1) & mask_;
    }
    rows_[slot] = row;
    return true;
  }

 private:
  static constexpr int64_t kEmpty = -1;

  int shift_;
  uint64_t mask_;
  std::vector<int64_t> rows_;
};

// Elements per parallel task (ATen uses the same grain, at::internal::GRAIN_SIZE): smaller
// tasks cost more in scheduling than they gain.
constexpr int64_t kGrainElements = 32768;

// The written rows are scattered over a cache far larger than the CPU caches, so each write
// waits on a miss (and often a TLB miss): asking for the rows a few positions ahead overlaps
// those waits (about 2x faster for K=1e5 rows into N=1e6).
constexpr int64_t kPrefetchDistance = 8;
constexpr uintptr_t kCacheLine = 64;

inline void prefetch_for_write(const void* address) {
#if defined(__GNUC__) || defined(__clang__)
  if (address != nullptr) {
    __builtin_prefetch(address, 1);
  }
#endif
}

template <typename cache_t, typename value_t>
void write_winning_rows(const at::Tensor& cache, const at::Tensor& indices,
                        const at::Tensor& values, float* norms, int64_t* stamps, int64_t step,
                        const std::vector<uint8_t>& wins) {
  const int64_t count = indices.size(0);
  const int64_t dim = cache.size(1);
  cache_t* out = cache.data_ptr<cache_t>();
  const value_t* in = values.const_data_ptr<value_t>();
  const int64_t* rows = indices.const_data_ptr<int64_t>();
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(dim, 1));
  const auto row_bytes = static_cast<uintptr_t>(dim) * sizeof(cache_t);
  at::parallel_for(0, count, grain, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t ahead = k + kPrefetchDistance;
      if (ahead < end && wins[ahead]) {
        const int64_t row = rows[ahead];
        const auto first = reinterpret_cast<uintptr_t>(out + row * dim);
        for (uintptr_t line = first & ~uintptr_t{kCacheLine - 1}; line < first + row_bytes;
             line += kCacheLine) {
          prefetch_for_write(reinterpret_cast<const void*>(line));
        }
        prefetch_for_write(norms == nullptr ? nullptr : norms + row);
        prefetch_for_write(stamps == nullptr ? nullptr : stamps + row);
      }
      if (!wins[k]) {
        continue;  // a later position writes this row
      }
      const int64_t row = rows[k];
      const value_t* src = in + k * dim;
      cache_t* dst = out + row * dim;
      // accumulated in double (the squares of float32 values are exact there): the float32
      // norm is then within an ulp of the exact one for any practical d
      double sum = 0.0;
      for (int64_t c = 0; c < dim; ++c) {
        const cache_t stored = static_cast<cache_t>(static_cast<float>(src[c]));
        dst[c] = stored;
        const double x = static_cast<float>(stored);
        sum += x * x;
      }
      if (norms != nullptr) {
        norms[row] = static_cast<float>(sum);
      }
      if (stamps != nullptr) {
        stamps[row] = step;
      }
    }
  });
}

void cache_update_cpu(const at::Tensor& cache, const at::Tensor& indices,
                      const at::Tensor& values, const std::optional<at::Tensor>& norms,
                      const std::optional<at::Tensor>& stamps, int64_t step,
                      bool /*check_range: the host loop below always checks*/) {
  const CacheUpdateInputs inputs =
      check_cache_update_args(cache, indices, values, norms, stamps, step);
  const int64_t count = inputs.indices.size(0);
  if (count == 0) {
    return;
  }
  const int64_t size = cache.size(0);
  const int64_t* rows = inputs.indices.const_data_ptr<int64_t>();
  // sequential pass, last position first: the index range check (before any write), and
  // wins[k] = whether k is the last position naming its row (the first met from the back)
  std::vector<uint8_t> wins(count);
  RowSet seen(count);
  for (int64_t k = count - 1; k >= 0; --k) {
    TORCH_CHECK(rows[k] >= 0 && rows[k] < size, "indices: expected values in [0, ", size,
                "), got ", rows[k], " at position ", k);
    wins[k] = seen.insert(rows[k]);
  }
  float* norms_out = norms.has_value() ? norms->data_ptr<float>() : nullptr;
  int64_t* stamps_out = stamps.has_value() ? stamps->data_ptr<int64_t>() : nullptr;
  EXVAE_DISPATCH_STORAGE_TYPES(cache.scalar_type(), "cache_update_", [&] {
    using cache_t = scalar_t;
    EXVAE_DISPATCH_STORAGE_TYPES(inputs.values.scalar_type(), "cache_update_", [&] {
      write_winning_rows<cache_t, scalar_t>(cache, inputs.indices, inputs.values, norms_out,
                                            stamps_out, step, wins);
    });
  });
}

// ADInplaceOrView kernel: the tensors the op writes get their version counters bumped, as
// torch's own in-place ops do (and the torch backend, through index_put_). Without it autograd
// would compute a gradient from a saved tensor the op has since changed, without an error.
// (torch's autogradNotImplementedInplaceOrViewFallback bumps mutable returns only; this op
// returns nothing.)
void cache_update_inplace_or_view(c10::DispatchKeySet keys, const at::Tensor& cache,
                                  const at::Tensor& indices, const at::Tensor& values,
                                  const std::optional<at::Tensor>& norms,
                                  const std::optional<at::Tensor>& stamps, int64_t step,
                                  bool check_range) {
  // as torch's in-place ops refuse them, but before anything is written (an inference tensor
  // has no version counter; inside inference mode this kernel is not reached)
  const std::pair<const at::Tensor*, const char*> written[] = {
      {&cache, "cache"},
      {norms.has_value() ? &*norms : nullptr, "norms"},
      {stamps.has_value() ? &*stamps : nullptr, "stamps"}};
  for (const auto& [tensor, name] : written) {
    TORCH_CHECK(tensor == nullptr || !tensor->is_inference(), name,
                ": an inference tensor (made under torch.inference_mode()) is written in place "
                "only inside inference mode; pass a clone of it");
  }
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("exvae_fast::cache_update_", "")
                             .typed<decltype(cache_update_cpu)>();
  {
    const at::AutoDispatchBelowADInplaceOrView below;
    op.redispatch(keys & c10::after_ADInplaceOrView_keyset, cache, indices, values, norms,
                  stamps, step, check_range);
  }
  for (const auto& [tensor, name] : written) {
    if (tensor != nullptr) {
      tensor->unsafeGetTensorImpl()->bump_version();
    }
  }
}

}  // namespace

CacheUpdateInputs check_cache_update_args(const at::Tensor& cache, const at::Tensor& indices,
                                          const at::Tensor& values,
                                          const std::optional<at::Tensor>& norms,
                                          const std::optional<at::Tensor>& stamps,
                                          int64_t step) {
  TORCH_CHECK(is_storage_dtype(cache.scalar_type()),
              "cache: expected dtype Float, Half or BFloat16, got ", cache.scalar_type());
  TORCH_CHECK(cache.dim() == 2, "cache: expected shape [N, d], got ", cache.sizes());
  TORCH_CHECK(cache.is_contiguous(), "cache: expected a contiguous tensor");

  TORCH_CHECK(indices.scalar_type() == at::kLong, "indices: expected dtype Long, got ",
              indices.scalar_type());
  TORCH_CHECK(indices.dim() == 1, "indices: expected shape [K], got ", indices.sizes());
  check_common(indices, "indices", cache);
  const int64_t count = indices.size(0);
  // positions are compared as int32 in the CUDA kernel (atomicMax)
  TORCH_CHECK(count <= std::numeric_limits<int32_t>::max(),
              "indices: expected at most 2^31 - 1 entries, got ", count);

  TORCH_CHECK(is_storage_dtype(values.scalar_type()),
              "values: expected dtype Float, Half or BFloat16, got ", values.scalar_type());
  TORCH_CHECK(values.dim() == 2 && values.size(0) == count && values.size(1) == cache.size(1),
              "values: expected shape [", count, ", ", cache.size(1),
              "] (K matching indices, d matching cache), got ", values.sizes());
  check_common(values, "values", cache);

  std::vector<const at::Tensor*> written{&cache};
  if (norms.has_value()) {
    check_per_row(*norms, "norms", at::kFloat, cache);
    check_disjoint(*norms, "norms", cache, "cache");
    written.push_back(&*norms);
  }
  if (stamps.has_value()) {
    check_per_row(*stamps, "stamps", at::kLong, cache);
    check_disjoint(*stamps, "stamps", cache, "cache");
    if (norms.has_value()) {
      check_disjoint(*stamps, "stamps", *norms, "norms");
    }
    written.push_back(&*stamps);
  }
  TORCH_CHECK(step >= 0, "step: expected an int >= 0, got ", step);
  return {snapshot_if_overlapping(indices, written), snapshot_if_overlapping(values, written)};
}

}  // namespace exvae_fast

TORCH_LIBRARY(exvae_fast, m) {
  // the fake (meta) implementation, for torch.compile, is registered by this Python module
  m.set_python_module("exvae_fast.ops.cache_update");
  m.def(
      "cache_update_(Tensor(a!) cache, Tensor indices, Tensor values, Tensor(b!)? norms, "
      "Tensor(c!)? stamps, int step, bool check_range=True) -> ()");
}

TORCH_LIBRARY_IMPL(exvae_fast, CPU, m) {
  m.impl("cache_update_", &exvae_fast::cache_update_cpu);
}

TORCH_LIBRARY_IMPL(exvae_fast, ADInplaceOrView, m) {
  m.impl("cache_update_", TORCH_FN(exvae_fast::cache_update_inplace_or_view));
}
