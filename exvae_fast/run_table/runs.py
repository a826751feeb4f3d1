"""Reading run folders and grouping them into experiments, for `exvae table` (see the
package docstring, `exvae_fast.run_table`): the settings that make an experiment, the metrics
the tables show, the row labels, and the mean ± sample standard deviation of a cell.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..train.config import config_to_dict, flatten, load_config_json
from ..train.run_files import RunFiles

NOT_EXPERIMENT_SETTINGS = frozenset({
    "name", "out_dir", "train.seed", "train.device", "train.tensorboard", "train.eval_batch_size",
    "data.root", "prior.backend", "prior.index_threads", "eval.max_rows", "eval.num_sample_images",
    "eval.iw_samples",  # replaced by the evaluation's own count (`exvae evaluate --iw-samples`)
})
"""Config keys that do not change what is measured: runs differing only in these (and the
seed) are repetitions of one experiment."""

EVALUATION_KEYS = ("split", "checkpoint", "iw_samples")
"""metrics.json fields that are part of an experiment's identity (`eval.<key>` in the tables)."""
EVALUATION_NAMES = {"split": "{} split", "checkpoint": "{} checkpoint", "iw_samples": "{} IS"}
"""How a row names an evaluation setting ("50 IS": 50 importance samples per point)."""

MODEL_NAMES = {"vae": "VAE", "hvae": "HVAE", "convhvae": "ConvHVAE", "pixelhvae": "PixelHVAE",
               "celeba": "CelebAVAE"}


@dataclass(frozen=True)
class Metric:
    """One table: `key` is a metrics.json field ("knn_error.1" reads metrics["knn_error"]["1"])."""

    key: str
    title: str
    higher_is_better: bool
    scale: float = 1.0
    digits: int = 2
    evaluation: tuple[str, ...] = ("split", "checkpoint")
    """The EVALUATION_KEYS that change the metric: a column mixing them has no best."""

    def read(self, metrics: dict[str, Any]) -> float | None:
        value: Any = metrics
        for part in self.key.split("."):
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
        return None if value is None else float(value) * self.scale


KNN_KS = (1, 3, 5, 10)
"""Neighbour counts of the latent kNN classification error an evaluation writes (labelled data)."""

METRICS = (
    Metric("log_likelihood", "Test log-likelihood (nats, importance-weighted)", True, evaluation=EVALUATION_KEYS),
    Metric("bits_per_dim", "Bits per dimension", False, digits=4, evaluation=EVALUATION_KEYS),
    Metric("elbo", "Test ELBO (nats)", True),
    Metric("kl", "KL term of the ELBO (nats)", False),
    Metric("neg_recon", "Negative reconstruction term of the ELBO (nats)", False),
    Metric("active_units", "Active units (Var(mu) > threshold)", True, digits=1),
    *(Metric(f"knn_error.{k}", f"{k}-NN classification error of the posterior means (%)", False, 100.0, 2)
      for k in KNN_KS),
)
METRIC_KEYS = tuple(m.key for m in METRICS)
DEFAULT_METRIC_KEYS = tuple(key for key in METRIC_KEYS if key not in ("knn_error.3", "knn_error.5"))
"""The tables drawn unless asked for others: kNN errors for k = 1 and 10 only."""


@dataclass
class Run:
    """One run folder: its flattened config and its metrics (None until evaluated, and when
    stale: then `stale` says why, e.g. "evaluated at epoch 1, best checkpoint is epoch 2")."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any] | None
    stale: str | None = None


@dataclass
class Experiment:
    """Runs that repeat one experiment (same settings, other seeds)."""

    dataset: str
    settings: dict[str, Any]  # flattened config without NOT_EXPERIMENT_SETTINGS, plus eval.* keys
    runs: list[Run] = field(default_factory=list)
    label: str = ""

    def measured(self, metric: Metric) -> list[tuple[Run, float]]:
        """(run, value) for the runs that measured `metric`."""
        return [(r, v) for r in self.runs if (v := metric.read(r.metrics or {})) is not None]

    def values(self, metric: Metric) -> list[float]:
        return [v for _, v in self.measured(metric)]


def find_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Every run folder at or below `paths` (a folder holding config.json), sorted by path.

    Raises ValueError when a path does not exist or no run folder is found, and names the
    file when a config.json or metrics.json cannot be read.
    """
    if not paths:
        raise ValueError("runs: expected at least one run folder or parent folder")
    folders: set[Path] = set()
    for p in map(Path, paths):
        if not p.is_dir():
            raise ValueError(f"runs: {str(p)!r} is not a folder")
        folders.update(c.parent.resolve() for c in p.rglob("config.json"))
    if not folders:
        raise ValueError(f"runs: no run folder (a folder with config.json) in {', '.join(map(str, paths))}")
    return [_read_run(folder) for folder in sorted(folders)]


