"""`exvae` end to end on the embedded mnist-5k digits, and its one-line errors."""
from __future__ import annotations

import importlib.util
import json
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from exvae_fast.cli import main
from exvae_fast.data import load_dataset
from exvae_fast.plots import LEAD_GAP

LATENT_METHOD = "tsne" if importlib.util.find_spec("sklearn") else "pca"  # scikit-learn: the test extras
SHORT = ["--set", "train.epochs=1", "--set", "train.steps_per_epoch=4", "--set", "eval.iw_samples=8",
         "--set", "eval.num_sample_images=16", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    status = main(["train", "--config", "configs/mnist-5k-demo.toml", "--out-dir", str(out), *SHORT])
    assert status == 0
    return out / "mnist-5k-demo"


def test_train_writes_the_run_folder(run_dir):
    for name in ("config.json", "checkpoint_best.pt", "checkpoint_last.pt", "metrics.jsonl", "metrics.json",
                 "loss_curve.png", "samples.png", "exemplar_samples.png", f"latent_{LATENT_METHOD}.png",
                 "report.md"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    report = (run_dir / "report.md").read_text()
    assert report.startswith("# Run `mnist-5k-demo`") and "Exemplar VAE (retrieval, k=10) on `mnist-5k`" in report
    assert f"| log-likelihood (8 importance samples) | {metrics['log_likelihood']:.3f} nats |" in report
    assert "![Samples](samples.png)" in report and "## Environment" in report
    assert metrics["dataset"] == "mnist-5k" and metrics["num_points"] == 500
    assert metrics["environment"]["device"]["type"] == "cpu" and metrics["environment"]["torch"]
    assert metrics["elbo"] == pytest.approx(-(metrics["kl"] + metrics["neg_recon"]))
    assert metrics["log_likelihood"] >= metrics["elbo"] - 5.0  # IWAE bound is at least as tight (noise aside)
    assert 0 <= metrics["active_units"] <= 40
    assert sorted(metrics["knn_error"], key=int) == ["1", "3", "5", "10"]  # JSON keys come back sorted
    assert all(0 <= e < 0.9 for e in metrics["knn_error"].values())  # 10 classes: chance is 0.9
    gap = metrics["retrieval_gap"]  # the demo's prior is an exemplar prior (k = 10)
    assert gap["ks"] == [1, 5, 10, 50]
    for rows in ("test", "train"):
        masses = [gap[rows][str(k)]["mass"] for k in gap["ks"]]
        assert all(0 < a <= b <= 1 for a, b in zip(masses, masses[1:])), masses
        assert all(gap[rows][str(k)]["mean"] >= 0 for k in gap["ks"])
    with Image.open(run_dir / "exemplar_samples.png") as img:
        # 10 rows of an exemplar, set apart, then 11 samples (the paper's Figure 2 plates); 56-pixel cells
        assert img.size == (12 * 57 - 1 + LEAD_GAP, 10 * 57 - 1)


def test_evaluate_sample_augment(run_dir, tmp_path, capsys):
    def written(name):  # an atomic rewrite makes a new inode, even with the same bytes
        path = run_dir / name
        return path.read_bytes(), path.stat().st_ino

    kept = {name: written(name) for name in ("metrics.json", "report.md", "samples.png", "loss_curve.png")}
    assert main(["evaluate", str(run_dir), "--split", "val", "--checkpoint", "last", "--iw-samples", "2",
                 "--no-progress"]) == 0
    for name, before in kept.items():  # another split or checkpoint replaces none of them
        assert written(name) == before, name
    val = json.loads((run_dir / "metrics_val_last.json").read_text())
    assert (val["split"], val["checkpoint"], val["iw_samples"]) == ("val", "last", 2)
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--iw-samples", "4", "--no-pictures", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "log-likelihood (4 importance samples)" in printed
    assert "carried by the k nearest exemplars (test rows" in printed and "k=10 " in printed
    assert "kNN classification error of the posterior means: k=1 " in printed
    for kind, extra in [("unconditional", []), ("exemplar", []), ("iterative", ["--from-noise"])]:
        out = tmp_path / f"{kind}.png"
        assert main(["sample", str(run_dir), "--kind", kind, "--n", "3", "--per-row", "4", "--out", str(out),
                     *extra]) == 0
        with Image.open(out) as img:  # the exemplar (or a chain's start) is set apart before 4 images
            lead = kind != "unconditional"
            assert img.size == ((4 + lead) * 57 - 1 + LEAD_GAP * lead, 3 * 57 - 1)
    for split in ("train", "test"):
        out, found = tmp_path / f"retrieved-{split}.png", tmp_path / f"retrieved-{split}.json"
        assert main(["retrieve", str(run_dir), "--split", split, "--n", "3", "--k", "4", "--out", str(out),
                     "--json", str(found), "--no-progress"]) == 0
        with Image.open(out) as img:  # 3 rows of a query, set apart, and 4 neighbours; 56-pixel cells
            assert img.size == (5 * 57 - 1 + LEAD_GAP, 3 * 57 - 1)
        result = json.loads(found.read_text())
        assert result["split"] == split and len(result["queries"]) == 3
        assert [len(row) for row in result["neighbours"]] == [4, 4, 4]
        assert all(row == sorted(row) for row in result["sq_dists"])  # nearest first
        if split == "train":  # a training image never retrieves itself
            assert all(q not in row for q, row in zip(result["queries"], result["neighbours"]))
    assert "each followed by its 4 nearest training images" in capsys.readouterr().out
    assert main(["retrieve", str(run_dir), "--split", "nope", "--out", str(tmp_path / "x.png")]) == 2
    assert main(["retrieve", str(run_dir), "--k", "4001", "--out", str(tmp_path / "x.png")]) == 2
    capsys.readouterr()
    for argv in (["retrieve", "--split", "test", "--n", "501"], ["embed", "--method", "pca", "--n", "501"],
                 ["sample", "--kind", "exemplar", "--n", "4001"], ["sample", "--kind", "iterative", "--n", "4001"]):
        # more distinct rows than the split holds: refused, not quietly fewer
        assert main([argv[0], str(run_dir), *argv[1:], "--out", str(tmp_path / "x.png")]) == 2
        assert "--n: expected at most" in capsys.readouterr().err, argv
    assert main(["augment", str(run_dir), "--per-example", "0", "--out", str(tmp_path / "x.npz")]) == 2
    assert "--per-example: expected a positive integer" in capsys.readouterr().err
    assert main(["augment", str(run_dir), "--out", str(tmp_path / "x.txt")]) == 2
    assert main(["evaluate", str(run_dir), "--iw-samples", "0"]) == 2
    assert "iw_samples (--iw-samples): expected an int >= 1, got 0" in capsys.readouterr().err
    assert main(["embed", str(run_dir), "--n", "3", "--out", str(tmp_path / "e.png")]) == 2
    assert "--perplexity: expected a number in (0, 3)" in capsys.readouterr().err
    assert not (tmp_path / "x.txt").exists() and not (tmp_path / "e.png").exists()
    if not torch.cuda.is_available():  # a CUDA device asked of a machine without one: one line, no traceback
        for argv in (["evaluate", str(run_dir)], ["sample", str(run_dir), "--out", str(tmp_path / "x.png")]):
            assert main([*argv, "--device", "cuda"]) == 2
            assert "device: 'cuda' requested but CUDA is not available" in capsys.readouterr().err, argv
    npz = tmp_path / "aug.npz"
    assert main(["augment", str(run_dir), "--per-example", "2", "--out", str(npz)]) == 0
    with np.load(npz) as f:  # an `array` data set as it is: 4,000 training digits x 2
        assert f["train"].shape == (8000, 28, 28) and f["train_labels"].shape == (8000,)
    augmented = load_dataset("array", npz, seed=0)
    assert augmented.input_shape == (1, 28, 28) and augmented.likelihood == "bernoulli"
    assert augmented.train.shape[0] + augmented.val.shape[0] + augmented.test.shape[0] == 8000


@pytest.mark.parametrize("method", ["pca", pytest.param("tsne", marks=pytest.mark.skipif(
    LATENT_METHOD != "tsne", reason="scikit-learn is in the test extras; t-SNE needs it"))])
def test_embed_draws_the_latent_space(run_dir, tmp_path, method, capsys):
    out, found = tmp_path / f"{method}.png", tmp_path / f"{method}.json"
    assert main(["embed", str(run_dir), "--method", method, "--n", "120", "--perplexity", "10",
                 "--out", str(out), "--json", str(found)]) == 0
    assert "of 120 test posterior means, coloured by label" in capsys.readouterr().out
    with Image.open(out) as img:
        assert img.size == (750, 650)
    result = json.loads(found.read_text())
    assert len(result["indices"]) == len(set(result["indices"])) == 120
    assert len(result["coords"]) == 120 and all(len(c) == 2 for c in result["coords"])
    assert all(0 <= label <= 9 for label in result["labels"])
    assert main(["embed", str(run_dir), "--method", "umap", "--out", str(out)]) == 2
    assert main(["embed", str(run_dir), "--split", "nope", "--out", str(out)]) == 2


def test_table_of_a_trained_run(run_dir, capsys):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert main(["table", str(run_dir.parent)]) == 0
    printed = capsys.readouterr().out
    assert f"| Exemplar VAE (retrieval, k=10) | {metrics['log_likelihood']:.2f} |" in printed
    assert f"| Exemplar VAE (retrieval, k=10) | {100 * metrics['knn_error']['1']:.2f} |" in printed
    assert f"{metrics['iw_samples']} importance samples per point" in printed
    assert "3-NN" not in printed  # kNN errors for k = 1 and 10 by default; any k evaluated on request
    assert main(["table", str(run_dir.parent), "--metrics", "knn_error.3,knn_error.5"]) == 0
    printed = capsys.readouterr().out
    assert f"| Exemplar VAE (retrieval, k=10) | {100 * metrics['knn_error']['3']:.2f} |" in printed
    assert "### 5-NN classification error of the posterior means (%)" in printed


def test_sizes_are_checked_against_the_data_before_any_work(run_dir, tmp_path, monkeypatch, capsys):
    """retrieve --k beyond the training split is refused before the split is encoded; a
    config's prior.k or prior.num_exemplars beyond the training set names the config key."""
    from exvae_fast import evaluation

    monkeypatch.setattr(evaluation, "encode_means", lambda *a, **k: pytest.fail("encoded the training split"))
    assert main(["retrieve", str(run_dir), "--k", "5000", "--out", str(tmp_path / "r.png")]) == 2
    assert "--k: expected at most 4000 (the training split's rows), got 5000" in capsys.readouterr().err
    assert main(["retrieve", str(run_dir), "--split", "train", "--k", "4000", "--out", str(tmp_path / "r.png")]) == 2
    assert "--k: expected at most 3999 (the training split's rows, less the query itself)" in capsys.readouterr().err
    base = ["train", "--config", "configs/mnist-5k-demo.toml", "--out-dir", str(tmp_path), "--no-eval", *SHORT]
    assert main([*base, "--set", "prior.k=5000"]) == 2
    assert ("prior.k: expected at most 1999 (prior.num_exemplars, by default half of the 4000 training "
            "examples: 2000, less one for leave-one-out), got 5000") in capsys.readouterr().err
    assert main([*base, "--set", "prior.num_exemplars=10000"]) == 2
    assert "prior.num_exemplars: expected at most the 4000 training examples, got 10000" in capsys.readouterr().err


def test_resume_continues_from_the_last_epoch(run_dir, capsys):
    assert main(["train", "--resume", str(run_dir), "--set", "train.epochs=2", "--no-eval", *SHORT[4:]]) == 0
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert "trained epochs 2-2 (1 in this session)" in capsys.readouterr().out
    records = [json.loads(line) for line in lines]
    best = max(r["epoch"] for r in records if r["improved"])  # the best checkpoint's epoch
    evaluated = json.loads((run_dir / "metrics.json").read_text())["epoch"]  # 1: the fixture's evaluation
    kept = (run_dir / "metrics.json").stat().st_ino
    # train.epochs counts all epochs: nothing left to train, and said so; the evaluation is
    # redone only when metrics.json is not that of the current best checkpoint
    assert main(["train", "--resume", str(run_dir), "--set", "train.epochs=2", *SHORT[4:]]) == 0
    assert "nothing to train: the run holds 2 epochs and train.epochs=2 counts all epochs" in capsys.readouterr().out
    assert json.loads((run_dir / "metrics.json").read_text())["epoch"] == best
    assert ((run_dir / "metrics.json").stat().st_ino != kept) == (evaluated != best)
    # an evaluation of the best checkpoint with other settings (exvae evaluate --iw-samples)
    # is kept by a resume with nothing to train, and the output says so
    assert main(["evaluate", str(run_dir), "--iw-samples", "6", "--no-pictures", "--no-progress"]) == 0
    assert "(6 importance samples)" in (run_dir / "report.md").read_text()  # report.md never stale
    assert f"wrote {run_dir / 'metrics.json'}" in capsys.readouterr().out
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "--set", "train.epochs=2", *SHORT[4:]]) == 0
    assert json.loads((run_dir / "metrics.json").read_text())["iw_samples"] == 6
    assert "metrics.json already evaluates the best checkpoint; kept" in capsys.readouterr().out
    # nothing to train: config.json still describes the 2-epoch run, not train.epochs=1
    assert main(["train", "--resume", str(run_dir), "--set", "train.epochs=1", "--no-eval", *SHORT[4:]]) == 0
    assert "nothing to train" in capsys.readouterr().out
    assert json.loads((run_dir / "config.json").read_text())["train"]["epochs"] == 2


