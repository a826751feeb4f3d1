"""Device metadata of bench/ results: which device, processor, versions, commit, the fused
backends each op has there, and the datasheet peak bandwidth. Re-exported by common.py,
which is what the bench scripts import. Versions, commit, CPU model and backends come from
`exvae_fast.environment`, which also records them beside every training run."""
from __future__ import annotations

import importlib
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from exvae_fast.environment import backends_info, cpu_model, git_info, package_version, software_versions

REPO_DIR = Path(__file__).resolve().parent.parent

BACKEND_MODULES = (("exvae_fast.kernels.mixture_log_density", "mixture_log_density", "triton"),
                   ("exvae_fast.kernels.knn_search", "knn_search", "triton"),
                   ("exvae_fast._C", "cache_update_", "cpp"))
"""(module, op, backend) of the fused backends. `load_backends` imports each module it can;
when the import left the backend unregistered and the module has a `register_backend()`,
it calls that (and says so in the metadata). A missing module only means an absent backend."""

# Vendor datasheet peak DRAM bandwidth, bytes/s, matched by substring of the lower-cased
# device name (first match wins, so longer names come first). KINDS.md measured about
# 4.3 TB/s for a device-to-device copy on an H200: fractions near 0.9 are the ceiling.
PEAK_BANDWIDTH: tuple[tuple[str, float], ...] = (
    ("gh200", 4.0e12),  # before "h200", which its name contains
    ("h200", 4.8e12),
    ("h100 pcie", 2.0e12),
    ("h100", 3.35e12),
    ("a100-sxm4-80gb", 2.039e12),
    ("a100 80gb pcie", 1.935e12),
    ("a100", 1.555e12),
    ("l40s", 0.864e12),
    ("l4", 0.3e12),
    ("a10g", 0.6e12),
    ("a10", 0.6e12),
    ("t4", 0.32e12),
    ("v100", 0.9e12),
    ("rtx 4090", 1.008e12),
    ("rtx 3090", 0.936e12),
)


def bench_device(name: str | None = None) -> torch.device:
    """The device to benchmark: `name`, else $EXVAE_BENCH_DEVICE, else cuda when available."""
    name = name or os.environ.get("EXVAE_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} requested but CUDA is not available on this machine")
    return device


def apply_threads(threads: int | None = None) -> int:
    """Set torch's CPU threads to `threads`, else $EXVAE_BENCH_THREADS when set; returns the
    count in force. One thread is the robust choice on a loaded machine (OpenMP threads
    that wait for each other on oversubscribed cores can run 100x slower)."""
    if threads is None and os.environ.get("EXVAE_BENCH_THREADS"):
        threads = int(os.environ["EXVAE_BENCH_THREADS"])
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads: expected >= 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


@contextmanager
def scoped_threads(threads: int | None = None) -> Iterator[int]:
    """`apply_threads` for the duration of a with-block, then give torch back the thread count
    it had (so an in-process caller such as `exvae bench` is left as it was)."""
    before = torch.get_num_threads()
    try:
        yield apply_threads(threads)
    finally:
        torch.set_num_threads(before)


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages of the machine (None where unknown): a CPU timing
    taken while other work ran is noisy."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU): call before reading a host clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _slugify(text: str) -> str:
    out = "".join(c if c.isalnum() else "-" for c in text.lower())
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-") or "unknown"


PEAK_FP32: tuple[tuple[str, float], ...] = (
    ("gh200", 67e12),
    ("h200 nvl", 60e12),
    ("h200", 67e12),
    ("h100 pcie", 51e12),
    ("h100", 67e12),
    ("a100", 19.5e12),
    ("l40s", 91.6e12),
    ("l4", 30.3e12),
    ("a10g", 31.2e12),
    ("a10", 31.2e12),
    ("t4", 8.1e12),
    ("v100", 15.7e12),
    ("rtx 4090", 82.6e12),
    ("rtx 3090", 35.6e12),
)
"""Vendor datasheet peak FP32 rate without tensor cores (FLOP/s, dense), matched like
PEAK_BANDWIDTH: the compute side of the mixture op's roofline (bench/goals.py)."""