def _read_run(folder: Path) -> Run:
    files = RunFiles(folder)
    config = flatten(config_to_dict(load_config_json(files.config)))
    metrics = None
    if files.final_metrics.is_file():
        try:
            metrics = json.loads(files.final_metrics.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"runs: cannot read {files.final_metrics}: {e}") from e
        if not isinstance(metrics, dict):
            raise ValueError(f"runs: {files.final_metrics} does not hold a JSON object")
        best, evaluated = _best_epoch(files.metrics_log), metrics.get("epoch")
        if metrics.get("checkpoint") == "best" and None not in (best, evaluated) and best != evaluated:
            return Run(folder, config, None, f"evaluated at epoch {evaluated}, best checkpoint is epoch {best}")
    return Run(folder, config, metrics)


def _best_epoch(log: Path) -> int | None:
    """The epoch of checkpoint_best.pt as metrics.jsonl records it (train.loop saves it when
    the validation ELBO beats every earlier epoch's); None without a log or a validated epoch.
    A line torn by a crash is skipped (a resume drops it too)."""
    if not log.is_file():
        return None
    best, best_elbo = None, -math.inf
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        elbo = record.get("val_elbo") if isinstance(record, dict) else None
        if isinstance(elbo, (int, float)) and elbo > best_elbo:
            best, best_elbo = record.get("epoch"), elbo
    return best


def group_experiments(runs: Sequence[Run]) -> list[Experiment]:
    """Evaluated runs grouped into experiments, each labelled (see the package docstring)."""
    groups: dict[str, Experiment] = {}
    for run in runs:
        if run.metrics is None:
            continue
        settings = {k: v for k, v in run.config.items() if k not in NOT_EXPERIMENT_SETTINGS}
        settings.update({f"eval.{k}": run.metrics.get(k) for k in EVALUATION_KEYS})
        dataset = run.config["data.name"]
        if dataset == "array":  # your own images: the file is the data set
            settings["data.root"] = run.config["data.root"]
            dataset = f"array: {Path(str(run.config['data.root'])).name}"
        key = json.dumps(settings, sort_keys=True)
        groups.setdefault(key, Experiment(dataset, settings)).runs.append(run)
    experiments = list(groups.values())
    for e in experiments:
        e.runs.sort(key=lambda r: (r.config["train.seed"], str(r.path)))
    _label(experiments)
    return experiments


def row_name(settings: dict[str, Any]) -> str:
    """The paper's name for a (model, prior) pair, e.g. "HVAE w/ VampPrior (500)"."""
    model = MODEL_NAMES.get(settings["model.name"], settings["model.name"])
    prior = settings["prior.name"]
    if prior == "exemplar":
        mode = settings["prior.mode"]
        if mode != "retrieval":
            return f"Exemplar {model} ({mode})"
        own = ", own neighbours" if settings.get("prior.retrieval_mixture") == "own" else ""
        return f"Exemplar {model} ({mode}, k={settings['prior.k']}{own})"
    if prior == "standard":
        return f"{model} w/ Gaussian prior"
    kind = "VampPrior" if prior == "vamp" else "mixture of Gaussians prior"
    per_step = settings.get("prior.components_per_step")
    sub = f", {per_step} per step" if per_step is not None else ""
    return f"{model} w/ {kind} ({settings['prior.num_components']}{sub})"


def _varying_evaluation(experiments: Sequence[Experiment]) -> list[str]:
    """The EVALUATION_KEYS in which some of `experiments` differ."""
    return [k for k in EVALUATION_KEYS if len({json.dumps(e.settings[f"eval.{k}"]) for e in experiments}) > 1]


def _evaluation_text(settings: dict[str, Any], keys: Sequence[str]) -> str:
    """e.g. "test split, 50 IS" for keys ("split", "iw_samples")."""
    return ", ".join(EVALUATION_NAMES[k].format(settings[f"eval.{k}"]) for k in keys)


def _label(experiments: list[Experiment]) -> None:
    """Set each experiment's row label: its row name and, when the experiments were not all
    evaluated alike, its evaluation settings that differ ("(50 IS)"), plus the settings that
    tell it apart from the other experiments with that label on the same data set."""
    by_cell: dict[tuple[str, str], list[Experiment]] = {}
    varying = _varying_evaluation(experiments)
    for e in experiments:
        e.label = row_name(e.settings) + (f" ({_evaluation_text(e.settings, varying)})" if varying else "")
        by_cell.setdefault((e.dataset, e.label), []).append(e)
    for clash in by_cell.values():
        if len(clash) < 2:
            continue
        differing = sorted(k for k in clash[0].settings
                           if len({json.dumps(e.settings.get(k)) for e in clash}) > 1)
        for e in clash:
            e.label += " [" + ", ".join(f"{k}={e.settings.get(k)}" for k in differing) + "]"


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value) of a non-empty list."""
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def mean_spread(values: Sequence[float], digits: int = 2) -> str:
    """'mean' for one value, 'mean ± sample std (n)' for several."""
    mean, std = mean_std(values)
    if std is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f} ({len(values)})"