def test_a_checkpoint_of_another_model_names_what_differs(run_dir, tmp_path, capsys):
    """A VampPrior run's checkpoint copied into an exemplar run's folder: the error names the
    settings that differ, not torch's first line ("Error(s) in loading state_dict for VAE:")."""
    assert main(["train", "--config", "configs/mnist-5k-demo.toml", "--set", "prior.name=vamp",
                 "--set", "prior.num_components=20", "--name", "vamp", "--out-dir", str(tmp_path),
                 "--no-eval", *SHORT]) == 0
    mixed = tmp_path / "mixed"
    shutil.copytree(run_dir, mixed)
    shutil.copy(tmp_path / "vamp" / "checkpoint_best.pt", mixed / "checkpoint_best.pt")
    capsys.readouterr()
    assert main(["evaluate", str(mixed), "--no-pictures", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint_best.pt: its weights do not fit the model of the run's config.json" in err
    assert "prior.name 'vamp' there, 'exemplar' in config.json" in err


@pytest.mark.parametrize("stopped_early, epochs, hint", [
    (True, 5, "it stopped early (raise train.early_stopping_patience to continue)"),
    (False, 3, "train.epochs=3 counts all epochs (raise train.epochs to continue)"),
    (True, 3, "it stopped early and train.epochs=3 counts all epochs (raise train.early_stopping_patience "
              "and train.epochs to continue)")])
def test_nothing_to_train_names_the_setting_that_continues_it(stopped_early, epochs, hint, tmp_path, monkeypatch,
                                                               capsys):
    """A resumed run with no epoch left: the hint names what stops it (an early stop is lifted
    by the patience, not by more epochs)."""
    import argparse
    import types

    from exvae_fast import cli
    from exvae_fast.train import loop
    from exvae_fast.train.config import RunConfig

    class Done:  # a Trainer whose resumed run has 3 epochs and trains none
        team = types.SimpleNamespace(is_main=True)

        def __init__(self, cfg, progress):
            pass

        def fit(self, resume, overwrite):
            return loop.TrainSummary(tmp_path, 3, 2, -90.0, stopped_early, 0.1, 0)

        def leave_team(self):
            pass

    monkeypatch.setattr(loop, "Trainer", Done)
    cfg = RunConfig()
    cfg.train.epochs = epochs
    args = argparse.Namespace(no_progress=True, overwrite=False, no_eval=True)
    cli._train_one(cfg, args, resume=True)
    assert f"nothing to train: the run holds 3 epochs and {hint};" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["train", "--config", "missing.toml"], "missing.toml"),
    (["train", "--set", "train.epochs=zero"], "train.epochs"),
    (["train", "--set", "prior.mode=exat"], "prior.mode"),
    (["evaluate", "no/such/run"], "run_dir: no/such/run does not exist"),
    (["evaluate", "configs/mnist-5k-demo.toml"], "run_dir: configs/mnist-5k-demo.toml is a file, not a run folder"),
    (["train", "--resume", "no/such/run", "--name", "other"], "so --name would be ignored"),
    (["train", "--resume", "no/such/run", "--config", "c.toml", "--overwrite"], "so --config, --overwrite would"),
    (["train", "--resume", "no/such/run", "--set", "out_dir=elsewhere"], "so --set out_dir would be ignored"),
    (["sample", "no/such/run", "--out", "x.png", "--kind", "bogus"], "--kind"),
    (["sample", "no/such/run", "--out", "x.png", "--from-noise"], "--from-noise: applies to --kind iterative only"),
    (["sample", "no/such/run", "--out", "x.jpg"], "--out: expected a file name ending in .png"),
    (["retrieve", "no/such/run", "--out", "neighbours"], "--out: expected a file name ending in .png"),
    (["table", "no/such/runs", "--png", "chart.pdf"], "--png: expected a file name ending in .png"),
])
def test_bad_input_is_one_line_and_nonzero(argv, message, capsys):
    status = main(argv)
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err


