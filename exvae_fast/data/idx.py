"""Reader for the IDX files of MNIST and Fashion-MNIST (gzip-compressed or raw).

Format (big-endian): two zero bytes, a type byte (0x08 = uint8, the only type read here),
a byte holding the number of dimensions, one uint32 per dimension, then the data. Magic
numbers: 0x00000803 for image files [N, H, W], 0x00000801 for label files [N].
"""
from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    # Detect compression from the content, not the suffix, so a renamed file still reads.
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"IDX file {str(path)!r} is a corrupt or truncated gzip stream: {err}") from err


def read_idx(path: str | os.PathLike, magic: int) -> np.ndarray:
    """Read one uint8 IDX file whose magic number must equal `magic`.

    Returns a read-only uint8 array with the file's dimensions. Raises ValueError for a
    wrong magic number, a header that is cut short, or a data size that does not match.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"IDX file {str(path)!r} is truncated: {len(data)} bytes, no header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise ValueError(f"IDX file {str(path)!r} has magic number 0x{found:08x}; expected "
                         f"0x{magic:08x} (uint8, {magic & 0xFF} dimension(s))")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"IDX file {str(path)!r} is truncated inside its header")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(dims)
    payload = len(data) - header
    if payload != expected:
        kind = "truncated" if payload < expected else "longer than its header says"
        raise ValueError(f"IDX file {str(path)!r} is {kind}: dimensions {dims} need {expected} "
                         f"data bytes, found {payload}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_images(path: str | os.PathLike) -> np.ndarray:
    """uint8 images [N, H, W] from an IDX3 file (magic 0x00000803)."""
    return read_idx(path, IMAGES_MAGIC)


def read_idx_labels(path: str | os.PathLike) -> np.ndarray:
    """uint8 labels [N] from an IDX1 file (magic 0x00000801)."""
    return read_idx(path, LABELS_MAGIC)
