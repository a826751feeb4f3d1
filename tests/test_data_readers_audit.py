"""Audit of the data readers other than MNIST: which rows land in which split, that labels
travel with their images, which splits are binarised, and the scaling to [0, 1] with the
recorded bit depth (omniglot, frey faces, celeba, array)."""
from __future__ import annotations

import numpy as np
import torch
from test_data_arrays import grey
from test_data_celeba import make_folder
from test_data_freyfaces import write_fixture
from test_data_omniglot import N_TRAIN, write_chardata

from exvae_fast.data import load_dataset
from exvae_fast.data.splits import binarize_once, permutation


def test_omniglot_validation_is_the_last_rows_of_the_shuffled_training_part(tmp_path):
    """Omniglot: train is the first N - n_validation rows of the seeded permutation, val the
    last rows binarised once with the seed, each with its own label."""
    content = write_chardata(tmp_path / "chardata.mat")
    data = load_dataset("omniglot", tmp_path, seed=7, n_validation=4)
    order = permutation(N_TRAIN, 7, "omniglot")
    grey_rows = torch.from_numpy(content["train"].reshape(N_TRAIN, 784).astype(np.float32))[order]
    assert torch.equal(data.train, grey_rows[:-4])
    assert torch.equal(data.val, binarize_once(grey_rows[-4:], 7, "omniglot/val"))
    assert data.val_labels.tolist() == content["train_labels"][order[-4:].numpy()].tolist()
    assert data.num_bits == 8


def test_freyfaces_splits_are_consecutive_blocks_of_the_permutation(tmp_path):
    """Frey faces: train, val and test are consecutive blocks of the seeded permutation,
    values exactly uint8 / 255."""
    images = write_fixture(tmp_path / "freyfaces.pkl")
    data = load_dataset("frey-faces", tmp_path, seed=2, n_validation=5, n_test=7)
    faces = torch.from_numpy(images.astype(np.float32) / 255)[permutation(30, 2, "frey-faces")]
    assert torch.equal(data.train, faces[:18]) and torch.equal(data.val, faces[18:23])
    assert torch.equal(data.test, faces[23:])


def test_celeba_split_by_name_takes_consecutive_files(tmp_path):
    """CelebA without a partition file: sorted names, train the first n - 2k, then k for
    validation and k for test (k = n // 10), no image in two splits (JPEGs within 4 levels
    of their colour, neighbours 10 apart)."""
    make_folder(tmp_path, 20)
    data = load_dataset("celeba", tmp_path)
    rows = torch.cat([data.train, data.val, data.test]).view(20, 3, 64, 64)[:, :, 5, 5]
    colours = torch.tensor([[10 * i % 256, 255 - 10 * i % 256, 77] for i in range(20)]) / 255
    assert torch.allclose(rows, colours, atol=4 / 255, rtol=0)


def test_array_carved_splits_keep_their_labels_and_are_all_binarised(tmp_path):
    """array: carved val/test images come with their own labels; with the Bernoulli default
    both val and test are binarised once, train stays grey at value / 255."""
    images = grey(40)
    labels = np.arange(40)
    np.savez(tmp_path / "data.npz", train=images, train_labels=labels)
    data = load_dataset("array", tmp_path, seed=1)
    flat = torch.from_numpy(images.reshape(40, -1).astype(np.float32)) / 255
    for split in ("train", "val", "test"):
        ids = getattr(data, f"{split}_labels")
        source = flat[ids]
        assert torch.equal(getattr(data, split), source if split == "train" else
                           binarize_once(source, 1, f"array/{split}"))
    assert (data.val.shape[0], data.test.shape[0], data.num_bits) == (4, 4, 8)
