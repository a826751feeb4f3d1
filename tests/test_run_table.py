"""`exvae table`: grouping of run folders into experiments, the paper-style tables, CSV/JSON."""
from __future__ import annotations

import csv
import io
import json
import statistics

import pytest

from exvae_fast.cli import main
from exvae_fast.run_table import (METRICS, find_runs, group_experiments, json_text, latex_escape, latex_report,
                                  long_records, markdown_report, mean_spread, metric_table)
from exvae_fast.train.config import apply_overrides, RunConfig, save_config_json

METRIC = {m.key: m for m in METRICS}


def make_run(parent, name, overrides=(), metrics=None):
    """A run folder as `exvae train` leaves it: config.json and, when evaluated, metrics.json."""
    cfg = apply_overrides(RunConfig(), [f"name={name}", f"out_dir={parent}", *overrides])
    folder = parent / name
    folder.mkdir(parents=True)
    save_config_json(cfg, folder / "config.json")
    if metrics is not None:
        full = {"split": "test", "checkpoint": "best", "iw_samples": 1000, **metrics}
        (folder / "metrics.json").write_text(json.dumps(full))
    return folder


def metrics_of(ll, kl=20.0, units=30, knn=None):
    m = {"log_likelihood": ll, "elbo": ll - 5.0, "kl": kl, "neg_recon": -(ll - 5.0) - kl, "active_units": units}
    if knn is not None:
        m["knn_error"] = {"1": knn, "10": knn / 2}
    return m


@pytest.fixture
def study(tmp_path):
    """Gaussian x3 seeds, VampPrior x2 (one on another device and backend), exemplar x2 on
    mnist-5k; Gaussian x1 on synthetic data; one run not evaluated yet."""
    lls = {"standard": [-100.0, -101.0, -99.5], "vamp": [-98.0, -97.0], "exemplar": [-95.0, -96.0]}
    for seed, ll in enumerate(lls["standard"]):
        make_run(tmp_path, f"std-s{seed}", ["prior.name=standard", f"train.seed={seed}"],
                 metrics_of(ll, knn=0.06))
    make_run(tmp_path, "vamp-s0", ["prior.name=vamp", "train.seed=0"], metrics_of(lls["vamp"][0], units=40))
    make_run(tmp_path / "elsewhere", "vamp-s1", ["prior.name=vamp", "train.seed=1", "train.device=cuda",
                                                 "prior.backend=torch"], metrics_of(lls["vamp"][1], units=38))
    for seed, ll in enumerate(lls["exemplar"]):
        make_run(tmp_path, f"ex-s{seed}", ["prior.name=exemplar", f"train.seed={seed}"],
                 metrics_of(ll, kl=18.0, knn=0.04))
    make_run(tmp_path, "syn", ["prior.name=standard", "data.name=synthetic"], metrics_of(-150.0))
    make_run(tmp_path, "pending", ["prior.name=exemplar", "prior.mode=exact"])
    return tmp_path, lls


def test_runs_repeating_one_experiment_are_averaged(study):
    parent, lls = study
    runs = find_runs([parent])
    assert len(runs) == 9 and sum(r.metrics is None for r in runs) == 1
    experiments = {(e.dataset, e.label): e for e in group_experiments(runs)}
    assert sorted(experiments) == [
        ("mnist-5k", "Exemplar VAE (retrieval, k=10)"), ("mnist-5k", "VAE w/ Gaussian prior"),
        ("mnist-5k", "VAE w/ VampPrior (500)"), ("synthetic", "VAE w/ Gaussian prior")]
    vamp = experiments[("mnist-5k", "VAE w/ VampPrior (500)")]
    assert len(vamp.runs) == 2  # device and backend do not make another experiment
    records = {(r["dataset"], r["label"], r["metric"]): r for r in long_records(runs)}
    gauss = records[("mnist-5k", "VAE w/ Gaussian prior", "log_likelihood")]
    assert gauss["mean"] == pytest.approx(statistics.mean(lls["standard"]))
    assert gauss["std"] == pytest.approx(statistics.stdev(lls["standard"]))
    assert gauss["n"] == 3 and gauss["seeds"] == [0, 1, 2]
    single = records[("synthetic", "VAE w/ Gaussian prior", "log_likelihood")]
    assert single["std"] is None and single["n"] == 1
    knn = records[("mnist-5k", "Exemplar VAE (retrieval, k=10)", "knn_error.1")]
    assert knn["mean"] == pytest.approx(4.0)  # in percent
    assert ("mnist-5k", "VAE w/ VampPrior (500)", "knn_error.1") not in records  # not measured there


