"""The per-shard halves of the sharded cache's search and mixture, and the merges of their
partial results: plain tensor functions (no communication), so each step is testable alone.

kNN: a shard returns, for each query row, its best min(k, searchable) keys as packed int64
(float32 distance bits << 32 | global index, as `ops.knn` orders them), empty slots holding
NaN bits so they sort after every real key; the merge sorts the W lists of a row together.
Since the global top k under (distance, index) order takes from each shard only keys of that
shard's own top k, the merge equals the single-process search.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..ops import knn_search, mixture_log_density
# the reference's packing, so the merge orders keys exactly as the single-process search
from ..ops.knn import pack_keys, unpack_keys

EMPTY_KEY = pack_keys(torch.tensor([float("nan")]), torch.tensor([0xFFFFFFFF])).item()
"""Packed key of an empty slot (NaN distance): sorts after every real distance, inf too."""


def exact_sq_dists(queries: Tensor, keys: Tensor) -> Tensor:
    """float32 [B, w] squared distances of queries [B, d] to their keys [B, w, d]: float64
    direct differences rounded to float32, the reference's re-ranking arithmetic."""
    diff = queries.to(torch.float64)[:, None, :] - keys.to(torch.float64)
    return diff.square().sum(-1).to(torch.float32)


def shard_knn(queries: Tensor, keys: Tensor, k: int, start: int, candidates: Tensor | None,
              exclude: Tensor | None, width: int, backend: str = "auto") -> Tensor:
    """One shard's partial k-NN: packed int64 [B, width] (width >= k), ascending.

    queries [B, d] float; keys [n, d], this shard's means, holding global rows
    [start, start + n). candidates: int64 [M] global (unique) or None for every row;
    exclude: int64 [B] global (-1: none) or None. Row b holds this shard's best
    min(k, searchable keys) (global indices), then EMPTY_KEY.
    """
    batch, rows = queries.shape[0], keys.shape[0]
    out = torch.full((batch, width), EMPTY_KEY, dtype=torch.int64, device=keys.device)
    pool = None
    if candidates is not None:
        owned = (candidates >= start) & (candidates < start + rows)
        pool = candidates[owned] - start
    size = rows if pool is None else pool.numel()
    if batch == 0 or size == 0:
        return out
    local_exclude = None
    if exclude is not None:
        inside = (exclude >= start) & (exclude < start + rows)
        local_exclude = torch.where(inside, exclude - start, -1)
    # one more than k when a row may drop its excluded key afterwards: searching with the
    # exclusion itself would need k keys in every row of this shard, which need not hold
    spare = int(local_exclude is not None and bool((local_exclude >= 0).any()))
    count = min(k + spare, size)
    _, found = knn_search(queries, keys, count, candidates=pool, backend=backend)
    dists = exact_sq_dists(queries, keys[found])  # whatever the backend, the reference's values
    packed = pack_keys(dists, found + start)
    if local_exclude is not None:
        packed = packed.masked_fill(found == local_exclude[:, None], EMPTY_KEY)
    best = torch.sort(packed, dim=1).values[:, :min(k, count)]
    out[:, :best.shape[1]] = best
    return out


def merge_knn(parts: list[Tensor], k: int) -> tuple[Tensor, Tensor]:
    """Global top k from the shards' partial lists (packed int64 [B, w] each): (sq_dists
    float32 [B, k], indices int64 [B, k]), ascending, ties to the lower index."""
    merged = torch.sort(torch.cat(parts, dim=1), dim=1).values[:, :k]
    dists, indices = unpack_keys(merged)
    return dists, indices


def shard_mixture(z: Tensor, means: Tensor, log_vars: Tensor, backend: str = "auto") -> Tensor:
    """float64 [B]: log of the uniform mixture over this shard's means [n, d] for each row of
    z [B, d], row b with variance exp(log_vars[b]) (log_vars float64 [B]; rows sharing a value
    are computed in one call)."""
    out = torch.empty(z.shape[0], dtype=torch.float64, device=z.device)
    for value in torch.unique(log_vars).tolist():
        rows = log_vars == value
        out[rows] = mixture_log_density(z[rows], means, _log_var_like(value, z.dtype, z.device),
                                        backend=backend).to(torch.float64)
    return out


def _log_var_like(value: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """0-dim log-variance: in z's dtype when that holds the value exactly (fused kernels take
    one dtype), else float64 (the caller's log_var was wider than z)."""
    wide = torch.tensor(value, dtype=torch.float64, device=device)
    narrow = wide.to(dtype)
    return narrow if bool(narrow.to(torch.float64) == wide) else wide


def combine_mixtures(partials: Tensor, counts: list[int]) -> Tensor:
    """Exact log of the uniform mixture over all shards from each shard's log-mean-exp:
    partials float64 [W, B] (shard r's mixture over its counts[r] components) -> [B],
    logsumexp_r(partials[r] + log counts[r]) - log sum(counts)."""
    weights = torch.tensor([math.log(c) for c in counts], dtype=torch.float64, device=partials.device)
    return torch.logsumexp(partials + weights[:, None], dim=0) - math.log(sum(counts))
