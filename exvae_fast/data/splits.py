"""`DataSplits`, the container every reader returns, and the seeded split helpers.

Evaluation convention for the dynamically binarised sets (mnist-5k, mnist, fashion-mnist,
omniglot, and synthetic in its default Bernoulli mode): the training split stays grey-scale
(the trainer binarises each batch on the fly, and exemplars are the grey images), while the
validation and test splits are binarised ONCE here, x ~ Bernoulli(grey value), with a
generator seeded from the `seed` argument. Evaluation is then deterministic for a given seed
and comparable between runs that share it (VampPrior does the same with a fixed seed 777).
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

LIKELIHOODS = ("bernoulli", "logistic")


@dataclass
class DataSplits:
    """Train/validation/test images of one data set, flattened, plus how to model them.

    train, val, test: [N, D] float32 in [0, 1], D = C*H*W (channel-major, i.e. an image
    flattened from [C, H, W]). train is never binarised; for `dynamic_binarization` sets
    val and test are already binarised once (see the module docstring).
    input_shape: (C, H, W). likelihood: "bernoulli" or "logistic" (discretised logistic).
    num_bits: bit depth of the values (8, or 5 for 5-bit CelebA whose values are k/31).
    *_labels: int64 [N] class labels, or None where the data set has none.
    """

    name: str
    train: Tensor
    val: Tensor
    test: Tensor
    input_shape: tuple[int, int, int]
    likelihood: str
    dynamic_binarization: bool
    num_bits: int
    train_labels: Tensor | None = None
    val_labels: Tensor | None = None
    test_labels: Tensor | None = None

    def __post_init__(self) -> None:
        if len(self.input_shape) != 3 or any(int(s) < 1 for s in self.input_shape):
            raise ValueError(f"input_shape must be (C, H, W) of positive ints, got {self.input_shape!r}")
        self.input_shape = tuple(int(s) for s in self.input_shape)
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if not 1 <= self.num_bits <= 8:
            raise ValueError(f"num_bits must be in 1..8, got {self.num_bits!r}")
        dim = math.prod(self.input_shape)
        for split in ("train", "val", "test"):
            x = getattr(self, split)
            if not isinstance(x, Tensor) or x.dtype != torch.float32 or x.dim() != 2:
                raise ValueError(f"{split} must be a float32 tensor [N, D]")
            if x.shape[0] < 1 or x.shape[1] != dim:
                raise ValueError(f"{split} has shape {tuple(x.shape)}; expected [N >= 1, {dim}] "
                                 f"for input_shape {self.input_shape}")
            if x.min() < 0 or x.max() > 1:
                raise ValueError(f"{split} values must lie in [0, 1]")
            labels = getattr(self, f"{split}_labels")
            if labels is not None and (labels.dtype != torch.int64 or labels.shape != (x.shape[0],)):
                raise ValueError(f"{split}_labels must be int64 [{x.shape[0]}], got "
                                 f"{labels.dtype} {tuple(labels.shape)}")


def generator(seed: int, stream: str) -> torch.Generator:
    """A CPU torch.Generator for one named use of `seed`.

    Distinct streams ("shuffle", "binarize", ...) get independent states, so shuffling and
    binarising with the same user seed do not reuse one random sequence.
    """
    state = np.random.SeedSequence(seed, spawn_key=(zlib.crc32(stream.encode()),))
    return torch.Generator().manual_seed(int(state.generate_state(1, np.uint64)[0]) >> 1)


def binarize_once(x: Tensor, seed: int, stream: str) -> Tensor:
    """Stochastic binarisation Bernoulli(x) of float32 [N, D] in [0, 1]; deterministic in seed."""
    return torch.bernoulli(x, generator=generator(seed, "binarize/" + stream))


def permutation(n: int, seed: int, stream: str) -> Tensor:
    """A seeded random permutation of range(n), int64 [n]."""
    return torch.randperm(n, generator=generator(seed, "permute/" + stream))


def to_unit_float(images: np.ndarray) -> Tensor:
    """uint8 [N, ...] in 0..255 -> float32 [N, prod(...)] in [0, 1] (value / 255)."""
    flat = images.reshape(images.shape[0], -1).astype(np.float32)  # a writable copy
    return torch.from_numpy(flat).div_(255.0)
