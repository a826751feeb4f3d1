"""IDX reader and the MNIST / Fashion-MNIST loaders on small files written here."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from exvae_fast.data import load_dataset
from exvae_fast.data.idx import read_idx_images, read_idx_labels

N_TRAIN, N_TEST = 12, 5


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in IDX format (magic 0x0000 08 ndim, big-endian dims)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    data = idx_bytes(array)
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def make_idx_folder(root: Path, compress: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, N_TRAIN, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, N_TEST, dtype=np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for i, (name, array) in enumerate(arrays.items()):
        # Mix raw and gzip files when not all compressed: both must be read.
        write_idx(root / name, array, compress or i % 2 == 0)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path, compress):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    labels = np.array([7, 1], dtype=np.uint8)
    got_images = read_idx_images(write_idx(tmp_path / "img", images, compress))
    got_labels = read_idx_labels(write_idx(tmp_path / "lab", labels, compress))
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("compress", [True, False])
def test_mnist_split_values_and_labels(tmp_path, name, compress):
    arrays = make_idx_folder(tmp_path, compress)
    data = load_dataset(name, tmp_path, seed=3, n_validation=4)
    train_images = arrays["train-images-idx3-ubyte"].reshape(N_TRAIN, -1) / 255.0
    assert data.name == name
    assert data.input_shape == (1, 28, 28)
    assert (data.likelihood, data.dynamic_binarization, data.num_bits) == ("bernoulli", True, 8)
    assert data.train.shape == (N_TRAIN - 4, 784) and data.train.dtype == torch.float32
    assert data.val.shape == (4, 784) and data.test.shape == (N_TEST, 784)
    # train is the first rows, grey, unshuffled; val is the LAST rows of the training file.
    np.testing.assert_allclose(data.train.numpy(), train_images[:-4], rtol=0, atol=1e-7)
    # val binarises the last 4 rows themselves: black pixels stay 0 and white ones 1 there
    last = train_images[-4:]
    assert (data.val.numpy()[last == 0] == 0).all() and (data.val.numpy()[last == 1] == 1).all()
    labels = arrays["train-labels-idx1-ubyte"].astype(np.int64)
    assert data.train_labels.tolist() == labels[:-4].tolist()
    assert data.val_labels.tolist() == labels[-4:].tolist()
    assert data.test_labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert data.train_labels.dtype == torch.int64


def test_mnist_val_test_binarised_once_and_seeded(tmp_path):
    arrays = make_idx_folder(tmp_path)
    first = load_dataset("mnist", tmp_path, seed=11, n_validation=4)
    again = load_dataset("mnist", tmp_path, seed=11, n_validation=4)
    other = load_dataset("mnist", tmp_path, seed=12, n_validation=4)
    for split in ("val", "test"):
        values = getattr(first, split)
        assert set(values.unique().tolist()) == {0.0, 1.0}
        assert torch.equal(values, getattr(again, split))
        assert not torch.equal(values, getattr(other, split))
    # Pixels that are exactly 0 or 255 must binarise to 0 or 1 (Bernoulli of the grey value).
    grey = arrays["t10k-images-idx3-ubyte"].reshape(N_TEST, -1)
    test = first.test.numpy()
    assert (test[grey == 0] == 0).all() and (test[grey == 255] == 1).all()
    assert torch.equal(first.train, other.train)


def test_idx_wrong_magic(tmp_path):
    labels = write_idx(tmp_path / "labels", np.zeros(3, np.uint8), compress=False)
    with pytest.raises(ValueError, match="magic number 0x00000801; expected 0x00000803"):
        read_idx_images(labels)


def test_idx_non_uint8_type_is_wrong_magic(tmp_path):
    path = tmp_path / "floats"
    path.write_bytes(bytes([0, 0, 0x0D, 1]) + (2).to_bytes(4, "big") + bytes(8))
    with pytest.raises(ValueError, match="magic number 0x00000d01"):
        read_idx_labels(path)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_truncated_data(tmp_path, compress):
    data = idx_bytes(np.zeros((3, 4, 4), np.uint8))[:-5]
    path = tmp_path / "short"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(ValueError, match=r"truncated: dimensions \(3, 4, 4\) need 48 data bytes, found 43"):
        read_idx_images(path)


def test_idx_truncated_header_and_extra_bytes(tmp_path):
    path = tmp_path / "header"
    path.write_bytes(bytes([0, 0, 8, 3]) + (3).to_bytes(4, "big"))
    with pytest.raises(ValueError, match="truncated inside its header"):
        read_idx_images(path)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match="truncated: 2 bytes, no header"):
        read_idx_images(path)
    path.write_bytes(idx_bytes(np.zeros(3, np.uint8)) + b"\x01")
    with pytest.raises(ValueError, match="longer than its header says"):
        read_idx_labels(path)


def test_idx_corrupt_gzip(tmp_path):
    path = tmp_path / "broken.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(50, np.uint8)))[:-12])
    with pytest.raises(ValueError, match="corrupt or truncated gzip"):
        read_idx_labels(path)


def test_mnist_mismatched_counts(tmp_path):
    make_idx_folder(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(N_TRAIN - 1, np.uint8), False)
    with pytest.raises(ValueError, match=f"holds {N_TRAIN} images but train-labels-idx1-ubyte "
                                         f"holds {N_TRAIN - 1} labels"):
        load_dataset("mnist", tmp_path, n_validation=4)


def test_mnist_missing_file_names_expected_files(tmp_path):
    make_idx_folder(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte\[\.gz\] not found in root"
                                                r".*train-images-idx3-ubyte\[\.gz\]"):
        load_dataset("fashion-mnist", tmp_path, n_validation=4)


def test_mnist_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="mnist: root folder .*nowhere.* not found"):
        load_dataset("mnist", tmp_path / "nowhere")


@pytest.mark.parametrize("n_validation, message", [
    (0, "n_validation must be an integer >= 1, got 0"),
    (N_TRAIN, f"n_validation={N_TRAIN} must be smaller than the {N_TRAIN} training images"),
])
def test_mnist_bad_n_validation(tmp_path, n_validation, message):
    make_idx_folder(tmp_path)
    with pytest.raises(ValueError, match=message):
        load_dataset("mnist", tmp_path, n_validation=n_validation)


def test_mnist_default_validation_too_large_for_small_files(tmp_path):
    make_idx_folder(tmp_path)
    with pytest.raises(ValueError, match="n_validation=10000 must be smaller"):
        load_dataset("mnist", tmp_path)
