"""The issues' speed goals, judged on one measured results document (ops or epoch_time).

Every verdict comes from medians measured side by side in that document (bench/common.py
format), never from a typed number; a goal whose cases are missing says "not measured".
B = 100, d = 40, float32; times are per call. The goals (issues 3 and 4):

- mixture_log_density, forward + backward ("full"), Triton against the torch reference:
  at least 5x faster for every N >= 25,000; no slower at N = 1,000; within 1.5x of the
  roofline at N = 1e6, where the roofline is the issue's: the larger of 2 B N d FLOPs at the
  device's datasheet FP32 rate and N d 4 bytes at its datasheet bandwidth (one pass over the
  distances: the kernels make four, so this is the demanding reading).
- knn_search, Triton: at least 2x faster than FAISS IndexFlatL2 on the GPU at N = 1e6 (a
  CPU FAISS result is reported but is no GPU peer), at least 5x faster than cdist + topk at
  N = 1e6, and never slower than either at any measured N and variant.
- cache_update_, C++/CUDA: faster than index_copy_ + norm recomputation at every measured
  (N, K, storage dtype).
- s/epoch (issue 5, on an epoch_time document): the Exemplar ConvHVAE (retrieval, fused ops)
  epoch no slower than the VampPrior(500) one and several (3) times faster than the exact
  exemplar prior's, per data set.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from devinfo import peak_bandwidth, peak_fp32  # noqa: E402

from exvae_fast.run_table import markdown_table  # noqa: E402

MIXTURE, KNN, CACHE = "mixture_log_density", "knn_search", "cache_update_"
LARGE_N, SMALL_N, LARGEST_N = 25_000, 1_000, 1_000_000
CASE_KEYS = ("N", "K", "dtype", "variant")
"""The params that tell one case of an op from another (the rest describe it)."""
Verdict = tuple[str, bool | None]  # (what was measured, met: True / False / None = cannot tell)
Speedups = dict[tuple[tuple[str, Any], ...], float]


def _cases(doc: dict[str, Any], op: str, provider: str, mode: str, **params: Any) -> list[dict[str, Any]]:
    """The timed records of op / provider / mode whose params include `params`."""
    return [r for r in doc.get("results", [])
            if (r.get("op"), r.get("provider"), r.get("mode")) == (op, provider, mode) and r.get("time_s")
            and all(r.get("params", {}).get(key) == value for key, value in params.items())]


def _speedups(doc: dict[str, Any], op: str, fast: str, slow: str, mode: str, **params: Any) -> Speedups:
    """{case: median of `slow` / median of `fast`} over the cases (CASE_KEYS) with `params`
    that both providers measured in `mode`."""
    out = {}
    for r in _cases(doc, op, fast, mode, **params):
        case = {key: r["params"][key] for key in CASE_KEYS if key in r["params"]}
        peer = _cases(doc, op, slow, mode, **case)
        if len(peer) == 1:
            out[tuple(sorted(case.items()))] = peer[0]["time_s"]["median"] / r["time_s"]["median"]
    return out


def _label(case: tuple[tuple[str, Any], ...]) -> str:
    return ", ".join(f"{key}={value:,}" if isinstance(value, int) else f"{key}={value}"
                     for key, value in case if value != "")


def _listed(ratios: Speedups) -> str:
    return "; ".join(f"{ratio:.3g}x ({_label(case)})" for case, ratio in sorted(ratios.items()))


def _slowest(ratios: Speedups, met: Callable[[float], bool]) -> Verdict:
    case = min(ratios, key=ratios.get)
    return f"slowest {ratios[case]:.3g}x ({_label(case)}) of {len(ratios)} cases", met(ratios[case])


def mixture_speedup_large_n(doc: dict[str, Any]) -> Verdict:
    ratios = {case: ratio for case, ratio in _speedups(doc, MIXTURE, "triton", "torch", "full", variant="").items()
              if dict(case)["N"] >= LARGE_N}
    return (_listed(ratios), min(ratios.values()) >= 5) if ratios else ("not measured", None)


def mixture_small_n(doc: dict[str, Any]) -> Verdict:
    ratios = _speedups(doc, MIXTURE, "triton", "torch", "full", variant="", N=SMALL_N)
    return (_listed(ratios), min(ratios.values()) >= 1) if ratios else ("not measured", None)


def mixture_roofline(doc: dict[str, Any]) -> Verdict:
    found = _cases(doc, MIXTURE, "triton", "full", variant="", N=LARGEST_N)
    if len(found) != 1:
        return "not measured", None
    measured, p = found[0]["time_s"]["median"], found[0]["params"]
    name = doc["device"].get("gpu_name") or ""
    flops_rate = doc["device"].get("peak_fp32_flops_per_s") or peak_fp32(name)
    bandwidth = doc["device"].get("peak_bandwidth_bytes_per_s") or peak_bandwidth(name)
    if not (flops_rate and bandwidth):
        return f"{measured * 1e6:.3g} us; no datasheet peak for this device", None
    roofline = max(2 * p["B"] * p["N"] * p["d"] / flops_rate, p["N"] * p["d"] * 4 / bandwidth)
    ratio = measured / roofline
    return f"{measured * 1e6:.3g} us = {ratio:.3g}x the roofline {roofline * 1e6:.3g} us", ratio <= 1.5


def knn_against(peer: str, factor: float) -> Callable[[dict[str, Any]], Verdict]:
    """The top-k goal against `peer` at N = 1e6 over the whole key set (variant "all")."""
    def judge(doc: dict[str, Any]) -> Verdict:
        ratios = _speedups(doc, KNN, "triton", peer, "forward", N=LARGEST_N, variant="all")
        if ratios:
            return _listed(ratios), min(ratios.values()) >= factor
        if peer == "faiss-gpu":
            cpu = _speedups(doc, KNN, "triton", "faiss-cpu", "forward", N=LARGEST_N, variant="all")
            return "no GPU FAISS ran" + (f"; FAISS on the CPU: {_listed(cpu)}" if cpu else ""), None
        return "not measured", None
    return judge


def knn_never_slower(doc: dict[str, Any]) -> Verdict:
    ratios = {(("peer", peer),) + case: ratio for peer in ("faiss-gpu", "torch-naive")
              for case, ratio in _speedups(doc, KNN, "triton", peer, "forward").items()}
    return _slowest(ratios, lambda r: r >= 1) if ratios else ("not measured", None)


def cache_update_every_size(doc: dict[str, Any]) -> Verdict:
    ratios = _speedups(doc, CACHE, "cpp", "torch-naive", "forward")
    return _slowest(ratios, lambda r: r > 1) if ratios else ("not measured", None)


GOALS: tuple[tuple[str, str, Callable[[dict[str, Any]], Verdict]], ...] = (
    ("3", "mixture fwd+bwd: Triton >= 5x the torch reference for N >= 25,000", mixture_speedup_large_n),
    ("3", "mixture fwd+bwd at N = 1e6: within 1.5x of the roofline", mixture_roofline),
    ("3", "mixture fwd+bwd at N = 1,000: no slower than the torch reference", mixture_small_n),
    ("3", "top-k at N = 1e6: Triton >= 2x FAISS IndexFlatL2 on the GPU", knn_against("faiss-gpu", 2)),
    ("3", "top-k at N = 1e6: Triton >= 5x cdist + topk", knn_against("torch-naive", 5)),
    ("3", "top-k: never slower than FAISS (GPU) or cdist + topk at any N", knn_never_slower),
    ("4", "cache_update_: C++/CUDA faster than index_copy_ + norms at every size", cache_update_every_size),
)
"""(issue, goal, judge): each judge reads one ops document."""


EPOCH_MODEL, EPOCH_PRIOR, SEVERAL = "convhvae", "retrieval-fused", 3.0
"""Issue 5: the Exemplar ConvHVAE (retrieval, fused ops) epoch against VampPrior(500) and the
exact exemplar prior; "several times faster" is read as at least SEVERAL times."""


def epoch_goal_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per data set of an epoch_time document: the Exemplar ConvHVAE epoch no slower than the
    VampPrior(500) one, and at least SEVERAL times faster than the exact prior's (each ratio
    is of medians measured in that document, `tables.add_ratios`)."""
    rows = []
    ours = [r for r in doc.get("results", []) if r.get("status") == "ok"
            and (r.get("model"), r.get("prior")) == (EPOCH_MODEL, EPOCH_PRIOR)]
    for r in sorted(ours, key=lambda r: r["dataset"]):
        for field, goal, met in (("ratio_to_vamp500", "no slower than VampPrior(500)", lambda x: x <= 1),
                                 ("ratio_to_exact_torch", f"at least {SEVERAL:g}x faster than the exact prior",
                                  lambda x: x <= 1 / SEVERAL)):
            ratio = r.get(field)
            rows.append({"issue": "5", "goal": f"{r['dataset']} ConvHVAE epoch, exemplar retrieval (fused): {goal}",
                         "measured": "not measured" if ratio is None else f"{ratio:.3g}x its s/epoch",
                         "met": None if ratio is None else met(ratio)})
    return rows


def goal_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per goal: issue, goal, measured (text) and met (True / False / None)."""
    rows = []
    for issue, goal, judge in GOALS:
        measured, met = judge(doc)
        rows.append({"issue": issue, "goal": goal, "measured": measured, "met": met})
    return rows


def goals_table(rows: list[dict[str, Any]], measured: str) -> str:
    """`goal_rows` / `epoch_goal_rows` as Markdown; `measured` heads the measured column."""
    verdict = {True: "yes", False: "**no**", None: "-"}
    return markdown_table(["issue", "goal", measured, "met"],
                          [[r["issue"], r["goal"], r["measured"], verdict[r["met"]]] for r in rows],
                          text_columns=4)


def ops_goals_table(doc: dict[str, Any]) -> str:
    """The goals of issues 3 and 4 on an ops document, as Markdown."""
    return goals_table(goal_rows(doc), "measured (speed-up = peer time / fused time)")


def epoch_goals_table(doc: dict[str, Any]) -> str:
    """The goals of issue 5 on an epoch_time document, as Markdown."""
    return goals_table(epoch_goal_rows(doc), "measured (s/epoch over the peer's)")
