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
    assert labels == ["VAE w/ Gaussian prior (1000 IS)", "VAE w/ Gaussian prior (5000 IS)"]


def write_log(folder, val_elbos):
    """metrics.jsonl as the training loop writes it: one record per epoch with the validation
    ELBO, the best so far and whether the epoch improved on it (and saved checkpoint_best.pt)."""
    best, lines = float("-inf"), []
    for epoch, elbo in enumerate(val_elbos, start=1):
        improved = elbo > best
        best = max(best, elbo)
        lines.append(json.dumps({"epoch": epoch, "val_elbo": elbo, "best_val_elbo": best, "improved": improved}))
    (folder / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))


def test_a_run_evaluated_before_its_best_checkpoint_changed_is_stale(tmp_path):
    # `exvae train --resume RUN --set train.epochs=2 --no-eval`: epoch 2 became the best
    # checkpoint, metrics.json still evaluates epoch 1's.
    stale = make_run(tmp_path, "stale", ["prior.name=standard"], {**metrics_of(-100.0), "epoch": 1})
    write_log(stale, [-110.0, -105.0])
    # epoch 2 did not improve: checkpoint_best.pt is still epoch 1's, metrics.json is current
    current = make_run(tmp_path, "current", ["prior.name=vamp"], {**metrics_of(-98.0), "epoch": 1})
    write_log(current, [-110.0, -112.0])
    make_run(tmp_path, "nolog", ["prior.name=exemplar"], {**metrics_of(-95.0), "epoch": 1})  # no metrics.jsonl
    runs = {r.path.name: r for r in find_runs([tmp_path])}
    assert runs["stale"].metrics is None
    assert runs["stale"].stale == "evaluated at epoch 1, best checkpoint is epoch 2"
    assert runs["current"].metrics is not None and runs["current"].stale is None
    assert runs["nolog"].metrics is not None and runs["nolog"].stale is None
    report = markdown_report(list(runs.values()), ["log_likelihood"])
    assert "VAE w/ Gaussian prior" not in report and "-100.00" not in report  # its old numbers are not shown
    assert "3 run folder(s), 2 evaluated" in report
    path = str(stale.resolve())
    assert (f"{path} (stale: evaluated at epoch 1, best checkpoint is epoch 2; run `exvae evaluate {path}`)"
            in report)
    assert "Not evaluated yet (no metrics.json" not in report  # the stale run has one
    assert "stale" in latex_report(list(runs.values()), ["log_likelihood"]).splitlines()[0]


def test_a_torn_last_log_line_does_not_hide_the_best_epoch(tmp_path):
    folder = make_run(tmp_path, "a", ["prior.name=standard"], {**metrics_of(-100.0), "epoch": 2})
    write_log(folder, [-110.0, -105.0])
    with open(folder / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "val_el')  # a crash during append_jsonl
    (run,) = find_runs([tmp_path])
    assert run.metrics is not None and run.stale is None


def test_rows_evaluated_with_different_importance_samples_name_them(tmp_path):
    make_run(tmp_path, "std", ["prior.name=standard"], metrics_of(-100.0))
    vamp = make_run(tmp_path, "vamp", ["prior.name=vamp"], metrics_of(-90.0))
    metrics = json.loads((vamp / "metrics.json").read_text())
    (vamp / "metrics.json").write_text(json.dumps({**metrics, "iw_samples": 50}))
    runs = find_runs([tmp_path])
    assert sorted(e.label for e in group_experiments(runs)) == [
        "VAE w/ Gaussian prior (1000 IS)", "VAE w/ VampPrior (500) (50 IS)"]
    ll = metric_table(group_experiments(runs), METRIC["log_likelihood"])
    assert "| VAE w/ VampPrior (500) (50 IS) | -90.00 |" in ll and "**" not in ll  # not comparable
    elbo = metric_table(group_experiments(runs), METRIC["elbo"])
    assert "| VAE w/ VampPrior (500) (50 IS) | **-95.00** |" in elbo  # the ELBO does not use them
    report = markdown_report(runs, ["log_likelihood", "elbo"])
    assert "Evaluated on the test split, best checkpoint, 1000 importance samples" not in report
    assert '"N IS": N importance samples per point' in report and "all rows: test split, best checkpoint" in report
    latex = latex_report(runs, ["log_likelihood"])
    assert r"VAE w/ VampPrior (500) (50 IS) & $-90.00$ \\" in latex and r"\mathbf" not in latex


def test_rows_evaluated_on_different_splits_are_never_compared(tmp_path):
    make_run(tmp_path, "std", ["prior.name=standard"], metrics_of(-100.0))
    vamp = make_run(tmp_path, "vamp", ["prior.name=vamp"], metrics_of(-90.0))
    metrics = json.loads((vamp / "metrics.json").read_text())
    (vamp / "metrics.json").write_text(json.dumps({**metrics, "split": "val"}))
    experiments = group_experiments(find_runs([tmp_path]))
    assert sorted(e.label for e in experiments) == [
        "VAE w/ Gaussian prior (test split)", "VAE w/ VampPrior (500) (val split)"]
    for key in ("log_likelihood", "elbo", "active_units"):
        assert "**" not in metric_table(experiments, METRIC[key])


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
    make_run(tmp_path, "d", ["prior.name=exemplar", "prior.retrieval_mixture=own", "prior.k=5"], metrics_of(-92.0))
    labels = [e.label for e in group_experiments(find_runs([tmp_path]))]
    assert labels == ["ConvHVAE w/ VampPrior (1000, 200 per step)", "HVAE w/ mixture of Gaussians prior (500)",
                      "Exemplar HVAE (exact)", "Exemplar VAE (retrieval, k=5, own neighbours)"]


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
