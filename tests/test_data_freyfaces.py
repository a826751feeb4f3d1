"""Frey faces reader: the real VampPrior pickle, a written fixture, and malicious pickles."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from exvae_fast.data import load_dataset
from exvae_fast.data.freyfaces import load_array_pickle

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "freyfaces.pkl"


def write_fixture(path: Path, count: int = 30, shape: tuple[int, ...] = (560,)) -> np.ndarray:
    """A VampPrior-style pickle: a list whose first element is uint8 [count, 560]."""
    images = np.random.default_rng(0).integers(0, 256, (count, *shape), dtype=np.uint8)
    path.write_bytes(pickle.dumps([images], protocol=2))
    return images


def check_faces(data, n_train: int, n_val: int, n_test: int) -> None:
    assert data.name == "frey-faces"
    assert data.input_shape == (1, 28, 20)
    assert (data.likelihood, data.dynamic_binarization, data.num_bits) == ("logistic", False, 8)
    assert data.train.shape == (n_train, 560) and data.val.shape == (n_val, 560)
    assert data.test.shape == (n_test, 560)
    assert data.train_labels is None and data.val_labels is None and data.test_labels is None
    for split in (data.train, data.val, data.test):
        assert split.dtype == torch.float32 and split.min() >= 0 and split.max() <= 1
        levels = split * 255
        assert torch.allclose(levels, levels.round(), atol=1e-4)


@pytest.mark.skipif(not REAL.is_file(), reason=f"{REAL} not present (fixture test still runs)")
def test_real_freyfaces_vampprior_split():
    data = load_dataset("frey-faces", REAL, seed=0)
    check_faces(data, 1565, 200, 200)
    again = load_dataset("frey-faces", REAL.parent, seed=0)
    assert torch.equal(data.test, again.test)
    all_rows = torch.cat([data.train, data.val, data.test])
    assert torch.unique(all_rows, dim=0).shape[0] > 1900  # a permutation, not repeats


def test_fixture_pickle_split_is_a_seeded_permutation(tmp_path):
    images = write_fixture(tmp_path / "freyfaces.pkl")
    data = load_dataset("frey-faces", tmp_path, seed=4, n_validation=5, n_test=7)
    check_faces(data, 18, 5, 7)
    rows = torch.cat([data.train, data.val, data.test]).mul(255).round().to(torch.uint8)
    source = torch.from_numpy(images)
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, source.tolist()))
    assert not torch.equal(rows, source)  # shuffled
    same = load_dataset("frey-faces", tmp_path, seed=4, n_validation=5, n_test=7)
    other = load_dataset("frey-faces", tmp_path, seed=5, n_validation=5, n_test=7)
    assert torch.equal(data.train, same.train)
    assert not torch.equal(data.train, other.train)


def test_fixture_pickle_three_dimensional(tmp_path):
    write_fixture(tmp_path / "faces.pkl", count=12, shape=(28, 20))
    data = load_dataset("frey-faces", tmp_path / "faces.pkl", n_validation=2, n_test=2)
    check_faces(data, 8, 2, 2)


def malicious_pickles(marker: Path) -> list[bytes]:
    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    protocol0 = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    return [protocol0, pickle.dumps(Exploit(), protocol=2), pickle.dumps([Exploit()], protocol=4)]


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "freyfaces.pkl"
    for payload in malicious_pickles(marker):
        path.write_bytes(payload)
        with pytest.raises(pickle.UnpicklingError, match=r"refused global '(os|posix)\.system'"):
            load_dataset("frey-faces", path)
        assert not marker.exists()


def test_builtins_eval_is_refused(tmp_path):
    path = tmp_path / "eval.pkl"
    path.write_bytes(b"c__builtin__\neval\n(S'1+1'\ntR.")
    with pytest.raises(pickle.UnpicklingError, match=r"refused global '__builtin__\.eval'"):
        load_array_pickle(path)


def test_wrong_content(tmp_path):
    path = tmp_path / "freyfaces.pkl"
    path.write_bytes(pickle.dumps({"images": np.zeros((3, 560), np.uint8)}, protocol=2))
    with pytest.raises(ValueError, match=r"must hold a list whose first element is an array \[N, 560\]"):
        load_dataset("frey-faces", path)
    path.write_bytes(pickle.dumps([np.zeros((3, 28, 28), np.uint8)], protocol=2))
    with pytest.raises(ValueError, match="must hold a list whose first element"):
        load_dataset("frey-faces", path)
    path.write_bytes(pickle.dumps([np.zeros((30, 560), np.float64)], protocol=2))
    with pytest.raises(ValueError, match="holds float64 images; expected uint8 0..255"):
        load_dataset("frey-faces", path)


def test_truncated_pickle(tmp_path):
    path = tmp_path / "freyfaces.pkl"
    write_fixture(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"cannot unpickle .*freyfaces.pkl.*truncated"):
        load_dataset("frey-faces", path)


def test_missing_file_and_bad_sizes(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"frey-faces: file .*freyfaces.pkl.* not found"):
        load_dataset("frey-faces", tmp_path)
    write_fixture(tmp_path / "freyfaces.pkl", count=10)
    with pytest.raises(ValueError, match="n_test must be an integer >= 1, got 0"):
        load_dataset("frey-faces", tmp_path, n_test=0)
    with pytest.raises(ValueError, match="n_validation=5 \\+ n_test=5 must be smaller than the 10"):
        load_dataset("frey-faces", tmp_path, n_validation=5, n_test=5)
