"""In-place scattered write of rows into a latent cache, deterministic under duplicates."""
from __future__ import annotations

import torch
from torch import Tensor

from .dispatch import implementation, register
from .validation import validate_cache_update


def cache_update_(cache: Tensor, indices: Tensor, values: Tensor, *, norms: Tensor | None = None,
                  stamps: Tensor | None = None, step: int | None = None,
                  backend: str = "auto") -> Tensor:
    """Write values[i] into cache[indices[i]] in place; returns cache.

    cache: [N, d] float32, bfloat16 or float16 storage. indices: int64 [K] in [0, N).
    values: [K, d] float, finite, converted to the cache dtype on write. When an index
    repeats, its last occurrence wins. norms: float32 [N]; written rows get the squared L2
    norm of the row as stored (computed in float32). stamps: int64 [N], with step (int >= 0)
    and norms; written rows get `step`. K = 0 is a no-op. Not differentiable.
    """
    validate_cache_update(cache, indices, values, norms, stamps, step)
    run = implementation("cache_update_", backend, cache)
    return run(cache, indices, values, norms, stamps, step)


@torch.no_grad()
def _cache_update_torch(cache: Tensor, indices: Tensor, values: Tensor, norms: Tensor | None,
                        stamps: Tensor | None, step: int | None) -> Tensor:
    if indices.numel() == 0:
        return cache
    # index_copy_ leaves the winner among duplicates unspecified: pick each row's last
    # position explicitly, then write every row once
    rows, inverse = torch.unique(indices, return_inverse=True)
    positions = torch.arange(indices.numel(), device=indices.device)
    last = torch.full_like(rows, -1).scatter_reduce_(0, inverse, positions, reduce="amax")
    stored = values[last].to(cache.dtype)
    cache[rows] = stored
    if norms is not None:
        norms[rows] = stored.float().square().sum(1)
    if stamps is not None:
        stamps[rows] = step
    return cache


register("cache_update_", "torch", _cache_update_torch)
