"""Micro-benchmark of the scattered latent-cache update (Algorithm 1's write-back): K rows of
d=40 float32 values written into an [N, d] cache, with the per-row squared norms and step
stamps kept in sync. K in {1100 (B(k+1) of one minibatch), 12100, 100000}, N in {5e4, 1e6},
storage float32 and bfloat16; indices drawn uniformly, so they repeat (many times for
K=100000, N=5e4).

Providers:
  "torch-naive"  the unfused torch sequence: `cache.index_copy_` then a separate norm
                 recomputation of the written rows (index_select, float, square, sum,
                 index_copy_) and `stamps.index_fill_`. Not deterministic under duplicates
                 on CUDA (index_copy_ picks any occurrence), so it is a lower bound for the
                 correct thing.
  "torch"        the library's reference backend (deterministic: unique + scatter_reduce).
  "cpp"          the compiled op torch.ops.exvae_fast.cache_update_ (csrc/), one call, as the
                 library calls it after validation: check_range=False, so on CUDA it never
                 synchronises (the public op's one read of the data is left out, see below).
The library backends are timed through `dispatch.implementation`, i.e. without the public
op's argument validation, which is the same for every backend (it reads the data: min/max of
the indices, finiteness of the values) and would hide the difference between them.
Mode: forward (not differentiable). Bytes counted: values read (4 K d), the written rows
(U d s, U unique rows, s bytes per stored element), indices (8 K), norms and stamps (12 U).

N only sets the size of the cache (the work is O(K d)), so the CPU cap on N of the other
micro-benchmarks (--bench-max-n) does not apply here.

    pytest bench/test_cache_update.py --benchmark-json raw.json   (or `exvae bench ops`)
"""
from __future__ import annotations

import pytest
import torch

import common

OP = "cache_update_"
SIZES_K = (1_100, 12_100, 100_000)
SIZES_N = (50_000, 1_000_000)
STORAGE = {"float32": torch.float32, "bfloat16": torch.bfloat16}
PROVIDERS = ("torch-naive", "torch", "cpp")
STEP = 7


def _naive(cache, indices, values, norms, stamps):
    cache.index_copy_(0, indices, values.to(cache.dtype))
    norms.index_copy_(0, indices, cache.index_select(0, indices).float().square().sum(1))
    stamps.index_fill_(0, indices, STEP)


def _library(backend: str, device: torch.device):
    from exvae_fast.ops import dispatch

    run = dispatch.implementation(OP, backend, torch.empty(1, device=device))

    def call(cache, indices, values, norms, stamps):
        run(cache, indices, values, norms, stamps, STEP)
    return call


def setup_update(n: int, k: int, dtype: torch.dtype, device: torch.device,
                 seed: int = 0) -> common.Rotation:
    """Input sets (cache [N, d], indices [K], values [K, d] float32, norms [N], stamps [N])
    on `device`, rotated between rounds so the cache is not resident in the L2 cache."""
    gen = torch.Generator().manual_seed(seed)

    def make(i: int):
        cache = torch.randn(n, common.D, generator=gen).to(device, dtype)
        indices = torch.randint(n, (k,), generator=gen).to(device)
        values = torch.randn(k, common.D, generator=gen).to(device)
        norms = cache.float().square().sum(1)
        stamps = torch.zeros(n, dtype=torch.int64, device=device)
        return cache, indices, values, norms, stamps
    per_set = n * (common.D * dtype.itemsize + 12) + k * (common.D * 4 + 8)
    return common.Rotation(make, per_set)


@pytest.mark.parametrize("n", SIZES_N, ids=lambda n: f"N{n}")
@pytest.mark.parametrize("k", SIZES_K, ids=lambda k: f"K{k}")
@pytest.mark.parametrize("dtype", STORAGE)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_cache_update(benchmark, bench_device, bench_settings, provider: str, dtype: str, k: int,
                      n: int) -> None:
    reason = common.provider_skip_reason(OP, provider, bench_device)
    if reason:
        pytest.skip(reason)
    fn = _naive if provider == "torch-naive" else _library(provider, bench_device)
    inputs = setup_update(n, k, STORAGE[dtype], bench_device)
    unique = int(torch.unique(inputs.sets[0][1]).numel())
    stored = STORAGE[dtype].itemsize
    info = {"op": OP, "provider": provider, "mode": "forward", "N": n, "K": k, "d": common.D,
            "dtype": dtype, "unique_rows": unique, "rotation_sets": inputs.count,
            "bytes": 4 * k * common.D + unique * common.D * stored + 8 * k + 12 * unique,
            "flops": 2 * unique * common.D}
    common.measure(benchmark, lambda state: fn(*state), inputs.next, device=bench_device, info=info,
                   target_s=bench_settings["target_s"], min_rounds=bench_settings["min_rounds"],
                   max_rounds=bench_settings["max_rounds"])
