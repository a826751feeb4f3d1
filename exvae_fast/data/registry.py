"""`load_dataset`: one entry point that dispatches a data set name to its reader.

| name          | root                                   | options (defaults)                        |
|---------------|----------------------------------------|-------------------------------------------|
| mnist-5k      | none (embedded in the package)         | none                                      |
| mnist         | folder with the 4 MNIST IDX files      | n_validation (10000)                      |
| fashion-mnist | folder with the 4 Fashion-MNIST IDX    | n_validation (10000)                      |
| omniglot      | chardata.mat (or a folder holding it)  | n_validation (1345)                       |
| celeba        | folder with img_align_celeba/          | num_bits (8; or 5), limit (None)          |
| frey-faces    | freyfaces.pkl (or a folder holding it) | n_validation (200), n_test (200)          |
| synthetic     | none (generated)                       | size (50000), input_shape ((1, 28, 28)),  |
|               |                                        | likelihood ("bernoulli"; or "logistic")   |
| array         | your images: an .npz file (or a folder | n_validation, n_test (a tenth each, when  |
|               | holding data.npz); see data/arrays.py  | the file has no such split), likelihood   |
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from .arrays import load_array_dataset
from .celeba import load_celeba
from .freyfaces import load_freyfaces
from .mnist import load_idx_dataset
from .mnist5k import load_mnist5k
from .omniglot import load_omniglot
from .splits import DataSplits
from .synthetic import load_synthetic
from .validate import check_seed


@dataclass(frozen=True)
class _Reader:
    """How to call one reader: root first if it needs one, then seed= if it uses one, then options."""

    load: Callable[..., DataSplits]
    needs_root: bool
    uses_seed: bool
    options: tuple[str, ...]


_READERS: dict[str, _Reader] = {
    "mnist-5k": _Reader(load_mnist5k, False, True, ()),
    "mnist": _Reader(partial(load_idx_dataset, "mnist"), True, True, ("n_validation",)),
    "fashion-mnist": _Reader(partial(load_idx_dataset, "fashion-mnist"), True, True,
                             ("n_validation",)),
    "omniglot": _Reader(load_omniglot, True, True, ("n_validation",)),
    "celeba": _Reader(load_celeba, True, False, ("num_bits", "limit")),
    "frey-faces": _Reader(load_freyfaces, True, True, ("n_validation", "n_test")),
    "synthetic": _Reader(load_synthetic, False, True, ("size", "input_shape", "likelihood")),
    "array": _Reader(load_array_dataset, True, True, ("n_validation", "n_test", "likelihood")),
}

DATASET_NAMES: tuple[str, ...] = tuple(_READERS)

_DIGITS = tuple(str(i) for i in range(10))
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "mnist-5k": _DIGITS,
    "mnist": _DIGITS,
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                      "Bag", "Ankle boot"),
}
"""Names of the integer labels of the labelled data sets (label i -> CLASS_NAMES[name][i])."""


def load_dataset(name: str, root: str | os.PathLike | None = None, *, seed: int = 0,
                 **options: object) -> DataSplits:
    """Load data set `name` (one of DATASET_NAMES) as DataSplits.

    root: the local path the reader needs (see the table above); must be None for
    "mnist-5k" and "synthetic". seed: non-negative int driving every random choice
    (shuffles, the one-off binarisation of val/test, synthetic images); the mnist-5k
    split itself is fixed. options: reader-specific keywords from the table.
    Raises ValueError (unknown name, missing or superfluous root, bad values),
    TypeError (unknown option), FileNotFoundError (missing files).
    """
    reader = _READERS.get(name)
    if reader is None:
        raise ValueError(f"unknown dataset name {name!r}; accepted names: {', '.join(DATASET_NAMES)}")
    check_seed(seed)
    unknown = sorted(set(options).difference(reader.options))
    if unknown:
        accepted = ", ".join(reader.options) or "none"
        raise TypeError(f"unknown option(s) {', '.join(map(repr, unknown))} for dataset "
                        f"{name!r}; accepted options: {accepted}")
    if reader.needs_root and root is None:
        raise ValueError(f"dataset {name!r} needs root, the local path to its files")
    if not reader.needs_root and root is not None:
        raise ValueError(f"dataset {name!r} takes no root (got {str(root)!r}); pass root=None")
    positional = (root,) if reader.needs_root else ()
    seeded = {"seed": seed} if reader.uses_seed else {}
    try:
        return reader.load(*positional, **seeded, **options)
    except FileNotFoundError as err:
        from .download import MANUAL, SOURCES  # the downloader reads data sets through this module

        if name in SOURCES:
            raise FileNotFoundError(f"{err} (`exvae download {name} {root}` fetches it)") from err
        if name in MANUAL:
            raise FileNotFoundError(f"{err} ({MANUAL[name]})") from err
        raise
