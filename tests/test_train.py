"""The training loop: exact resume, NaN stop keeping the last good checkpoint, early
stopping, KL warm-up, logs."""
from __future__ import annotations

import json
import math

import pytest
import torch

from exvae_fast.train.checkpoint import load_checkpoint
from exvae_fast.train.config import RunConfig, apply_overrides
from exvae_fast.train.loop import Trainer, TrainingDiverged, kl_weight


def tiny_config(tmp_path, name="run", **overrides) -> RunConfig:
    items = {
        "name": name, "out_dir": str(tmp_path), "data.name": "synthetic", "data.synthetic_size": 300,
        "model.name": "vae", "prior.name": "exemplar", "prior.mode": "retrieval", "prior.k": 3,
        "prior.num_exemplars": 100, "train.epochs": 2, "train.batch_size": 50, "train.warmup_epochs": 2,
        "train.eval_batch_size": 100, "train.early_stopping_patience": 5, "eval.iw_samples": 4,
    }
    items.update(overrides)
    return apply_overrides(RunConfig(), [f"{k}={v}" for k, v in items.items()])


def model_parameters(trainer: Trainer) -> dict:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("prior", ["exemplar", "vamp"])
def test_resume_equals_uninterrupted(tmp_path, prior):
    overrides = {"prior.name": prior, "prior.num_components": 20}
    straight = Trainer(tiny_config(tmp_path, "straight", **overrides, **{"train.epochs": 3}), progress=False)
    straight.fit()
    first = Trainer(tiny_config(tmp_path, "resumed", **overrides, **{"train.epochs": 1}), progress=False)
    first.fit()
    second = Trainer(tiny_config(tmp_path, "resumed", **overrides, **{"train.epochs": 3}), progress=False)
    second.fit(resume=True)
    expected, got = model_parameters(straight), model_parameters(second)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    sessions = json.loads((tmp_path / "resumed" / "environment.json").read_text())["sessions"]
    assert [(s["event"], s["epoch"]) for s in sessions] == [("start", 0), ("resume", 1)]
    log = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    straight_log = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert [r["val_elbo"] for r in log] == [r["val_elbo"] for r in straight_log]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(tmp_path, **{"train.epochs": 3}), progress=False)
    real_forward = type(trainer.model).forward
    calls = {"n": 0}
    steps_per_epoch = 300 // 50

    def poisoned(self, x, indices=None):
        calls["n"] += 1
        terms = real_forward(self, x, indices)
        if calls["n"] > steps_per_epoch + 2:  # third step of epoch 2
            terms.recon = terms.recon * float("nan")
        return terms

    monkeypatch.setattr(type(trainer.model), "forward", poisoned)
    with pytest.raises(TrainingDiverged, match="epoch 2"):
        trainer.fit()
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("prior", ["standard", "vamp", "retrieval", "exact"])
@pytest.mark.parametrize("where", ["mid-epoch", "last step of the epoch"])
def test_diverged_weights_stop_training_and_never_reach_a_checkpoint(tmp_path, prior, where):
    """NaN weights (a real divergence, not only a NaN loss): whichever check sees them first (the
    loss, an op refusing NaN latents, the end-of-epoch check), the run stops as diverged and the
    last checkpoint stays the previous epoch's, finite."""
    overrides = {"train.epochs": 3, "prior.num_components": 20}
    overrides.update({"prior.name": prior} if prior in ("standard", "vamp") else {"prior.mode": prior})
    trainer = Trainer(tiny_config(tmp_path, **overrides), progress=False)
    steps_per_epoch = len(trainer._batches())
    poison_after = 2 * steps_per_epoch - (0 if where == "last step of the epoch" else 2)
    real_step = trainer.optimizer.step

    def step_then_poison(*args, **kwargs):
        out = real_step(*args, **kwargs)
        if trainer.state.step + 1 == poison_after:  # the loop counts the step after this returns
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))
        return out

    trainer.optimizer.step = step_then_poison
    with pytest.raises(TrainingDiverged, match="in epoch 2, after .* optimisation steps.*(epoch 1)"):
        trainer.fit()
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_early_stopping_after_patience(tmp_path, monkeypatch):
    import exvae_fast.train.loop as loop

    scores = iter([-100.0, -101.0, -102.0, -103.0, -104.0])
    monkeypatch.setattr(loop, "evaluate_elbo",
                        lambda *a, **k: {"elbo": next(scores), "kl": 1.0, "neg_recon": 1.0})
    cfg = tiny_config(tmp_path, **{"train.epochs": 10, "train.early_stopping_patience": 2})
    summary = Trainer(cfg, progress=False).fit()
    assert summary.stopped_early and summary.epochs_completed == 3 and summary.best_epoch == 1
    assert load_checkpoint(tmp_path / "run" / "checkpoint_best.pt")["epoch"] == 1


