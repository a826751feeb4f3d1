"""Atomic, weights-only checkpoints and RNG state capture.

A checkpoint file is `torch.save` of the payload
`{"format": "exvae-fast-checkpoint", "format_version": 1, "state": state}`.
`state` may hold only what `torch.load(..., weights_only=True)` can read back (tensors,
dicts, lists, tuples, str, bytes, int, float, complex, bool, None, torch.Size, dtypes,
devices), so loading never runs arbitrary pickled code; `save_checkpoint` checks this
before writing and names the offending entry.
"""
from __future__ import annotations

import os
import pickle
import random
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..atomic_io import atomic_write

CHECKPOINT_FORMAT = "exvae-fast-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1

_SCALARS = (str, bytes, int, float, complex, bool, type(None), torch.dtype, torch.device, torch.Size)


def _check_weights_only(obj: Any, where: str) -> None:
    """Raise TypeError naming the first entry that a weights-only load would refuse.

    Scalars and containers are matched by exact type: subclasses such as numpy.float64
    (a float) or defaultdict (a dict) pickle as classes the weights-only loader refuses.
    """
    if isinstance(obj, torch.Tensor) or type(obj) in _SCALARS:
        return
    if type(obj) in (dict, OrderedDict):
        for key, value in obj.items():
            if type(key) not in _SCALARS:
                raise TypeError(f"{where}: unsupported key type {type(key).__name__}")
            _check_weights_only(value, f"{where}[{key!r}]")
        return
    if type(obj) in (list, tuple):
        for i, value in enumerate(obj):
            _check_weights_only(value, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where}: unsupported type {type(obj).__name__}; a checkpoint may hold only tensors, "
        "dicts, lists, tuples, strings, bytes, python numbers, bools and None"
    )


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Save `state` to `path` atomically (see `atomic_write`).

    Raises TypeError, before touching the file system, when `state` is not a dict or holds
    something a weights-only load could not read (e.g. a numpy array: convert it first).
    """
    if not isinstance(state, dict):
        raise TypeError(f"state: expected a dict, got {type(state).__name__}")
    _check_weights_only(state, "state")
    payload = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION, "state": state}
    atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load the `state` dict written by `save_checkpoint`, with `weights_only=True`.

    Raises FileNotFoundError naming `path` when it is missing, and ValueError when the file
    is truncated, corrupt, not written by exvae-fast, or of another format version.
    Damage inside raw tensor bytes of an otherwise intact file is not detected (torch does
    not verify the zip records' CRCs).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (PermissionError, IsADirectoryError):
        raise
    except Exception as e:  # torch.load reports damage as RuntimeError, OSError, EOFError, ...
        # torch's refusal to unpickle suggests weights_only=False: never an option here
        detail = ("torch could read it only by unpickling arbitrary Python objects, never done here"
                  if isinstance(e, pickle.UnpicklingError) else f"{type(e).__name__}: {e}")
        raise ValueError(f"{path}: not an exvae-fast checkpoint, or corrupt/truncated ({detail})") from e
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an exvae-fast checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    version = payload.get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        raise ValueError(
            f"{path}: checkpoint format version {version!r}, this exvae-fast reads version "
            f"{CHECKPOINT_FORMAT_VERSION}"
        )
    state = payload.get("state")
    if not isinstance(state, dict):
        raise ValueError(f"{path}: corrupt exvae-fast checkpoint ('state' is not a dict)")
    return state


def capture_rng_state() -> dict[str, Any]:
    """Snapshot the python `random`, numpy global, torch CPU and (when available) every CUDA
    device's RNG, in a form `save_checkpoint` accepts.

    Returns {"python": {"version", "internal" (int64 [625]), "gauss_next"},
    "numpy": {"bit_generator", "keys" (int64 [624]), "pos", "has_gauss", "cached_gaussian"},
    "torch": uint8 tensor, "cuda": list of uint8 tensors, one per device (empty without CUDA)}.
    The Mersenne-Twister words are < 2**32, so int64 holds them exactly.
    """
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    return {
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "numpy": {
            "bit_generator": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the generators captured by `capture_rng_state` (tensors may be on any device).

    CUDA states are restored for the devices present both in `state` and on this machine;
    others are left alone (resuming on a different GPU count cannot replay those streams).
    Raises ValueError naming a missing or malformed entry.
    """
    for key in ("python", "numpy", "torch"):
        if key not in state:
            raise ValueError(f"rng state: missing entry '{key}'")
    try:
        py = state["python"]
        random.setstate((int(py["version"]), tuple(int(v) for v in py["internal"].tolist()), py["gauss_next"]))
        npy = state["numpy"]
        keys = npy["keys"].cpu().numpy().astype(np.uint32)
        np.random.set_state(
            (npy["bit_generator"], keys, int(npy["pos"]), int(npy["has_gauss"]), float(npy["cached_gaussian"]))
        )
        torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    except (KeyError, TypeError, AttributeError, ValueError, RuntimeError) as e:
        raise ValueError(f"rng state: malformed ({type(e).__name__}: {e})") from e
    cuda_states = state.get("cuda", [])
    if cuda_states and torch.cuda.is_available():
        for i in range(min(len(cuda_states), torch.cuda.device_count())):
            torch.cuda.set_rng_state(cuda_states[i].cpu().to(torch.uint8), device=i)
