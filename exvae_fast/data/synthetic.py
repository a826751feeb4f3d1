"""A synthetic image set for benchmarks and tests: cheap, deterministic, and learnable.

Ten class prototypes, each a sum of five Gaussian blobs (random centres in the middle half
of the image, widths 6-15% of the shorter side, per-channel amplitudes). Every example is
its class prototype deformed: a global shift (about 6% of the size), per-blob jitter,
width and amplitude scaling; then pixel noise (sd 0.03), clipped to [0, 1]. Blobs are
separable, so 60,000 x 784 renders in well under a second. Labels are the class ids.

Sizes: train `size` rows (default 50,000), validation and test max(1, size // 10) each.
Likelihood "bernoulli" (default: grey values, val/test binarised once like MNIST, see
`splits`) or "logistic" (values rounded to multiples of 1/255, 8 bits).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .splits import LIKELIHOODS, DataSplits, binarize_once, generator
from .validate import check_count

NAME = "synthetic"
N_CLASSES, N_BLOBS = 10, 5


def _uniform(shape: tuple[int, ...], low: float, high: float, gen: torch.Generator) -> Tensor:
    return torch.rand(shape, generator=gen) * (high - low) + low


def _render(count: int, shape: tuple[int, int, int], gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """count images float32 [count, C*H*W] in [0, 1] and their int64 class labels [count]."""
    channels, height, width = shape
    short = min(height, width)
    centre_y = _uniform((N_CLASSES, N_BLOBS), 0.25 * height, 0.75 * height, gen)
    centre_x = _uniform((N_CLASSES, N_BLOBS), 0.25 * width, 0.75 * width, gen)
    spread = _uniform((N_CLASSES, N_BLOBS), 0.06 * short, 0.15 * short, gen)
    colour = _uniform((N_CLASSES, N_BLOBS, channels), 0.5, 1.0, gen)

    labels = torch.randint(N_CLASSES, (count,), generator=gen)
    shift = torch.randn(count, 2, generator=gen) * 0.06 * short
    jitter = torch.randn(count, N_BLOBS, 2, generator=gen) * 0.03 * short
    cy = centre_y[labels] + shift[:, :1] + jitter[..., 0]                    # [count, G]
    cx = centre_x[labels] + shift[:, 1:] + jitter[..., 1]
    sd = spread[labels] * torch.exp(0.1 * torch.randn(count, N_BLOBS, generator=gen))
    amp = colour[labels] * _uniform((count, N_BLOBS, 1), 0.8, 1.2, gen)      # [count, G, C]

    rows = torch.arange(height, dtype=torch.float32) + 0.5
    cols = torch.arange(width, dtype=torch.float32) + 0.5
    profile_y = torch.exp(-0.5 * ((rows - cy[..., None]) / sd[..., None]) ** 2)  # [count, G, H]
    profile_x = torch.exp(-0.5 * ((cols - cx[..., None]) / sd[..., None]) ** 2)  # [count, G, W]
    images = torch.einsum("ngc,ngh,ngw->nchw", amp, profile_y, profile_x)
    images += 0.03 * torch.randn(images.shape, generator=gen)
    return images.clamp_(0.0, 1.0).reshape(count, -1), labels


def load_synthetic(*, seed: int, size: int = 50_000,
                   input_shape: tuple[int, int, int] = (1, 28, 28),
                   likelihood: str = "bernoulli") -> DataSplits:
    """Synthetic DataSplits, a deterministic function of (seed, size, input_shape, likelihood).

    train [size, D], val and test [max(1, size // 10), D] float32 in [0, 1], D = C*H*W.
    """
    check_count(size, "size")
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3 or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in input_shape):
        raise ValueError(f"input_shape must be (C, H, W) with positive ints, got {input_shape!r}")
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS} for {NAME}, got {likelihood!r}")
    shape = tuple(input_shape)
    held = max(1, size // 10)
    images, labels = _render(size + 2 * held, shape, generator(seed, NAME))
    if likelihood == "logistic":
        images = images.mul_(255.0).round_().div_(255.0)
    train, val, test = images.split([size, held, held])
    if likelihood == "bernoulli":
        val = binarize_once(val, seed, NAME + "/val")
        test = binarize_once(test, seed, NAME + "/test")
    train_labels, val_labels, test_labels = labels.split([size, held, held])
    return DataSplits(
        name=NAME,
        train=train,
        val=val,
        test=test,
        input_shape=shape,
        likelihood=likelihood,
        dynamic_binarization=likelihood == "bernoulli",
        num_bits=8,
        train_labels=train_labels,
        val_labels=val_labels,
        test_labels=test_labels,
    )
