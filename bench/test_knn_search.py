"""Micro-benchmark of `knn_search` (B=100 queries, d=40, k=10, N keys from 1e3 to 1e6,
float32): the library's torch reference, Triton and C++ backends, the naive PyTorch
version (cdist + topk, materialises B x N) and FAISS `IndexFlatL2` (GPU index when
faiss-gpu is importable and the device is CUDA; otherwise the CPU index, the copies to
and from the CPU included; the results name the provider "faiss-gpu" or "faiss-cpu"). The library backends are timed through
`dispatch.implementation`, without the public op's argument validation (the same for every
backend; it reads the data: finiteness of the keys, uniqueness of the candidates).

Variants: "all" searches every key; "subset" searches a random candidate subset of
M = N/2 keys and leaves one key out per query (Algorithm 1's retrieval step: exemplar
sub-sampling and leave-one-out). FAISS has no leave-one-out: it searches k+1 and drops the
left-out key; its index is rebuilt in every call (the cache changes every step).
Mode: forward only (the op is not differentiable). Bytes counted: the searched keys once
(n d 4 B, n = N or M), plus the candidate indices (8 M B) for "subset".
FLOPs: 2 B n d.

    pytest bench/test_knn_search.py --benchmark-json raw.json   (or `exvae bench ops`)
"""
from __future__ import annotations

import pytest
import torch

import common
from conftest import check_size

OP = "knn_search"
VARIANTS = ("all", "subset")


def _library(backend: str, device: torch.device):
    from exvae_fast.ops import dispatch

    run = dispatch.implementation(OP, backend, torch.empty(1, device=device))

    def call(queries, keys, candidates, exclude):
        return run(queries, keys, common.K, candidates, exclude)
    return call


def _naive(queries, keys, candidates, exclude):
    pool = keys if candidates is None else keys[candidates]
    sq = torch.cdist(queries, pool).square()  # [B, n]
    if exclude is not None:
        sq = sq.masked_fill(candidates[None, :] == exclude[:, None], float("inf"))
    dists, pos = torch.topk(sq, common.K, dim=1, largest=False)
    return dists, pos if candidates is None else candidates[pos]


def _faiss_available() -> str | None:
    reason = common.importable("faiss")
    if reason is None:
        reason = common.importable("faiss.contrib.torch_utils")
    return reason


def _faiss_on_gpu(device: torch.device) -> bool:
    """Whether the FAISS provider searches a GPU index on `device` (faiss-gpu and CUDA)."""
    import faiss

    return device.type == "cuda" and hasattr(faiss, "StandardGpuResources")


def _faiss(queries, keys, candidates, exclude):
    import faiss
    import faiss.contrib.torch_utils  # noqa: F401  (lets faiss take torch tensors)

    on_gpu = _faiss_on_gpu(queries.device)
    pool = keys if candidates is None else keys[candidates]
    q = queries
    if not on_gpu:
        pool, q = pool.cpu(), queries.cpu()
    dim = keys.shape[1]
    if on_gpu:
        index = faiss.GpuIndexFlatL2(_gpu_resources(), dim)
    else:
        index = faiss.IndexFlatL2(dim)
    index.add(pool.contiguous())
    extra = 0 if exclude is None else 1
    dists, pos = index.search(q.contiguous(), common.K + extra)
    dists, pos = dists.to(queries.device), pos.to(queries.device)
    ids = pos if candidates is None else candidates[pos]
    if exclude is not None:  # drop the left-out key (or the last one when it was not found)
        keep = ids != exclude[:, None]
        keep[:, -1] &= ~keep[:, :-1].all(dim=1)  # keep exactly K per row
        ids, dists = ids[keep].view(-1, common.K), dists[keep].view(-1, common.K)
    return dists, ids


_RESOURCES = []


def _gpu_resources():
    import faiss

    if not _RESOURCES:
        _RESOURCES.append(faiss.StandardGpuResources())
    return _RESOURCES[0]


def implementation(provider: str, device: torch.device):
    if provider in common.LIBRARY_BACKENDS:
        return _library(provider, device)
    return {"torch-naive": _naive, "faiss": _faiss}[provider]


PEERS = {"faiss": _faiss_available}


def setup_knn(n: int, device: torch.device, variant: str, seed: int = 0) -> common.Rotation:
    """Input sets (queries [B, d], keys [N, d], candidates [N/2] or None, exclude [B] or None)
    on `device`, rotated between rounds. Queries are keys plus noise (as posterior means are
    near their cached means); "subset" leaves out each query's own key."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def make(i: int):
        keys = torch.randn(n, common.D, generator=gen, device=device)
        own = torch.randperm(n, generator=gen, device=device)[: common.B]
        queries = keys[own] + 0.1 * torch.randn(common.B, common.D, generator=gen, device=device)
        candidates = exclude = None
        if variant == "subset":
            candidates = torch.randperm(n, generator=gen, device=device)[: n // 2]
            exclude = own
        return queries, keys, candidates, exclude
    return common.Rotation(make, n * common.D * 4)


@pytest.mark.parametrize("n", common.SIZES_N, ids=lambda n: f"N{n}")
@pytest.mark.parametrize("provider", common.PROVIDERS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mode", common.MODES)
def test_knn_search(benchmark, bench_device, bench_settings, mode: str, variant: str, provider: str,
                    n: int) -> None:
    if mode != "forward":
        pytest.skip("knn_search is not differentiable: forward only")
    check_size(bench_settings, n)
    reason = common.provider_skip_reason(OP, provider, bench_device, PEERS)
    if reason:
        pytest.skip(reason)
    fn = implementation(provider, bench_device)
    inputs = setup_knn(n, bench_device, variant)

    def call(state):
        fn(*state)

    searched = n if variant == "all" else n // 2
    bytes_moved = searched * common.D * 4 + (searched * 8 if variant == "subset" else 0)
    if provider == "faiss":  # the results say which index ran: a CPU one is no GPU peer
        provider = "faiss-gpu" if _faiss_on_gpu(bench_device) else "faiss-cpu"
    info = {"op": OP, "provider": provider, "mode": mode, "N": n, "B": common.B, "d": common.D, "k": common.K,
            "dtype": "float32", "variant": variant, "searched": searched, "rotation_sets": inputs.count,
            "bytes": bytes_moved, "flops": 2 * common.B * searched * common.D}
    common.measure(benchmark, call, inputs.next, device=bench_device, info=info,
                   target_s=bench_settings["target_s"], min_rounds=bench_settings["min_rounds"],
                   max_rounds=bench_settings["max_rounds"])
