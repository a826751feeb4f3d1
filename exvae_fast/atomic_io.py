"""Atomic file writes: a crash never leaves a truncated file behind (checkpoints, configs,
metrics, augmented data sets)."""
from __future__ import annotations

import os
import tempfile
from typing import IO, Callable


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None],
                 verify: Callable[[str], None] | None = None) -> None:
    """Write a file atomically: `write(f)` fills a temp file in the same folder, which is
    flushed, fsync'ed, passed to `verify(temp_path)` when given (e.g. to read it back), and
    renamed over `path` with os.replace.

    On any exception (from `write` or `verify` too) the temp file is removed and an existing
    file at `path` is left untouched. The parent folder is created when missing.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if os.name == "posix":
        # fsync the folder so the rename itself survives a power loss.
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """`atomic_write` of a UTF-8 text."""
    data = text.encode("utf-8")
    atomic_write(path, lambda f: f.write(data))
