"""Argument and path checks shared by the readers; every error names the argument."""
from __future__ import annotations

import os
from pathlib import Path


def check_count(value: object, name: str, *, minimum: int = 1) -> int:
    """Return `value` if it is an int >= `minimum` (bools refused), else raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_seed(seed: object) -> int:
    """Return `seed` if it is a non-negative int, else raise ValueError."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return seed


def require_dir(root: str | os.PathLike, dataset: str, expected: str) -> Path:
    """Return `root` as a Path to an existing folder; FileNotFoundError naming `expected` if not."""
    path = Path(root)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{dataset}: root folder {str(path)!r} not found; expected a folder holding {expected}")
    return path


def require_file(root: str | os.PathLike, dataset: str, default_name: str) -> Path:
    """Resolve `root` to a data file: the file itself, or `default_name` inside a folder.

    Raises FileNotFoundError with the path and the file expected.
    """
    path = Path(root)
    if path.is_dir():
        path = path / default_name
    if not path.is_file():
        raise FileNotFoundError(
            f"{dataset}: file {str(path)!r} not found; root must be the data file's path, or a "
            f"folder holding a file named {default_name}")
    return path
