"""load_dataset dispatch errors and the DataSplits contract."""
from __future__ import annotations

import pytest
import torch

from exvae_fast.data import DATASET_NAMES, DataSplits, load_dataset


def test_dataset_names():
    assert DATASET_NAMES == ("mnist-5k", "mnist", "fashion-mnist", "omniglot", "celeba",
                             "frey-faces", "synthetic", "array")


def test_unknown_name_lists_accepted_names():
    with pytest.raises(ValueError, match="unknown dataset name 'cifar10'; accepted names: "
                                         "mnist-5k, mnist, fashion-mnist, omniglot, celeba, "
                                         "frey-faces, synthetic"):
        load_dataset("cifar10")


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "omniglot", "celeba", "frey-faces"])
def test_root_required(name):
    with pytest.raises(ValueError, match=f"dataset '{name}' needs root"):
        load_dataset(name)


@pytest.mark.parametrize("name", ["mnist-5k", "synthetic"])
def test_root_refused_where_unused(tmp_path, name):
    with pytest.raises(ValueError, match=f"dataset '{name}' takes no root"):
        load_dataset(name, tmp_path)


def test_unknown_option_is_named(tmp_path):
    with pytest.raises(TypeError, match="unknown option.* 'num_bit' for dataset 'celeba'; "
                                        "accepted options: num_bits, limit"):
        load_dataset("celeba", tmp_path, num_bit=5)
    with pytest.raises(TypeError, match="'size' for dataset 'mnist-5k'; accepted options: none"):
        load_dataset("mnist-5k", size=10)


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0"])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        load_dataset("synthetic", seed=seed, size=5)


def splits(**overrides) -> DataSplits:
    fields = dict(name="toy", train=torch.rand(4, 6), val=torch.rand(2, 6), test=torch.rand(2, 6),
                  input_shape=(1, 2, 3), likelihood="bernoulli", dynamic_binarization=True,
                  num_bits=8, train_labels=torch.zeros(4, dtype=torch.int64))
    fields.update(overrides)
    return DataSplits(**fields)


def test_datasplits_accepts_valid_fields():
    data = splits(input_shape=[1, 2, 3])
    assert data.input_shape == (1, 2, 3) and data.val_labels is None


@pytest.mark.parametrize("overrides, message", [
    ({"train": torch.rand(4, 5)}, r"train has shape \(4, 5\); expected \[N >= 1, 6\]"),
    ({"val": torch.rand(0, 6)}, r"val has shape \(0, 6\)"),
    ({"test": torch.rand(2, 6, dtype=torch.float64)}, "test must be a float32 tensor"),
    ({"train": torch.full((4, 6), 1.5)}, r"train values must lie in \[0, 1\]"),
    ({"likelihood": "gaussian"}, "likelihood must be one of"),
    ({"num_bits": 9}, r"num_bits must be in 1..8"),
    ({"input_shape": (2, 3)}, r"input_shape must be \(C, H, W\)"),
    ({"train_labels": torch.zeros(3, dtype=torch.int64)}, r"train_labels must be int64 \[4\]"),
    ({"train_labels": torch.zeros(4, dtype=torch.int32)}, r"train_labels must be int64 \[4\]"),
])
def test_datasplits_rejects_bad_fields(overrides, message):
    with pytest.raises(ValueError, match=message):
        splits(**overrides)