def test_logs_config_and_checkpoint_contents(tmp_path):
    summary = Trainer(tiny_config(tmp_path, **{"train.epochs": 1}), progress=False).fit()
    run = tmp_path / "run"
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    for key in ("epoch", "train_loss", "train_kl", "train_neg_recon", "val_elbo", "beta", "prior_log_var"):
        assert key in record
    assert record["beta"] == 0.5
    assert json.loads((run / "config.json").read_text())["data"]["synthetic_size"] == 300
    (session,) = json.loads((run / "environment.json").read_text())["sessions"]
    assert session["torch"] == torch.__version__ and session["device"]["type"] == "cpu"
    assert session["world_size"] == 1 and session["backends"]["knn_search"]["auto"] == "torch"
    ckpt = load_checkpoint(run / "checkpoint_last.pt")
    assert {"model", "optimizer", "rng", "epoch", "config"} <= ckpt.keys()
    assert "prior.cache.means" in ckpt["model"] and "prior.exemplars" not in ckpt["model"]
    assert summary.epochs_completed == 1


def test_a_finished_run_is_never_silently_replaced(tmp_path):
    Trainer(tiny_config(tmp_path, **{"train.epochs": 1}), progress=False).fit()
    run = tmp_path / "run"
    before = (run / "checkpoint_last.pt").read_bytes(), (run / "metrics.jsonl").read_text()
    again = Trainer(tiny_config(tmp_path, **{"train.epochs": 1, "train.seed": 1}), progress=False)
    with pytest.raises(ValueError, match="already holds a trained run.*--resume.*--overwrite"):
        again.fit()
    assert ((run / "checkpoint_last.pt").read_bytes(), (run / "metrics.jsonl").read_text()) == before
    (run / "metrics_val_best.json").write_text("{}")  # a former run's evaluation
    (run / "notes.txt").write_text("mine")  # not a run file: kept
    real_epoch = again._train_epoch

    def look_when_training_starts(epoch):
        # the former run's checkpoints and metrics are gone before the new run trains
        assert not (run / "checkpoint_last.pt").exists() and not (run / "metrics_val_best.json").exists()
        return real_epoch(epoch)

    again._train_epoch = look_when_training_starts
    summary = again.fit(overwrite=True)
    assert summary.epochs_completed == 1
    assert (run / "notes.txt").read_text() == "mine"
    sessions = json.loads((run / "environment.json").read_text())["sessions"]
    assert [s["event"] for s in sessions] == ["start"]  # a replaced run's history goes with it
    assert load_checkpoint(run / "checkpoint_last.pt")["config"]["train"]["seed"] == 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_training_does_not_leave_the_caller_in_another_mode(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, **{"train.epochs": 1}), progress=False)
    trainer.fit()
    # Validation ran in evaluation mode; training mode is what the loop left behind.
    assert trainer.model.training


def test_kl_warmup_schedule():
    assert kl_weight(1, 100) == 0.01 and kl_weight(100, 100) == 1.0 and kl_weight(250, 100) == 1.0
    assert kl_weight(1, 0) == 1.0


def test_cuda_device_without_cuda_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="CUDA is not available"):
        Trainer(tiny_config(tmp_path, **{"train.device": "cuda"}), progress=False)


@pytest.mark.gpu
def test_retrieval_training_on_cuda_uses_the_fused_backends(tmp_path):
    from exvae_fast.ops.dispatch import resolve_backend

    probe = torch.empty(1, device="cuda")
    assert resolve_backend("mixture_log_density", "auto", probe) == "triton"
    assert resolve_backend("knn_search", "auto", probe) == "triton"
    trainer = Trainer(tiny_config(tmp_path, **{"train.epochs": 2, "train.device": "cuda"}), progress=False)
    summary = trainer.fit()
    assert summary.epochs_completed == 2 and math.isfinite(summary.best_val_elbo)
    assert trainer.model.prior.cache.is_complete


def test_a_half_precision_latent_cache_trains_resumes_and_evaluates(tmp_path):
    from exvae_fast.report import evaluate_run

    cfg = tiny_config(tmp_path, **{"train.epochs": 1, "prior.cache_dtype": "bfloat16"})
    Trainer(cfg, progress=False).fit()
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")
    assert ckpt["model"]["prior.cache.means"].dtype == torch.bfloat16
    resumed = Trainer(tiny_config(tmp_path, **{"train.epochs": 2, "prior.cache_dtype": "bfloat16"}), progress=False)
    assert resumed.fit(resume=True).epochs_completed == 2
    assert resumed.model.prior.cache.means.dtype == torch.bfloat16
    metrics = evaluate_run(tmp_path / "run", pictures=False, progress=False)
    assert math.isfinite(metrics["log_likelihood"]) and math.isfinite(metrics["retrieval_gap"]["test"]["1"]["mean"])
    with pytest.raises(ValueError, match="prior.cache_dtype"):
        tiny_config(tmp_path, **{"prior.cache_dtype": "float64"})


