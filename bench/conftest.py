"""pytest-benchmark plumbing shared by bench/test_*.py (not part of the test suite:
`pytest` from the repository root collects tests/ only).

Options (each also read from the environment, so `exvae bench ops` and CI can set them):
  --bench-device D     cpu | cuda | cuda:N    ($EXVAE_BENCH_DEVICE; default cuda when available)
  --bench-max-n N      largest N to run       ($EXVAE_BENCH_MAX_N; default 25,000 on CPU, all on GPU)
  --bench-quick        shorter cases (about 0.15 s of rounds each instead of 0.5 s)
  --bench-deadline T   Unix time after which the remaining cases are skipped (a time budget)
                       ($EXVAE_BENCH_DEADLINE)
  torch CPU threads: $EXVAE_BENCH_THREADS

Fixtures: `bench_device` (torch.device) and `bench_settings` (dict), and the autouse
deadline check. Hooks add the device metadata (common.device_info) to the benchmark JSON's
machine_info["exvae_device"], and the skipped cases with their reasons and the autotuners'
chosen configs to its "exvae" key, which `run_ops.py` / common.convert_benchmark_json turn
into a results document.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

_SKIPPED: list[dict[str, str]] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("exvae-bench")
    group.addoption("--bench-device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    group.addoption("--bench-max-n", type=float, default=None, help="largest N (default 25,000 on CPU)")
    group.addoption("--bench-quick", action="store_true", help="short cases (quick preset)")
    group.addoption("--bench-deadline", type=float, default=None, help="Unix time: skip cases after it")


def _settings(config: pytest.Config) -> dict:
    cached = getattr(config, "_exvae_bench_settings", None)
    if cached is not None:
        return cached
    common.apply_threads()  # $EXVAE_BENCH_THREADS
    device = common.bench_device(config.getoption("--bench-device"))
    override = config.getoption("--bench-max-n")
    quick = config.getoption("--bench-quick") or os.environ.get("EXVAE_BENCH_QUICK") == "1"
    deadline = config.getoption("--bench-deadline") or (
        float(os.environ["EXVAE_BENCH_DEADLINE"]) if os.environ.get("EXVAE_BENCH_DEADLINE") else None)
    settings = {
        "device": device,
        "max_n": common.max_n(device, None if override is None else int(override)),
        "quick": bool(quick),
        "target_s": 0.15 if quick else 0.5,
        "min_rounds": 3 if quick else 5,
        "max_rounds": 100 if quick else 200,
        "deadline": deadline,
    }
    config._exvae_bench_settings = settings
    return settings


@pytest.fixture(scope="session")
def bench_settings(request: pytest.FixtureRequest) -> dict:
    return _settings(request.config)


@pytest.fixture(scope="session")
def bench_device(bench_settings: dict):
    return bench_settings["device"]


@pytest.fixture(autouse=True)
def _deadline(bench_settings: dict) -> None:
    deadline = bench_settings["deadline"]
    if deadline is not None and time.time() > deadline:
        pytest.skip("time budget spent (--bench-deadline)")


def check_size(settings: dict, n: int) -> None:
    """Skip a case whose N is above the run's largest N."""
    if settings["max_n"] is not None and n > settings["max_n"]:
        pytest.skip(f"N={n} above the largest N {settings['max_n']} of this run "
                    "(CPU default; set EXVAE_BENCH_MAX_N, pytest --bench-max-n or run_ops.py --max-n)")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and report.when in ("setup", "call"):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        _SKIPPED.append({"case": report.nodeid.split("::")[-1], "reason": reason.removeprefix("Skipped: ")})


@pytest.hookimpl(hookwrapper=True)
def pytest_benchmark_generate_json(benchmarks: list):
    """Drop a case interrupted before its first timed round (gpu_validation.sh's SIGINT at a
    step's cap): pytest-benchmark cannot summarise no rounds, and its error would lose the
    JSON of every case measured before. The case is listed as skipped instead."""
    empty = [bench for bench in benchmarks if not bench and not bench.has_error]
    for bench in empty:
        benchmarks.remove(bench)
        _SKIPPED.append({"case": bench.name, "reason": "interrupted before its first timed round"})
    yield


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    machine_info["exvae_device"] = common.device_info(_settings(config)["device"])


def pytest_benchmark_update_json(config: pytest.Config, benchmarks: list, output_json: dict) -> None:
    s = _settings(config)
    try:  # reads the kernel modules' autotuners: a change there must not cost the timings
        autotune = common.autotune_choices()
    except Exception as err:  # noqa: BLE001
        autotune = [{"error": f"{type(err).__name__}: {err}"}]
    output_json["exvae"] = {
        "skipped": list(_SKIPPED),
        "autotune": autotune,
        "settings": {"device": str(s["device"]), "max_n": s["max_n"], "quick": s["quick"],
                     "target_s_per_case": s["target_s"], "min_rounds": s["min_rounds"],
                     "max_rounds": s["max_rounds"], "B": common.B, "d": common.D, "k": common.K,
                     "sizes_n": list(common.SIZES_N)},
    }
