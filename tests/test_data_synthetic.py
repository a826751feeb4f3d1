"""The synthetic benchmark data set."""
from __future__ import annotations

import pytest
import torch

from exvae_fast.data import load_dataset


def test_shapes_range_and_labels():
    data = load_dataset("synthetic", seed=0, size=200)
    assert data.train.shape == (200, 784) and data.val.shape == (20, 784)
    assert data.test.shape == (20, 784)
    assert data.input_shape == (1, 28, 28)
    assert (data.likelihood, data.dynamic_binarization, data.num_bits) == ("bernoulli", True, 8)
    assert data.train.dtype == torch.float32
    assert data.train.min() >= 0 and data.train.max() <= 1 and len(data.train.unique()) > 100
    assert set(data.val.unique().tolist()) == {0.0, 1.0}
    assert set(data.test.unique().tolist()) == {0.0, 1.0}
    assert data.train_labels.dtype == torch.int64 and data.train_labels.shape == (200,)
    assert 0 <= data.train_labels.min() and data.train_labels.max() <= 9


def test_deterministic_given_seed():
    first = load_dataset("synthetic", seed=7, size=100)
    again = load_dataset("synthetic", seed=7, size=100)
    other = load_dataset("synthetic", seed=8, size=100)
    for split in ("train", "val", "test", "train_labels"):
        assert torch.equal(getattr(first, split), getattr(again, split))
    assert not torch.equal(first.train, other.train)


def test_default_size():
    data = load_dataset("synthetic")
    assert data.train.shape == (50_000, 784)
    assert data.val.shape == (5_000, 784) and data.test.shape == (5_000, 784)


def test_learnable_structure_not_noise():
    # Nearest class mean must beat chance (10%) by far: the images carry their class.
    data = load_dataset("synthetic", seed=1, size=2000)
    means = torch.stack([data.train[data.train_labels == k].mean(0) for k in range(10)])
    predicted = torch.cdist(data.train, means).argmin(1)
    assert (predicted == data.train_labels).float().mean() > 0.6
    # Examples of one class differ from each other (deformation and noise, not copies).
    same = data.train[data.train_labels == 0]
    assert (same[0] - same[1]).abs().max() > 0.1


def test_colour_shape_and_logistic():
    data = load_dataset("synthetic", seed=0, size=30, input_shape=(3, 16, 12),
                        likelihood="logistic")
    assert data.train.shape == (30, 3 * 16 * 12) and data.val.shape == (3, 576)
    assert data.input_shape == (3, 16, 12)
    assert (data.likelihood, data.dynamic_binarization) == ("logistic", False)
    levels = torch.cat([data.train, data.val, data.test]) * 255
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert len(data.val.unique()) > 2  # not binarised


def test_tiny_size_keeps_non_empty_splits():
    data = load_dataset("synthetic", size=1)
    assert (data.train.shape[0], data.val.shape[0], data.test.shape[0]) == (1, 1, 1)


@pytest.mark.parametrize("options, message", [
    ({"size": 0}, "size must be an integer >= 1, got 0"),
    ({"size": 2.5}, "size must be an integer >= 1, got 2.5"),
    ({"input_shape": (28, 28)}, r"input_shape must be \(C, H, W\) with positive ints"),
    ({"input_shape": (1, 0, 28)}, r"input_shape must be \(C, H, W\) with positive ints"),
    ({"likelihood": "gaussian"}, "likelihood must be one of .* got 'gaussian'"),
])
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        load_dataset("synthetic", **options)