def test_threads_caps_torch_for_the_command_only(run_dir, tmp_path, monkeypatch):
    """--threads N: the command runs with N torch threads; main() restores the caller's."""
    from exvae_fast import cli

    seen = []
    real = cli.COMMANDS["sample"]
    monkeypatch.setitem(cli.COMMANDS, "sample", lambda args: seen.append(torch.get_num_threads()) or real(args))
    before = torch.get_num_threads()
    out = tmp_path / "s.png"
    assert main(["sample", str(run_dir), "--n", "1", "--per-row", "2", "--out", str(out), "--threads", "1"]) == 0
    assert seen == [1] and out.is_file() and torch.get_num_threads() == before
    assert main(["sample", str(run_dir), "--out", str(out), "--threads", "0"]) == 2


def test_module_entry_point_prints_help():
    out = subprocess.run([sys.executable, "-m", "exvae_fast", "--help"], capture_output=True, text=True, check=True)
    assert "train" in out.stdout and "augment" in out.stdout


def test_a_run_whose_data_moved_is_read_with_data_root(tmp_path, capsys):
    images = np.random.default_rng(0).integers(0, 256, (500, 560), dtype=np.uint8)
    (tmp_path / "was").mkdir()
    (tmp_path / "was" / "freyfaces.pkl").write_bytes(pickle.dumps([images], protocol=2))
    assert main(["train", "--set", "data.name=frey-faces", "--set", f"data.root={tmp_path / 'was'}",
                 "--set", "model.name=vae", "--set", "prior.name=standard", "--name", "frey",
                 "--out-dir", str(tmp_path / "runs"), "--no-eval", *SHORT]) == 0
    (tmp_path / "was").rename(tmp_path / "now")
    run = str(tmp_path / "runs" / "frey")
    assert main(["evaluate", run, "--iw-samples", "2", "--no-pictures", "--no-progress"]) == 2
    assert "freyfaces.pkl" in capsys.readouterr().err  # the old place is named
    assert main(["evaluate", run, "--iw-samples", "2", "--no-pictures", "--no-progress",
                 "--data-root", str(tmp_path / "now")]) == 0
    assert "bits/dim" in capsys.readouterr().out
    out = tmp_path / "s.png"
    assert main(["sample", run, "--n", "2", "--per-row", "2", "--out", str(out), "--data-root",
                 str(tmp_path / "now")]) == 0 and out.is_file()


