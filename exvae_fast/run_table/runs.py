"""Paper-style tables of evaluated run folders (`exvae table`).

Each run folder holds config.json (written by `exvae train`) and, once evaluated,
metrics.json (`exvae evaluate`). Runs that differ only in their seed, their name and
folder, or settings that do not change the model (device, ops backend, batch sizes of
evaluation, data location; for your own "array" data the file is the data set) are
repetitions of one experiment: their metrics are averaged
(mean ± sample standard deviation over the runs, as in the paper's tables). Rows are
named as in the paper ("VAE w/ VampPrior (500)", "Exemplar ConvHVAE (retrieval, k=10)"),
one column per data set, one table per metric. When two experiments on one data set would
get the same row name, the settings in which they differ are added to it, so nothing is
averaged across different settings.

The evaluated split, checkpoint and importance-sample count are settings of an experiment.
When the experiments of a report were not all evaluated alike, every row names the
evaluation settings that differ ("VAE w/ VampPrior (500) (50 IS)", "(val split)") and the
notes name those common to all; a column holds no bold best when its rows were evaluated
differently in a way that changes the metric (split or checkpoint for every metric, and
the importance-sample count for the log-likelihood and bits/dim, not for the ELBO).

A run whose metrics.json evaluates an earlier best checkpoint than the one the run now
holds (trained further with `--no-eval`) is stale: it is left out of the tables and listed
in the notes. The best checkpoint's epoch is read from metrics.jsonl, as the training loop
chose it (the last epoch whose validation ELBO beat all earlier ones); a run without
metrics.jsonl is taken as evaluated. Renderings: Markdown (`markdown_report`), LaTeX
(`latex_report`), long records for CSV / JSON (`long_records`, `csv_text`) and a chart of
one metric (`metric_chart`).
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .train.config import DATASETS, config_to_dict, flatten, load_config_json
from .train.run_files import RunFiles

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


METRICS = (
    Metric("log_likelihood", "Test log-likelihood (nats, importance-weighted)", True, evaluation=EVALUATION_KEYS),
    Metric("bits_per_dim", "Bits per dimension", False, digits=4, evaluation=EVALUATION_KEYS),
    Metric("elbo", "Test ELBO (nats)", True),
    Metric("kl", "KL term of the ELBO (nats)", False),
    Metric("neg_recon", "Negative reconstruction term of the ELBO (nats)", False),
    Metric("active_units", "Active units (Var(mu) > threshold)", True, digits=1),
    Metric("knn_error.1", "1-NN classification error of the posterior means (%)", False, 100.0, 2),
    Metric("knn_error.10", "10-NN classification error of the posterior means (%)", False, 100.0, 2),
)
METRIC_KEYS = tuple(m.key for m in METRICS)


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
    """Evaluated runs grouped into experiments, each labelled (see the module docstring)."""
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
        return f"Exemplar {model} ({mode}" + (f", k={settings['prior.k']})" if mode == "retrieval" else ")")
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


def _dataset_order(experiments: Sequence[Experiment]) -> list[str]:
    present = {e.dataset for e in experiments}
    return [d for d in DATASETS if d in present] + sorted(present - set(DATASETS))


@dataclass(frozen=True)
class Cell:
    """One experiment's values of a metric, and whether its mean is its column's best."""

    values: list[float]
    best: bool


def metric_cells(experiments: Sequence[Experiment], metric: Metric) -> tuple[list[str], list[tuple[str, list]]]:
    """(data sets, rows (label, [Cell or None per data set])) of one metric; the best finite
    mean of a column with more than one experiment, all evaluated alike as far as the metric
    depends on it (`Metric.evaluation`), is marked; ([], []) when nothing measured it."""
    measured = [e for e in experiments if e.values(metric)]
    datasets = _dataset_order(measured)
    labels = list(dict.fromkeys(e.label for e in sorted(measured, key=_row_order)))
    cells = {(e.label, e.dataset): e.values(metric) for e in measured}
    best = {}
    for d in datasets:
        column = [e for e in measured if e.dataset == d]
        if set(_varying_evaluation(column)) & set(metric.evaluation):
            continue  # e.g. log-likelihoods with 50 and 1000 importance samples: not comparable
        means = [mean_std(e.values(metric))[0] for e in column]
        means = [m for m in means if math.isfinite(m)]  # a diverged run's NaN is shown, never best
        if len(means) > 1:  # nothing to compare in a column with one experiment
            best[d] = (max if metric.higher_is_better else min)(means)
    rows = []
    for label in labels:
        row = []
        for d in datasets:
            values = cells.get((label, d))
            row.append(None if not values else Cell(values, mean_std(values)[0] == best.get(d)))
        rows.append((label, row))
    return datasets, rows


def metric_table(experiments: Sequence[Experiment], metric: Metric) -> str | None:
    """Markdown table of one metric (rows: labels; columns: data sets), the best mean of each
    column in bold; None when no run measured it."""
    datasets, rows = metric_cells(experiments, metric)
    if not rows:
        return None
    body = []
    for label, cells in rows:
        texts = ["-" if c is None else mean_spread(c.values, metric.digits) for c in cells]
        body.append([label, *(f"**{t}**" if c is not None and c.best else t for t, c in zip(texts, cells))])
    return markdown_table(["model", *datasets], body)


LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                 "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
                 # bare in text, these print as other glyphs in LaTeX's default (OT1) encoding
                 "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def latex_table(experiments: Sequence[Experiment], metric: Metric) -> str | None:
    """A booktabs LaTeX table of one metric (cells "$m \\pm s$", the best in bold, the run
    count as in the Markdown table); None when no run measured it."""
    datasets, rows = metric_cells(experiments, metric)
    if not rows:
        return None
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(metric.title)}}}",
             r"\begin{tabular}{l" + "r" * len(datasets) + "}", r"\toprule",
             " & ".join(["Model", *map(latex_escape, datasets)]) + r" \\", r"\midrule"]
    for label, cells in rows:
        texts = []
        for c in cells:
            if c is None:
                texts.append("--")
                continue
            mean, std = mean_std(c.values)
            body = _latex_number(mean, metric.digits) + ("" if std is None else
                                                          rf" \pm {_latex_number(std, metric.digits)}")
            body = rf"\mathbf{{{body}}}" if c.best else body
            texts.append(f"${body}$" + ("" if std is None else f" ({len(c.values)})"))
        lines.append(" & ".join([latex_escape(label), *texts]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def _latex_number(value: float, digits: int) -> str:
    """value with `digits` decimals, for math mode; NaN and infinities as words and symbols
    ("$nan$" would typeset as the product of the variables n, a, n)."""
    if math.isnan(value):
        return r"\mathrm{NaN}"
    if math.isinf(value):
        return r"\infty" if value > 0 else r"-\infty"
    return f"{value:.{digits}f}"


def _row_order(e: Experiment) -> tuple:
    models = list(MODEL_NAMES)
    priors = ["standard", "mog", "vamp", "exemplar"]
    name, prior = e.settings["model.name"], e.settings["prior.name"]
    return (models.index(name) if name in models else len(models),
            priors.index(prior) if prior in priors else len(priors), _natural_key(e.label))


NUMBER = re.compile(r"(\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)")


def _natural_key(label: str) -> tuple:
    """Sort key comparing the numbers in a label by value: "(50)" < "(500)" < "(1000)",
    "k=5" < "k=10" (as text, "(1000)" and "k=10" would come first)."""
    parts = NUMBER.split(label)  # text, number, text, ...: the same kind at each position
    return tuple(float(p) if i % 2 else p for i, p in enumerate(parts))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1) -> str:
    """A GitHub Markdown table: the first `text_columns` columns left-aligned, the others
    (numbers) right-aligned."""
    align = [":---"] * text_columns + ["---:"] * (len(header) - text_columns)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_report(runs: Sequence[Run], metrics: Sequence[str] = METRIC_KEYS) -> str:
    """Every requested metric's table with a heading, then what was averaged and which runs
    are not evaluated yet."""
    experiments = group_experiments(runs)
    parts = [f"### {metric.title}\n\n{table}" for metric in _chosen(metrics)
             if (table := metric_table(experiments, metric)) is not None]
    if not parts:
        parts.append("No evaluated run holds the requested metrics.")
    return "\n\n".join(parts + [" ".join(_notes(runs, experiments))]) + "\n"


def metric_chart(runs: Sequence[Run], metric_key: str, path: str | Path) -> None:
    """A PNG of one metric: per data set, each experiment's mean with its sample standard
    deviation as an error bar (`plots.plot_metric_points`)."""
    from .plots import plot_metric_points

    metric = next((m for m in METRICS if m.key == metric_key), None)
    if metric is None:
        raise ValueError(f"metric: expected one of {', '.join(METRIC_KEYS)}, got {metric_key!r}")
    datasets, rows = metric_cells(group_experiments(runs), metric)
    if not rows:
        raise ValueError(f"metric: no evaluated run holds {metric_key!r}")
    panels = {d: [(label, *mean_std(cells[i].values)) for label, cells in rows if cells[i] is not None]
              for i, d in enumerate(datasets)}
    plot_metric_points(panels, path, metric.title, "mean ± sample std over seeds (exvae table)")


def latex_report(runs: Sequence[Run], metrics: Sequence[str] = METRIC_KEYS) -> str:
    """The same tables as LaTeX (booktabs), the notes as a comment."""
    experiments = group_experiments(runs)
    parts = ["% " + " ".join(_notes(runs, experiments)).replace("\n", " ")]
    parts += [table for metric in _chosen(metrics) if (table := latex_table(experiments, metric)) is not None]
    return "\n\n".join(parts) + "\n"


def _chosen(metrics: Sequence[str]) -> list[Metric]:
    return [m for m in METRICS if m.key in metrics]


def _notes(runs: Sequence[Run], experiments: Sequence[Experiment]) -> list[str]:
    """What the cells are, how the experiments were evaluated and which runs are not evaluated
    (no metrics.json, or a stale one)."""
    varying = _varying_evaluation(experiments)
    notes = [f"{len(runs)} run folder(s), {sum(len(e.runs) for e in experiments)} evaluated, in "
             f"{len(experiments)} experiment(s); cells: mean ± sample standard deviation (runs) over "
             "the runs of an experiment (same settings, other seeds), a cell without ± holds a single run; "
             "best mean of each column in bold."]
    if experiments and not varying:
        s = experiments[0].settings
        notes.append(f"Evaluated on the {s['eval.split']} split, {s['eval.checkpoint']} checkpoint, "
                     f"{s['eval.iw_samples']} importance samples per point.")
    elif varying:
        common = _evaluation_text(experiments[0].settings, [k for k in EVALUATION_KEYS if k not in varying])
        notes.append('Rows were evaluated differently: each names its evaluation in parentheses ("N IS": N '
                     "importance samples per point)" + (f"; all rows: {common}" if common else "") + ". A column "
                     "whose rows differ in a setting that changes its metric (split or checkpoint; importance "
                     "samples for log-likelihood and bits/dim, not the ELBO) has no bold best.")
    pending = [str(r.path) for r in runs if r.metrics is None and r.stale is None]
    if pending:
        notes.append("Not evaluated yet (no metrics.json; run `exvae evaluate`): " + ", ".join(pending))
    stale = [f"{r.path} (stale: {r.stale}; run `exvae evaluate {r.path}`)" for r in runs if r.stale]
    if stale:
        notes.append("Not tabulated, metrics.json evaluates an earlier best checkpoint: " + ", ".join(stale) + ".")
    return notes


def long_records(runs: Sequence[Run], metrics: Sequence[str] = METRIC_KEYS) -> list[dict[str, Any]]:
    """One record per (experiment, metric) that was measured: label, data set, mean, sample
    std (None for one run), count, and the seeds and run folders that measured it."""
    records = []
    for e in sorted(group_experiments(runs), key=lambda e: (e.dataset, _row_order(e))):
        for metric in _chosen(metrics):
            measured = e.measured(metric)
            if not measured:
                continue
            mean, std = mean_std([v for _, v in measured])
            records.append({"label": e.label, "dataset": e.dataset, "metric": metric.key, "mean": mean,
                            "std": std, "n": len(measured), "seeds": [r.config["train.seed"] for r, _ in measured],
                            "runs": [str(r.path) for r, _ in measured], "settings": e.settings})
    return records


def json_text(records: Sequence[dict[str, Any]]) -> str:
    """`long_records` as standard JSON: a NaN / infinite mean or std is written as null."""
    def finite(value: Any) -> Any:
        return None if isinstance(value, float) and not math.isfinite(value) else value
    rows = [{key: finite(value) for key, value in r.items()} for r in records]
    return json.dumps(rows, indent=2, allow_nan=False) + "\n"


def csv_text(records: Sequence[dict[str, Any]]) -> str:
    """`long_records` as CSV (seeds and runs joined by ';', settings left out)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["label", "dataset", "metric", "mean", "std", "n", "seeds", "runs"])
    for r in records:
        writer.writerow([r["label"], r["dataset"], r["metric"], repr(r["mean"]),
                         "" if r["std"] is None else repr(r["std"]), r["n"],
                         ";".join(map(str, r["seeds"])), ";".join(r["runs"])])
    return out.getvalue()
