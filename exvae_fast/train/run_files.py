"""Where a run keeps its files, and the JSON-lines metrics log."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..atomic_io import atomic_write_text


@dataclass(frozen=True)
class RunFiles:
    """The files of one run folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def last_checkpoint(self) -> Path:
        return self.root / "checkpoint_last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.root / "checkpoint_best.pt"

    @property
    def metrics_log(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def environment(self) -> Path:
        return self.root / "environment.json"

    @property
    def final_metrics(self) -> Path:
        """The test metrics of the best checkpoint (what `exvae train` ends with)."""
        return self.root / "metrics.json"

    def metrics_for(self, split: str, checkpoint: str) -> Path:
        """metrics.json for the test split of the best checkpoint, else metrics_<split>_<checkpoint>.json,
        so that evaluating another split or checkpoint never replaces the test metrics."""
        if (split, checkpoint) == ("test", "best"):
            return self.final_metrics
        return self.root / f"metrics_{split}_{checkpoint}.json"

    @property
    def summary(self) -> Path:
        """report.md: the evaluation at a glance (exvae_fast.run_summary)."""
        return self.root / "report.md"

    @property
    def loss_curve(self) -> Path:
        return self.root / "loss_curve.png"

    @property
    def samples(self) -> Path:
        return self.root / "samples.png"

    @property
    def exemplar_samples(self) -> Path:
        return self.root / "exemplar_samples.png"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    def results(self) -> list[Path]:
        """The files a run writes that describe its weights (checkpoints, metrics, pictures),
        present in the folder; what `--overwrite` removes before a new run starts, so that no
        old checkpoint or metric is ever read with the new run's config."""
        named = [self.best_checkpoint, self.last_checkpoint, self.metrics_log, self.final_metrics,
                 self.summary, self.loss_curve, self.samples, self.exemplar_samples]
        patterns = ("metrics_*_*.json", "latent_*.png")
        found = [p for p in named if p.is_file()]
        return found + sorted(p for pattern in patterns for p in self.root.glob(pattern) if p.is_file())


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON record as a line and flush it to disk (a crash loses no epoch)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def truncate_jsonl(path: Path, last_epoch: int) -> None:
    """Drop records of epochs after `last_epoch` (written after the checkpoint a resume starts
    from), and a last line torn by a crash during `append_jsonl`."""
    if not path.exists():
        return
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if lines and not _is_json(lines[-1]):
        lines.pop()
    kept = [line for line in lines if json.loads(line).get("epoch", 0) <= last_epoch]
    text = "".join(line + "\n" for line in kept)
    atomic_write_text(path, text)


def _is_json(line: str) -> bool:
    """Whether `line` parses as JSON."""
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (temp file + rename)."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    atomic_write_text(path, text)
