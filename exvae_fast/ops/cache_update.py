"""In-place scattered write of rows into a latent cache, deterministic under duplicates.

Backends: "torch" (the reference) and "cpp", the op `torch.ops.exvae_fast.cache_update_` of
the compiled extension (csrc/: CPU with OpenMP, and CUDA), which "auto" prefers. Without the
extension, "auto" uses the torch backend and warns once (see `_extension`).
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

from . import _extension
from .dispatch import implementation, register, resolve_backend
from .validation import validate_cache_update

COMPILED_DEVICES = ("cpu", "cuda")
"""Device types csrc/ has kernels for (CUDA only when the extension was built with nvcc)."""
COMPILED_VALUE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
"""dtypes of `values` the compiled op reads; the others are converted to the cache dtype first."""


def cache_update_(cache: Tensor, indices: Tensor, values: Tensor, *, norms: Tensor | None = None,
                  stamps: Tensor | None = None, step: int | None = None,
                  backend: str = "auto") -> Tensor:
    """Write values[i] into cache[indices[i]] in place; returns cache.

    cache: [N, d] float32, bfloat16 or float16 storage. indices: int64 [K] in [0, N).
    values: [K, d] float, finite, converted to the cache dtype on write. When an index
    repeats, its last occurrence wins. norms: float32 [N]; written rows get the squared L2
    norm of the row as stored (accumulated in float32 or wider). stamps: int64 [N], with
    step (int >= 0) and norms; written rows get `step`. K = 0 is a no-op. Not differentiable.
    backend: "cpp" (the compiled op; "auto" picks it when the extension is built) or "torch".
    """
    validate_cache_update(cache, indices, values, norms, stamps, step)
    chosen = resolve_backend("cache_update_", backend, cache)
    if backend == "auto" and chosen != "cpp":
        _warn_once_without_extension(cache.device.type, chosen)
    run = implementation("cache_update_", chosen, cache)
    return run(cache, indices, values, norms, stamps, step)


_warned_without_extension = False


def _warn_once_without_extension(device_type: str, chosen: str) -> None:
    """One warning per process when "auto" cannot use the compiled op where one exists."""
    global _warned_without_extension
    if _warned_without_extension or device_type not in COMPILED_DEVICES:
        return
    reason = _extension.fallback_reason("cache_update_", device_type)
    if reason is None:
        return
    _warned_without_extension = True
    warnings.warn(f"cache_update_: {reason}; using the {chosen!r} backend instead, which is "
                  f"slower. {_extension.REBUILD_HINT}", stacklevel=3)


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


@torch.no_grad()
def _cache_update_cpp(cache: Tensor, indices: Tensor, values: Tensor, norms: Tensor | None,
                      stamps: Tensor | None, step: int | None) -> Tensor:
    if values.dtype not in COMPILED_VALUE_DTYPES:
        # (float64, float8) one conversion, straight to storage, as the reference does
        values = values.to(cache.dtype)
    # the op writes contiguous tensors only: others are written through a contiguous copy
    targets = (cache, norms, stamps)
    written = tuple(t if t is None or t.is_contiguous() else t.contiguous() for t in targets)
    # check_range=False: the public op validated the indices already (one synchronisation),
    # so the CUDA kernel need not read its own verdict back (a second one)
    torch.ops.exvae_fast.cache_update_(written[0], indices.contiguous(), values.contiguous(),
                                       written[1], written[2], 0 if step is None else step, False)
    for target, copy in zip(targets, written):
        if copy is not target:
            target.copy_(copy)
    return cache


def _cache_update_fake(cache: Tensor, indices: Tensor, values: Tensor, norms: Tensor | None,
                       stamps: Tensor | None, step: int, check_range: bool = True) -> None:
    """Fake (meta) implementation for torch.compile: the op returns nothing, writes in place."""


if _extension.LOAD_ERROR is None:
    register("cache_update_", "cpp", _cache_update_cpp, priority=10,
             devices=[d for d in COMPILED_DEVICES if _extension.has_kernel("cache_update_", d)])
    torch.library.register_fake("exvae_fast::cache_update_")(_cache_update_fake)
