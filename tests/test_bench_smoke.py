"""Smoke tests of bench/ on CPU: the s/epoch script on a tiny synthetic set through
`exvae bench epoch`, the pytest-benchmark converter, and plot.py's PNGs and README section
on small generated documents. The benchmarks themselves are not run here."""
from __future__ import annotations

import json

import pytest

from exvae_fast import cli
from exvae_fast.bench_cli import load_script


@pytest.fixture(scope="module")
def common():
    return load_script("common")


def _device(common, **overrides):
    info = common.device_info(common.bench_device("cpu"))
    info.update(overrides)
    return info


def test_epoch_time_runs_on_cpu_and_writes_a_results_document(tmp_path, capsys):
    out = tmp_path / "epoch.json"
    status = cli.main(["bench", "epoch", "--device", "cpu", "--threads", "1", "--models", "vae",
                       "--priors", "standard,vamp500,exact-torch,retrieval-torch", "--datasets", "omniglot",
                       "--size-scale", "0.01", "--steps", "1", "--repeats", "2", "--warmup-steps", "1",
                       "--out", str(out)])
    assert status == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == "exvae-bench/1" and doc["kind"] == "epoch_time"
    assert doc["device"]["type"] == "cpu" and doc["device"]["slug"].startswith("cpu-")
    assert doc["device"]["torch"] and "commit" in doc["device"]["git"]
    assert doc["settings"]["size_scale"] == 0.01 and doc["settings"]["repeats"] == 2
    by_prior = {r["prior"]: r for r in doc["results"]}
    assert set(by_prior) == {"standard", "vamp500", "exact-torch", "retrieval-torch"}
    for r in by_prior.values():
        assert r["status"] == "ok", r["status"]
        assert r["host_syncs"] is None  # counted on CUDA only
        assert r["data_shape"] == [230, 784]
        assert r["steps_per_epoch"] == 3 and r["timed_steps"] == 1 and r["extrapolated"] is True
        assert len(r["repeats_s_per_epoch"]) == 2
        assert 0 < r["s_per_epoch"]["min"] <= r["s_per_epoch"]["median"] <= r["s_per_epoch"]["max"]
    assert by_prior["vamp500"]["ratio_to_vamp500"] == pytest.approx(1.0)
    assert by_prior["exact-torch"]["ratio_to_exact_torch"] == pytest.approx(1.0)
    assert by_prior["exact-torch"]["num_exemplars"] == 115  # half the set, below the 25,000 cap
    assert by_prior["retrieval-torch"]["backends"] == {
        "mixture_log_density": "torch", "knn_search": "torch", "cache_update_": "torch"}
    assert by_prior["standard"]["backends"] is None
    printed = capsys.readouterr().out
    assert "extrapolated" in printed and "| VAE | Omniglot-shaped | Standard |" in printed
    # one line as each configuration starts and one as it ends, in run order
    start = printed.index("start VAE Omniglot-shaped VampPrior(500): data 230 x 784, 1 timed step x 2 repeats")
    assert start < printed.index("s/epoch", start) < printed.index("start VAE Omniglot-shaped Exemplar exact")
    assert "takes long on a CPU" not in printed  # a --size-scale run is no full sweep


def test_epoch_time_times_compiled_steps_when_asked(tmp_path, monkeypatch):
    """--compile sets train.compile for every configuration (compiled during the warm-up
    steps) and is recorded in the settings."""
    import torch._dynamo
    from exvae_fast.train import loop
    torch._dynamo.reset()
    compiled, original = [], loop.Trainer._compiled

    def recording(self, module):
        compiled.append(self.cfg.train.compile)
        return original(self, module)

    monkeypatch.setattr(loop.Trainer, "_compiled", recording)
    out = tmp_path / "epoch.json"
    status = cli.main(["bench", "epoch", "--device", "cpu", "--threads", "1", "--models", "vae",
                       "--priors", "retrieval-torch", "--datasets", "omniglot", "--size-scale", "0.01",
                       "--steps", "1", "--repeats", "1", "--warmup-steps", "2", "--compile", "--out", str(out)])
    assert status == 0
    doc = json.loads(out.read_text())
    assert doc["settings"]["compile"] is True and compiled and all(compiled)
    assert [r["status"] for r in doc["results"]] == ["ok"]


