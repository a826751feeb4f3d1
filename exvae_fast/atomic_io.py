"""Atomic file writes: a crash never leaves a truncated file behind (checkpoints, configs,
metrics, augmented data sets)."""
from __future__ import annotations

import os
import secrets
from typing import IO, Callable


def _create_temp(folder: str, base: str) -> tuple[int, str]:
    """Open a new, uniquely named temp file in `folder` for writing: (fd, path).

    Created with mode 0o666 less the umask, as open() would: mkstemp's 0o600 would survive the
    rename and leave data files and run folders unreadable to everyone else.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(folder, f".{base}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name for {base!r} in {folder!r}")


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
    fd, tmp = _create_temp(folder, os.path.basename(path))
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