def test_a_record_names_only_the_runs_that_measured_its_metric(tmp_path):
    make_run(tmp_path, "s0", ["train.seed=0"], metrics_of(-95.0, knn=0.04))
    make_run(tmp_path, "s1", ["train.seed=1"], metrics_of(-96.0))  # evaluated without labels
    records = {r["metric"]: r for r in long_records(find_runs([tmp_path]))}
    assert records["log_likelihood"]["seeds"] == [0, 1] and records["log_likelihood"]["n"] == 2
    knn = records["knn_error.1"]
    assert knn["n"] == 1 and knn["seeds"] == [0] and knn["runs"] == [str((tmp_path / "s0").resolve())]


def test_json_records_write_a_nan_mean_as_null(tmp_path):
    make_run(tmp_path, "s0", [], metrics_of(float("nan")))
    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")
    records = json.loads(json_text(long_records(find_runs([tmp_path]))), parse_constant=refuse)
    assert {r["metric"]: r["mean"] for r in records}["log_likelihood"] is None


def test_markdown_tables_have_one_column_per_dataset_and_bold_best(study):
    parent, lls = study
    runs = find_runs([parent])
    table = metric_table(group_experiments(runs), METRIC["log_likelihood"]).splitlines()
    assert table[0] == "| model | mnist-5k | synthetic |"
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table[2:]}
    assert list(rows) == ["VAE w/ Gaussian prior", "VAE w/ VampPrior (500)", "Exemplar VAE (retrieval, k=10)"]
    best = mean_spread(lls["exemplar"])
    assert f"**{best}**" in rows["Exemplar VAE (retrieval, k=10)"]
    assert "**" not in rows["VAE w/ VampPrior (500)"]
    # a column with a single experiment has nothing to compare: no bold
    assert rows["VAE w/ Gaussian prior"].endswith("| -150.00 |")
    assert rows["VAE w/ VampPrior (500)"].endswith("| - |")
    kl = metric_table(group_experiments(runs), METRIC["kl"])
    assert "**18.00 ± 0.00 (2)**" in kl  # lower is better for KL
    report = markdown_report(runs)
    assert "### Test log-likelihood" in report and "### Active units" in report
    assert "### Bits per dimension" not in report  # no run measured it
    assert "Not evaluated yet" in report and "pending" in report
    assert "8 evaluated, in 4 experiment(s)" in report


def test_different_settings_are_never_averaged(tmp_path):
    make_run(tmp_path, "a", ["prior.name=standard", "train.lr=0.0005"], metrics_of(-100.0))
    make_run(tmp_path, "b", ["prior.name=standard", "train.lr=0.001"], metrics_of(-102.0))
    make_run(tmp_path, "c", ["prior.name=standard", "train.lr=0.001"], metrics_of(-104.0))
    labels = sorted(e.label for e in group_experiments(find_runs([tmp_path])))
    assert labels == ["VAE w/ Gaussian prior [train.lr=0.0005]", "VAE w/ Gaussian prior [train.lr=0.001]"]


def test_a_nan_result_is_shown_but_never_best(tmp_path):
    make_run(tmp_path, "a", ["prior.name=standard"], metrics_of(float("nan")))
    make_run(tmp_path, "b", ["prior.name=vamp"], metrics_of(-100.0))
    make_run(tmp_path, "c", ["prior.name=exemplar"], metrics_of(-101.0))
    table = metric_table(group_experiments(find_runs([tmp_path])), METRIC["log_likelihood"])
    assert "| VAE w/ Gaussian prior | nan |" in table and "**-100.00**" in table


def test_evaluation_settings_are_part_of_an_experiment(tmp_path):
    make_run(tmp_path, "a", ["prior.name=standard"], metrics_of(-100.0))
    b = make_run(tmp_path, "b", ["prior.name=standard", "train.seed=1"], metrics_of(-101.0))
    metrics = json.loads((b / "metrics.json").read_text())
    (b / "metrics.json").write_text(json.dumps({**metrics, "iw_samples": 5000}))
    labels = sorted(e.label for e in group_experiments(find_runs([tmp_path])))
    assert labels == ["VAE w/ Gaussian prior [eval.iw_samples=1000]", "VAE w/ Gaussian prior [eval.iw_samples=5000]"]


def test_own_data_sets_are_told_apart_by_their_file(tmp_path):
    for i, root in enumerate(["/data/a/faces.npz", "/data/b/faces.npz", "/elsewhere/shoes.npz"]):
        make_run(tmp_path, f"r{i}", ["prior.name=standard", "data.name=array", f"data.root={root}"],
                 metrics_of(-100.0 - i))
    experiments = group_experiments(find_runs([tmp_path]))
    assert sorted((e.dataset, e.label) for e in experiments) == [
        ("array: faces.npz", "VAE w/ Gaussian prior [data.root=/data/a/faces.npz]"),
        ("array: faces.npz", "VAE w/ Gaussian prior [data.root=/data/b/faces.npz]"),
        ("array: shoes.npz", "VAE w/ Gaussian prior")]