def test_epoch_time_on_cpu_without_size_scale_suggests_the_smoke_flags(capsys):
    # a spent time budget skips every configuration: only what is printed before them is looked at
    assert cli.main(["bench", "epoch", "--device", "cpu", "--threads", "1", "--models", "vae",
                     "--priors", "standard", "--time-budget", "0", "--no-write"]) == 1
    hint = next(line for line in capsys.readouterr().out.splitlines() if "takes long on a CPU" in line)
    assert "--size-scale 0.02 --steps 2 --models vae" in hint


def test_epoch_time_rejects_bad_settings(capsys):
    assert cli.main(["bench", "epoch", "--epochs-fraction", "0", "--no-write"]) == 2
    assert "--epochs-fraction" in capsys.readouterr().err
    assert cli.main(["bench", "nonsense"]) == 2


def _raw_benchmark(device: dict) -> dict:
    def bench(name, provider, mode, n, median, nbytes):
        return {"name": name, "stats": {"median": median, "min": median * 0.9, "max": median * 1.2,
                                        "mean": median, "stddev": 0.0, "rounds": 7, "q1": median, "q3": median},
                "extra_info": {"op": "mixture_log_density", "provider": provider, "mode": mode, "N": n,
                               "B": 100, "d": 40, "variant": "", "bytes": nbytes, "flops": 2 * 100 * n * 40}}
    return {"machine_info": {"exvae_device": device}, "datetime": "2026-01-01T00:00:00+00:00", "version": "5",
            "benchmarks": [bench(f"t[{p}-{n}]", p, "forward", n, 1e-4 * n / 1000 * (2 if p == "torch" else 1),
                                 n * 160) for p in ("torch", "triton") for n in (1000, 10000)],
            "exvae": {"skipped": [{"case": "t[cpp-1000]", "reason": "cpp is not available"}],
                      "settings": {"B": 100, "d": 40, "k": 10, "quick": True}}}


def test_convert_benchmark_json_computes_bandwidth(common):
    device = _device(common, name="NVIDIA H200", type="cuda", slug="nvidia-h200",
                     peak_bandwidth_bytes_per_s=4.8e12)
    doc = common.convert_benchmark_json(_raw_benchmark(device))
    assert doc["kind"] == "ops" and doc["device"]["slug"] == "nvidia-h200"
    assert len(doc["results"]) == 4 and doc["skipped"][0]["reason"] == "cpp is not available"
    r = next(r for r in doc["results"] if r["provider"] == "triton" and r["params"]["N"] == 10000)
    assert r["time_s"]["median"] == pytest.approx(1e-3)
    assert r["gbps"] == pytest.approx(10000 * 160 / 1e-3 / 1e9)
    assert r["peak_bandwidth_fraction"] == pytest.approx(10000 * 160 / 1e-3 / 4.8e12)
    assert doc["created"] == "2026-01-01T00:00:00Z"
    table = load_script("tables").op_table(doc, "mixture_log_density")
    assert "| triton | forward | - | 0.1 ms (1.6 GB/s, 0.033%) | 1 ms (1.6 GB/s, 0.033%) |" in table
    assert "bytes" not in r["params"] and r["params"]["N"] == 10000


def test_autotune_choices_reach_the_results_document(common, monkeypatch):
    import sys
    import types

    import triton

    tuned = types.SimpleNamespace(cache={(128, 1024, 64, "ieee"): triton.Config(
        {"BLOCK_B": 32, "BLOCK_N": 32}, num_warps=8, num_stages=2)})
    untuned = types.SimpleNamespace(cache={})
    monkeypatch.setitem(sys.modules, "exvae_fast.kernels.mixture_log_density",
                        types.SimpleNamespace(_forward_tuned=tuned, _backward_tuned=untuned))
    monkeypatch.setitem(sys.modules, "exvae_fast.kernels.knn_search", types.SimpleNamespace(
        _TUNED={(16, 128): types.SimpleNamespace(cache={(100, 50000, 40, False, True): triton.Config(
            {"BLOCK_B": 16, "BLOCK_N": 64, "SELECT": 1}, num_warps=4, num_stages=2)})}))
    choices = common.autotune_choices()
    assert choices == [
        {"kernel": "mixture_forward_partial_kernel", "key": ["128", "1024", "64", "ieee"],
         "config": {"BLOCK_B": 32, "BLOCK_N": 32, "num_warps": 8, "num_stages": 2}},
        {"kernel": "knn_scan_kernel[K_SEL=16]", "key": ["100", "50000", "40", "False", "True"],
         "config": {"BLOCK_B": 16, "BLOCK_N": 64, "SELECT": 1, "num_warps": 4, "num_stages": 2}}]
    raw = _raw_benchmark(_device(common))
    raw["exvae"]["autotune"] = choices
    assert common.convert_benchmark_json(raw)["autotune"] == choices


