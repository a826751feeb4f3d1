"""Data-parallel training (train/ddp.py): real processes on the gloo backend, launched as
torchrun would (its environment variables), and once through torchrun itself."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from test_distributed import as_torchrun_process, spawn_team

from exvae_fast.report import evaluate_run
from exvae_fast.train.checkpoint import load_checkpoint
from exvae_fast.train.config import RunConfig, apply_overrides, config_to_dict, config_from_dict
from exvae_fast.train.ddp import Team, rank_batches, rank_loss
from exvae_fast.train.loop import Trainer, seed_everything

WORLD = 2
TRAIN_ROWS = 300  # data.synthetic_size: the training rows


def ddp_config(out_dir: Path, name: str, epochs: int, **overrides) -> RunConfig:
    items = {
        "name": name, "out_dir": str(out_dir), "data.name": "synthetic", "data.synthetic_size": 300,
        "model.name": "vae", "prior.name": "exemplar", "prior.mode": "retrieval", "prior.k": 3,
        "prior.num_exemplars": 100, "train.epochs": epochs, "train.batch_size": 25,
        "train.warmup_epochs": 2, "train.eval_batch_size": 100, "train.early_stopping_patience": 5,
        "eval.iw_samples": 4, **overrides,
    }
    return apply_overrides(RunConfig(), [f"{k}={v}" for k, v in items.items()])


def _train_worker(rank: int, world: int, port: int, cfg: dict, resume: bool, refit: bool) -> None:
    as_torchrun_process(rank, world, port)
    trainer = Trainer(config_from_dict(cfg), progress=False)
    try:
        trainer.fit(resume=resume)
        if refit:  # the model is sharded and wrapped now: a second fit is refused
            with pytest.raises(RuntimeError, match="trains once"):
                trainer.fit(resume=True)
    finally:
        trainer.leave_team()


def train_in_processes(cfg: RunConfig, resume: bool = False, world: int = WORLD,
                       refit: bool = False) -> None:
    spawn_team(_train_worker, world, config_to_dict(cfg), resume, refit)


def last_state(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoint_last.pt")


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    train_in_processes(ddp_config(out, "run", epochs=2))
    return out / "run"


# -- how a team splits an epoch ------------------------------------------------------------

def test_rank_batches_alone_is_the_plain_split():
    order = torch.randperm(23)
    got = rank_batches(order, 5, Team())
    assert [(b.tolist(), total) for b, total in got] == [(b.tolist(), b.numel()) for b in order.split(5)]
    assert len(rank_batches(order, 5, Team(), steps=2)) == 2


def test_rank_batches_split_each_global_batch_between_ranks():
    order = torch.arange(23)
    parts = [rank_batches(order, 4, Team(rank, 3)) for rank in range(3)]
    assert all(len(p) == 2 for p in parts)  # 12 + 11 rows; nothing is left for a third step
    for step in range(2):
        together = torch.cat([parts[rank][step][0] for rank in range(3)])
        assert together.tolist() == list(range(step * 12, min(step * 12 + 12, 23)))
        assert all(parts[rank][step][1] == together.numel() for rank in range(3))
    # a last global batch with fewer rows than ranks is dropped: every rank takes the same steps
    kept = [rank_batches(torch.arange(15), 4, Team(rank, 3)) for rank in range(3)]
    assert [len(p) for p in kept] == [2, 2, 2]
    assert [(kept[r][1][0].tolist(), kept[r][1][1]) for r in range(3)] == [([12], 3), ([13], 3), ([14], 3)]
    dropped = [rank_batches(torch.arange(14), 4, Team(rank, 3)) for rank in range(3)]
    assert [len(p) for p in dropped] == [1, 1, 1]


def test_rank_losses_average_to_the_gradient_of_the_mean_over_the_step():
    """What DDP does with the ranks' gradients (their average) from each rank_loss equals the
    gradient of the mean over the step's rows, also for a last batch split 3 / 3 / 2."""
    rows = torch.randn(8, 4, dtype=torch.float64)
    weight = torch.randn(4, dtype=torch.float64, requires_grad=True)
    (want,) = torch.autograd.grad((rows @ weight).square().mean(), weight)
    grads = []
    for rank, part in enumerate(rows.tensor_split(3)):
        loss = (part @ weight).square().mean()
        grads.append(torch.autograd.grad(rank_loss(loss, part.shape[0], 8, Team(rank, 3)), weight)[0])
    torch.testing.assert_close(torch.stack(grads).mean(0), want)
    alone = torch.tensor(2.0)
    assert rank_loss(alone, 5, 5, Team()) is alone and rank_loss(alone, 4, 12, Team(1, 3)) is alone


