"""Audit of the arithmetic behind the numbers of bench/README.md: the s/epoch extrapolation
from timed steps (on a fake clock), median and spread, the ratios to the reference priors,
achieved GB/s and fraction of peak, the bytes each op benchmark counts, and the goals'
roofline and thresholds. Each test pins a formula with numbers worked out by hand."""
from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch
from test_bench_goals import H200, by_prefix, knn, mixture, verdicts
from test_bench_smoke import _raw_benchmark

from exvae_fast.bench_cli import load_script

common = load_script("common")
epoch_time = load_script("epoch_time")
goals = load_script("goals")
tables = load_script("tables")


def epoch_settings(*flags: str) -> dict:
    """epoch_time's settings for a CPU run of VAE / Standard on 230 Omniglot-shaped rows."""
    args = epoch_time.build_parser().parse_args(["--models", "vae", "--priors", "standard", "--datasets",
                                                 "omniglot", "--size-scale", "0.01", *flags])
    return epoch_time.resolve_settings(args)


def test_epoch_is_extrapolated_from_the_timed_steps_plus_the_refresh(monkeypatch):
    """2 of 3 steps timed: s/epoch = t_steps x 3 / 2 + t_refresh per repeat, then median,
    min and max over the repeats; per-step and refresh times are kept apart."""
    settings = epoch_settings("--steps", "2", "--repeats", "3", "--warmup-steps", "0")
    data = epoch_time.load_data("omniglot", settings)
    # each repeat reads the clock at t0, t1 (steps done) and t2 (refresh done):
    # steps 2, 4, 3 s; refresh 0.5, 0.5, 1 s
    clock = iter([0.0, 2.0, 2.5, 10.0, 14.0, 14.5, 20.0, 23.0, 24.0])
    monkeypatch.setattr(epoch_time, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    r = epoch_time.time_config("vae", "standard", "omniglot", data, settings, torch.device("cpu"))
    assert (r["steps_per_epoch"], r["timed_steps"], r["extrapolated"]) == (3, 2, True)
    assert r["repeats_s_per_epoch"] == pytest.approx([3.5, 6.5, 5.5])
    assert (r["s_per_epoch"]["median"], r["s_per_epoch"]["min"], r["s_per_epoch"]["max"]) == pytest.approx((5.5, 3.5, 6.5))
    assert r["s_per_step"]["median"] == pytest.approx(1.5)
    assert r["refresh_s"]["median"] == pytest.approx(0.5)
    doc = {"results": [{"model": "vae", "model_label": "VAE", "dataset": "omniglot", "dataset_label": "Omniglot-shaped",
                        "prior": "standard", "prior_label": "Standard", "status": "ok", **r}]}
    assert "| VAE | Omniglot-shaped | Standard | 5.50 | 3.50-6.50 | - | - | 2 / 3 |" in tables.epoch_table(doc)


def test_step_counts_round_up_and_never_exceed_the_epoch():
    """Steps per epoch round a partial batch up; a fraction of them rounds up too; --steps
    beyond the epoch times the whole epoch (no extrapolation)."""
    fraction = epoch_settings("--epochs-fraction", "0.05", "--min-steps", "1")
    assert epoch_time.step_counts(23_000, fraction) == (230, 12)  # 11.5 steps -> 12
    assert epoch_time.step_counts(23_001, fraction) == (231, 12)
    assert epoch_time.step_counts(230, epoch_settings("--steps", "5")) == (3, 3)
    assert epoch_time.step_counts(23_000, epoch_settings("--quick")) == (230, 10)  # at least 10


def test_summarize_median_quartiles_and_sample_spread():
    """summarize: the median (not the mean), inclusive quartiles, the extremes, the sample
    standard deviation."""
    s = common.summarize([4.0, 1.0, 10.0, 2.0])
    assert (s["median"], s["min"], s["max"], s["count"]) == (3.0, 1.0, 10.0, 4)
    assert (s["q1"], s["q3"], s["mean"]) == pytest.approx((1.75, 5.5, 4.25))
    assert s["stddev"] == pytest.approx(4.031, abs=1e-3)
    assert common.summarize([2.0])["stddev"] == 0.0


def test_ratios_are_against_the_reference_of_the_same_model_and_data_set():
    """add_ratios divides a record's median by that of VampPrior(500), resp. the exact prior,
    with the same model and data set; a missing reference gives None."""
    def epoch(model, dataset, prior, median):
        return {"model": model, "dataset": dataset, "prior": prior, "status": "ok", "s_per_epoch": {"median": median}}
    results = [epoch("convhvae", "mnist", "vamp500", 10.0), epoch("convhvae", "mnist", "exact-torch", 40.0),
               epoch("convhvae", "mnist", "retrieval-fused", 8.0), epoch("convhvae", "omniglot", "vamp500", 5.0),
               epoch("convhvae", "omniglot", "retrieval-fused", 6.0), epoch("hvae", "mnist", "vamp500", 1.0),
               {"model": "hvae", "dataset": "mnist", "prior": "exact-torch", "status": "error: boom"}]
    tables.add_ratios(results)
    fused_mnist, fused_omniglot, hvae = results[2], results[4], results[5]
    assert (fused_mnist["ratio_to_vamp500"], fused_mnist["ratio_to_exact_torch"]) == pytest.approx((0.8, 0.2))
    assert fused_omniglot["ratio_to_vamp500"] == pytest.approx(1.2) and fused_omniglot["ratio_to_exact_torch"] is None
    assert hvae["ratio_to_vamp500"] == 1.0 and hvae["ratio_to_exact_torch"] is None


def test_bandwidth_and_flop_rate_use_the_median_and_the_datasheet_peak():
    """Achieved GB/s and GFLOP/s divide by the median round (not the mean); the fraction of
    peak uses the device's datasheet bandwidth and is omitted where there is none (CPU)."""
    device = {"name": "NVIDIA H200", "type": "cuda", "slug": "nvidia-h200", "peak_bandwidth_bytes_per_s": 4.8e12,
              "peak_fp32_flops_per_s": 67e12}
    raw = _raw_benchmark(device)
    for bench in raw["benchmarks"]:
        bench["stats"]["mean"] = 2 * bench["stats"]["median"]
    r = next(r for r in common.convert_benchmark_json(raw)["results"]
             if r["provider"] == "triton" and r["params"]["N"] == 10_000)
    assert r["gbps"] == pytest.approx(1.6) and r["peak_bandwidth_fraction"] == pytest.approx(1.6e9 / 4.8e12)
    assert r["gflops"] == pytest.approx(2 * 100 * 10_000 * 40 / 1e-3 / 1e9)
    cpu = common.convert_benchmark_json(_raw_benchmark({"name": "CPU: x", "type": "cpu", "slug": "cpu-x",
                                                        "peak_bandwidth_bytes_per_s": None}))
    assert all(r["gbps"] and r["peak_bandwidth_fraction"] is None for r in cpu["results"])


def test_op_table_cells_and_caption_state_the_peak_in_the_right_units():
    """A cell shows ms, GB/s and the percentage of peak (small fractions with two digits);
    the caption states the datasheet peak in TB/s."""
    doc = {"device": {"name": "NVIDIA H200", "type": "cuda", "peak_bandwidth_bytes_per_s": 4.8e12}, "created": "t",
           "settings": {"B": 100, "d": 40, "k": 10},
           "results": [{"op": "knn_search", "provider": "triton", "mode": "forward", "params": {"N": 1_000_000},
                        "time_s": {"median": 2e-4}, "gbps": 800.0, "peak_bandwidth_fraction": 800e9 / 4.8e12},
                       {"op": "knn_search", "provider": "torch", "mode": "forward", "params": {"N": 1_000_000},
                        "time_s": {"median": 2e-2}, "gbps": 8.0, "peak_bandwidth_fraction": 8e9 / 4.8e12}]}
    table = tables.op_table(doc, "knn_search")
    assert "| torch | forward | - | 20 ms (8 GB/s, 0.17%) |" in table
    assert "| triton | forward | - | 0.2 ms (800 GB/s, 17%) |" in table
    assert "datasheet peak 4.80 TB/s" in tables.ops_caption(doc)


@pytest.fixture()
def captured(monkeypatch):
    """Load a bench/test_*.py file with its `common.measure` replaced: returns
    (module, infos) where infos collects the `info` each case would have recorded."""
    monkeypatch.setitem(sys.modules, "conftest", load_script("conftest"))  # bench/'s, for check_size
    infos = []

    def load(name):
        module = load_script(name)
        monkeypatch.setattr(module.common, "measure", lambda benchmark, call, prepare, **kw: infos.append(kw["info"]))
        return module
    return load, infos


CPU_SETTINGS = {"max_n": None, "target_s": 0.0, "min_rounds": 1, "max_rounds": 1}
"""bench_settings of a run without an N limit (the timing knobs are unused here)."""


def test_benchmarks_count_the_bytes_each_call_must_move(captured):
    """Bytes behind GB/s: mixture reads the means once forward, and with backward writes their
    gradient (3 N d 4 B for forward + backward); top-k reads the searched keys (plus 8-byte
    candidate indices for a subset); cache_update_ writes only the unique rows."""
    load, infos = captured
    cpu = torch.device("cpu")
    mixture_bench = load("test_mixture_log_density")
    for mode in ("forward", "backward", "full"):
        mixture_bench.run_case(None, cpu, CPU_SETTINGS, mode, "torch", 1_000)
    assert [i["bytes"] for i in infos] == [1_000 * 40 * 4 * m for m in (1, 2, 3)]
    assert [i["flops"] for i in infos] == [2 * 100 * 1_000 * 40 * p for p in (1, 3, 4)]
    infos.clear()
    knn_bench = load("test_knn_search")
    for variant in ("all", "subset"):
        knn_bench.test_knn_search(None, cpu, CPU_SETTINGS, "forward", variant, "torch", 1_000)
    assert [i["bytes"] for i in infos] == [1_000 * 40 * 4, 500 * 40 * 4 + 500 * 8]
    infos.clear()
    cache_bench = load("test_cache_update")
    cache_bench.test_cache_update(None, cpu, CPU_SETTINGS, "torch", "bfloat16", 1_100, 50_000)
    (info,) = infos
    unique = info["unique_rows"]
    assert unique < 1_100 and info["bytes"] == 4 * 1_100 * 40 + unique * 40 * 2 + 8 * 1_100 + 12 * unique


def test_roofline_takes_the_memory_bound_from_the_datasheet_bandwidth():
    """The roofline is the larger of the FLOP time and N d 4 B at the bandwidth; a document
    without peaks falls back on the datasheet of its GPU name."""
    slow_memory = {**H200, "peak_bandwidth_bytes_per_s": 0.32e12}  # N d 4 B: 500 us, above 119 us of FLOPs
    rows = verdicts([mixture("triton", 1_000_000, 7.4e-4)], device=slow_memory)
    assert by_prefix(rows, "mixture fwd+bwd at N = 1e6") == ("740 us = 1.48x the roofline 500 us", True)
    named = verdicts([mixture("triton", 1_000_000, 1.5e-4)], device={"type": "cuda", "gpu_name": "NVIDIA H200"})
    assert by_prefix(named, "mixture fwd+bwd at N = 1e6") == ("150 us = 1.26x the roofline 119 us", True)
    # L40S: 91.6 TFLOP/s but 0.864 TB/s, so its datasheet bandwidth sets the roofline (185 us)
    l40s = verdicts([mixture("triton", 1_000_000, 2e-4)], device={"type": "cuda", "gpu_name": "NVIDIA L40S"})
    assert by_prefix(l40s, "mixture fwd+bwd at N = 1e6") == ("200 us = 1.08x the roofline 185 us", True)
    over = verdicts([mixture("triton", 1_000_000, 1.55e-4 * 1.2)])
    assert by_prefix(over, "mixture fwd+bwd at N = 1e6")[1] is False  # 1.56x


def test_goal_thresholds_hold_for_every_case():
    """The 5x goal holds only if the slowest N >= 25,000 reaches it; "never slower" counts the
    GPU FAISS peer too; the epoch goal wants no more than VampPrior(500)'s s/epoch."""
    rows = verdicts([mixture("torch", 25_000, 1e-3), mixture("triton", 25_000, 2.5e-4),
                     mixture("torch", 1_000_000, 4e-2), mixture("triton", 1_000_000, 1e-3)])
    assert by_prefix(rows, "mixture fwd+bwd: Triton >= 5x")[1] is False  # 4x at N = 25,000, 40x at 1e6
    rows = verdicts([knn("triton", 1_000, 1e-4), knn("faiss-gpu", 1_000, 0.5e-4), knn("torch-naive", 1_000, 1e-3)])
    assert by_prefix(rows, "top-k: never slower") == (
        "slowest 0.5x (peer=faiss-gpu, N=1,000, dtype=float32, variant=all) of 2 cases", False)
    fused = {"model": "convhvae", "dataset": "mnist", "prior": "retrieval-fused", "status": "ok",
             "ratio_to_vamp500": 1.1, "ratio_to_exact_torch": 0.34}
    assert [r["met"] for r in goals.epoch_goal_rows({"results": [fused]})] == [False, False]