def test_plot_draws_pngs_and_rewrites_only_the_readme_section(common, tmp_path):
    device = _device(common)
    ops_doc = common.convert_benchmark_json(_raw_benchmark(device))
    ops_path = common.write_json(ops_doc, tmp_path / "docs" / "ops.json")
    record = {"model": "vae", "model_label": "VAE", "dataset": "mnist", "dataset_label": "MNIST-shaped",
              "status": "ok", "timed_steps": 5, "steps_per_epoch": 500, "extrapolated": True,
              "backends": None}
    results = []
    for prior, label, seconds in (("vamp500", "VampPrior(500)", 4.0), ("exact-torch", "Exemplar exact", 40.0),
                                  ("retrieval-fused", "Exemplar fused", 3.0)):
        results.append({**record, "prior": prior, "prior_label": label,
                        "s_per_epoch": common.summarize([seconds, seconds * 1.1, seconds * 0.9])})
    results.append({**record, "prior": "standard", "prior_label": "Standard", "status": "error: OOM"})
    load_script("tables").add_ratios(results)
    epoch_doc = common.result_document("epoch_time", device, {"preset": "quick", "repeats": 3}, results)
    epoch_path = common.write_json(epoch_doc, tmp_path / "docs" / "epoch.json")
    gap = {"ks": [1, 10], "test": {"10": {"mass": 0.95}}, "train": {"10": {"mass": 0.9}}}
    study = [{"prior": prior, "prior_label": label, "seed": seed, "log_likelihood": ll, "elbo": ll - 4,
              "kl": 20.0, "neg_recon": 80.0 - ll, "active_units": 10 + seed, "epochs": 100, "best_epoch": 60,
              "train_s_per_epoch": 2.0, "prior_variance": var,
              "knn_error": {"1": 0.04 + 0.02 * seed, "5": 0.5}, "val_elbo_curve": [-200.0, -120.0, ll - 3], **({"retrieval_gap": gap} if var else {})}
             for prior, label, var, lls in (("exemplar-retrieval", "Exemplar retrieval k=10", 0.5, (-90.0, -92.0)),
                                            ("standard", "Standard Gaussian", None, (-95.0, -95.5)))
             for seed, ll in enumerate(lls)]
    study_doc = common.result_document("prior_study", device, {"seeds": [0, 1], "iw_samples": 1000}, study)
    study_path = common.write_json(study_doc, tmp_path / "docs" / "study.json")
    augment = [{"condition": c, "seed": seed, "test_error": e + 0.01 * seed, "val_error": e, "best_epoch": 10 + seed,
                "val_curve": [0.2, e, e + 0.01]}
               for seed in (0, 1) for c, e in (("real", 0.05), ("exemplar", 0.04))]
    about = {"exemplar": {"prior": "exemplar", "prior_mode": "retrieval"}}
    augment_doc = common.result_document("augment_study", device, {"runs": about, "seeds": [0, 1]}, augment)
    augment_path = common.write_json(augment_doc, tmp_path / "docs" / "augment.json")
    readme = tmp_path / "README.md"
    plot = load_script("plot")
    readme.write_text(f"# intro\n\n{plot.README_BEGIN}\nold table\n{plot.README_END}\n\n## after\n")

    status = cli.main(["bench", "plot", "--files", str(ops_path), str(epoch_path), str(study_path),
                       str(augment_path), "--out-dir", str(tmp_path / "png"), "--markdown", str(readme)])
    assert status == 0
    pngs = sorted(p.name for p in (tmp_path / "png" / device["slug"]).iterdir())
    assert pngs == ["augment_study.png", "epoch_time.png", "ops_mixture_log_density.png", "prior_study.png"]
    for name in pngs:
        assert (tmp_path / "png" / device["slug"] / name).read_bytes()[:4] == b"\x89PNG"
    text = readme.read_text()
    assert text.startswith("# intro\n") and text.rstrip().endswith("## after") and "old table" not in text
    assert "(CPU: numbers from a CPU, not a GPU)" in text
    assert "| VAE | MNIST-shaped | Exemplar fused | 3.00 | 2.70-3.30 | 0.75 | 0.07 | 5 / 500 |" in text
    assert "error: OOM" in text and "cpp is not available" in text
    assert "| triton | forward | - | 0.1 ms | 1 ms |" in text  # no GB/s without a peak bandwidth
    # prior study: standard first, mean ± sample std over the seeds, the share k = 10 carries
    assert text.index("| Standard Gaussian | -95.25 ± 0.35 (2) |") < text.index(
        "| Exemplar retrieval k=10 | -91.00 ± 1.41 (2) | -95.00 ± 1.41 (2) |")
    assert "![prior_study](png/" in text and "![augment_study](png/" in text
    assert "| real digits only | 5.50 ± 0.71 (2) | 5.00 ± 0.00 (2) | 10, 11 |" in text
    assert "| real + samples of `exemplar` (exemplar retrieval prior) | 4.50 ± 0.71 (2) |" in text
    assert "| 10.5 ± 0.7 (2) | 5.0% / 50.0% | 100 (60), 100 (60) | 0.5 | 95% / 90% |" in text


