"""Which autotuned tiles earn their place: a report of Triton's autotune timings.

The GPU validation run (bench/gpu_validation.sh) keeps every `<kernel>.autotune.json` that
Triton's autotuners wrote (`cache_results=True`): for one problem key, each config tried and
its timing [median, 20th, 80th percentile] in ms (inf when it failed to compile or run).
This report ranks the configs per key and, per kernel, counts for each config the keys on
which it was the fastest or within `--tolerance` of the fastest. A config that is never
within the tolerance on any key is a candidate for removal from the tile lists
(`FORWARD_TILES` / `BACKWARD_TILES` in kernels/mixture_log_density.py, `_TILES` in
kernels/knn_search.py): it costs a compile at every new key and never pays off.

    python tools/autotune_report.py bench/results/nvidia-h200/gpu_validation/autotune
    python tools/autotune_report.py DIR --tolerance 0.05 --json report.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUFFIX = ".autotune.json"


@dataclass
class Tuning:
    """One autotuned problem: kernel, key, and {config label: median ms}."""

    kernel: str
    key: str
    timings: dict[str, float]

    @property
    def best(self) -> float:
        return min(self.timings.values())


@dataclass
class ConfigSummary:
    """One config of one kernel across its keys."""

    wins: int = 0
    near_best: int = 0
    ratios: list[float] = field(default_factory=list)


def config_label(config: dict[str, Any]) -> str:
    """'BLOCK_B=32 BLOCK_N=64 warps=8 stages=2' from a serialised triton.Config."""
    meta = " ".join(f"{k}={v}" for k, v in sorted((config.get("kwargs") or {}).items()))
    return f"{meta} warps={config.get('num_warps')} stages={config.get('num_stages')}".strip()


def kernel_name(path: Path) -> str:
    """The kernel of a collected file '<12-char cache dir>-<kernel>.autotune.json'."""
    name = path.name[: -len(SUFFIX)]
    return name.split("-", 1)[1] if "-" in name else name


def read_tunings(folder: str | Path) -> list[Tuning]:
    """Every *.autotune.json under folder; ValueError naming a file that is not one."""
    paths = sorted(Path(folder).rglob(f"*{SUFFIX}"))
    if not paths:
        raise ValueError(f"folder: no *{SUFFIX} files under {str(folder)!r}")
    tunings = []
    for path in paths:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            timings = {config_label(cfg): float(times[0]) for cfg, times in data["configs_timings"]}
        except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
            raise ValueError(f"{path}: not a Triton autotune cache file ({type(err).__name__}: {err})") from err
        if not timings:
            raise ValueError(f"{path}: no config timings")
        tunings.append(Tuning(kernel_name(path), json.dumps(data.get("key")), timings))
    return tunings


def summarize(tunings: list[Tuning], tolerance: float) -> dict[str, dict[str, ConfigSummary]]:
    """{kernel: {config: ConfigSummary}}: wins, keys within (1 + tolerance) x best, and the
    ratio to the best on each key (inf where it failed)."""
    out: dict[str, dict[str, ConfigSummary]] = {}
    for t in tunings:
        per_kernel = out.setdefault(t.kernel, {})
        best = t.best
        for label, ms in t.timings.items():
            s = per_kernel.setdefault(label, ConfigSummary())
            ratio = ms / best if math.isfinite(ms) and best > 0 else math.inf
            s.ratios.append(ratio)
            s.wins += ms == best
            s.near_best += ratio <= 1 + tolerance
    return out


def report(tunings: list[Tuning], tolerance: float) -> str:
    """Markdown: per kernel, each config's wins, keys near the best, median and worst ratio,
    and whether it is a removal candidate."""
    lines = []
    for kernel, configs in sorted(summarize(tunings, tolerance).items()):
        keys = sum(t.kernel == kernel for t in tunings)
        lines += [f"### {kernel} ({keys} key(s))", "",
                  f"| config | fastest on | within {tolerance:.0%} on | median ratio | worst ratio | remove? |",
                  "| :--- | ---: | ---: | ---: | ---: | :--- |"]
        for label, s in sorted(configs.items(), key=lambda item: (-item[1].near_best, sorted(item[1].ratios))):
            ratios = sorted(s.ratios)
            median = ratios[(len(ratios) - 1) // 2]  # the lower median: a failed key (inf) does not hide the rest
            lines.append(f"| {label} | {s.wins} | {s.near_best} | {median:.2f} | {ratios[-1]:.2f} | "
                         f"{'candidate' if s.near_best == 0 else ''} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="folder holding *.autotune.json (searched recursively)")
    p.add_argument("--tolerance", type=float, default=0.05, help="'near the best' margin (0.05 = 5%%)")
    p.add_argument("--json", type=Path, help="also write {kernel: {config: {wins, near_best, ratios}}}")
    args = p.parse_args(argv)
    if not 0 <= args.tolerance < 10:
        p.error("--tolerance: expected a fraction in [0, 10)")
    try:
        tunings = read_tunings(args.folder)
    except ValueError as err:
        print(f"autotune_report: {err}", file=sys.stderr)
        return 2
    print(report(tunings, args.tolerance))
    if args.json is not None:
        data = {kernel: {label: vars(s) for label, s in configs.items()}
                for kernel, configs in summarize(tunings, args.tolerance).items()}
        args.json.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