def test_progress_into_a_log_file_is_plain_lines_not_bar_updates(tmp_path, capfd):
    """progress=True with stderr redirected (pytest's capture: not a terminal): one line per
    epoch and per evaluation stage, no carriage-return bar updates filling the log."""
    Trainer(tiny_config(tmp_path, **{"train.epochs": 2}), progress=True).fit()
    err = capfd.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert "val ELBO" in lines[0] and "(best)" in lines[0]


def test_evaluation_stages_log_plain_lines_when_not_on_a_terminal(capfd, monkeypatch):
    """A stage shorter than LOG_EVERY_S logs one line as it ends; a long one also logs its
    share done and the time left along the way (every line, with the interval at 0)."""
    from exvae_fast import progress
    from exvae_fast.evaluation import evaluate_elbo, log_likelihood
    from exvae_fast.models import build_model
    from exvae_fast.priors import StandardPrior
    model = build_model("vae", StandardPrior(2), (1, 4, 4), 2, "bernoulli")
    x = torch.rand(5, 16).round()
    log_likelihood(model, x, num_samples=3, progress=True)
    err = capfd.readouterr().err
    assert "\r" not in err
    assert err.splitlines() == [err.splitlines()[0]]
    assert err.startswith("log p(x) (5 points, 3 samples each): done in ")
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    log_likelihood(model, x, num_samples=3, max_rows=6, progress=True)  # 2 points a call: 3 calls
    evaluate_elbo(model, x, batch_size=2, progress=True)  # 3 batches
    lines = capfd.readouterr().err.splitlines()
    ll = "log p(x) (5 points, 3 samples each)"
    assert [line.split(" s so far")[0] for line in lines if "so far" in line] == [
        f"{ll}: 33% (1/3 batches), 0", f"{ll}: 67% (2/3 batches), 0",
        "ELBO (5 rows): 33% (1/3 batches), 0", "ELBO (5 rows): 67% (2/3 batches), 0"]
    assert [line.split(":")[0] for line in lines if "done in" in line] == [ll, "ELBO (5 rows)"]


def test_compiled_training_resumes_exactly_and_its_checkpoints_load_anywhere(tmp_path):
    """train.compile=true (inductor on CPU): a compiled run resumed from its checkpoint equals
    the uninterrupted compiled run; checkpoints hold plain keys (no compile wrapper prefix)
    and resume without compile. Inductor draws its own random numbers (seeded from torch's
    generator), so a compiled run is a different, equally valid sample path than eager: its
    ELBO is close to eager's, not equal."""
    import torch._dynamo
    torch._dynamo.reset()
    on = {"train.compile": True}
    straight = Trainer(tiny_config(tmp_path, "straight", **on), progress=False).fit()
    Trainer(tiny_config(tmp_path, "resumed", **on, **{"train.epochs": 1}), progress=False).fit()
    resumed = Trainer(tiny_config(tmp_path, "resumed", **on), progress=False).fit(resume=True)
    assert resumed.best_val_elbo == straight.best_val_elbo
    eager = Trainer(tiny_config(tmp_path, "eager"), progress=False).fit()
    assert straight.best_val_elbo == pytest.approx(eager.best_val_elbo, rel=0.02)
    keys = load_checkpoint(straight.run_dir / "checkpoint_last.pt")["model"].keys()
    assert not any("_orig_mod" in key for key in keys)
    again = Trainer(tiny_config(tmp_path, "straight", **{"train.epochs": 3}), progress=False)
    assert again.fit(resume=True).epochs_completed == 3


@pytest.mark.parametrize("compile_", [False, True], ids=["eager", "compile"])
def test_leave_team_drops_every_reference_to_the_ddp_wrapper(tmp_path, compile_):
    """leave_team frees a team's DDP wrapper (it holds the process group, whose gloo threads
    could abort the interpreter's exit): the step function (the wrapper, or its compiled
    form) lets go of it too."""
    import weakref
    trainer = Trainer(tiny_config(tmp_path, **{"train.compile": compile_}), progress=False)
    wrapper = torch.nn.Sequential(trainer.model)  # stands for DDP(model), as fit() sets it
    trainer.step_model, trainer._forward = wrapper, trainer._compiled(wrapper)
    ref = weakref.ref(wrapper)
    del wrapper
    trainer.leave_team()
    assert ref() is None
