"""The training loop's choices that a run's weights alone do not reveal: which split validates,
what a resume keeps of the early-stopping state, how training rows are binarised, how the
KL warm-up weight and the per-example averages enter the loss and its log, when the exemplar
cache is refreshed, which learning rate the optimizer uses, and what counts as an improvement."""
from __future__ import annotations

import json

import pytest
import torch
from test_train import tiny_config

from exvae_fast.evaluation import evaluation_mode
from exvae_fast.train import loop
from exvae_fast.train.checkpoint import load_checkpoint
from exvae_fast.train.loop import Trainer, TrainSummary, kl_weight


def read_log(run_dir) -> list[dict]:
    """The records of a run folder's metrics.jsonl."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def scripted_run(monkeypatch, tmp_path, name: str, scores: list[float], resume: bool = False,
                 **overrides) -> TrainSummary:
    """Train one step per epoch with the loop's validation ELBO of epoch e forced to
    scores[e - 1], so that improvements and stalls are chosen by the test."""
    items = {"train.steps_per_epoch": 1, "train.epochs": len(scores), **overrides}
    trainer = Trainer(tiny_config(tmp_path, name, **items), progress=False)
    monkeypatch.setattr(loop, "evaluate_elbo", lambda *args, **kwargs: {
        "elbo": scores[trainer.state.epoch - 1], "kl": 1.0, "neg_recon": 1.0})
    return trainer.fit(resume=resume)


def on_training_steps(monkeypatch, trainer: Trainer, change) -> None:
    """Route every training step's forward through change(x, indices, terms) -> terms;
    validation (called without indices) keeps the model's own forward."""
    real_forward = type(trainer.model).forward

    def forward(self, x, indices=None):
        terms = real_forward(self, x, indices)
        return terms if indices is None else change(x, indices, terms)

    monkeypatch.setattr(type(trainer.model), "forward", forward)


def pinned(values: torch.Tensor, term: torch.Tensor) -> torch.Tensor:
    """`values` as the forward's value of `term`, with `term`'s gradient (so the optimizer
    still gets a non-zero, finite gradient to normalise)."""
    return values.to(term) + (term - term.detach())


def test_validation_uses_the_validation_split(tmp_path, monkeypatch):
    """Early stopping and the best checkpoint are chosen on data.val: choosing them on the
    test set would leak it into model selection."""
    trainer = Trainer(tiny_config(tmp_path), progress=False)
    real_evaluate = loop.evaluate_elbo
    evaluated = []

    def spy(model, data, *args, **kwargs):
        evaluated.append(data)
        return real_evaluate(model, data, *args, **kwargs)

    monkeypatch.setattr(loop, "evaluate_elbo", spy)
    trainer.fit()
    assert len(evaluated) == 2
    assert all(data is trainer.data.val for data in evaluated)


def test_resume_keeps_the_best_score_and_the_patience_count(tmp_path, monkeypatch):
    """A run stopped after epoch 3 and resumed takes the uninterrupted run's decisions: epoch 4
    (worse than epoch 2's best) is no improvement and must not overwrite checkpoint_best.pt,
    and it ends the patience of 2 there, as without the interruption."""
    scores = [-100.0, -99.0, -99.5, -101.0, -102.0, -103.0, -104.0, -105.0]
    patience = {"train.early_stopping_patience": 2}
    straight = scripted_run(monkeypatch, tmp_path, "straight", scores, **patience)
    scripted_run(monkeypatch, tmp_path, "resumed", scores[:3], **patience)
    resumed = scripted_run(monkeypatch, tmp_path, "resumed", scores, resume=True, **patience)
    assert (straight.epochs_completed, straight.best_epoch, straight.best_val_elbo, straight.stopped_early) == (
        4, 2, -99.0, True)
    assert (resumed.epochs_completed, resumed.best_epoch, resumed.best_val_elbo, resumed.stopped_early) == (
        4, 2, -99.0, True)
    fields = ("epoch", "val_elbo", "best_val_elbo", "improved")
    assert [[r[f] for f in fields] for r in read_log(resumed.run_dir)] == [
        [r[f] for f in fields] for r in read_log(straight.run_dir)]
    for summary in (straight, resumed):
        assert load_checkpoint(summary.run_dir / "checkpoint_best.pt")["epoch"] == 2
        last = load_checkpoint(summary.run_dir / "checkpoint_last.pt")
        assert (last["best_epoch"], last["best_val_elbo"], last["bad_epochs"]) == (2, -99.0, 2)