def test_team_members_draw_streams_apart_from_other_seeds():
    def draws(seed, rank=0):
        seed_everything(seed, rank)
        return (torch.rand(3).tolist(), random.random(), float(np.random.rand()))
    assert draws(0, 1) != draws(1) and draws(1, 1) != draws(2) and draws(0, 1) != draws(0)
    assert draws(0, 1) == draws(0, 1)
    seed_everything(5)
    assert draws(5, 0) == draws(5) and torch.initial_seed() == 5  # alone: the seed itself


# -- two processes ---------------------------------------------------------------------------

def test_two_processes_write_one_run_holding_the_whole_cache(two_process_run):
    log = [json.loads(line) for line in (two_process_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]  # rank 0 alone writes the log
    # 300 rows, 2 x 25 per step: 6 steps per epoch
    assert [r["step"] for r in log] == [6, 12]
    state = last_state(two_process_run)
    assert state["world_size"] == WORLD and len(state["rng_by_rank"]) == WORLD
    assert not torch.equal(state["rng_by_rank"][0]["torch"], state["rng_by_rank"][1]["torch"])
    model = state["model"]
    assert not any(".local." in key for key in model)
    assert model["prior.cache.means"].shape == (TRAIN_ROWS, RunConfig().model.latent_dim)
    assert bool((model["prior.cache.stamps"] >= 0).all())  # every shard came back
    assert int(model["prior.cache._step"]) == 12


def test_a_team_checkpoint_evaluates_in_one_process(two_process_run):
    metrics = evaluate_run(two_process_run, iw_samples=4, pictures=False, progress=False)
    assert metrics["epoch"] == 2
    assert all(torch.isfinite(torch.tensor(metrics[key])) for key in ("elbo", "log_likelihood"))


def test_two_process_resume_equals_uninterrupted(tmp_path):
    train_in_processes(ddp_config(tmp_path, "straight", epochs=3))
    train_in_processes(ddp_config(tmp_path, "resumed", epochs=1))
    train_in_processes(ddp_config(tmp_path, "resumed", epochs=3), resume=True)
    expected, got = last_state(tmp_path / "straight"), last_state(tmp_path / "resumed")
    assert expected["epoch"] == got["epoch"] == 3
    assert expected["model"].keys() == got["model"].keys()
    for key in expected["model"]:
        assert torch.equal(expected["model"][key], got["model"][key]), key
    logs = [[json.loads(line)["val_elbo"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("straight", "resumed")]
    assert logs[0] == logs[1] and len(logs[0]) == 3


def test_two_processes_train_the_exact_mode_and_a_vampprior_once(tmp_path):
    train_in_processes(ddp_config(tmp_path, "exact", epochs=1, **{"prior.mode": "exact"}))
    train_in_processes(ddp_config(tmp_path, "vamp", epochs=1, **{"prior.name": "vamp",
                                                                "prior.num_components": 20}),
                       refit=True)
    exact, vamp = last_state(tmp_path / "exact"), last_state(tmp_path / "vamp")
    assert exact["model"]["prior.cache.means"].shape[0] == TRAIN_ROWS
    assert bool((exact["model"]["prior.cache.stamps"] >= 0).all())
    assert not any(key.startswith("prior.cache") for key in vamp["model"])
    for state in (exact, vamp):
        assert state["epoch"] == 1 and state["world_size"] == WORLD
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_resuming_a_team_run_alone_is_refused(two_process_run, tmp_path):
    cfg = ddp_config(two_process_run.parent, two_process_run.name, epochs=3)
    with pytest.raises(ValueError, match="written by 2 training process"):
        Trainer(cfg, progress=False).fit(resume=True)


@pytest.mark.slow
def test_torchrun_trains_and_rank_zero_evaluates(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(
        'name = "cli"\nout_dir = "%s"\n[data]\nname = "synthetic"\nsynthetic_size = 300\n'
        '[model]\nname = "vae"\n[prior]\nname = "exemplar"\nmode = "retrieval"\nk = 3\n'
        'num_exemplars = 100\n[train]\nepochs = 1\nbatch_size = 25\neval_batch_size = 100\n'
        '[eval]\niw_samples = 4\nnum_sample_images = 4\n' % tmp_path.as_posix())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
         "-m", "exvae_fast", "train", "--config", str(config), "--no-progress"],
        capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained epochs 1-1 (1 in this session)") == 1  # rank 0 reports, once
    assert "done in" not in done.stderr  # --no-progress: no stage lines either
    metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert metrics["epoch"] == 1 and metrics["iw_samples"] == 4
