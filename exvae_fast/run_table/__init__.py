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

The package reads and groups runs in `runs` and renders them in `render`.
"""
from .render import (LATEX_SPECIAL, NUMBER, Cell, csv_text, json_text, latex_escape, latex_report, latex_table,
                     long_records, markdown_report, markdown_table, metric_cells, metric_chart, metric_table)
from .runs import (DEFAULT_METRIC_KEYS, EVALUATION_KEYS, EVALUATION_NAMES, METRIC_KEYS, METRICS, MODEL_NAMES, NOT_EXPERIMENT_SETTINGS,
                   Experiment, Metric, Run, find_runs, group_experiments, mean_spread, mean_std, row_name)

__all__ = [
    # runs: reading and grouping
    "NOT_EXPERIMENT_SETTINGS", "EVALUATION_KEYS", "EVALUATION_NAMES", "MODEL_NAMES", "Metric", "METRICS", "METRIC_KEYS", "DEFAULT_METRIC_KEYS",
    "Run", "Experiment", "find_runs", "group_experiments", "row_name", "mean_std", "mean_spread",
    # render: tables, reports, chart, records
    "Cell", "metric_cells", "metric_table", "LATEX_SPECIAL", "NUMBER", "latex_escape", "latex_table", "latex_report",
    "markdown_table", "markdown_report", "metric_chart", "long_records", "json_text", "csv_text",
]