def test_training_rows_are_binarised_afresh_every_epoch(tmp_path, monkeypatch):
    """Dynamic binarisation: each step trains on Bernoulli draws of the grey training rows
    (values in {0, 1}, mean the grey mean), drawn anew each epoch, so one row comes out
    differently in two epochs (a fixed threshold would give the same picture every time)."""
    trainer = Trainer(tiny_config(tmp_path), progress=False)
    assert trainer.data.dynamic_binarization
    grey = trainer.data.train
    assert ((grey > 0) & (grey < 1)).any(dim=1).all()
    seen = []

    def record(x, indices, terms):
        seen.append((indices.clone(), x.detach().clone()))
        return terms

    on_training_steps(monkeypatch, trainer, record)
    trainer.fit()
    by_epoch = [torch.zeros_like(grey), torch.zeros_like(grey)]
    steps_per_epoch = len(seen) // 2
    for step, (indices, x) in enumerate(seen):
        assert torch.all((x == 0) | (x == 1))
        by_epoch[step // steps_per_epoch][indices] = x
    for drawn in by_epoch:
        assert float(drawn.mean()) == pytest.approx(float(grey.mean()), abs=0.01)
    assert (by_epoch[0] != by_epoch[1]).any(dim=1).all()


def test_the_loss_weights_the_kl_by_the_warmup_beta(tmp_path, monkeypatch):
    """With every example's recon and KL pinned, the logged training loss of epoch e is
    -(recon - beta_e * kl), beta_e = kl_weight(e, train.warmup_epochs) (here 1/4 and 1/2):
    the warm-up must reach the optimised loss, not only the log's beta field."""
    recon, kl = -50.0, 8.0
    trainer = Trainer(tiny_config(tmp_path, **{"train.warmup_epochs": 4}), progress=False)
    on_training_steps(monkeypatch, trainer, lambda x, indices, terms: type(terms)(
        recon=pinned(torch.full(indices.shape, recon), terms.recon),
        kl=pinned(torch.full(indices.shape, kl), terms.kl)))
    trainer.fit()
    log = read_log(trainer.files.root)
    assert [r["beta"] for r in log] == [kl_weight(1, 4), kl_weight(2, 4)] == [0.25, 0.5]
    for r in log:
        assert r["train_loss"] == pytest.approx(-(recon - r["beta"] * kl), rel=1e-6)
        assert r["train_kl"] == pytest.approx(kl, rel=1e-6)
        assert r["train_neg_recon"] == pytest.approx(-recon, rel=1e-6)


def test_logged_training_terms_are_means_over_examples(tmp_path, monkeypatch):
    """train_loss, train_kl and train_neg_recon are means over the epoch's examples, not over
    its batches: with per-row terms and a short last batch (300 rows in batches of 70) the
    two differ."""
    trainer = Trainer(tiny_config(tmp_path, **{"train.batch_size": 70}), progress=False)
    rows = []

    def by_row(x, indices, terms):
        rows.append(indices.clone())
        return type(terms)(recon=pinned(-(indices % 13).double() - 40.0, terms.recon),
                           kl=pinned(indices.double() / 10.0, terms.kl))

    on_training_steps(monkeypatch, trainer, by_row)
    trainer.fit()
    steps_per_epoch = len(rows) // 2
    assert [len(i) for i in rows[:steps_per_epoch]] == [70, 70, 70, 70, 20]
    for epoch, record in enumerate(read_log(trainer.files.root)):
        seen = torch.cat(rows[epoch * steps_per_epoch:(epoch + 1) * steps_per_epoch]).double()
        neg_recon, kl_mean = float((seen % 13 + 40.0).mean()), float((seen / 10.0).mean())
        assert record["train_kl"] == pytest.approx(kl_mean, rel=1e-6)
        assert record["train_neg_recon"] == pytest.approx(neg_recon, rel=1e-6)
        assert record["train_loss"] == pytest.approx(neg_recon + record["beta"] * kl_mean, rel=1e-6)


def test_validation_sees_the_exemplar_cache_of_the_current_encoder(tmp_path, monkeypatch):
    """The cache is re-encoded after each epoch, before validation: training steps leave rows
    encoded by earlier parameters (and in training mode), so the validation ELBO of the
    exemplar prior would otherwise be computed on stale means."""
    trainer = Trainer(tiny_config(tmp_path), progress=False)
    real_evaluate = loop.evaluate_elbo
    checked = []

    def check_cache_then_evaluate(model, *args, **kwargs):
        with evaluation_mode(model), torch.no_grad():
            current = model.encode(model.prior.exemplars)[0]
        assert model.prior.cache.is_fresh
        torch.testing.assert_close(model.prior.cache.means, current)
        checked.append(True)
        return real_evaluate(model, *args, **kwargs)

    monkeypatch.setattr(loop, "evaluate_elbo", check_cache_then_evaluate)
    trainer.fit()
    assert len(checked) == 2


def test_the_optimizer_uses_the_configured_learning_rate(tmp_path):
    """train.lr (here not the default 5e-4) is the optimizer's learning rate."""
    trainer = Trainer(tiny_config(tmp_path, **{"train.lr": 1e-3}), progress=False)
    assert [group["lr"] for group in trainer.optimizer.param_groups] == [1e-3]


def test_an_equal_validation_score_is_no_improvement(tmp_path, monkeypatch):
    """Only a strictly higher validation ELBO improves: a tie keeps the first epoch as the best
    (and its checkpoint) and counts towards the patience."""
    summary = scripted_run(monkeypatch, tmp_path, "run", [-100.0, -100.0, -100.0],
                           **{"train.early_stopping_patience": 2})
    assert (summary.best_epoch, summary.epochs_completed, summary.stopped_early) == (1, 3, True)
    assert [r["improved"] for r in read_log(summary.run_dir)] == [True, False, False]
    assert load_checkpoint(summary.run_dir / "checkpoint_best.pt")["epoch"] == 1
