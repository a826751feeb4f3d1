"""atomic_write: the file it leaves has the permissions a plain open() would give it."""
from __future__ import annotations

import os
import stat

import pytest

from exvae_fast.atomic_io import atomic_write, atomic_write_text


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_written_file_follows_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        atomic_write_text(tmp_path / "atomic.txt", "x")
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    got = stat.S_IMODE(os.stat(tmp_path / "atomic.txt").st_mode)
    assert got == stat.S_IMODE(os.stat(tmp_path / "plain.txt").st_mode) == 0o666 & ~mask


def test_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def boom(f):
        f.write(b"new")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(target, boom)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]
