"""Where a number came from: versions, device, commit and the op backends in force.

`environment_record(device)` is written beside every training run (environment.json, one
record per start or resume) and into every metrics.json, and is the core of the bench
results' device metadata (bench/devinfo.py), so that a result can be traced to the code and
machine that produced it.
"""
from __future__ import annotations

import importlib
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

PACKAGE_DIR = Path(__file__).resolve().parent
OPS = ("mixture_log_density", "knn_search", "cache_update_")


def package_version(module: str) -> str | None:
    """Installed version of a distribution (by its import name), None when absent."""
    from importlib.metadata import PackageNotFoundError, version

    dist = {"exvae_fast": "exvae-fast", "faiss": "faiss-cpu"}.get(module, module)
    try:
        return version(dist)
    except PackageNotFoundError:
        try:
            return getattr(importlib.import_module(module), "__version__", None)
        except Exception:  # noqa: BLE001  any import failure means "not usable here"
            return None


def source_checkout() -> Path | None:
    """The git checkout this package is imported from (an editable install), else None: an
    installed copy inside some other repository must not report that repository's commit."""
    root = PACKAGE_DIR.parent
    return root if (root / ".git").exists() and (root / "pyproject.toml").is_file() else None


COMMIT_VARIABLE = "EXVAE_SOURCE_COMMIT"
"""Names the commit of a copy of the sources without .git (a benchmark machine given the
working tree): `git_info` reports it, with "dirty" unknown."""


def git_info(repo: Path | None = None) -> dict[str, Any]:
    """{"commit", "dirty"} of the checkout (tracked files only), None values when unknown; for
    a copy without .git, the commit the COMMIT_VARIABLE environment variable names."""
    repo = repo if repo is not None else source_checkout()
    if repo is None:
        return {"commit": os.environ.get(COMMIT_VARIABLE) or None, "dirty": None}

    def run(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    dirty = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if dirty is None else bool(dirty)}


def cpu_model() -> str:
    """The processor's model name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def backends_info(device: torch.device) -> dict[str, Any]:
    """Registered backends of each op and what backend="auto" resolves to on `device`."""
    from .ops import dispatch

    probe = torch.empty(1, device=device)
    out: dict[str, Any] = {}
    for op in OPS:
        try:
            auto = dispatch.resolve_backend(op, "auto", probe)
        except ValueError as err:
            auto = f"unavailable: {err}"
        out[op] = {"registered": list(dispatch.registered_backends(op)), "auto": auto}
    return out


def device_summary(device: torch.device) -> dict[str, Any]:
    """{"type", "name", ...}: the GPU's name, memory and compute capability, or the CPU model."""
    if device.type != "cuda":
        return {"type": device.type, "name": f"CPU: {cpu_model()}"}
    props = torch.cuda.get_device_properties(device)
    return {"type": "cuda", "name": props.name, "count": torch.cuda.device_count(),
            "memory_bytes": props.total_memory, "compute_capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count}


def software_versions() -> dict[str, Any]:
    """Python, platform, torch (and its CUDA and cuDNN), triton and exvae-fast versions."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "triton": package_version("triton"),
        "exvae_fast": package_version("exvae_fast"),
    }


def environment_record(device: torch.device | str) -> dict[str, Any]:
    """Versions (python, torch, CUDA, cuDNN, triton, exvae-fast), commit, device, CPU, torch
    threads, the op backends in force on `device`, the command line and the UTC time."""
    device = torch.device(device)
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **software_versions(),
        "git": git_info(),
        "device": device_summary(device),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "backends": backends_info(device),
        "argv": list(sys.argv),
    }
