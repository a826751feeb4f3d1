"""The training loop: gradient-normalised Adam on the negative ELBO with KL warm-up,
dynamic binarisation, per-epoch cache refresh and validation, early stopping, atomic
checkpoints and exact resume (paper, appendix L.2). Under torchrun, data-parallel across
processes with a sharded exemplar cache (train/ddp.py)."""
from __future__ import annotations

import gc
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import DataSplits
from ..environment import environment_record
from ..evaluation import evaluate_elbo, evaluation_mode
from ..progress import log_progress, show_progress
from ..models import LatentVariableModel
from ..ops.validation import NonFiniteError
from ..priors import ExemplarPrior
from .builder import build, load_data
from .checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from .config import RunConfig, config_from_dict, config_to_dict, flatten, save_config_json
from .ddp import (all_finite, epoch_order, full_state_dict, gather_objects, join, leave, mean_across,
                  rank_batches, rank_loss, shard_model, sum_across)
from .optim import NormalizedAdam
from .run_files import RunFiles, append_jsonl, truncate_jsonl, write_json


PROGRESS_EVERY = 20
"""Steps between updates of the progress bar's loss (each reads the device)."""

RESUME_MAY_CHANGE = ("name", "out_dir", "data.root", "train.epochs", "train.early_stopping_patience",
                     "train.device", "train.tensorboard", "train.eval_batch_size", "train.compile", "prior.backend",
                     "prior.index_threads", "eval.")
"""Config keys (a trailing dot: a whole section) that a resume may change: where and how long to
train and how to evaluate, never what is trained."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN/Inf; the last good checkpoint is left untouched."""


@dataclass
class TrainSummary:
    """What a finished (or stopped) run reports."""

    run_dir: Path
    epochs_completed: int  # the run's epochs in all, those of earlier sessions included
    best_epoch: int
    best_val_elbo: float
    stopped_early: bool
    seconds: float
    epochs_trained: int  # by this call: 0 when a resumed run had reached train.epochs already


@dataclass
class _Progress:
    """Loop state that a checkpoint carries besides the model and optimizer."""

    epoch: int = 0
    step: int = 0
    best_val_elbo: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0


def kl_weight(epoch: int, warmup_epochs: int) -> float:
    """KL warm-up beta for 1-based `epoch`: min(1, epoch / warmup_epochs); 1 without warm-up."""
    return 1.0 if warmup_epochs <= 0 else min(1.0, epoch / warmup_epochs)


def check_device(device: str, name: str = "train.device") -> torch.device:
    """The torch.device for a config string, with a clear error naming `name` when the
    string is not a device or CUDA is missing."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{name}: expected a device such as 'cpu', 'cuda' or 'cuda:1', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name}: {device!r} requested but CUDA is not available on this machine")
    return dev


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed python, numpy and torch (all devices). A team member of `rank` > 0 gets streams
    of its own, apart from every other (seed, rank)'s for seeds below 2^32 (seed + rank would
    give rank 1 of seed 0 the streams of seed 1); rank 0's are those of `seed` alone."""
    random.seed(seed + rank * 2**32)
    np.random.seed(seed % 2**32 if rank == 0 else [seed % 2**32, rank])
    torch.manual_seed((seed + rank * 2**32) % 2**64)


def refresh_exemplar_cache(model: LatentVariableModel, batch_size: int) -> None:
    """Re-encode every exemplar, in evaluation mode: before training (Algorithm 1 fills the
    cache) and after every epoch (the authors' code re-caches each epoch; the pseudo-code does not)."""
    if isinstance(model.prior, ExemplarPrior):
        with evaluation_mode(model):
            model.prior.refresh(model.encode, batch_size)


