"""bench/run_ops.py under the conditions of the one GPU run (bench/gpu_validation.sh): a step
that hits its cap is stopped by `timeout -s INT`, which signals the whole process group; what
was measured before must still become a results document. Also: the benchmark files run in
the goals' order, and a call from inside a pytest-xdist worker still measures."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exvae_fast.bench_cli import load_script

BENCH = Path(__file__).resolve().parents[1] / "bench"

SLOW_FILE = '''
import os
import time
from pathlib import Path

import pytest

import common


def stall():
    Path(__file__).with_name("second_case_started").write_text("")
    time.sleep(120)


@pytest.mark.parametrize("n", [1, 2])
def test_slow(benchmark, bench_device, bench_settings, n):
    info = {"op": "slow", "provider": "torch", "mode": "forward", "N": n, "bytes": 8, "flops": None}
    if n == 2 and os.environ["STALL"] == "in-first-round":  # pytest-benchmark holds a case with no rounds
        benchmark.extra_info.update(info)
        benchmark.pedantic(stall, rounds=1)
    if n == 2:
        stall()
    common.measure(benchmark, lambda state: None, lambda: None, device=bench_device, info=info,
                   target_s=0.01, min_rounds=3, max_rounds=5)
'''


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="process groups (POSIX)")
@pytest.mark.parametrize("stall", ["between-cases", "in-first-round"])
def test_interrupted_run_keeps_the_cases_measured_before(tmp_path, stall):
    pytest.importorskip("pytest_benchmark")
    bench = tmp_path / "bench"
    bench.mkdir()
    for name in ("conftest.py", "common.py", "devinfo.py", "tables.py", "run_ops.py"):
        shutil.copy(BENCH / name, bench / name)
    (bench / "test_slow.py").write_text(SLOW_FILE)
    out = tmp_path / "ops.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["STALL"] = stall
    child = subprocess.Popen([sys.executable, str(bench / "run_ops.py"), "--device", "cpu", "--threads", "1",
                              "--out", str(out)], cwd=tmp_path, env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not (bench / "second_case_started").exists():
            assert child.poll() is None and time.time() < deadline, "the first case did not finish"
            time.sleep(0.2)
        os.killpg(child.pid, signal.SIGINT)  # what `timeout -s INT` does to the step
        output, _ = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    assert out.exists(), output
    doc = json.loads(out.read_text())
    assert [(r["op"], r["params"]["N"]) for r in doc["results"]] == [("slow", 1)]
    if stall == "in-first-round":
        assert {"case": "test_slow[2]", "reason": "interrupted before its first timed round"} in doc["skipped"]
    assert out.with_name("ops.raw.json").exists()


def test_benchmark_files_run_in_the_goals_order(monkeypatch):
    run_ops = load_script("run_ops")
    seen = {}

    class Child:
        def __init__(self, cmd, **kwargs):
            seen["cmd"], seen["env"] = cmd, kwargs["env"]

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(run_ops.subprocess, "Popen", Child)
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    args = run_ops.build_parser().parse_args(["--device", "cpu"])
    assert run_ops.run_pytest(args, Path("raw.json")) == 0
    files = [Path(a).name for a in seen["cmd"] if a.endswith(".py") and "bench" in a]
    assert files[:3] == ["test_mixture_log_density.py", "test_knn_search.py", "test_cache_update.py"]
    # pytest-benchmark disables itself in a child that inherits an xdist worker's variables
    assert not any(key.startswith("PYTEST_XDIST_") for key in seen["env"])


def test_a_failing_autotune_summary_keeps_the_benchmark_json(monkeypatch):
    conftest = load_script("conftest")
    monkeypatch.setattr(conftest.common, "autotune_choices", lambda: 1 / 0)
    config = type("Config", (), {})()
    config._exvae_bench_settings = {"device": "cpu", "max_n": 1000, "quick": True, "target_s": 0.15,
                                    "min_rounds": 3, "max_rounds": 100, "deadline": None}
    output = {}
    conftest.pytest_benchmark_update_json(config, [], output)
    assert output["exvae"]["autotune"] == [{"error": "ZeroDivisionError: division by zero"}]


def test_datasheet_bandwidth_of_hopper_names():
    common = load_script("common")
    assert common.peak_bandwidth("NVIDIA H200") == 4.8e12
    assert common.peak_bandwidth("NVIDIA GH200 480GB") == 4.0e12  # not the H200's, which its name contains
