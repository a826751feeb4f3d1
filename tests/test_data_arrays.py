"""Your own images as a data set: the "array" reader (.npz) and training on it."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from exvae_fast.cli import main
from exvae_fast.data import load_dataset


def grey(n, h=8, w=6, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w), dtype=np.uint8)


def test_grey_images_with_carved_splits_and_labels(tmp_path):
    images, labels = grey(50), np.arange(50) % 4
    np.savez(tmp_path / "mine.npz", train=images, train_labels=labels)
    data = load_dataset("array", tmp_path / "mine.npz", seed=3, n_validation=5)
    assert (data.train.shape, data.val.shape, data.test.shape) == ((40, 48), (5, 48), (5, 48))  # test: 50 // 10
    assert data.input_shape == (1, 8, 6) and data.likelihood == "bernoulli" and data.dynamic_binarization
    # every image is in exactly one split, labels travel with their images
    flat = torch.from_numpy(images.reshape(50, -1).astype(np.float32)) / 255
    rows = {tuple(r.tolist()): i for i, r in enumerate(flat)}
    train_ids = [rows[tuple(r.tolist())] for r in data.train]
    assert sorted(train_ids) == sorted(set(train_ids)) and len(train_ids) == 40
    assert data.train_labels.tolist() == [int(labels[i]) for i in train_ids]
    assert data.val_labels.shape == (5,) and data.test_labels.shape == (5,)
    # val/test are binarised once (dynamic binarisation), deterministically in the seed
    assert set(data.val.unique().tolist()) <= {0.0, 1.0}
    again = load_dataset("array", tmp_path / "mine.npz", seed=3, n_validation=5)
    assert torch.equal(again.test, data.test) and torch.equal(again.train, data.train)
    other = load_dataset("array", tmp_path / "mine.npz", seed=4, n_validation=5)
    assert not torch.equal(other.train, data.train)  # another seed, another split


def test_colour_channels_last_given_splits_and_floats(tmp_path):
    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, (20, 5, 4, 3), dtype=np.uint8)  # [N, H, W, C]
    test = rng.integers(0, 256, (6, 5, 4, 3), dtype=np.uint8)
    np.savez(tmp_path / "data.npz", train=train, val=test[:3], test=test)
    data = load_dataset("array", tmp_path, seed=0)  # a folder holding data.npz
    assert data.input_shape == (3, 5, 4) and data.likelihood == "logistic" and not data.dynamic_binarization
    expected = torch.from_numpy(np.moveaxis(train, -1, 1).reshape(20, -1).astype(np.float32)) / 255
    assert torch.equal(data.train, expected)  # channel-major, not binarised
    assert data.test.shape == (6, 60) and data.train_labels is None
    floats = rng.random((12, 1, 4, 4))
    np.savez(tmp_path / "f.npz", train=floats)
    data = load_dataset("array", tmp_path / "f.npz", seed=0, n_test=2, n_validation=2)
    assert data.train.shape == (8, 16) and data.likelihood == "bernoulli"
    originals = torch.from_numpy(floats.reshape(12, -1).astype(np.float32))
    assert all(any(torch.equal(row, o) for o in originals) for row in data.train)  # floats kept as they are


@pytest.mark.parametrize("content, kwargs, message", [
    ({"val": grey(3)}, {}, "expected 'train'"),
    ({"train": grey(10), "extra": grey(2)}, {}, "holds keys"),
    ({"train": grey(10), "val_labels": np.zeros(3, dtype=np.int64)}, {}, "not the images they label"),
    ({"train": np.zeros((10, 4), dtype=np.uint8)}, {}, "expected \\[N, H, W\\]"),
    ({"train": np.zeros((10, 2, 4, 4), dtype=np.uint8)}, {}, "with C in"),
    ({"train": grey(10).astype(np.int32)}, {}, "dtype int32"),
    ({"train": grey(10) / 100.0}, {}, "outside \\[0, 1\\]"),
    ({"train": grey(10), "test": grey(3, h=7)}, {}, "test images have shape"),
    ({"train": grey(10), "train_labels": np.zeros(9, dtype=np.int64)}, {}, "shape \\[10\\]"),
    ({"train": grey(10), "train_labels": -np.ones(10, dtype=np.int64)}, {}, ">= 0"),
    ({"train": grey(10), "val": grey(2)}, {"n_validation": 2}, "holds its own 'val' split"),
    ({"train": grey(10)}, {"n_validation": 5, "n_test": 5}, "leaves none to train on"),
    ({"train": grey(10)}, {"n_test": 0}, "n_test must be an integer >= 1"),
    ({"train": np.random.default_rng(0).random((10, 3, 4, 4))}, {}, "8-bit values"),
    ({"train": grey(10)}, {"likelihood": "gaussian"}, "likelihood"),
])
def test_bad_files_name_the_problem(tmp_path, content, kwargs, message):
    np.savez(tmp_path / "bad.npz", **content)
    with pytest.raises(ValueError, match=message):
        load_dataset("array", tmp_path / "bad.npz", **kwargs)


def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read") as caught:
        load_dataset("array", tmp_path / "broken.npz")
    # numpy's own text would advise loading the file unsafely (allow_pickle)
    assert "neither a .npz archive nor a .npy array" in str(caught.value)
    assert "allow_pickle" not in str(caught.value)
    with pytest.raises(FileNotFoundError, match="data.npz"):
        load_dataset("array", tmp_path)


def test_train_an_exemplar_vae_on_your_own_images(tmp_path, capsys):
    np.savez(tmp_path / "mine.npz", train=grey(120, h=10, w=10), train_labels=np.arange(120) % 3)
    run = tmp_path / "runs" / "mine"
    assert main(["train", "--set", "data.name=array", "--set", f"data.root={tmp_path / 'mine.npz'}",
                 "--set", "data.n_validation=10", "--set", "prior.k=3", "--set", "train.epochs=1",
                 "--set", "train.batch_size=20", "--set", "eval.iw_samples=4", "--set", "eval.num_sample_images=4",
                 "--name", "mine", "--out-dir", str(tmp_path / "runs"), "--no-progress"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dataset"] == "array" and metrics["num_points"] == 12  # a tenth of 120
    assert set(metrics["knn_error"]) == {"1", "3", "5", "10"}
    assert (run / "exemplar_samples.png").is_file()
    assert main(["train", "--set", "data.name=mnist-5k", "--set", "data.n_test=5", "--name", "x",
                 "--out-dir", str(tmp_path / "runs")]) == 2
    assert "only for data.name='array'" in capsys.readouterr().err


def test_the_celeba_architecture_takes_your_colour_images(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "faces.npz", train=images)
    assert main(["train", "--set", "data.name=array", "--set", f"data.root={tmp_path / 'faces.npz'}",
                 "--set", "model.name=celeba", "--set", "model.latent_dim=8", "--set", "prior.k=3",
                 "--set", "train.epochs=1", "--set", "train.batch_size=8", "--set", "eval.iw_samples=2",
                 "--set", "eval.num_sample_images=4", "--name", "faces", "--out-dir", str(tmp_path / "runs"),
                 "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "runs" / "faces" / "metrics.json").read_text())
    assert metrics["model"] == "celeba" and metrics["bits_per_dim"] > 0
    # bits/dim is the reported negative log-likelihood over the 16 x 16 x 3 values, in bits
    assert metrics["bits_per_dim"] == pytest.approx(metrics["nll"] / (16 * 16 * 3 * math.log(2)), rel=1e-12)


def test_a_npy_file_is_a_clear_value_error_naming_it(tmp_path):
    path = tmp_path / "mine.npy"
    np.save(path, np.zeros((10, 28, 28), np.uint8))
    with pytest.raises(ValueError, match=r"mine\.npy.*np\.savez"):
        load_dataset("array", path)