def test_bench_ops_runs_one_case_through_pytest_benchmark(tmp_path):
    pytest.importorskip("pytest_benchmark", reason="the op micro-benchmarks need pytest-benchmark")
    out = tmp_path / "ops.json"
    status = cli.main(["bench", "ops", "--device", "cpu", "--threads", "1", "--max-n", "1000", "--no-raw",
                       "-k", "test_knn_search and forward-all-torch-N1000", "--out", str(out)])
    assert status == 0
    doc = json.loads(out.read_text())
    assert doc["kind"] == "ops" and doc["device"]["type"] == "cpu"
    (record,) = doc["results"]
    assert (record["op"], record["provider"], record["mode"]) == ("knn_search", "torch", "forward")
    assert record["params"]["N"] == 1000 and record["params"]["variant"] == "all"
    assert record["time_s"]["count"] >= 3 and record["time_s"]["median"] > 0
    assert record["bytes"] == 1000 * 40 * 4 and record["gbps"] > 0 and record["peak_bandwidth_fraction"] is None
    assert all("above the largest N" in s["reason"] for s in doc["skipped"])


def test_prior_and_augment_studies_train_evaluate_resume_and_tabulate(tmp_path, capsys):
    out = tmp_path / "study.json"
    argv = ["bench", "priors", "--priors", "standard,exemplar-retrieval", "--seeds", "0-1",
            "--epochs", "1", "--warmup-epochs", "1", "--steps-per-epoch", "2", "--iw-samples", "3",
            "--threads", "1", "--runs-dir", str(tmp_path / "runs"), "--out", str(out), "--no-progress"]
    with pytest.raises(SystemExit):  # argparse's usage error, before any training
        cli.main([*argv[:5], "0,0", *argv[6:]])
    assert "--seeds: expected distinct seeds" in capsys.readouterr().err
    assert cli.main(argv) == 0
    doc = json.loads(out.read_text())
    assert doc["kind"] == "prior_study" and doc["device"]["type"] == "cpu"
    assert doc["settings"]["seeds"] == [0, 1] and doc["settings"]["iw_samples"] == 3
    assert [(r["prior"], r["seed"]) for r in doc["results"]] == [
        ("standard", 0), ("exemplar-retrieval", 0), ("standard", 1), ("exemplar-retrieval", 1)]
    for r in doc["results"]:
        assert r["epochs"] == 1 and r["best_epoch"] == 1 and not r["resumed"] and len(r["val_elbo_curve"]) == 1
        assert r["iw_samples"] == 3 and r["log_likelihood"] < 0 and r["train_s_per_epoch"] > 0
        assert (tmp_path / "runs" / f"{r['prior']}-s{r['seed']}" / "metrics.json").is_file()
    exemplar = doc["results"][1]
    assert sorted(exemplar["knn_error"], key=int) == ["1", "3", "5", "10"]
    assert exemplar["prior_variance"] > 0 and exemplar["retrieval_gap"]["ks"] == [1, 5, 10, 50]
    assert doc["results"][0]["prior_variance"] is None and "retrieval_gap" not in doc["results"][0]
    printed = capsys.readouterr().out
    assert "| Exemplar retrieval k=10 |" in printed and " ± " in printed and "1 (1), 1 (1)" in printed

    # A second call resumes the finished runs (no further epochs) and evaluates them again.
    assert cli.main([*argv[:5], "0", *argv[6:]]) == 0  # seed 0 only
    again = json.loads(out.read_text())
    assert [r["resumed"] for r in again["results"]] == [True, True]
    assert [r["epochs"] for r in again["results"]] == [1, 1]
    assert cli.main(["bench", "priors", "--priors", "nonsense", "--no-write"]) == 2

    # The augmentation study classifies with samples of those runs.
    runs, aug = tmp_path / "runs", tmp_path / "augment.json"
    argv = ["bench", "augment", "--run", f"exemplar={runs / 'exemplar-retrieval-s0'}", "--run",
            f"gauss={runs / 'standard-s0'}", "--seeds", "0", "--epochs", "2", "--hidden", "16",
            "--per-example", "2", "--threads", "1"]
    assert cli.main([*argv, "--out", str(aug)]) == 0
    doc = json.loads(aug.read_text())
    assert doc["kind"] == "augment_study" and doc["settings"]["runs"]["exemplar"]["prior"] == "exemplar"
    assert [r["condition"] for r in doc["results"]] == ["real", "exemplar", "gauss"]
    for r in doc["results"]:
        assert 1 <= r["best_epoch"] <= 2 and len(r["val_curve"]) == 2
        assert 0 <= r["test_error"] <= 1 and r["val_error"] == min(r["val_curve"])
    printed = capsys.readouterr().out
    assert "| real digits only |" in printed
    assert "| real + samples of `exemplar` (exemplar retrieval prior) |" in printed
    assert "| real + samples of `gauss` (standard prior) |" in printed
    assert cli.main([*argv[:2], "--run", f"real={runs / 'standard-s0'}", "--no-write"]) == 2
    assert cli.main([*argv[:2], "--run", f"x={tmp_path / 'missing'}", "--no-write"]) == 2
    assert cli.main([*argv, "--replace-prob", "2", "--no-write"]) == 2