class Trainer:
    """Trains one run described by a RunConfig into `out_dir/name`.

    Launched by torchrun, each process is one member of a data-parallel team (`team`):
    train.batch_size rows per process and step, rank 0 writing the run folder (see
    train/ddp.py); the caller leaves the process group (`trainer.leave_team()`)."""

    def __init__(self, cfg: RunConfig, data: DataSplits | None = None, progress: bool = True) -> None:
        self.cfg = cfg
        self.team, self.device = join(check_device(cfg.train.device))
        self.files = RunFiles(Path(cfg.out_dir) / cfg.name)
        self.progress = progress and self.team.is_main
        seed_everything(cfg.train.seed, self.team.rank)
        self.data = data if data is not None else load_data(cfg)
        self.model = build(cfg, self.data, self.device)
        self.step_model = self.model  # the model or, in a team, its DDP wrapper
        self._forward = self._compiled(self.step_model)  # what training steps call
        self.optimizer = NormalizedAdam(self.model.parameters(), lr=cfg.train.lr)
        self.state = _Progress()
        self.train_x = self.data.train.to(self.device)
        self._writer = None

    # -- checkpoints ---------------------------------------------------------------
    def _checkpoint_state(self) -> dict:
        """The checkpoint payload (collective in a team: it gathers the sharded cache and
        every rank's RNG state)."""
        s = self.state
        rng = gather_objects(capture_rng_state(), self.team)
        state = {
            "model": full_state_dict(self.model),
            "optimizer": self.optimizer.state_dict(),
            "epoch": s.epoch, "step": s.step, "best_val_elbo": s.best_val_elbo,
            "best_epoch": s.best_epoch, "bad_epochs": s.bad_epochs,
            "rng": rng[0], "world_size": self.team.world,
            "config": config_to_dict(self.cfg),
        }
        if self.team.distributed:  # the other ranks' states too (rank 0's is "rng")
            state["rng_by_rank"] = rng
        return state

    def resume(self) -> None:
        """Continue exactly from the run folder's last checkpoint (written by a team of the
        same size: each rank restores its own RNG state)."""
        ckpt = load_checkpoint(self.files.last_checkpoint, map_location=self.device)
        check_resume_config(ckpt.get("config", {}), self.cfg, self.files.last_checkpoint)
        world = ckpt.get("world_size", 1)
        if world != self.team.world:
            raise ValueError(f"resume: {self.files.last_checkpoint} was written by {world} training "
                             f"process(es); resume with the same number (torchrun --nproc_per_node "
                             f"{world}), not {self.team.world}, to continue exactly")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.state = _Progress(ckpt["epoch"], ckpt["step"], ckpt["best_val_elbo"], ckpt["best_epoch"],
                               ckpt["bad_epochs"])
        restore_rng_state(ckpt.get("rng_by_rank", [ckpt["rng"]])[self.team.rank])
        if self.team.is_main:
            truncate_jsonl(self.files.metrics_log, self.state.epoch)

    def leave_team(self) -> None:
        """Leave the torchrun team's process group (`ddp.leave`; a no-op alone), dropping the
        DDP wrapper first: it holds the group, whose gloo worker threads would otherwise live
        on to the interpreter's exit and could abort the process there (SIGABRT). The Trainer
        trains no more afterwards; its model stays usable."""
        if self.step_model is not self.model:
            self.step_model = self._forward = None  # _forward: the wrapper or its compiled form
            gc.collect()
        leave(self.team)

    # -- the loop ------------------------------------------------------------------
    def fit(self, resume: bool = False, overwrite: bool = False) -> TrainSummary:
        """Train until `train.epochs` or early stopping; returns the summary.

        resume: continue from the run folder's last checkpoint. Without it a run folder that
        already holds a checkpoint is refused (ValueError), unless `overwrite` says to
        replace that run: a new seed or setting never silently erases a finished run.
        """
        if self.step_model is not self.model:
            raise RuntimeError("fit: a Trainer in a torchrun team trains once (its model is "
                               "sharded and wrapped now); to continue, create a new Trainer and "
                               "call fit(resume=True)")
        start = time.perf_counter()
        main = self.team.is_main
        # rank 0's view decides for the whole team (the folder may be on rank 0's disk only)
        if not resume and not overwrite and gather_objects(self.files.last_checkpoint.exists(), self.team)[0]:
            raise ValueError(f"run folder {self.files.root} already holds a trained run "
                             f"({self.files.last_checkpoint.name}): continue it with --resume "
                             f"{self.files.root}, train into another folder (--name / --out-dir), "
                             "or replace it with --overwrite")
        self.files.root.mkdir(parents=True, exist_ok=True)
        if resume:
            self.resume()
        elif main:  # a fresh start (or --overwrite): nothing of a former run stays to be misread
            for path in self.files.results():
                path.unlink()
        # in a team: shard the exemplar cache (the checkpoint held all of it) and wrap in DDP
        self.step_model = shard_model(self.model, self.team, self.device)
        self._forward = self._compiled(self.step_model)
        if not resume:
            refresh_exemplar_cache(self.model, self.cfg.train.eval_batch_size)  # Algorithm 1: fill the cache
        t = self.cfg.train
        first_epoch = self.state.epoch
        stopped_early = self.state.bad_epochs >= t.early_stopping_patience
        if main and (not resume or (first_epoch < t.epochs and not stopped_early)):
            # a resume with nothing to train leaves config.json describing the run it holds
            # (not, say, a train.epochs lowered below the epochs done)
            save_config_json(self.cfg, self.files.config)
            self._record_environment(resume)
        try:
            while self.state.epoch < t.epochs and not stopped_early:
                self.state.epoch += 1
                try:
                    record = self._train_epoch(self.state.epoch)
                    record.update(self._end_of_epoch(self.state.epoch))
                except NonFiniteError as err:  # an op refused NaN/Inf latents, means or log-variance
                    raise self._diverged(f"non-finite values reached the prior ({err})") from err
                if main:  # the record first: a crash before the checkpoint reruns the epoch (resume
                    # truncates the log to the checkpoint), never loses the epoch's record
                    append_jsonl(self.files.metrics_log, record)
                    self._log_tensorboard(record)
                    self._log_epoch_line(record)
                self._save_checkpoints(record["improved"])
                stopped_early = self.state.bad_epochs >= t.early_stopping_patience
        finally:
            if self._writer is not None:
                self._writer.close()
        s = self.state
        return TrainSummary(self.files.root, s.epoch, s.best_epoch, s.best_val_elbo, stopped_early,
                            time.perf_counter() - start, s.epoch - first_epoch)

    def _log_epoch_line(self, record: dict) -> None:
        """Under `log_progress` (progress asked for, stderr not a terminal: a log file, a batch
        job), one plain line per epoch on stderr in place of the bar."""
        if not log_progress(self.progress):
            return
        best = " (best)" if record["improved"] else ""
        print(f"epoch {record['epoch']}/{self.cfg.train.epochs}: train loss {record['train_loss']:.3f}, "
              f"val ELBO {record['val_elbo']:.3f}{best}, {record['train_seconds']:.1f} s",
              file=sys.stderr, flush=True)

    def _compiled(self, module: torch.nn.Module):
        """`module`, or its torch.compile wrapper under train.compile (weights and checkpoints
        stay the module's own)."""
        return torch.compile(module) if self.cfg.train.compile else module

    def _record_environment(self, resume: bool) -> None:
        """Append this start's or resume's versions, device and backends to environment.json
        (one record per session, so a run resumed elsewhere says so; a fresh start begins a
        new list). Provenance only: an unreadable earlier file is started afresh."""
        path = self.files.environment
        sessions = []
        if resume and path.is_file():
            try:
                sessions = list(json.loads(path.read_text(encoding="utf-8"))["sessions"])
            except (OSError, ValueError, KeyError, TypeError):
                sessions = []
        sessions.append({"event": "resume" if resume else "start", "epoch": self.state.epoch,
                         "world_size": self.team.world, **environment_record(self.device)})
        write_json(path, {"sessions": sessions})

    def _batches(self) -> list[tuple[torch.Tensor, int]]:
        """(this process's rows, the step's rows over all processes) of each step of the epoch
        (all of each batch when alone)."""
        order = epoch_order(self.train_x.shape[0], self.team, self.device)
        return rank_batches(order, self.cfg.train.batch_size, self.team, self.cfg.train.steps_per_epoch)

    def _train_epoch(self, epoch: int) -> dict:
        beta = kl_weight(epoch, self.cfg.train.warmup_epochs)
        self.model.train()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        seen = 0
        epoch_start = time.perf_counter()
        batches = self._batches()
        bar_shown = show_progress(self.progress)
        bar = tqdm(batches, desc=f"epoch {epoch}", disable=not bar_shown, leave=False)
        for i, (idx, batch_rows) in enumerate(bar):
            idx = idx.to(self.device)
            x = self.train_x[idx]
            if self.data.dynamic_binarization:
                x = torch.bernoulli(x)
            terms = self._forward(x, indices=idx)
            loss = -(terms.recon - beta * terms.kl).mean()
            if not all_finite(loss, self.team):
                where = f" on some rank (here {float(loss.detach())})" if self.team.distributed else ""
                raise self._diverged(f"loss became {'non-finite' if where else float(loss.detach())}{where}")
            self.optimizer.zero_grad(set_to_none=True)
            rank_loss(loss, x.shape[0], batch_rows, self.team).backward()
            self.optimizer.step()
            self.state.step += 1
            cache = getattr(self.model.prior, "cache", None)
            if cache is not None:
                cache.advance()
            n = x.shape[0]
            sums += torch.stack([loss.detach() * n, terms.kl.detach().sum(), -terms.recon.detach().sum()]).double()
            seen += n
            if bar_shown and i % PROGRESS_EVERY == 0:  # a host read: not every step
                bar.set_postfix(loss=f"{float(loss.detach()):.2f}")
        sums = sum_across(torch.cat([sums, sums.new_tensor([seen])]), self.team)
        loss_sum, kl_sum, rec_sum = (sums[:3] / sums[3]).tolist()
        return {"epoch": epoch, "step": self.state.step, "beta": beta, "train_loss": loss_sum,
                "train_kl": kl_sum, "train_neg_recon": rec_sum,
                "train_seconds": time.perf_counter() - epoch_start}

    def _end_of_epoch(self, epoch: int) -> dict:
        t = self.cfg.train
        refresh_exemplar_cache(self.model, t.eval_batch_size)  # serves validation and the next epoch
        val = evaluate_elbo(self.model, self.data.val, batch_size=t.eval_batch_size, progress=False)
        val = mean_across(val, self.team, self.device)  # one decision for every rank
        if not all_finite(_finite_state(self.model), self.team):
            raise self._diverged("the parameters became non-finite")
        if not math.isfinite(val["elbo"]):  # equal on every rank: averaged above
            raise self._diverged(f"the validation ELBO became {val['elbo']}")
        s = self.state
        improved = val["elbo"] > s.best_val_elbo
        if improved:
            s.best_val_elbo, s.best_epoch, s.bad_epochs = val["elbo"], epoch, 0
        else:
            s.bad_epochs += 1
        record = {"val_elbo": val["elbo"], "val_kl": val["kl"], "val_neg_recon": val["neg_recon"],
                  "best_val_elbo": s.best_val_elbo, "improved": improved}
        if isinstance(self.model.prior, ExemplarPrior):
            record["prior_log_var"] = float(self.model.prior.log_var.detach())
        return record

    def _save_checkpoints(self, improved: bool) -> None:
        """Write the last checkpoint, and the best one when the epoch `improved` (collective in
        a team, rank 0 writes); only after the end-of-epoch checks passed."""
        state = self._checkpoint_state()
        if self.team.is_main:
            if improved:
                save_checkpoint(self.files.best_checkpoint, state)
            save_checkpoint(self.files.last_checkpoint, state)

    def _diverged(self, what: str) -> TrainingDiverged:
        """The error that stops a diverged run: what happened, where, and the checkpoint that
        is kept (the previous epoch's: a checkpoint is only written after the checks pass)."""
        kept = (f"the last good checkpoint is {self.files.last_checkpoint} (epoch {self.state.epoch - 1})"
                if self.state.epoch > 1 else "no checkpoint was written (it diverged in the first epoch)")
        return TrainingDiverged(
            f"{what} in epoch {self.state.epoch}, after {self.state.step} optimisation steps; training "
            f"stopped; {kept}. Try a lower train.lr or another seed.")

    def _log_tensorboard(self, record: dict) -> None:
        if not self.cfg.train.tensorboard:
            return
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:  # optional dependency
                raise RuntimeError("train.tensorboard: install the 'tensorboard' package "
                                   "(pip install 'exvae-fast[tensorboard]')") from err
            self._writer = SummaryWriter(str(self.files.tensorboard))
        for key, value in record.items():
            if isinstance(value, (int, float)) and key != "epoch":
                self._writer.add_scalar(key, value, record["epoch"])


