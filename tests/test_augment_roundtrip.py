"""Augmented images written by `save_augmented` are an `array` data set: the reader takes the
file as it is (keys, layout, image shape), and `load_augmented` still reads older files."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from exvae_fast.data import load_dataset
from exvae_fast.generation import augment_dataset, load_augmented, save_augmented
from exvae_fast.models import VAE
from exvae_fast.priors.standard import StandardPrior


def quantised(x: torch.Tensor) -> torch.Tensor:
    """What an 8-bit file gives back of images in [0, 1]: round(255 x) / 255, float32."""
    return (x.double() * 255).round().float() / 255


def rows(x: torch.Tensor) -> list[tuple[float, ...]]:
    return sorted(tuple(r.tolist()) for r in x)


def test_augmented_file_is_an_array_data_set(tmp_path):
    torch.manual_seed(0)
    model = VAE(StandardPrior(4), input_shape=(1, 8, 6), latent_dim=4, likelihood="bernoulli")
    real, labels = torch.rand(10, 48), torch.arange(10) % 3
    aug, aug_labels = augment_dataset(model, real, labels, 3, progress=False)
    path = tmp_path / "aug.npz"
    save_augmented(path, aug, aug_labels, model.input_shape)
    with np.load(path) as archive:  # the reader's documented keys and grey layout [N, H, W]
        assert sorted(archive.files) == ["train", "train_labels"]
        assert archive["train"].dtype == np.uint8 and archive["train"].shape == (30, 8, 6)
    data = load_dataset("array", path, seed=0, n_validation=3, n_test=3)
    assert data.input_shape == model.input_shape and data.likelihood == "bernoulli"
    assert data.train.shape == (24, 48) and data.train_labels.shape == (24,)
    # every training row is an augmented image, and its label is its exemplar's
    expected = {tuple(r.tolist()): int(c) for r, c in zip(quantised(aug), aug_labels)}
    assert all(expected[tuple(r.tolist())] == int(c) for r, c in zip(data.train, data.train_labels))
    back, back_labels = load_augmented(path)
    assert torch.equal(back, quantised(aug)) and torch.equal(back_labels, aug_labels)


@pytest.mark.parametrize("shape", [(3, 3, 4), (1, 1, 5)])
def test_shapes_whose_axes_look_like_channels_read_back_unchanged(tmp_path, shape):
    # H = 3 or H = 1 would be taken for a channel axis in [N, H, W, C]; the file is written
    # channel-major so the reader's "second axis is 1 or 3 -> channels-first" rule holds
    x = torch.rand(12, int(np.prod(shape)), generator=torch.Generator().manual_seed(1))
    path = tmp_path / "aug.npz"
    save_augmented(path, x, None, shape)
    data = load_dataset("array", path, seed=0, n_validation=1, n_test=1, likelihood="bernoulli")
    assert data.input_shape == shape and data.train_labels is None
    everything = torch.cat([data.train, data.val, data.test])
    assert data.train.shape == (10, x.shape[1])
    # val/test are binarised once; the training rows are the images, pixel for pixel
    assert set(rows(data.train)) <= set(rows(quantised(x)))
    back, labels = load_augmented(path)
    assert labels is None and torch.equal(back, quantised(x)) and everything.shape == (12, x.shape[1])


def test_colour_file_takes_the_logistic_likelihood(tmp_path):
    x = torch.rand(20, 3 * 4 * 6, generator=torch.Generator().manual_seed(2))
    path = tmp_path / "aug.npz"
    save_augmented(path, x, torch.zeros(20, dtype=torch.long), (3, 4, 6))
    with np.load(path) as archive:
        assert archive["train"].shape == (20, 3, 4, 6)
    data = load_dataset("array", path, seed=0)
    assert data.input_shape == (3, 4, 6) and data.likelihood == "logistic"
    assert set(rows(torch.cat([data.train, data.val, data.test]))) == set(rows(quantised(x)))


def test_older_files_still_load(tmp_path):
    # files of earlier versions: "images" uint8 [M, D] and optional "labels"
    images, labels = np.arange(24, dtype=np.uint8).reshape(4, 6) * 10, np.array([0, 1, 1, 2])
    np.savez(tmp_path / "old.npz", images=images, labels=labels)
    back, back_labels = load_augmented(tmp_path / "old.npz")
    assert torch.equal(back, torch.from_numpy(images.astype(np.float32) / 255))
    assert back_labels.tolist() == [0, 1, 1, 2]
    np.savez(tmp_path / "old-unlabelled.npz", images=images)
    assert load_augmented(tmp_path / "old-unlabelled.npz")[1] is None


def test_bad_image_shape_is_refused_without_writing(tmp_path):
    path, x = tmp_path / "aug.npz", torch.rand(2, 12)
    for shape, match in [((1, 3, 5), "15"), ((2, 2, 3), "C in"), ((1, 12), "input_shape"), ((1, 0, 12), "input_shape")]:
        with pytest.raises(ValueError, match=match):
            save_augmented(path, x, None, shape)
    with pytest.raises(ValueError, match=">= 0"):
        save_augmented(path, x, torch.tensor([0, -1]), (1, 3, 4))
    with pytest.raises(ValueError, match="at least one"):
        save_augmented(path, x[:0], None, (1, 3, 4))
    assert list(tmp_path.iterdir()) == []


def test_a_channels_last_file_reads_as_the_array_reader_reads_it(tmp_path):
    """A user's [M, H, W, C] file: load_augmented gives the reader's channel-major rows, not
    the channels interleaved."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(6, 5, 4, 3), dtype=np.uint8)
    path = tmp_path / "mine.npz"
    np.savez(path, train=pixels)
    images, labels = load_augmented(path)
    expected = torch.from_numpy(np.moveaxis(pixels, -1, 1).reshape(6, -1).astype(np.float32)) / 255
    assert labels is None and torch.equal(images, expected)