def test_data_root_for_an_embedded_data_set_is_refused(run_dir, tmp_path, capsys):
    assert main(["embed", str(run_dir), "--method", "pca", "--out", str(tmp_path / "x.png"),
                 "--data-root", str(tmp_path)]) == 2
    assert "takes no root" in capsys.readouterr().err


@pytest.mark.gpu
def test_the_whole_command_line_on_cuda(tmp_path, capsys):
    """Train (fused Triton / C++ backends), evaluate, embed, retrieve and tabulate on the GPU."""
    out = tmp_path / "runs"
    assert main(["train", "--config", "configs/mnist-5k-demo.toml", "--out-dir", str(out), "--device", "cuda",
                 *SHORT]) == 0
    run = out / "mnist-5k-demo"
    metrics = json.loads((run / "metrics.json").read_text())
    env = metrics["environment"]
    assert env["device"]["type"] == "cuda" and env["device"]["name"]
    assert env["backends"]["mixture_log_density"]["auto"] == "triton"
    assert env["backends"]["knn_search"]["auto"] == "triton"
    assert env["backends"]["cache_update_"]["auto"] == "cpp"
    assert metrics["log_likelihood"] < 0 and 0 <= metrics["knn_error"]["1"] < 0.9
    (session,) = json.loads((run / "environment.json").read_text())["sessions"]
    assert session["device"]["type"] == "cuda"
    assert main(["embed", str(run), "--method", "pca", "--n", "200", "--out", str(tmp_path / "e.png")]) == 0
    assert main(["retrieve", str(run), "--n", "3", "--k", "4", "--out", str(tmp_path / "r.png")]) == 0
    assert main(["table", str(out)]) == 0
    assert "| Exemplar VAE (retrieval, k=10) |" in capsys.readouterr().out


