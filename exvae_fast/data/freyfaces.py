"""Frey faces from the VampPrior `freyfaces.pkl`: 1,965 grey 28x20 face images.

The file is a Python-2 pickle of a list whose first element is a uint8 array [1965, 560]
(values 0..255). A pickle can run arbitrary code when loaded, so it is read with
`SafeArrayUnpickler`, which admits only the globals a numpy array needs (its
reconstructors, ndarray, dtype, and _codecs.encode for Python-3 pickles of protocol <= 2)
and refuses every other one with pickle.UnpicklingError before anything is called.

Split as VampPrior (`load_freyfaces(TRAIN=1565, VAL=200, TEST=200)`): the images are
shuffled (seeded from `seed`), then the first rows are the training split, the next
`n_validation` (default 200) the validation split and the last `n_test` (default 200) the
test split. Values are value/255 (multiples of 1/255), modelled with the discretised
logistic likelihood at 8 bits; no labels.
"""
from __future__ import annotations

import codecs
import os
import pickle

import numpy as np

from .splits import DataSplits, permutation, to_unit_float
from .validate import check_count, require_file

NAME = "frey-faces"
HEIGHT, WIDTH = 28, 20

# numpy's array-pickle constructors, taken from numpy itself so they are the right functions
# whichever module (numpy.core in 1.x, numpy._core in 2.x) holds them in this version.
_RECONSTRUCT = np.ndarray.__reduce__(np.empty(0))[0]  # protocols 0-4
_FROMBUFFER = np.ndarray.__reduce_ex__(np.empty(1), 5)[0]  # protocol 5
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Python 3 writes the array bytes of protocols 0-2 as _codecs.encode(text, "latin1").
    ("_codecs", "encode"): codecs.encode,
}


class RefusedGlobalError(pickle.UnpicklingError):
    """A pickle referenced a global outside the numpy-array allowlist."""


class SafeArrayUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy array globals; anything else is refused."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobalError(
                f"refused global '{module}.{name}': only numpy array globals are allowed") from None


def load_array_pickle(path: str | os.PathLike) -> object:
    """Unpickle `path` with SafeArrayUnpickler (latin1 for Python-2 byte strings).

    Raises RefusedGlobalError (a pickle.UnpicklingError) naming a refused global, and
    ValueError for a corrupt or truncated file.
    """
    with open(path, "rb") as handle:
        try:
            return SafeArrayUnpickler(handle, encoding="latin1").load()
        except RefusedGlobalError as err:
            raise RefusedGlobalError(f"{str(path)!r}: {err}") from None
        except Exception as err:  # a corrupt pickle fails in many ways (EOF, bad args, ...)
            raise ValueError(f"cannot unpickle {str(path)!r}: {type(err).__name__}: {err}") from err


def load_freyfaces(root: str | os.PathLike, *, seed: int, n_validation: int = 200,
                   n_test: int = 200) -> DataSplits:
    """Frey faces as DataSplits: train [N - n_validation - n_test, 560], val, test, float32.

    `root` is the path to freyfaces.pkl (or a folder holding it).
    """
    path = require_file(root, NAME, "freyfaces.pkl")
    check_count(n_validation, "n_validation")
    check_count(n_test, "n_test")
    content = load_array_pickle(path)
    images = content[0] if isinstance(content, (list, tuple)) and content else None
    if not isinstance(images, np.ndarray) or images.ndim not in (2, 3) \
            or images.shape[1:] not in ((HEIGHT * WIDTH,), (HEIGHT, WIDTH)):
        raise ValueError(f"{NAME}: {str(path)!r} must hold a list whose first element is an "
                         f"array [N, {HEIGHT * WIDTH}] or [N, {HEIGHT}, {WIDTH}]")
    if images.dtype != np.uint8:
        raise ValueError(f"{NAME}: {str(path)!r} holds {images.dtype} images; expected uint8 0..255")
    if n_validation + n_test >= images.shape[0]:
        raise ValueError(f"n_validation={n_validation} + n_test={n_test} must be smaller than "
                         f"the {images.shape[0]} images in {str(path)!r}")
    faces = to_unit_float(images)[permutation(images.shape[0], seed, NAME)]
    val_start = images.shape[0] - n_validation - n_test
    test_start = images.shape[0] - n_test
    return DataSplits(
        name=NAME,
        train=faces[:val_start],
        val=faces[val_start:test_start],
        test=faces[test_start:],
        input_shape=(1, HEIGHT, WIDTH),
        likelihood="logistic",
        dynamic_binarization=False,
        num_bits=8,
        train_labels=None,
        val_labels=None,
        test_labels=None,
    )
