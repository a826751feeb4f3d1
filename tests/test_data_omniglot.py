"""Omniglot reader on a small chardata.mat written with scipy.io.savemat."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import savemat

from exvae_fast.data import load_dataset

N_TRAIN, N_TEST, N_CLASSES = 20, 6, 50


def make_images(count: int, rng: np.random.Generator) -> np.ndarray:
    """Grey row-major images [count, 28, 28]; row 0 differs from column 0 so a transpose shows."""
    images = rng.random((count, 28, 28))
    images[:, 0, :] = 1.0
    images[:, 1:, 0] = 0.0
    return images


def column_major(images: np.ndarray) -> np.ndarray:
    """[count, 28, 28] -> 784 x count with each image flattened column-major, as chardata.mat."""
    return np.stack([img.flatten(order="F") for img in images], axis=1)


def one_hot(labels: np.ndarray) -> np.ndarray:
    out = np.zeros((N_CLASSES, labels.size))
    out[labels, np.arange(labels.size)] = 1.0
    return out


def write_chardata(path: Path, with_labels: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    content = {"train": make_images(N_TRAIN, rng), "test": make_images(N_TEST, rng),
               "train_labels": rng.integers(0, N_CLASSES, N_TRAIN),
               "test_labels": rng.integers(0, N_CLASSES, N_TEST)}
    mat = {"data": column_major(content["train"]), "testdata": column_major(content["test"])}
    if with_labels:
        mat["target"] = one_hot(content["train_labels"])
        mat["testtarget"] = one_hot(content["test_labels"])
    savemat(path, mat)
    return content


def test_omniglot_reshape_split_and_labels(tmp_path):
    content = write_chardata(tmp_path / "chardata.mat")
    data = load_dataset("omniglot", tmp_path / "chardata.mat", seed=5, n_validation=4)
    assert data.input_shape == (1, 28, 28)
    assert (data.likelihood, data.dynamic_binarization, data.num_bits) == ("bernoulli", True, 8)
    assert data.train.shape == (N_TRAIN - 4, 784) and data.val.shape == (4, 784)
    assert data.test.shape == (N_TEST, 784)
    flat = content["train"].reshape(N_TRAIN, 784).astype(np.float32)
    # Each training row must be one of the source images in row-major order, with its label.
    for row, label in zip(data.train.numpy(), data.train_labels.tolist()):
        matches = np.flatnonzero((flat == row).all(axis=1))
        assert matches.size == 1
        assert content["train_labels"][matches[0]] == label
    assert sorted(data.train_labels.tolist() + data.val_labels.tolist()) == \
        sorted(content["train_labels"].tolist())
    assert data.test_labels.tolist() == content["test_labels"].tolist()
    # The training part is shuffled with the seed.
    assert not np.array_equal(data.train.numpy(), flat[:N_TRAIN - 4])
    test_grey = content["test"].reshape(N_TEST, 784)
    assert (data.test.numpy()[:, :28] == 1).all()  # first image row is white everywhere
    assert (data.test.numpy()[test_grey == 0] == 0).all()


def test_omniglot_folder_root_without_labels_binarised_and_seeded(tmp_path):
    write_chardata(tmp_path / "chardata.mat", with_labels=False)
    first = load_dataset("omniglot", tmp_path, seed=1, n_validation=3)
    again = load_dataset("omniglot", tmp_path, seed=1, n_validation=3)
    other = load_dataset("omniglot", tmp_path, seed=2, n_validation=3)
    assert first.train_labels is None and first.val_labels is None and first.test_labels is None
    assert torch.equal(first.train, again.train) and torch.equal(first.val, again.val)
    assert torch.equal(first.test, again.test)
    assert not torch.equal(first.train, other.train)
    assert set(first.val.unique().tolist()) == {0.0, 1.0}
    assert set(first.test.unique().tolist()) == {0.0, 1.0}
    assert len(first.train.unique()) > 2  # train stays grey


def test_omniglot_default_validation_size(tmp_path):
    rng = np.random.default_rng(0)
    savemat(tmp_path / "chardata.mat", {"data": column_major(make_images(1400, rng)),
                                        "testdata": column_major(make_images(2, rng))})
    data = load_dataset("omniglot", tmp_path / "chardata.mat")
    assert data.val.shape[0] == 1345 and data.train.shape[0] == 55


def test_omniglot_missing_key(tmp_path):
    savemat(tmp_path / "chardata.mat", {"data": np.zeros((784, 3)), "other": np.zeros(2)})
    with pytest.raises(ValueError, match=r"lacks key 'testdata'.*found \['data', 'other'\]"):
        load_dataset("omniglot", tmp_path / "chardata.mat", n_validation=1)


def test_omniglot_wrong_shape_and_values(tmp_path):
    path = tmp_path / "chardata.mat"
    savemat(path, {"data": np.zeros((783, 3)), "testdata": np.zeros((784, 2))})
    with pytest.raises(ValueError, match=r"key 'data' has shape \(783, 3\); expected \(784, N >= 1\)"):
        load_dataset("omniglot", path, n_validation=1)
    savemat(path, {"data": np.full((784, 3), 2.0), "testdata": np.zeros((784, 2))})
    with pytest.raises(ValueError, match=r"key 'data' must hold grey values in \[0, 1\]"):
        load_dataset("omniglot", path, n_validation=1)


def test_omniglot_label_errors(tmp_path):
    path = tmp_path / "chardata.mat"
    base = {"data": np.zeros((784, 3)), "testdata": np.zeros((784, 2))}
    savemat(path, {**base, "target": np.eye(50)[:, :3]})
    with pytest.raises(ValueError, match="both 'target' and 'testtarget' or neither"):
        load_dataset("omniglot", path, n_validation=1)
    savemat(path, {**base, "target": np.eye(50)[:, :4], "testtarget": np.eye(50)[:, :2]})
    with pytest.raises(ValueError, match=r"key 'target' has shape \(50, 4\); expected one-hot"):
        load_dataset("omniglot", path, n_validation=1)


def test_omniglot_not_a_mat_file(tmp_path):
    path = tmp_path / "chardata.mat"
    path.write_bytes(b"this is not a MATLAB file at all" * 10)
    with pytest.raises(ValueError, match="cannot read .*chardata.mat.* as a MATLAB file"):
        load_dataset("omniglot", path)


def test_omniglot_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"omniglot: file .*chardata.mat.* not found"):
        load_dataset("omniglot", tmp_path)


def test_omniglot_validation_too_large(tmp_path):
    write_chardata(tmp_path / "chardata.mat")
    with pytest.raises(ValueError, match=f"n_validation={N_TRAIN} must be smaller"):
        load_dataset("omniglot", tmp_path, n_validation=N_TRAIN)