def test_prior_study_documents_merge_into_one_table(common, tmp_path, capsys):
    study = load_script("prior_study")
    device = {"name": "CPU: test", "type": "cpu", "slug": "cpu-test", "torch": "x", "git": {"commit": "a" * 40}}
    settings = {"base_config": "c.toml", "dataset": "mnist-5k", "epochs": 400, "warmup_epochs": 100,
                "early_stopping_patience": 50, "steps_per_epoch": None, "iw_samples": 1000, "device": "cpu"}

    def doc(priors, seeds, commit, lls):
        records = [{"prior": p, "prior_label": study.PRIORS[p][0], "seed": s, "log_likelihood": lls[p][s],
                    "elbo": -100.0, "kl": 20.0, "neg_recon": 80.0, "active_units": 40, "epochs": 400,
                    "best_epoch": 350, "prior_variance": 0.4} for s in seeds for p in priors]
        d = common.result_document("prior_study", {**device, "git": {"commit": commit}},
                                   {**settings, "priors": priors, "seeds": seeds,
                                    "overrides": {p: study.PRIORS[p][1] for p in priors}}, records)
        return common.write_json(d, tmp_path / f"{commit[:3]}.json")

    lls = {"exemplar-retrieval": [-95.0, -95.2], "exemplar-retrieval-k1": [-97.0, -97.4]}
    first = doc(["exemplar-retrieval"], [0, 1], "a" * 40, lls)
    second = doc(["exemplar-retrieval-k1"], [0, 1], "b" * 40, lls)
    out = tmp_path / "merged.json"
    assert cli.main(["bench", "priors", "--merge", str(first), str(second), "--out", str(out)]) == 0
    merged = json.loads(out.read_text())
    assert [(r["prior"], r["seed"]) for r in merged["results"]] == [
        ("exemplar-retrieval", 0), ("exemplar-retrieval", 1),
        ("exemplar-retrieval-k1", 0), ("exemplar-retrieval-k1", 1)]
    assert [r["measured"]["git"]["commit"][0] for r in merged["results"]] == ["a", "a", "b", "b"]
    assert merged["settings"]["priors"] == ["exemplar-retrieval", "exemplar-retrieval-k1"]
    printed = capsys.readouterr().out
    assert "| Exemplar retrieval k=1 | -97.20 ± 0.28 (2) |" in printed
    assert "2 documents of these same study settings merged" in printed and "at commit bbbbbbbbbb" in printed
    # a merged document merged again: each entry still names its measurement, not the merge
    third = doc(["exemplar-retrieval-own"], [0], "c" * 40, {"exemplar-retrieval-own": [-95.1]})
    again = tmp_path / "again.json"
    assert cli.main(["bench", "priors", "--merge", str(out), str(third), "--out", str(again)]) == 0
    entries = json.loads(again.read_text())["merged_from"]
    assert [(e["git"]["commit"][0], e["priors"]) for e in entries] == [
        ("a", ["exemplar-retrieval"]), ("b", ["exemplar-retrieval-k1"]), ("c", ["exemplar-retrieval-own"])]
    assert "3 documents of these same study settings merged" in capsys.readouterr().out
    # the same (prior, seed) twice, or another study setting, is refused
    assert cli.main(["bench", "priors", "--merge", str(first), str(first), "--out", str(out)]) == 2
    other = json.loads(second.read_text())
    other["settings"]["epochs"] = 10
    common.write_json(other, tmp_path / "other.json")
    assert cli.main(["bench", "priors", "--merge", str(first), str(tmp_path / "other.json"), "--out", str(out)]) == 2
    assert "differ in epochs" in capsys.readouterr().err


