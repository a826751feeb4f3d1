"""Atomic weights-only checkpoints and RNG capture/restore."""
from __future__ import annotations

import os
import random
from collections import defaultdict

import numpy as np
import pytest
import torch
from torch import nn

from exvae_fast.train import (
    CHECKPOINT_FORMAT_VERSION,
    NormalizedAdam,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


def trained_state() -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    opt = NormalizedAdam(model.parameters())
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 7,
            "best_elbo": -91.5, "history": [1.0, 2.0], "note": None, "rng": capture_rng_state()}


def assert_same(a, b) -> None:
    """Recursive equality for nested containers of tensors."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def draw() -> tuple:
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(2).tolist(),
            torch.rand(3).tolist(), torch.randn(2).tolist())


def test_round_trip_of_model_optimizer_and_scalars(tmp_path):
    state = trained_state()
    save_checkpoint(tmp_path / "ck.pt", state)
    assert_same(load_checkpoint(tmp_path / "ck.pt"), state)


def test_file_loads_with_plain_weights_only_torch_load(tmp_path):
    save_checkpoint(tmp_path / "ck.pt", trained_state())
    payload = torch.load(tmp_path / "ck.pt", weights_only=True)
    assert payload["format_version"] == CHECKPOINT_FORMAT_VERSION and payload["state"]["epoch"] == 7


def test_failed_save_keeps_the_old_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"epoch": 1})
    before = path.read_bytes()

    def partial_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", partial_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ck.pt"]
    assert load_checkpoint(path) == {"epoch": 1}


def test_save_creates_the_folder_and_overwrites(tmp_path):
    path = tmp_path / "run" / "ck.pt"
    save_checkpoint(path, {"epoch": 1})
    save_checkpoint(path, {"epoch": 2})
    assert load_checkpoint(path) == {"epoch": 2} and os.listdir(path.parent) == ["ck.pt"]


@pytest.mark.parametrize(
    "state, pattern",
    [
        ({"x": np.zeros(3)}, r"state\['x'\]: unsupported type ndarray"),
        ({"a": [1, {"b": np.float64(1.0)}]}, r"state\['a'\]\[1\]\['b'\]: unsupported type float64"),
        ({"f": object()}, r"state\['f'\]: unsupported type object"),
        ({"d": defaultdict(int)}, r"state\['d'\]: unsupported type defaultdict"),
        ({(1, 2): 3}, r"state: unsupported key type tuple"),
    ],
)
def test_save_refuses_what_a_weights_only_load_cannot_read(tmp_path, state, pattern):
    with pytest.raises(TypeError, match=pattern):
        save_checkpoint(tmp_path / "ck.pt", state)
    assert not os.listdir(tmp_path)


def test_save_requires_a_dict(tmp_path):
    with pytest.raises(TypeError, match="state: expected a dict, got list"):
        save_checkpoint(tmp_path / "ck.pt", [1, 2])


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_checkpoint(tmp_path / "absent.pt")


@pytest.mark.parametrize("keep", [0, 10, 200, 0.5, -1])
def test_truncated_file_is_reported_as_corrupt(tmp_path, keep):
    save_checkpoint(tmp_path / "ck.pt", trained_state())
    data = (tmp_path / "ck.pt").read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep if keep >= 0 else len(data) + keep
    (tmp_path / "bad.pt").write_bytes(data[:n])
    with pytest.raises(ValueError, match=r"bad\.pt: not an exvae-fast checkpoint, or corrupt/truncated"):
        load_checkpoint(tmp_path / "bad.pt")


def test_text_file_is_reported_as_corrupt(tmp_path):
    (tmp_path / "notes.pt").write_text("hello, not a checkpoint")
    with pytest.raises(ValueError, match="not an exvae-fast checkpoint") as caught:
        load_checkpoint(tmp_path / "notes.pt")
    assert "weights_only" not in str(caught.value)


class Foreign:
    """An arbitrary class: a weights-only load must refuse to build it."""


def test_foreign_torch_files_are_refused(tmp_path):
    torch.save({"model": {"w": torch.zeros(2)}}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not an exvae-fast checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    torch.save({"format": "exvae-fast-checkpoint", "format_version": 1, "state": Foreign()},
               tmp_path / "code.pt")
    with pytest.raises(ValueError, match="corrupt/truncated") as caught:
        load_checkpoint(tmp_path / "code.pt")
    # torch's own text would advise weights_only=False, an unsafe load
    assert "weights_only" not in str(caught.value) and "never done here" in str(caught.value)


def test_other_format_version_is_refused(tmp_path):
    torch.save({"format": "exvae-fast-checkpoint", "format_version": 99, "state": {}}, tmp_path / "new.pt")
    with pytest.raises(ValueError, match="format version 99"):
        load_checkpoint(tmp_path / "new.pt")


def test_rng_restore_replays_python_numpy_and_torch():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gauss_next in python's state
    np.random.randn()  # and a cached gaussian in numpy's
    state = capture_rng_state()
    first = draw()
    restore_rng_state(state)
    assert draw() == first
    assert draw() != first


def test_rng_state_survives_a_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "ck.pt", {"rng": capture_rng_state()})
    first = draw()
    restore_rng_state(load_checkpoint(tmp_path / "ck.pt")["rng"])
    assert draw() == first


def test_malformed_rng_state_is_named():
    state = capture_rng_state()
    del state["numpy"]
    with pytest.raises(ValueError, match="missing entry 'numpy'"):
        restore_rng_state(state)
    state = capture_rng_state()
    state["python"] = {"version": 3}
    with pytest.raises(ValueError, match="rng state: malformed"):
        restore_rng_state(state)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_rng_restore_replays_every_cuda_device(tmp_path):
    state = capture_rng_state()
    assert len(state["cuda"]) == torch.cuda.device_count()
    save_checkpoint(tmp_path / "ck.pt", {"rng": state})
    first = [torch.rand(4, device=f"cuda:{i}").tolist() for i in range(torch.cuda.device_count())]
    restore_rng_state(load_checkpoint(tmp_path / "ck.pt", map_location="cuda")["rng"])
    assert [torch.rand(4, device=f"cuda:{i}").tolist() for i in range(torch.cuda.device_count())] == first
