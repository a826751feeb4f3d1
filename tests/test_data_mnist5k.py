"""The embedded mnist-5k data set (package data, fixed split)."""
from __future__ import annotations

from importlib import resources

import numpy as np
import pytest
import torch

from exvae_fast.data import load_dataset


@pytest.fixture(scope="module")
def mnist5k():
    return load_dataset("mnist-5k", seed=0)


def test_package_data_file():
    source = resources.files("exvae_fast.data").joinpath("mnist_5k.npz")
    with source.open("rb") as handle, np.load(handle) as archive:
        assert archive["images"].shape == (5000, 784) and archive["images"].dtype == np.uint8
        assert archive["labels"].shape == (5000,) and archive["labels"].dtype == np.uint8
        assert np.bincount(archive["labels"]).tolist() == [500] * 10


def test_shapes_values_and_metadata(mnist5k):
    assert mnist5k.name == "mnist-5k"
    assert mnist5k.train.shape == (4000, 784)
    assert mnist5k.val.shape == (500, 784) and mnist5k.test.shape == (500, 784)
    assert mnist5k.input_shape == (1, 28, 28)
    assert (mnist5k.likelihood, mnist5k.dynamic_binarization, mnist5k.num_bits) == \
        ("bernoulli", True, 8)
    train = mnist5k.train
    assert train.dtype == torch.float32 and train.min() == 0 and train.max() == 1
    levels = train * 255
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert len(train.unique()) > 100  # grey, not binarised


def test_labels_all_digits_present(mnist5k):
    for labels, count in ((mnist5k.train_labels, 4000), (mnist5k.val_labels, 500),
                          (mnist5k.test_labels, 500)):
        assert labels.dtype == torch.int64 and labels.shape == (count,)
        assert sorted(labels.unique().tolist()) == list(range(10))


def test_val_test_binary_and_seeded(mnist5k):
    assert set(mnist5k.val.unique().tolist()) == {0.0, 1.0}
    assert set(mnist5k.test.unique().tolist()) == {0.0, 1.0}
    again = load_dataset("mnist-5k", seed=0)
    other = load_dataset("mnist-5k", seed=1)
    assert torch.equal(mnist5k.val, again.val) and torch.equal(mnist5k.test, again.test)
    assert not torch.equal(mnist5k.test, other.test)
    # The split itself never depends on the seed.
    assert torch.equal(mnist5k.train, other.train)
    assert torch.equal(mnist5k.test_labels, other.test_labels)


def test_split_is_a_partition_of_the_file(mnist5k):
    source = resources.files("exvae_fast.data").joinpath("mnist_5k.npz")
    with source.open("rb") as handle, np.load(handle) as archive:
        labels = archive["labels"].astype(np.int64)
    all_labels = torch.cat([mnist5k.train_labels, mnist5k.val_labels, mnist5k.test_labels])
    assert torch.bincount(all_labels).tolist() == np.bincount(labels).tolist()
    # The file is sorted by class, so an unshuffled split would give train only digits 0..7.
    assert mnist5k.train_labels[:50].unique().numel() > 5


def test_val_and_test_are_binarised_by_independent_draws(mnist5k):
    """Row i of val and row i of test get their own Bernoulli draws: where both are grey, both
    are 1 about g_val * g_test of the time (shared uniforms would give min(g_val, g_test),
    correlating the two evaluation splits)."""
    from exvae_fast.data import mnist5k as module

    source = resources.files("exvae_fast.data").joinpath("mnist_5k.npz")
    with source.open("rb") as handle, np.load(handle) as archive:
        images = torch.from_numpy(archive["images"].astype(np.float64) / 255)
    order = torch.from_numpy(np.random.RandomState(module.SPLIT_SEED).permutation(images.shape[0]))
    grey_val = images[order[module.N_TRAIN:module.N_TRAIN + module.N_VAL]]
    grey_test = images[order[module.N_TRAIN + module.N_VAL:]]
    both = (grey_val > 0) & (grey_val < 1) & (grey_test > 0) & (grey_test < 1)
    assert int(both.sum()) > 5000
    observed = float((mnist5k.val.double() * mnist5k.test.double())[both].sum())
    independent = float((grey_val * grey_test)[both].sum())
    shared = float(torch.minimum(grey_val, grey_test)[both].sum())
    # halfway between the two hypotheses: about 5 standard deviations of the sum (33,553
    # grey pairs) from each
    assert abs(observed - independent) < 0.5 * (shared - independent), (observed, independent, shared)
