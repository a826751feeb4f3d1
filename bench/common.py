"""Shared helpers of bench/: device metadata, the results JSON format, provider
availability, problem sizes and the pytest-benchmark timing wrapper.

Every script of bench/ writes one *results document* (see `result_document`):

    {"schema": "exvae-bench/1", "kind": "epoch_time" | "ops", "created": ISO-8601 UTC,
     "device": device_info(...), "settings": {...every knob of the run...},
     "results": [{...one record per measured case...}], "skipped": [{"case", "reason"}]}

("ops" documents also carry "autotune": the configs Triton's autotuners chose in the run.)

under bench/results/<device slug>/<kind>-<tag>-<UTC timestamp>.json, where the slug names
the accelerator ("nvidia-h200") or, on CPU, starts with "cpu-" and names the processor.
`plot.py` reads only this format; `run_ops.py` converts pytest-benchmark's
--benchmark-json into it (`convert_benchmark_json`).

Run as a script: `python bench/common.py slug [--device cuda]` prints the device slug,
`... info` the device metadata as JSON, `... backends` the backends each op has there.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from devinfo import (BACKEND_MODULES, PEAK_BANDWIDTH, apply_threads,  # noqa: E402,F401
                     autotune_choices, backends_info, bench_device, cpu_model, device_info,
                     git_info, load_average, load_backends, peak_bandwidth, scoped_threads,
                     synchronize)

SCHEMA = "exvae-bench/1"
BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

PROVIDERS = ("torch", "torch-naive", "triton", "cpp", "faiss", "keops")
"""Every provider name a micro-benchmark may be parametrised with. "torch", "triton" and
"cpp" are the library's own backends (through the public op, `backend=`); "torch-naive"
is the textbook PyTorch version (materialises the B x N matrix); "faiss" and "keops" are
the outside peers, used when importable."""
LIBRARY_BACKENDS = ("torch", "triton", "cpp")
MODES = ("forward", "backward", "full")
B, D, K = 100, 40, 10
"""Micro-benchmark shapes: B queries/rows (a minibatch), d latent dimensions, k neighbours."""
INFORMATIONAL_PARAMS = ("B", "d", "k", "rotation_sets", "searched", "unique_rows", "axis")
"""extra_info keys that describe a case without identifying it. Tables and plots put every
other parameter that varies within an op (besides the axis, "N" unless extra_info["axis"]
names another) into the series label, e.g. "subset" or "K=1100, dtype=bfloat16"."""
SIZES_N = (1_000, 10_000, 25_000, 100_000, 1_000_000)
CPU_DEFAULT_MAX_N = 25_000
"""On CPU the micro-benchmarks stop at this N unless --bench-max-n / EXVAE_BENCH_MAX_N says
otherwise; on an accelerator every N of SIZES_N runs."""


# -- results documents ----------------------------------------------------------------

def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def result_document(kind: str, device: dict[str, Any], settings: dict[str, Any],
                    results: list[dict[str, Any]], skipped: list[dict[str, Any]] | None = None
                    ) -> dict[str, Any]:
    """A results document (module docstring) of `kind` "epoch_time" or "ops"."""
    return {"schema": SCHEMA, "kind": kind, "created": utc_now(), "device": device,
            "settings": settings, "results": results, "skipped": skipped or []}


def default_result_path(kind: str, device: dict[str, Any], tag: str) -> Path:
    """bench/results/<slug>/<kind>-<tag>-<UTC timestamp>.json"""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return RESULTS_DIR / device["slug"] / f"{kind}-{tag}-{stamp}.json"


def write_json(doc: dict[str, Any], path: Path) -> Path:
    """Write `doc` to `path` atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_document(path: Path) -> dict[str, Any]:
    """Read a results document, checking its schema."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not an {SCHEMA} results document")
    return doc


def summarize(values: Sequence[float]) -> dict[str, float]:
    """median, quartiles, min, max, mean, stddev (0 for one value) and count of `values`."""
    xs = sorted(float(v) for v in values)
    if not xs:
        raise ValueError("summarize: no values")
    q1, q3 = (xs[0], xs[-1]) if len(xs) < 2 else tuple(statistics.quantiles(xs, n=4, method="inclusive")[::2])
    return {"median": statistics.median(xs), "q1": q1, "q3": q3, "min": xs[0], "max": xs[-1],
            "mean": statistics.fmean(xs), "stddev": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "count": len(xs)}


# -- micro-benchmark conventions ----------------------------------------------------------

def max_n(device: torch.device, override: int | None = None) -> int | None:
    """Largest N to run: `override`, else $EXVAE_BENCH_MAX_N, else CPU_DEFAULT_MAX_N on CPU
    and no limit (None) on an accelerator."""
    if override is None and os.environ.get("EXVAE_BENCH_MAX_N"):
        override = int(float(os.environ["EXVAE_BENCH_MAX_N"]))
    if override is not None:
        return override
    return CPU_DEFAULT_MAX_N if device.type == "cpu" else None


def provider_skip_reason(op: str, provider: str, device: torch.device,
                         peers: dict[str, Callable[[], str | None]] | None = None) -> str | None:
    """Why `provider` cannot run `op` on `device` (None: it can).

    Library backends are looked up in the dispatch registry; "torch-naive" always runs;
    outside peers are asked through `peers[provider]()` (None = available), and a provider
    missing from `peers` is not a provider of this op. Triton on CPU (the interpreter) is
    skipped unless EXVAE_BENCH_INTERPRETER=1: its timings say nothing about the kernels.
    """
    if provider in LIBRARY_BACKENDS:
        from exvae_fast.ops import dispatch

        failures = load_backends()
        try:
            dispatch.resolve_backend(op, provider, torch.empty(1, device=device))
        except ValueError as err:
            hint = "; ".join(f"{m}: {e}" for m, e in failures.items()
                             if any(m == name and provider == b for name, _, b in BACKEND_MODULES))
            return str(err) + (f" ({hint})" if hint else "")
        if provider == "triton" and device.type == "cpu" and os.environ.get("EXVAE_BENCH_INTERPRETER") != "1":
            return "Triton on CPU runs in the interpreter (timings meaningless); set EXVAE_BENCH_INTERPRETER=1"
        return None
    if provider == "torch-naive":
        return None
    if peers is None or provider not in peers:
        return f"{provider} is not a provider of {op}"
    return peers[provider]()


def importable(module: str) -> str | None:
    """None when `module` imports, else the reason it does not (a skip message)."""
    try:
        importlib.import_module(module)
    except Exception as err:  # noqa: BLE001
        return f"{module} is not importable ({type(err).__name__}: {err})".splitlines()[0]
    return None


class Rotation:
    """Cycles over `count` input sets made by `make(i)`, so that repeated calls do not all hit
    one cache-resident buffer: enough sets that together they exceed `min_bytes` (default
    256 MB, several times an H200's 60 MB L2), at most `max_sets`."""

    def __init__(self, make: Callable[[int], Any], bytes_per_set: int, min_bytes: int = 256 << 20,
                 max_sets: int = 16) -> None:
        self.count = max(1, min(max_sets, math.ceil(min_bytes / max(bytes_per_set, 1))))
        self.sets = [make(i) for i in range(self.count)]
        self._next = 0

    def next(self) -> Any:
        item = self.sets[self._next]
        self._next = (self._next + 1) % self.count
        return item


def measure(benchmark: Any, call: Callable[[Any], Any], prepare: Callable[[], Any], *,
            device: torch.device, info: dict[str, Any], target_s: float = 0.5,
            min_rounds: int = 5, max_rounds: int = 200) -> None:
    """Time `call(state)` with pytest-benchmark, `state = prepare()` made untimed each round.

    The device is synchronised after `prepare` and inside the timed region after `call`,
    so each round is the wall time of one complete call (for tiny problems on a GPU that
    includes the launch and synchronisation overhead, about 10 us). Two warm-up calls
    (compilation, autotuning, allocator) run first; the number of rounds is chosen so the
    case takes about `target_s`. `info` (op, provider, mode, params, bytes, flops) goes into
    benchmark.extra_info, which `convert_benchmark_json` reads.
    """
    def prepared() -> tuple[tuple[Any], dict]:
        state = prepare()
        synchronize(device)
        return (state,), {}

    def timed(state: Any) -> None:
        call(state)
        synchronize(device)

    for _ in range(2):
        (state,), _ = prepared()
        timed(state)
    (state,), _ = prepared()
    start = time.perf_counter()
    timed(state)
    once = max(time.perf_counter() - start, 1e-6)
    rounds = int(min(max_rounds, max(min_rounds, target_s / once)))
    benchmark.extra_info.update(info)
    benchmark.extra_info["device_slug"] = device_slug_cached(device)
    benchmark.pedantic(timed, setup=prepared, rounds=rounds, iterations=1, warmup_rounds=0)


_SLUGS: dict[str, str] = {}


def device_slug_cached(device: torch.device) -> str:
    key = str(device)
    if key not in _SLUGS:
        _SLUGS[key] = device_info(device)["slug"]
    return _SLUGS[key]


def convert_benchmark_json(raw: dict[str, Any]) -> dict[str, Any]:
    """pytest-benchmark's --benchmark-json (with bench/conftest.py's additions) -> an "ops"
    results document. Achieved GB/s = extra_info["bytes"] / median time; fraction of peak =
    that over the device's datasheet bandwidth (omitted on CPU); GFLOP/s likewise."""
    extra = raw.get("exvae", {})
    device = raw.get("machine_info", {}).get("exvae_device") or extra.get("device")
    if device is None:
        raise ValueError("benchmark JSON carries no device metadata (was it written with bench/conftest.py?)")
    peak = device.get("peak_bandwidth_bytes_per_s")
    results = []
    for bench in raw.get("benchmarks", []):
        info, stats = dict(bench.get("extra_info", {})), bench["stats"]
        if "op" not in info:
            continue
        median = stats["median"]
        record = {key: info.pop(key) for key in ("op", "provider", "mode") if key in info}
        nbytes, flops = info.pop("bytes", None), info.pop("flops", None)
        info.pop("device_slug", None)
        record["params"] = info
        record["name"] = bench.get("name")
        record["time_s"] = {"median": median, "q1": stats.get("q1"), "q3": stats.get("q3"),
                            "min": stats["min"], "max": stats["max"], "mean": stats["mean"],
                            "stddev": stats["stddev"], "count": stats["rounds"]}
        record["bytes"] = nbytes
        record["gbps"] = None if not nbytes else nbytes / median / 1e9
        record["peak_bandwidth_fraction"] = None if not (nbytes and peak) else nbytes / median / peak
        record["flops"] = flops
        record["gflops"] = None if not flops else flops / median / 1e9
        results.append(record)
    settings = dict(extra.get("settings", {}))
    settings["pytest_benchmark"] = raw.get("version")
    settings["timing"] = ("wall clock of one call per round (device synchronised after it), "
                          "inputs rotated over several copies; median over rounds")
    doc = result_document("ops", device, settings, results, extra.get("skipped", []))
    doc["autotune"] = extra.get("autotune", [])  # the fused kernels' chosen configs
    if raw.get("datetime"):  # when pytest-benchmark ran, in the format of utc_now()
        when = _dt.datetime.fromisoformat(raw["datetime"].replace("Z", "+00:00"))
        if when.tzinfo is not None:
            when = when.astimezone(_dt.timezone.utc)
        doc["created"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="device slug / metadata of this machine")
    parser.add_argument("what", choices=("slug", "info", "backends"))
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    info = device_info(bench_device(args.device))
    if args.what == "slug":
        print(info["slug"])
    elif args.what == "info":
        print(json.dumps(info, indent=1))
    else:
        for op, entry in info["backends"].items():
            print(f"{op}: registered {', '.join(entry['registered'])}; auto on {info['type']} -> {entry['auto']}")
        for name, error in info["backend_import_errors"].items():
            print(f"not importable: {name}: {error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
