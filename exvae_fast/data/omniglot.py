"""Omniglot from the `chardata.mat` used by IWAE and VampPrior (28x28 grey characters).

The file holds 'data' (784 x 24,345) and 'testdata' (784 x 8,070): one image per COLUMN,
each image stored column-major (Fortran order); VampPrior undoes this with
`reshape(..., order='F')`, here each image is transposed into row-major order. Optional
'target' / 'testtarget' (one-hot 50 x N, the alphabet) give int64 labels by argmax.

Split as VampPrior: the training part is shuffled (seeded from `seed`) and its LAST
`n_validation` (default 1,345) rows become the validation split. Validation and test are
binarised once with `seed` (see `splits`).
"""
from __future__ import annotations

import os

import numpy as np
import torch
from scipy.io import loadmat

from .splits import DataSplits, binarize_once, permutation
from .validate import check_count, require_file

NAME = "omniglot"
SIDE = 28


def _images(mat: dict, key: str, path: str) -> torch.Tensor:
    """float32 [N, 784] row-major images from a 784 x N column-major array."""
    array = np.asarray(mat[key])
    if array.ndim != 2 or array.shape[0] != SIDE * SIDE or array.shape[1] < 1:
        raise ValueError(f"{NAME}: {path!r} key {key!r} has shape {array.shape}; expected "
                         f"({SIDE * SIDE}, N >= 1), one 28x28 image per column")
    if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all() \
            or array.min() < 0 or array.max() > 1:
        raise ValueError(f"{NAME}: {path!r} key {key!r} must hold grey values in [0, 1]")
    images = array.T.reshape(-1, SIDE, SIDE).transpose(0, 2, 1).reshape(-1, SIDE * SIDE)
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))


def _labels(mat: dict, key: str, count: int, path: str) -> torch.Tensor:
    """int64 [count] class indices from a one-hot (classes x count) array."""
    onehot = np.asarray(mat[key])
    if onehot.ndim != 2 or onehot.shape[1] != count:
        raise ValueError(f"{NAME}: {path!r} key {key!r} has shape {onehot.shape}; expected "
                         f"one-hot (classes, {count})")
    return torch.from_numpy(onehot.argmax(axis=0).astype(np.int64))


def load_omniglot(root: str | os.PathLike, *, seed: int, n_validation: int = 1345) -> DataSplits:
    """Omniglot as DataSplits: train [N - n_validation, 784], val [n_validation, 784], test.

    `root` is the path to chardata.mat (or a folder holding it).
    """
    path = require_file(root, NAME, "chardata.mat")
    check_count(n_validation, "n_validation")
    try:
        mat = loadmat(path)
    except Exception as err:  # scipy raises several unrelated types for a bad file
        raise ValueError(f"{NAME}: cannot read {str(path)!r} as a MATLAB file: {err}") from err
    present = sorted(k for k in mat if not k.startswith("__"))
    for key in ("data", "testdata"):
        if key not in mat:
            raise ValueError(f"{NAME}: {str(path)!r} lacks key {key!r}; expected 'data' and "
                             f"'testdata' (optional 'target', 'testtarget'), found {present}")
    train = _images(mat, "data", str(path))
    test = _images(mat, "testdata", str(path))
    if ("target" in mat) != ("testtarget" in mat):
        raise ValueError(f"{NAME}: {str(path)!r} must hold both 'target' and 'testtarget' "
                         f"or neither, found {present}")
    has_labels = "target" in mat
    train_labels = _labels(mat, "target", train.shape[0], str(path)) if has_labels else None
    test_labels = _labels(mat, "testtarget", test.shape[0], str(path)) if has_labels else None
    if n_validation >= train.shape[0]:
        raise ValueError(f"n_validation={n_validation} must be smaller than the "
                         f"{train.shape[0]} training images of {NAME}")
    order = permutation(train.shape[0], seed, NAME)
    train = train[order]
    cut = train.shape[0] - n_validation
    if train_labels is not None:
        train_labels = train_labels[order]
    return DataSplits(
        name=NAME,
        train=train[:cut],
        val=binarize_once(train[cut:], seed, NAME + "/val"),
        test=binarize_once(test, seed, NAME + "/test"),
        input_shape=(1, SIDE, SIDE),
        likelihood="bernoulli",
        dynamic_binarization=True,
        num_bits=8,
        train_labels=None if train_labels is None else train_labels[:cut],
        val_labels=None if train_labels is None else train_labels[cut:],
        test_labels=test_labels,
    )