def test_a_seed_sweep_trains_resumes_and_tabulates(tmp_path, capsys):
    from exvae_fast.cli_parser import parse_seeds

    assert parse_seeds("0-2") == [0, 1, 2] and parse_seeds("3,1") == [3, 1]
    assert parse_seeds(["0", "2"]) == [0, 2] and parse_seeds(["0-1,5", "7"]) == [0, 1, 5, 7]
    for bad in ("", "a", "2-1", "1,1", "-1", "0-2,1", "1.5", ["0", "0"]):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error, before any training
        main(["train", "--seeds", "2-1", "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("exvae train: error: --seeds: expected distinct seeds")
    assert len(err.splitlines()) == 1 and err.rstrip().endswith("(exvae train --help)")  # no usage block
    argv = ["train", "--config", "configs/mnist-5k-demo.toml", "--set", "prior.name=standard", "--name", "sweep",
            "--out-dir", str(tmp_path), "--seeds", "0", "1", "--set", "eval.num_sample_images=4", *SHORT]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "seed 0: training" in printed and "seed 1: training" in printed
    assert "| VAE w/ Gaussian prior | " in printed and " (2) |" in printed  # mean ± std over the 2 seeds
    seeds = [json.loads((tmp_path / f"sweep-s{s}" / "config.json").read_text())["train"]["seed"] for s in (0, 1)]
    assert seeds == [0, 1]
    # the same command again continues both runs (one more epoch each) instead of refusing them
    assert main([*argv, "--set", "train.epochs=2"]) == 0
    assert "seed 1: resuming" in capsys.readouterr().out
    log = (tmp_path / "sweep-s1" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [1, 2]
    assert main([*argv, "--seed", "3"]) == 2


def test_a_run_whose_data_is_not_found_names_data_root(run_dir, tmp_path, capsys):
    """A run trained on a relative data.root, evaluated from another folder: the error says
    where the run looked and how to point it at the data."""
    import shutil
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    config = json.loads((moved / "config.json").read_text())
    config["data"].update(name="array", root="mine.npz")
    (moved / "config.json").write_text(json.dumps(config))
    assert main(["evaluate", str(moved), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "'mine.npz' not found" in err and "--data-root" in err
