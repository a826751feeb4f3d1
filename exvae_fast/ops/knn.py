"""Exact k-nearest-neighbour search under squared Euclidean distance.

The torch backend is the reference (oracle) of the fused kernels: it walks over blocks of
keys, computing distances exactly (direct differences in float64), and merges each block
into a running top-k per query, so it never holds a B x N matrix.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .dispatch import implementation, register
from .validation import validate_knn

ELEMENT_BUDGET = 2**23
"""Most elements in one block's float64 [B, chunk, d] difference tensor: the block size is
max(1, ELEMENT_BUDGET // (B * d)) keys, which bounds the working memory."""


def knn_search(queries: Tensor, keys: Tensor, k: int, candidates: Tensor | None = None,
               exclude: Tensor | None = None, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """The k nearest keys of each query: (sq_dists [B, k] float32, indices [B, k] int64).

    queries: [B, d] float. keys: [N, d] float, N >= 1, finite. k: int >= 1.
    candidates: int64 [M], unique indices into keys; only those keys are searched.
    exclude: int64 [B], a key index that row b must not return (-1: none).
    Distances are squared Euclidean, computed exactly and rounded to float32; each row is
    ascending, ties going to the lower key index. `indices` index `keys` (not `candidates`).
    ValueError when some row has fewer than k searchable keys.
    """
    validate_knn(queries, keys, k, candidates, exclude)
    run = implementation("knn_search", backend, queries, keys)
    return run(queries, keys, k, candidates, exclude)


def _knn_search_torch(queries: Tensor, keys: Tensor, k: int, candidates: Tensor | None,
                      exclude: Tensor | None) -> tuple[Tensor, Tensor]:
    batch, dim = queries.shape
    device = queries.device
    # blocks visit keys in ascending index order; with the stable sort below this breaks
    # distance ties by the lower index
    pool = None if candidates is None else torch.sort(candidates).values
    size = keys.shape[0] if pool is None else pool.numel()
    step = max(1, ELEMENT_BUDGET // max(batch * dim, 1))
    q = queries.to(torch.float64)
    best_dists = torch.empty((batch, 0), dtype=torch.float32, device=device)
    best_indices = torch.empty((batch, 0), dtype=torch.int64, device=device)
    for start in range(0, size, step):
        stop = min(start + step, size)
        if pool is None:
            index = torch.arange(start, stop, device=device)
            block = keys[start:stop]
        else:
            index = pool[start:stop]
            block = keys[index]
        diff = q[:, None, :] - block.to(torch.float64)[None, :, :]
        dists = diff.square().sum(-1).to(torch.float32)
        if exclude is not None:
            # NaN sorts after +inf, so an excluded key is never chosen over a real one (even
            # at distance inf), and validation guarantees k real keys per row
            dists = dists.masked_fill(exclude[:, None] == index[None, :], float("nan"))
        # running entries come first: all their indices are lower than this block's
        merged_dists = torch.cat([best_dists, dists], dim=1)
        merged_indices = torch.cat([best_indices, index.expand(batch, -1)], dim=1)
        order = torch.sort(merged_dists, dim=1, stable=True).indices[:, :k]
        best_dists = merged_dists.gather(1, order)
        best_indices = merged_indices.gather(1, order)
    return best_dists, best_indices


register("knn_search", "torch", _knn_search_torch)