def _datasheet(table: tuple[tuple[str, float], ...], device_name: str) -> float | None:
    lowered = device_name.lower()
    return next((value for key, value in table if key in lowered), None)


def peak_bandwidth(device_name: str) -> float | None:
    """Datasheet peak memory bandwidth (bytes/s) for a GPU name, None when unknown or CPU."""
    return _datasheet(PEAK_BANDWIDTH, device_name)


def peak_fp32(device_name: str) -> float | None:
    """Datasheet peak FP32 (non-tensor) FLOP/s for a GPU name, None when unknown or CPU."""
    return _datasheet(PEAK_FP32, device_name)


def _nvidia_driver() -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


_BACKEND_FAILURES: dict[str, str] | None = None


def load_backends() -> dict[str, str]:
    """Import the modules of the fused backends (once; importing exvae_fast.ops registers
    them); returns {module: error} of those that failed to import, so a missing backend
    is reported with its reason rather than silently absent."""
    global _BACKEND_FAILURES
    if _BACKEND_FAILURES is None:
        import exvae_fast  # noqa: F401  (registers every backend that imports)

        _BACKEND_FAILURES = {}
        for name, _op, _backend in BACKEND_MODULES:
            try:
                importlib.import_module(name)
            except Exception as err:  # noqa: BLE001  any import failure only disables a backend
                _BACKEND_FAILURES[name] = f"{type(err).__name__}: {err}".splitlines()[0]
    return dict(_BACKEND_FAILURES)


def autotune_choices() -> list[dict[str, Any]]:
    """The configs Triton's autotuners of the fused kernels chose in this process: one
    {"kernel", "key", "config"} per tuned problem key (key values as strings; config: the
    meta-parameters, num_warps, num_stages). [] when no kernel module was imported or nothing
    was tuned (CPU, the interpreter, EXVAE_*_AUTOTUNE=0)."""
    import sys

    tuners = []
    mixture = sys.modules.get("exvae_fast.kernels.mixture_log_density")
    if mixture is not None:
        tuners += [("mixture_forward_partial_kernel", mixture._forward_tuned),
                   ("mixture_backward_means_kernel", mixture._backward_tuned)]
    knn = sys.modules.get("exvae_fast.kernels.knn_search")
    if knn is not None:
        tuners += [(f"knn_scan_kernel[K_SEL={k_sel}]", tuner) for (k_sel, _), tuner in knn._TUNED.items()]
    return [{"kernel": name, "key": [str(value) for value in key],
             "config": {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}}
            for name, tuner in tuners for key, config in getattr(tuner, "cache", {}).items()]


def device_info(device: torch.device) -> dict[str, Any]:
    """Everything a result needs to be read later: device, processor, versions, commit."""
    failures = load_backends()
    info: dict[str, Any] = {
        "type": device.type,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": load_average(),
        **software_versions(),
        "faiss": package_version("faiss"),
        "pykeops": package_version("pykeops"),
        "git": git_info(REPO_DIR),
        "backend_import_errors": failures,
        "backends": backends_info(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name = props.name
        info.update({
            "name": name,
            "gpu_name": name,
            "gpu_count": torch.cuda.device_count(),
            "gpu_memory_bytes": props.total_memory,
            "compute_capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "driver": _nvidia_driver(),
            "peak_bandwidth_bytes_per_s": peak_bandwidth(name),
            "peak_bandwidth_source": "vendor datasheet (bench/devinfo.py PEAK_BANDWIDTH)"
            if peak_bandwidth(name) else None,
            "peak_fp32_flops_per_s": peak_fp32(name),
            "peak_fp32_source": "vendor datasheet (bench/devinfo.py PEAK_FP32)" if peak_fp32(name) else None,
        })
        info["slug"] = _slugify(name)
    else:
        info.update({"name": f"CPU: {info['cpu_model']}", "gpu_name": None,
                     "peak_bandwidth_bytes_per_s": None, "peak_bandwidth_source": None,
                     "peak_fp32_flops_per_s": None, "peak_fp32_source": None})
        info["slug"] = "cpu-" + _slugify(info["cpu_model"])
    return info
