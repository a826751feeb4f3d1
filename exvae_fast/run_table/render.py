"""Rendering experiments for `exvae table`: the Markdown and LaTeX tables and reports, the
chart of one metric, and long records as CSV / JSON.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Sequence

from ..train.config import DATASETS
from .runs import (DEFAULT_METRIC_KEYS, EVALUATION_KEYS, METRIC_KEYS, METRICS, MODEL_NAMES, Experiment, Metric, Run, _evaluation_text,
                   _varying_evaluation, group_experiments, mean_spread, mean_std)


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


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]],
                   text_columns: int | Collection[int] = 1) -> str:
    """A GitHub Markdown table: text columns left-aligned, the others (numbers) right-aligned.
    `text_columns`: how many leading columns hold text, or the indices of those columns."""
    text = set(range(text_columns)) if isinstance(text_columns, int) else set(text_columns)
    align = [":---" if i in text else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_report(runs: Sequence[Run], metrics: Sequence[str] = DEFAULT_METRIC_KEYS) -> str:
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
    from ..plots import plot_metric_points

    metric = next((m for m in METRICS if m.key == metric_key), None)
    if metric is None:
        raise ValueError(f"metric: expected one of {', '.join(METRIC_KEYS)}, got {metric_key!r}")
    datasets, rows = metric_cells(group_experiments(runs), metric)
    if not rows:
        raise ValueError(f"metric: no evaluated run holds {metric_key!r}")
    panels = {d: [(label, *mean_std(cells[i].values)) for label, cells in rows if cells[i] is not None]
              for i, d in enumerate(datasets)}
    plot_metric_points(panels, path, metric.title, "mean ± sample std over seeds (exvae table)")


def latex_report(runs: Sequence[Run], metrics: Sequence[str] = DEFAULT_METRIC_KEYS) -> str:
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


def long_records(runs: Sequence[Run], metrics: Sequence[str] = DEFAULT_METRIC_KEYS) -> list[dict[str, Any]]:
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
