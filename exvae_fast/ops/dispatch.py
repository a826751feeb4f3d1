"""Backend registry of the fused ops: op name -> {backend name: implementation}.

Each backend module registers its implementations on import (`register`); the public ops
call `implementation(op, backend, *tensors)` after validating their arguments. "torch" is
the plain-PyTorch reference and runs on every device; "triton" and "cpp" are registered by
their own modules when those are built and importable.
"""
from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from torch import Tensor

KNOWN_BACKENDS = ("torch", "triton", "cpp")
"""Every backend name the library knows, built or not; "auto" chooses among them."""


@dataclass(frozen=True)
class Implementation:
    """One backend's implementation of one op.

    devices: device types it runs on ("cpu", "cuda", ...); None means every device.
    priority: "auto" picks the highest-priority implementation that supports the device.
    """

    fn: Callable
    devices: frozenset[str] | None
    priority: int


_REGISTRY: dict[str, dict[str, Implementation]] = {}


def register(op: str, backend: str, fn: Callable, *, devices: Collection[str] | None = None,
             priority: int = 0) -> None:
    """Register `fn` as `backend`'s implementation of `op` (replacing any earlier one)."""
    if backend not in KNOWN_BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(KNOWN_BACKENDS)}, got {backend!r}")
    frozen = None if devices is None else frozenset(devices)
    _REGISTRY.setdefault(op, {})[backend] = Implementation(fn, frozen, priority)


OP_BACKENDS = {
    "mixture_log_density": ("torch", "triton"),
    "knn_search": ("torch", "triton"),
    "cache_update_": ("torch", "cpp"),
}
"""The backends each op is written in (whether or not built on this machine)."""


def backend_for(op: str, run_backend: str) -> str:
    """The backend an op uses under one run-wide setting ("auto" | "torch" | "triton" | "cpp"):
    the setting itself where the op has that backend, "auto" where it does not (so
    `--backend triton` runs the Triton kernels and leaves the cache update to "auto")."""
    if run_backend != "auto" and run_backend not in KNOWN_BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(('auto',) + KNOWN_BACKENDS)}, got {run_backend!r}")
    return run_backend if run_backend in ("auto", "torch") or run_backend in OP_BACKENDS[op] else "auto"


def registered_backends(op: str) -> tuple[str, ...]:
    """Names of the backends registered for `op`, in registration order."""
    return tuple(_REGISTRY.get(op, {}))


def _device_type(tensors: tuple[Tensor | None, ...]) -> str:
    for tensor in tensors:
        if isinstance(tensor, Tensor):
            return tensor.device.type
    raise ValueError("resolve_backend: expected at least one tensor to infer the device from")


def _runs_on(impl: Implementation, device_type: str) -> bool:
    return impl.devices is None or device_type in impl.devices


def resolve_backend(op: str, backend: str, *tensors: Tensor | None) -> str:
    """Name of the backend that runs `op` on the device of `tensors` (Nones are skipped).

    "auto" picks the highest-priority registered backend supporting that device. An explicit
    name must be "auto" or one of KNOWN_BACKENDS (else ValueError listing them) and must be
    registered for `op` and the device (else ValueError saying it is not available).
    """
    if op not in _REGISTRY:
        raise ValueError(f"unknown op {op!r}; registered ops: {', '.join(sorted(_REGISTRY))}")
    if not isinstance(backend, str) or (backend != "auto" and backend not in KNOWN_BACKENDS):
        valid = ", ".join(("auto",) + KNOWN_BACKENDS)
        raise ValueError(f"backend: expected one of {valid}, got {backend!r}")
    device_type = _device_type(tensors)
    usable = {name: impl for name, impl in _REGISTRY[op].items() if _runs_on(impl, device_type)}
    if backend == "auto":
        if not usable:
            raise ValueError(f"{op}: no backend is available for device type {device_type!r}")
        best = None  # the first of the highest priority; a loop, not max(key=...), which
        for name, impl in usable.items():  # torch.compile cannot trace (a warning per trace)
            if best is None or impl.priority > usable[best].priority:
                best = name
        return best
    if backend not in usable:
        if backend in _REGISTRY[op]:
            why = f"does not support device type {device_type!r}"
            if backend == "triton" and device_type == "cpu":
                why += (" (Triton kernels run on CUDA; on a CPU only in Triton's interpreter, for tests: "
                        "TRITON_INTERPRET=1 set before triton is imported)")
        elif op in OP_BACKENDS and backend not in OP_BACKENDS[op]:
            why = f"is not available ({op} is written in {', '.join(OP_BACKENDS[op])} only)"
        else:
            why = "is not available (not built or not importable)"
        available = ", ".join(usable) or "none"
        raise ValueError(f"{op}: backend {backend!r} {why}; available here: {available}")
    return backend


def implementation(op: str, backend: str, *tensors: Tensor | None) -> Callable:
    """The function that runs `op` for `backend` ("auto" or a name) on `tensors`' device."""
    return _REGISTRY[op][resolve_backend(op, backend, *tensors)].fn
