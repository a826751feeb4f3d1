"""bench/goals.py: the issues' speed goals judged on an ops document built here (the
verdicts, the roofline arithmetic, what counts as not measured)."""
from __future__ import annotations

import pytest

from exvae_fast.bench_cli import load_script

goals = load_script("goals")

H200 = {"type": "cuda", "gpu_name": "NVIDIA H200", "name": "NVIDIA H200",
        "peak_fp32_flops_per_s": 67e12, "peak_bandwidth_bytes_per_s": 4.8e12}


def record(op, provider, mode, seconds, **params):
    return {"op": op, "provider": provider, "mode": mode, "params": params,
            "time_s": {"median": seconds}}


def mixture(provider, n, seconds, mode="full", variant=""):
    return record("mixture_log_density", provider, mode, seconds, N=n, B=100, d=40, dtype="float32",
                  variant=variant)


def knn(provider, n, seconds, variant="all"):
    return record("knn_search", provider, "forward", seconds, N=n, B=100, d=40, k=10, dtype="float32",
                  variant=variant)


def verdicts(results, device=H200):
    return {row["goal"]: (row["measured"], row["met"]) for row in goals.goal_rows({"device": device,
                                                                                     "results": results})}


def by_prefix(rows, prefix):
    (match,) = [value for goal, value in rows.items() if goal.startswith(prefix)]
    return match


def test_mixture_goals_from_side_by_side_medians():
    results = [mixture("torch", 1_000, 1e-4), mixture("triton", 1_000, 0.9e-4),
               mixture("torch", 25_000, 1e-3), mixture("triton", 25_000, 1.9e-4),
               mixture("torch", 1_000_000, 4e-2), mixture("triton", 1_000_000, 1.5e-4),
               mixture("torch", 1_000_000, 1e-2, mode="forward"),  # another mode: not a peer
               mixture("triton", 1_000_000, 1e-6, variant="tf32x3")]  # another variant
    rows = verdicts(results)
    text, met = by_prefix(rows, "mixture fwd+bwd: Triton >= 5x")
    assert met is True and "5.26x (N=25,000" in text and "267x (N=1,000,000" in text
    # roofline: max(2 B N d / 67 TFLOP/s, N d 4 B / 4.8 TB/s) = 119.4 us; 150 us is 1.26x of it
    text, met = by_prefix(rows, "mixture fwd+bwd at N = 1e6")
    assert met is True and text == "150 us = 1.26x the roofline 119 us"
    assert by_prefix(rows, "mixture fwd+bwd at N = 1,000")[1] is True
    slower = verdicts([mixture("torch", 1_000, 1e-4), mixture("triton", 1_000, 1.1e-4),
                       mixture("torch", 100_000, 1e-3), mixture("triton", 100_000, 2.1e-4),
                       mixture("triton", 1_000_000, 2e-4)])
    assert by_prefix(slower, "mixture fwd+bwd: Triton >= 5x")[1] is False  # 4.76x
    assert by_prefix(slower, "mixture fwd+bwd at N = 1,000")[1] is False
    assert by_prefix(slower, "mixture fwd+bwd at N = 1e6")[1] is False  # 1.68x the roofline


def test_unknown_device_peak_and_missing_cases_cannot_be_judged():
    rows = verdicts([mixture("triton", 1_000_000, 1.5e-4)], device={"type": "cuda", "gpu_name": "Mystery GPU"})
    assert by_prefix(rows, "mixture fwd+bwd at N = 1e6") == ("150 us; no datasheet peak for this device", None)
    assert by_prefix(rows, "mixture fwd+bwd: Triton >= 5x") == ("not measured", None)
    assert all(met is None for _, met in verdicts([]).values())


