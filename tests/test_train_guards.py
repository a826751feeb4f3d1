"""What the trainer refuses or stops on, and what it keeps: a resume with a changed config,
a divergence before any checkpoint, a non-finite validation ELBO, a metrics log torn by a
crash, a crash between the metrics record and the checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import exvae_fast.train.loop as loop
from exvae_fast.train.loop import RESUME_MAY_CHANGE, Trainer, TrainingDiverged
from exvae_fast.train.run_files import truncate_jsonl
from test_train import tiny_config


@pytest.fixture
def one_epoch_run(tmp_path):
    """A run folder holding the checkpoint of one trained epoch."""
    Trainer(tiny_config(tmp_path, **{"train.epochs": 1}), progress=False).fit()
    return tmp_path


@pytest.mark.parametrize("key, value", [
    ("train.lr", 1e-5),            # the optimizer's restored state would silently keep the old one
    ("train.seed", 3),             # silently another data split for seeded data sets
    ("train.warmup_epochs", 7),
    ("model.latent_dim", 8),       # was a RuntimeError of load_state_dict
    ("prior.name", "vamp"),
])
def test_resume_with_a_changed_setting_names_the_key(one_epoch_run, key, value):
    trainer = Trainer(tiny_config(one_epoch_run, **{"train.epochs": 2, key: value}), progress=False)
    with pytest.raises(ValueError, match=f"resume: {key}"):
        trainer.fit(resume=True)


def test_resume_may_change_the_epochs_device_and_evaluation(one_epoch_run):
    cfg = tiny_config(one_epoch_run, **{"train.epochs": 2, "train.early_stopping_patience": 9,
                                        "eval.iw_samples": 7, "prior.backend": "torch"})
    summary = Trainer(cfg, progress=False).fit(resume=True)
    assert summary.epochs_completed == 2


def test_readme_lists_every_setting_a_resume_may_change():
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    for key in RESUME_MAY_CHANGE:
        assert f"`{key}*`" in readme if key.endswith(".") else f"`{key}`" in readme, key


def test_divergence_in_the_first_epoch_claims_no_checkpoint(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(tmp_path), progress=False)
    real_forward = type(trainer.model).forward

    def poisoned(self, x, indices=None):
        terms = real_forward(self, x, indices)
        terms.recon = terms.recon * float("nan")
        return terms

    monkeypatch.setattr(type(trainer.model), "forward", poisoned)
    with pytest.raises(TrainingDiverged) as caught:
        trainer.fit()
    assert not (tmp_path / "run" / "checkpoint_last.pt").exists()
    assert "last good checkpoint" not in str(caught.value)
    assert "no checkpoint" in str(caught.value)


def test_truncate_drops_a_last_record_torn_by_a_crash(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text(json.dumps({"epoch": 1}) + "\n" + json.dumps({"epoch": 2}) + "\n" + '{"epoch": 3, "tr')
    truncate_jsonl(log, 2)
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [1, 2]


def test_resume_after_a_crash_between_checkpoint_and_log_keeps_every_epoch(tmp_path, monkeypatch):
    """Killed while writing epoch 2's metrics record: the resumed run's log must still list
    every epoch once, like the uninterrupted run's."""
    straight = Trainer(tiny_config(tmp_path, "straight", **{"train.epochs": 3}), progress=False)
    straight.fit()
    real_append = loop.append_jsonl

    def crash_at_epoch_2(path, record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt
        real_append(path, record)

    monkeypatch.setattr(loop, "append_jsonl", crash_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_config(tmp_path, "resumed", **{"train.epochs": 3}), progress=False).fit()
    monkeypatch.setattr(loop, "append_jsonl", real_append)
    Trainer(tiny_config(tmp_path, "resumed", **{"train.epochs": 3}), progress=False).fit(resume=True)
    logs = [[json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
            for run in ("straight", "resumed")]
    assert [r["epoch"] for r in logs[1]] == [1, 2, 3]
    assert [r["val_elbo"] for r in logs[1]] == [r["val_elbo"] for r in logs[0]]
    for a, b in zip(straight.model.state_dict().values(), torch.load(
            tmp_path / "resumed" / "checkpoint_last.pt", weights_only=True)["state"]["model"].values()):
        assert torch.equal(a, b)


def test_a_non_finite_validation_elbo_stops_training_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    real_evaluate = loop.evaluate_elbo
    calls = []

    def nan_in_epoch_2(*args, **kwargs):
        calls.append(1)
        result = real_evaluate(*args, **kwargs)
        return {**result, "elbo": float("nan")} if len(calls) == 2 else result

    monkeypatch.setattr(loop, "evaluate_elbo", nan_in_epoch_2)
    with pytest.raises(TrainingDiverged, match="the validation ELBO became nan in epoch 2"):
        Trainer(tiny_config(tmp_path, **{"train.epochs": 3}), progress=False).fit()
    kept = torch.load(tmp_path / "run" / "checkpoint_last.pt", weights_only=True)
    assert kept["state"]["epoch"] == 1