def test_prior_row_names(tmp_path):
    make_run(tmp_path, "a", ["model.name=convhvae", "prior.name=vamp", "prior.num_components=1000",
                             "prior.components_per_step=200"], metrics_of(-90.0))
    make_run(tmp_path, "b", ["model.name=hvae", "prior.name=mog"], metrics_of(-91.0))
    make_run(tmp_path, "c", ["model.name=hvae", "prior.name=exemplar", "prior.mode=exact"], metrics_of(-89.0))
    labels = [e.label for e in group_experiments(find_runs([tmp_path]))]
    assert labels == ["ConvHVAE w/ VampPrior (1000, 200 per step)", "HVAE w/ mixture of Gaussians prior (500)",
                      "Exemplar HVAE (exact)"]


def test_bad_input_names_the_problem(tmp_path):
    with pytest.raises(ValueError, match="no run folder"):
        find_runs([tmp_path])
    with pytest.raises(ValueError, match="is not a folder"):
        find_runs([tmp_path / "missing"])
    with pytest.raises(ValueError, match="at least one"):
        find_runs([])
    folder = make_run(tmp_path, "a", ["prior.name=standard"])
    (folder / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="metrics.json"):
        find_runs([tmp_path])


def test_cli_writes_markdown_csv_and_json(study, tmp_path_factory, capsys):
    parent, lls = study
    out = tmp_path_factory.mktemp("tables")
    status = main(["table", str(parent), "--metrics", "log_likelihood,active_units", "--out", str(out / "t.md"),
                   "--csv", str(out / "t.csv"), "--json", str(out / "t.json")])
    assert status == 0
    printed = capsys.readouterr().out
    assert printed == (out / "t.md").read_text()
    assert "### Active units" in printed and "### KL" not in printed
    rows = list(csv.DictReader(io.StringIO((out / "t.csv").read_text())))
    assert {r["metric"] for r in rows} == {"log_likelihood", "active_units"}
    vamp = next(r for r in rows if r["label"] == "VAE w/ VampPrior (500)" and r["metric"] == "log_likelihood")
    assert float(vamp["mean"]) == pytest.approx(statistics.mean(lls["vamp"])) and vamp["seeds"] == "0;1"
    records = json.loads((out / "t.json").read_text())
    assert len(records) == len(rows) and all("settings" in r for r in records)


def test_cli_bad_metrics_is_one_line(study, capsys):
    parent, _ = study
    assert main(["table", str(parent), "--metrics", "log_likelihood,fid"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--metrics" in err


def test_latex_tables_for_a_paper(study, tmp_path):
    parent, lls = study
    text = latex_report(find_runs([parent]), ["log_likelihood"])
    assert text.startswith("% 9 run folder(s), 8 evaluated")
    assert r"\caption{Test log-likelihood (nats, importance-weighted)}" in text
    assert r"\begin{tabular}{lrr}" in text and r"\toprule" in text and r"\bottomrule" in text
    assert r"Model & mnist-5k & synthetic \\" in text
    assert r"Exemplar VAE (retrieval, k=10) & $\mathbf{-95.50 \pm 0.71}$ (2) & -- \\" in text
    assert r"VAE w/ Gaussian prior & $-100.17 \pm 0.76$ (3) & $-150.00$ \\" in text
    assert latex_escape("a_b & 50% {x}") == r"a\_b \& 50\% \{x\}"
    out = tmp_path / "t.tex"
    assert main(["table", str(parent), "--latex", str(out)]) == 0
    assert out.read_text().count(r"\begin{table}") == 7  # every measured metric (no bits/dim here)


def test_a_chart_of_one_metric(study, tmp_path):
    from PIL import Image

    from exvae_fast.run_table import metric_chart

    parent, _ = study
    out = tmp_path / "ll.png"
    assert main(["table", str(parent), "--png", str(out)]) == 0
    with Image.open(out) as img:
        assert img.width == 1100 and img.height > 100  # two data sets: two panels of 5.5 inches at 100 dpi
    runs = find_runs([parent])
    metric_chart(runs, "active_units", tmp_path / "units.png")
    with pytest.raises(ValueError, match="expected one of"):
        metric_chart(runs, "fid", tmp_path / "x.png")
    with pytest.raises(ValueError, match="no evaluated run holds 'bits_per_dim'"):
        metric_chart(runs, "bits_per_dim", tmp_path / "x.png")


def test_comparison_signs_are_escaped():
    # In LaTeX's default OT1 encoding a bare ">" prints as an inverted question mark.
    assert latex_escape("Var(mu) > threshold < 1 | 2") == \
        r"Var(mu) \textgreater{} threshold \textless{} 1 \textbar{} 2"


def test_active_units_caption_has_no_bare_greater_sign(tmp_path):
    make_run(tmp_path, "a", ["prior.name=standard"], metrics_of(-90.0))
    text = latex_report(find_runs([tmp_path]), ["active_units"])
    caption = next(line for line in text.splitlines() if line.startswith(r"\caption"))
    assert ">" not in caption and r"\textgreater{}" in caption