def test_knn_goals_need_a_gpu_faiss_and_hold_at_every_n():
    results = [knn("triton", 1_000_000, 1e-3), knn("faiss-cpu", 1_000_000, 5e-2),
               knn("torch-naive", 1_000_000, 6e-3), knn("triton", 1_000, 1e-4),
               knn("torch-naive", 1_000, 0.8e-4), knn("triton", 1_000, 1e-4, variant="subset"),
               knn("faiss-cpu", 1_000, 1e-5, variant="subset")]
    rows = verdicts(results)
    text, met = by_prefix(rows, "top-k at N = 1e6: Triton >= 2x FAISS")
    assert met is None and text == "no GPU FAISS ran; FAISS on the CPU: 50x (N=1,000,000, dtype=float32, variant=all)"
    assert by_prefix(rows, "top-k at N = 1e6: Triton >= 5x cdist")[1] is True  # 6x
    text, met = by_prefix(rows, "top-k: never slower")  # faiss-cpu is no peer here
    assert met is False and text == "slowest 0.8x (peer=torch-naive, N=1,000, dtype=float32, variant=all) of 2 cases"
    gpu = verdicts([knn("triton", 1_000_000, 1e-3), knn("faiss-gpu", 1_000_000, 1.9e-3)])
    assert by_prefix(gpu, "top-k at N = 1e6: Triton >= 2x FAISS") == ("1.9x (N=1,000,000, dtype=float32, variant=all)", False)


def test_cache_update_goal_takes_the_slowest_size():
    def update(provider, seconds, n, k, dtype):
        return record("cache_update_", provider, "forward", seconds, N=n, K=k, d=40, dtype=dtype)
    results = [update("torch-naive", 2e-5, 50_000, 1_100, "float32"), update("cpp", 1e-5, 50_000, 1_100, "float32"),
               update("torch-naive", 3e-5, 50_000, 1_100, "bfloat16"), update("cpp", 3e-5, 50_000, 1_100, "bfloat16")]
    text, met = by_prefix(verdicts(results), "cache_update_")
    assert met is False and text == "slowest 1x (K=1,100, N=50,000, dtype=bfloat16) of 2 cases"


@pytest.mark.parametrize("name, fp32, bandwidth", [("NVIDIA H200", 67e12, 4.8e12), ("NVIDIA GH200 480GB", 67e12, 4.0e12),
                                                   ("NVIDIA H100 PCIe", 51e12, 2.0e12), ("Tesla T4", 8.1e12, 0.32e12)])
def test_datasheet_peaks_match_the_longest_name_first(name, fp32, bandwidth):
    devinfo = load_script("devinfo")
    assert devinfo.peak_fp32(name) == fp32 and devinfo.peak_bandwidth(name) == bandwidth


def test_the_readme_section_of_a_gpu_document_shows_the_goals(tmp_path):
    plot = load_script("plot")
    doc = {"kind": "ops", "created": "20261201T000000Z", "settings": {"B": 100, "d": 40, "k": 10},
           "device": {**H200, "torch": "2.11", "triton": "3.6.0", "git": {"commit": "abc"}},
           "results": [mixture("torch", 25_000, 1e-3), mixture("triton", 25_000, 1e-4)], "skipped": []}
    text = plot.markdown({"nvidia-h200": {"ops": (tmp_path / "ops.json", doc)}}, {}, tmp_path)
    assert "Goals of issues 3 and 4" in text and "| 3 | mixture fwd+bwd: Triton >= 5x" in text
    cpu = {**doc, "device": {**doc["device"], "type": "cpu", "cpu_model": "x"}}
    assert "Goals" not in plot.markdown({"cpu-x": {"ops": (tmp_path / "ops.json", cpu)}}, {}, tmp_path)


def test_epoch_goals_per_data_set():
    def epoch(dataset, prior, ratio_vamp, ratio_exact, status="ok"):
        return {"model": "convhvae", "dataset": dataset, "prior": prior, "status": status,
                "ratio_to_vamp500": ratio_vamp, "ratio_to_exact_torch": ratio_exact}
    doc = {"results": [epoch("omniglot", "retrieval-fused", 0.9, 0.2), epoch("mnist", "retrieval-fused", 1.2, 0.4),
                       epoch("mnist", "retrieval-torch", 0.5, 0.1),  # not the fused run
                       epoch("omniglot", "vamp500", 1.0, 0.3)]}
    rows = [(r["goal"].split(" ")[0], r["measured"], r["met"]) for r in goals.epoch_goal_rows(doc)]
    assert rows == [("mnist", "1.2x its s/epoch", False), ("mnist", "0.4x its s/epoch", False),
                    ("omniglot", "0.9x its s/epoch", True), ("omniglot", "0.2x its s/epoch", True)]
    missing = goals.epoch_goal_rows({"results": [epoch("mnist", "retrieval-fused", None, 0.3)]})
    assert [(r["measured"], r["met"]) for r in missing] == [("not measured", None), ("0.3x its s/epoch", True)]