def _finite_state(model: torch.nn.Module) -> torch.Tensor:
    """0-dim tensor, 0 when every floating parameter and buffer (the exemplar cache too) is
    finite and NaN otherwise (x * 0 is NaN exactly for x = NaN or +-inf), for `all_finite`;
    read once per epoch, before a checkpoint may be written."""
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    return torch.stack([(t.detach() * 0).sum(dtype=torch.float32) for t in tensors]).sum() if tensors \
        else torch.zeros(())


def differing_settings(saved: dict, cfg: RunConfig) -> list[tuple[str, Any, Any]]:
    """(key, saved value, cfg's value) of every setting of what is trained (outside
    RESUME_MAY_CHANGE) that differs between `saved` (a checkpoint's `config_to_dict`) and cfg."""
    before, now = flatten(saved), flatten(config_to_dict(cfg))
    return [(key, before[key], value) for key, value in now.items()
            if key in before and before[key] != value and key not in RESUME_MAY_CHANGE
            and f"{key.partition('.')[0]}." not in RESUME_MAY_CHANGE]


def check_resume_config(saved: dict, cfg: RunConfig, checkpoint: Path) -> None:
    """ValueError naming the first setting of `cfg` that differs from `saved` (the checkpoint's
    `config_to_dict`) outside RESUME_MAY_CHANGE: a resume continues the checkpoint's run, whose
    restored optimizer and RNG would silently keep the old settings (or fail to load)."""
    differing = differing_settings(saved, cfg)
    if differing:
        key, before, value = differing[0]
        allowed = ", ".join(k + "*" if k.endswith(".") else k for k in RESUME_MAY_CHANGE)
        raise ValueError(
            f"resume: {key} is {value!r} but {checkpoint} was trained with {before!r}; a resume "
            f"continues the same run, so only {allowed} may change; train a new run (another "
            "--name) for other settings")


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved config saved in a run folder."""
    path = RunFiles(Path(run_dir)).config
    if not Path(run_dir).is_dir():
        what = "is a file, not a run folder" if Path(run_dir).exists() else "does not exist"
        raise FileNotFoundError(f"run_dir: {run_dir} {what} (a run folder holds config.json and "
                                "checkpoint_*.pt)")
    if not path.exists():
        raise FileNotFoundError(f"run_dir: no config.json in {run_dir} (is it a run folder?)")
    return config_from_dict(json.loads(path.read_text(encoding="utf-8")))
