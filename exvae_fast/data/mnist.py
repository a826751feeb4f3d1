"""Dynamic MNIST and Fashion-MNIST from the four IDX files in a folder.

Split as VampPrior (Tomczak & Welling): of the 60,000 training images the LAST
`n_validation` (default 10,000) form the validation split and the first 50,000 the training
split; the 10,000 t10k images are the test split. No shuffling (the trainer shuffles). Validation and
test are binarised once with `seed` (see `splits`).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .idx import read_idx_images, read_idx_labels
from .splits import DataSplits, binarize_once, to_unit_float
from .validate import check_count, require_dir

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _find(root: Path, base: str, dataset: str) -> Path:
    for name in (base, base + ".gz"):
        if (root / name).is_file():
            return root / name
    expected = ", ".join(f"{b}[.gz]" for b in IDX_FILES)
    raise FileNotFoundError(f"{dataset}: {base}[.gz] not found in root {str(root)!r}; "
                            f"expected the IDX files {expected}")


def _read_pair(root: Path, images: str, labels: str, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx_images(_find(root, images, dataset))
    y = read_idx_labels(_find(root, labels, dataset))
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{dataset}: {images} holds {x.shape[0]} images but {labels} holds "
                         f"{y.shape[0]} labels")
    return x, y


def load_idx_dataset(name: str, root: str | os.PathLike, *, seed: int,
                     n_validation: int = 10_000) -> DataSplits:
    """MNIST-format set `name` from IDX files in folder `root`.

    Returns DataSplits with train [N_train - n_validation, H*W], val [n_validation, H*W],
    test [N_test, H*W] (float32, value/255; val/test binarised), int64 labels, Bernoulli.
    """
    folder = require_dir(root, name, "the IDX files " + ", ".join(f"{b}[.gz]" for b in IDX_FILES))
    check_count(n_validation, "n_validation")
    x_train, y_train = _read_pair(folder, IDX_FILES[0], IDX_FILES[1], name)
    x_test, y_test = _read_pair(folder, IDX_FILES[2], IDX_FILES[3], name)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(f"{name}: training images are {x_train.shape[1:]} but test images "
                         f"are {x_test.shape[1:]}")
    if n_validation >= x_train.shape[0]:
        raise ValueError(f"n_validation={n_validation} must be smaller than the "
                         f"{x_train.shape[0]} training images of {name}")
    grey = to_unit_float(x_train)
    labels = torch.from_numpy(y_train.astype(np.int64))
    cut = x_train.shape[0] - n_validation
    height, width = x_train.shape[1:]
    return DataSplits(
        name=name,
        train=grey[:cut].contiguous(),
        val=binarize_once(grey[cut:], seed, name + "/val"),
        test=binarize_once(to_unit_float(x_test), seed, name + "/test"),
        input_shape=(1, height, width),
        likelihood="bernoulli",
        dynamic_binarization=True,
        num_bits=8,
        train_labels=labels[:cut].clone(),
        val_labels=labels[cut:].clone(),
        test_labels=torch.from_numpy(y_test.astype(np.int64)),
    )
