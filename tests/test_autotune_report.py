"""tools/autotune_report.py on Triton autotune cache files written by the test (their format:
{"key": ..., "configs_timings": [[config.__dict__, [median, p20, p80]], ...]})."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("autotune_report",
                                              Path(__file__).resolve().parents[1] / "tools" / "autotune_report.py")
autotune_report = importlib.util.module_from_spec(SPEC)
sys.modules["autotune_report"] = autotune_report  # dataclasses look their module up there
SPEC.loader.exec_module(autotune_report)


def config(block_n, warps):
    return {"kwargs": {"BLOCK_B": 16, "BLOCK_N": block_n}, "num_warps": warps, "num_stages": 2,
            "num_ctas": 1, "maxnreg": None, "pre_hook": None, "ir_override": None}


def write(folder, prefix, kernel, key, timings):
    path = folder / f"{prefix}-{kernel}.autotune.json"
    path.write_text(json.dumps({"key": key, "configs_timings": [[c, [ms, ms, ms]] for c, ms in timings]}))


@pytest.fixture
def folder(tmp_path):
    a, b, c = config(64, 8), config(128, 8), config(32, 4)
    write(tmp_path, "0123456789ab", "mixture_forward_partial_kernel", [128, 1024, "torch.float32"],
          [(a, 0.100), (b, 0.104), (c, 0.300)])
    write(tmp_path, "ba9876543210", "mixture_forward_partial_kernel", [128, 1048576, "torch.float32"],
          [(a, 0.200), (b, 0.150), (c, math.inf)])
    write(tmp_path, "aaaaaaaaaaaa", "_scan_kernel", [128, 1024], [(a, 0.05), (c, 0.05)])
    return tmp_path


def test_configs_never_near_the_best_are_removal_candidates(folder):
    tunings = autotune_report.read_tunings(folder)
    assert sorted({t.kernel for t in tunings}) == ["_scan_kernel", "mixture_forward_partial_kernel"]
    summary = autotune_report.summarize(tunings, tolerance=0.05)["mixture_forward_partial_kernel"]
    a, b, c = (autotune_report.config_label(config(n, w)) for n, w in ((64, 8), (128, 8), (32, 4)))
    assert a == "BLOCK_B=16 BLOCK_N=64 warps=8 stages=2"
    assert (summary[a].wins, summary[a].near_best) == (1, 1)
    assert (summary[b].wins, summary[b].near_best) == (1, 2)  # 4% off on the first key
    assert (summary[c].wins, summary[c].near_best) == (0, 0) and math.inf in summary[c].ratios
    text = autotune_report.report(tunings, 0.05)
    assert f"| {c} | 0 | 0 | 3.00 | inf | candidate |" in text
    assert f"| {b} | 1 | 2 | 1.00 | 1.04 |  |" in text
    assert f"| {a} | 1 | 1 | 1.00 | 1.33 |  |" in text
    scan = autotune_report.summarize(tunings, 0.05)["_scan_kernel"]
    assert all(s.wins == 1 for s in scan.values())  # a tie: both are the fastest


def test_command_line(folder, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert autotune_report.main([str(folder), "--json", str(out)]) == 0
    assert "### mixture_forward_partial_kernel (2 key(s))" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert set(data) == {"_scan_kernel", "mixture_forward_partial_kernel"}
    (tmp_path / "empty").mkdir()
    assert autotune_report.main([str(tmp_path / "empty")]) == 2
    (folder / "x-broken.autotune.json").write_text("{}")
    assert autotune_report.main([str(folder)]) == 2
    assert "not a Triton autotune cache file" in capsys.readouterr().err
