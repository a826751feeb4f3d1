"""Download the raw files of the paper's data sets into a local folder (`exvae download`).

Each file is fetched from its mirrors in order, streamed into a temporary file beside its
destination, checked and only then renamed into place (`atomic_write`), so an interrupted or
corrupted download never leaves a file that looks complete, nor replaces a good one. Files
with a published MD5 (MNIST, Fashion-MNIST: the checksums torchvision and the data sets'
authors publish) are checked against it; the others (Omniglot's chardata.mat, the Frey faces
pickle) have none, so the downloaded file is read by the data set's own reader, which
validates shapes and values. A file already present is kept when it passes the same check
(use `force` to fetch it again).

CelebA is not downloaded automatically (its files sit behind Google Drive's interactive
confirmation); `MANUAL` says where to get it.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import pickle
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..atomic_io import atomic_write
from ..progress import stage_progress
from .registry import load_dataset

CHUNK = 1 << 20  # bytes read per step of a download


@dataclass(frozen=True)
class RemoteFile:
    """One raw file: its name in the data set's folder, its mirrors (tried in order) and its
    published MD5, or None when there is none (the reader then validates the file)."""

    name: str
    urls: tuple[str, ...]
    md5: str | None


def _idx_files(bases: tuple[str, ...], md5s: tuple[str, str, str, str]) -> tuple[RemoteFile, ...]:
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    return tuple(RemoteFile(n, tuple(b + n for b in bases), m) for n, m in zip(names, md5s))


SOURCES: dict[str, tuple[RemoteFile, ...]] = {
    "mnist": _idx_files(
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/",
         "http://yann.lecun.com/exdb/mnist/"),
        ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
         "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c")),
    "fashion-mnist": _idx_files(
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
         "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
        ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
         "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310")),
    # the binarisation-free Omniglot of IWAE (Burda et al.) that VampPrior and the paper use
    "omniglot": (RemoteFile("chardata.mat", (
        "https://github.com/yburda/iwae/raw/master/datasets/OMNIGLOT/chardata.mat",), None),),
    # the pickle VampPrior's README points to
    "frey-faces": (RemoteFile("freyfaces.pkl", (
        "https://github.com/y0ast/Variational-Autoencoder/raw/master/freyfaces.pkl",), None),),
}

MANUAL: dict[str, str] = {
    "celeba": ("CelebA cannot be downloaded automatically (Google Drive asks for a confirmation): get "
               "img_align_celeba.zip from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html and unzip it so "
               "that ROOT/img_align_celeba/ holds the .jpg files"),
}


class DownloadError(RuntimeError):
    """No mirror of a file could be fetched and checked; the message lists every attempt."""


def file_md5(path: str | os.PathLike) -> str:
    """Hex MD5 of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download_dataset(name: str, root: str | os.PathLike, *, force: bool = False, progress: bool = True,
                     timeout: float = 60.0) -> list[Path]:
    """Fetch the raw files of data set `name` (a key of SOURCES) into the folder `root`
    (created if missing) and return their paths; afterwards `load_dataset(name, root)`
    works. Files already there and valid are kept unless `force`. Raises ValueError for a
    name that cannot be downloaded and DownloadError when every mirror of a file fails."""
    if name not in SOURCES:
        hint = MANUAL.get(name, f"data sets that can be downloaded: {', '.join(SOURCES)}")
        raise ValueError(f"name: {name!r} cannot be downloaded; {hint}")
    folder = Path(root)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"root: {str(folder)!r} exists and is not a folder")
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, remote in enumerate(SOURCES[name]):
        target = folder / remote.name
        if force or not _valid(name, remote, target):
            try:
                _fetch(remote, target, lambda path: _check_readable(name, remote, path), progress, timeout)
            except DownloadError as err:
                missing = [r.name for r in SOURCES[name][i:] if not _valid(name, r, folder / r.name)]
                _remove_empty(created)
                still = f" Still missing in {str(folder)!r}: {', '.join(missing)}." if missing else ""
                raise DownloadError(f"{err}{still}") from None
        paths.append(target)
    return paths


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed download created (deepest first) while they are empty,
    so a failure leaves no empty data folder that looks like a download."""
    for path in folders:
        try:
            path.rmdir()
        except OSError:  # not empty (an earlier file arrived) or not ours to remove
            return


def _valid(name: str, remote: RemoteFile, target: Path) -> bool:
    """Whether an existing file passes the check a fresh download must pass."""
    if not target.is_file():
        return False
    if remote.md5 is not None:
        return file_md5(target) == remote.md5
    try:
        _check_readable(name, remote, target)
    except ValueError:
        return False
    return True


def _check_readable(name: str, remote: RemoteFile, path: str | os.PathLike) -> None:
    """Files without a checksum: the data set's reader must accept the file at `path`."""
    if remote.md5 is None:
        try:
            load_dataset(name, path)
        except (ValueError, OSError, pickle.UnpicklingError) as err:  # the latter: a refused pickle
            raise ValueError(f"not a valid {remote.name}: {err}") from err


def _fetch(remote: RemoteFile, target: Path, check: Callable[[str], None], progress: bool,
           timeout: float) -> None:
    """Download `remote` to `target` from the first mirror that works: the body's length and
    MD5, then `check(temporary path)`, must pass before the file takes its place."""
    failures = []
    for url in remote.urls:
        try:
            atomic_write(target, lambda f, url=url: _stream(url, f, remote, progress, timeout), verify=check)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
            failures.append(f"{url}: {type(err).__name__}: {err}")
            continue
        return
    raise DownloadError(f"could not download {remote.name}; tried " + "; ".join(failures)
                        + f". Download it by hand into {str(target.parent)!r}.")


def _stream(url: str, out: IO[bytes], remote: RemoteFile, progress: bool, timeout: float) -> None:
    """Copy the body of `url` into `out`; ValueError on a short body or an MD5 mismatch."""
    request = urllib.request.Request(url, headers={"User-Agent": "exvae-fast (python urllib)"})
    digest = hashlib.md5(usedforsecurity=False)
    received = 0
    with urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        with stage_progress(remote.name, expected, progress, unit="B", label=f"download {remote.name}") as bar:
            for block in iter(lambda: response.read(CHUNK), b""):
                out.write(block)
                digest.update(block)
                received += len(block)
                bar.update(len(block))
    if expected is not None and received != expected:
        raise ValueError(f"received {received} of {expected} bytes")
    if remote.md5 is not None and digest.hexdigest() != remote.md5:
        raise ValueError(f"MD5 {digest.hexdigest()} differs from the published {remote.md5}")
