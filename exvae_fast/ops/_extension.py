"""The compiled extension `exvae_fast._C` (sources in csrc/), loaded once at import.

Importing it registers the `torch.ops.exvae_fast.*` ops (CPU, and CUDA when built with
nvcc). It is optional: when it was not built, or fails to load (for instance, built against
another torch), the ops run on their torch backends and `fallback_reason` says why, for the
one warning the ops give. Rebuild it with `pip install --no-build-isolation -e .`.
"""
from __future__ import annotations

import importlib

import torch

REBUILD_HINT = ("Build it with `pip install --no-build-isolation -e .` in the source tree "
                "(README: 'Building the extension').")


def _load() -> str | None:
    """Import exvae_fast._C; the error text when that fails, else None."""
    try:
        importlib.import_module("exvae_fast._C")
    except (ImportError, OSError) as error:
        return f"{type(error).__name__}: {error}"
    return None


LOAD_ERROR: str | None = _load()
"""Why `exvae_fast._C` could not be imported, or None when it is loaded."""


def has_kernel(op: str, device_type: str) -> bool:
    """Whether the loaded extension has a kernel of `op` (e.g. "cache_update_") for
    `device_type` ("cpu", "cuda")."""
    if LOAD_ERROR is not None:
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}[device_type]
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"exvae_fast::{op}", key)


def fallback_reason(op: str, device_type: str) -> str | None:
    """Why `op` has no compiled kernel on `device_type` ("cpu" or "cuda"), or None if it has."""
    if LOAD_ERROR is not None:
        return f"the C++ extension exvae_fast._C could not be loaded ({LOAD_ERROR})"
    if not has_kernel(op, device_type):
        return (f"the C++ extension exvae_fast._C was built without a {device_type.upper()} "
                f"kernel of {op} (no nvcc or a CPU-only torch when it was built)")
    return None