def test_a_smoke_run_does_not_replace_the_measured_tables(common, tmp_path, capsys):
    """The README's CPU smoke run (one model, smaller sets) and a `-k` op selection are newer than
    the measured documents but cover less: plot.py keeps the measured ones, while a newer run
    covering as much replaces them, and a smoke run alone is still shown."""
    device = _device(common)
    plot = load_script("plot")

    def epoch(name, created, models, size_scale):
        results = [{"model": m, "model_label": m.upper(), "prior": "vamp500", "prior_label": "VampPrior(500)",
                    "dataset": "mnist", "dataset_label": "MNIST-shaped", "status": "ok", "timed_steps": 2,
                    "steps_per_epoch": 10, "extrapolated": True, "s_per_epoch": common.summarize([1.0])}
                   for m in models]
        doc = common.result_document("epoch_time", device, {"preset": "quick", "models": models,
                                                            "size_scale": size_scale, "steps": 2}, results)
        doc["created"] = created
        return common.write_json(doc, tmp_path / "results" / device["slug"] / name)

    def ops(name, created, providers, max_n):
        doc = common.convert_benchmark_json(_raw_benchmark(device))
        doc["results"] = [r for r in doc["results"] if r["provider"] in providers]
        doc["skipped"], doc["created"], doc["settings"]["max_n"] = [], created, max_n
        return common.write_json(doc, tmp_path / "results" / device["slug"] / name)

    epoch("measured.json", "2026-01-01T00:00:00Z", ["vae", "hvae", "convhvae"], 0.02)
    smoke = epoch("smoke.json", "2026-02-01T00:00:00Z", ["vae"], 0.02)
    epoch("tinier.json", "2026-03-01T00:00:00Z", ["vae", "hvae", "convhvae"], 0.01)
    ops("ops-measured.json", "2026-01-01T00:00:00Z", ("torch", "triton"), 25_000)
    ops("ops-k.json", "2026-02-01T00:00:00Z", ("torch",), 25_000)
    ops("ops-small-n.json", "2026-03-01T00:00:00Z", ("torch", "triton"), 1_000)
    readme = tmp_path / "README.md"

    def shown():
        assert cli.main(["bench", "plot", "--results", str(tmp_path / "results"), "--no-png",
                         "--markdown", str(readme)]) == 0
        text = readme.read_text()
        return ([name for name in ("measured", "smoke", "tinier", "rerun") if f"/{name}.json`" in text],
                [name for name in ("ops-measured", "ops-k", "ops-small-n", "ops-rerun") if f"/{name}.json`" in text])

    assert shown() == (["measured"], ["ops-measured"])
    assert "covers less" in capsys.readouterr().err  # says which newer documents it passed over
    epoch("rerun.json", "2026-04-01T00:00:00Z", ["convhvae", "hvae", "vae"], 0.02)
    ops("ops-rerun.json", "2026-04-01T00:00:00Z", ("triton", "torch"), 25_000)
    assert shown() == (["rerun"], ["ops-rerun"])
    latest = plot.latest_by_device([(smoke, common.load_document(smoke))])  # nothing covers more
    assert latest[device["slug"]]["epoch_time"][0] == smoke
