// ctest smoke test of the stand-alone library (CMakeLists.txt): calls
// exvae_fast::cache_update_ through the dispatcher on CPU tensors and checks the written
// rows (last duplicate wins), norms, stamps, a bfloat16 cache, and that an out-of-range
// index is rejected before anything is written. Exit status 0 when every check holds.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <iostream>
#include <optional>
#include <string>

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  std::cout << (ok ? "ok   " : "FAIL ") << what << "\n";
  failures += ok ? 0 : 1;
}

using CacheUpdate = void(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                         const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                         int64_t, bool);

}  // namespace

int main() {
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("exvae_fast::cache_update_", "")
                .typed<CacheUpdate>();

  at::Tensor cache = at::zeros({6, 3});
  at::Tensor norms = at::full({6}, -1.0f);
  at::Tensor stamps = at::full({6}, -1, at::kLong);
  at::Tensor indices = at::tensor({4, 1, 4, 0}, at::kLong);
  at::Tensor values = at::arange(12, at::kFloat).view({4, 3});  // row k = 3k, 3k+1, 3k+2
  op.call(cache, indices, values, norms, stamps, 7, true);

  expect(at::equal(cache[4], values[2]), "duplicate row 4 holds its last occurrence");
  expect(at::equal(cache[1], values[1]) && at::equal(cache[0], values[3]), "other rows written");
  expect(at::equal(cache.index({at::indexing::Slice(2, 4)}), at::zeros({2, 3})) &&
             at::equal(cache[5], at::zeros({3})),
         "rows not named are untouched");
  expect(at::allclose(norms, at::tensor({9.f * 9 + 10 * 10 + 11 * 11, 3.f * 3 + 4 * 4 + 5 * 5,
                                         -1.f, -1.f, 6.f * 6 + 7 * 7 + 8 * 8, -1.f})),
         "norms of the written rows");
  expect(at::equal(stamps, at::tensor({7, 7, -1, -1, 7, -1}, at::kLong)), "stamps = step");

  at::Tensor half_cache = at::zeros({2, 1}, at::kBFloat16);
  at::Tensor half_norms = at::zeros({2});
  // 1.00390625 + 1e-4 rounds up to 1.0078125 in bfloat16; the norm is of the stored value
  op.call(half_cache, at::tensor({1}, at::kLong), at::full({1, 1}, 1.00390625f + 1e-4f),
          half_norms, std::nullopt, 0, true);
  expect(half_cache[1][0].item<float>() == 1.0078125f &&
             half_norms[1].item<float>() == 1.0078125f * 1.0078125f,
         "bfloat16 storage: converted on write, norm of the stored row");

  at::Tensor before = cache.clone();
  bool raised = false;
  try {
    op.call(cache, at::tensor({2, 6}, at::kLong), at::ones({2, 3}), norms, stamps, 8, false);
  } catch (const c10::Error& error) {
    raised = std::string(error.what()).find("indices: expected values in [0, 6)") !=
             std::string::npos;
  }
  expect(raised && at::equal(cache, before),
         "out-of-range index rejected before any write (on CPU even with check_range false)");

  std::cout << (failures == 0 ? "all checks passed" : "checks failed") << "\n";
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
