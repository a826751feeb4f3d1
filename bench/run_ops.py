"""Run the op micro-benchmarks (bench/test_*.py, pytest-benchmark) and write one "ops"
results document; or only convert an existing --benchmark-json.

    python bench/run_ops.py --quick                      # every op file, this machine's device
    python bench/run_ops.py --device cpu --max-n 10000 -k "knn and torch"
    python bench/run_ops.py --convert raw.json --out bench/results/<slug>/ops-x.json

The pytest run is a subprocess: `python -m pytest bench/test_*.py --benchmark-json RAW
--bench-device D [--bench-quick] [--bench-max-n N] [--bench-deadline T]`; its raw JSON is
kept beside the result (`<result>.raw.json`) unless --no-raw.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import tables  # noqa: E402


FILE_PRIORITY = ("test_mixture_log_density.py", "test_knn_search.py", "test_cache_update.py")
"""Run order of the benchmark files (others after them, by name): the goals' order, so that a
--time-budget that runs out skips the least important cases."""
INTERRUPT_GRACE_S = 15
"""Seconds the interrupted pytest child gets to write its JSON (gpu_validation.sh kills 20 s
after its SIGINT)."""


def _priority(path: Path) -> tuple[int, str]:
    name = Path(path).name
    return (FILE_PRIORITY.index(name) if name in FILE_PRIORITY else len(FILE_PRIORITY), name)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="exvae bench ops", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short cases (about 0.15 s of rounds each)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when available)")
    p.add_argument("--max-n", type=float, help="largest N (default: 25,000 on CPU, all on GPU)")
    p.add_argument("--time-budget", type=float, help="seconds; cases that would start after it are skipped")
    p.add_argument("--threads", type=int, help="torch CPU threads (sets $EXVAE_BENCH_THREADS)")
    p.add_argument("-k", dest="keyword", help="pytest -k expression selecting cases")
    p.add_argument("--files", nargs="+", type=Path, help="benchmark files (default: every bench/test_*.py)")
    p.add_argument("--out", type=Path, help="results JSON (default bench/results/<device>/ops-<preset>-<time>.json)")
    p.add_argument("--convert", type=Path, metavar="RAW", help="only convert this pytest-benchmark JSON")
    p.add_argument("--no-raw", action="store_true", help="do not keep the raw pytest-benchmark JSON")
    return p


def convert(raw_path: Path, out: Path | None) -> tuple[dict, Path]:
    raw = json.loads(Path(raw_path).read_text(encoding="utf-8"))
    doc = common.convert_benchmark_json(raw)
    if out is None:
        preset = "quick" if doc["settings"].get("quick") else "full"
        out = common.default_result_path("ops", doc["device"], preset)
    return doc, common.write_json(doc, out)


def run_pytest(args: argparse.Namespace, raw: Path) -> int:
    files = args.files or sorted(common.BENCH_DIR.glob("test_*.py"), key=_priority)
    cmd = [sys.executable, "-m", "pytest", *map(str, files), "-q", "-p", "no:cacheprovider",
           "--benchmark-json", str(raw), "--benchmark-sort=name",
           "--benchmark-columns=median,iqr,min,rounds"]
    if args.device:
        cmd += ["--bench-device", args.device]
    if args.quick:
        cmd.append("--bench-quick")
    if args.max_n is not None:
        cmd += ["--bench-max-n", str(args.max_n)]
    if args.time_budget is not None:
        cmd += ["--bench-deadline", str(time.time() + args.time_budget)]
    if args.keyword:
        cmd += ["-k", args.keyword]
    print("+", " ".join(cmd), flush=True)
    # called from inside a pytest-xdist worker (the suite's smoke test under -n), the worker's
    # variables would make pytest-benchmark disable every benchmark in the child
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_XDIST_")}
    if args.threads is not None:
        env["EXVAE_BENCH_THREADS"] = str(args.threads)
    child = subprocess.Popen(cmd, cwd=common.REPO_DIR, env=env)
    try:
        return child.wait()
    except KeyboardInterrupt:
        # `timeout -s INT` (gpu_validation.sh) or Ctrl-C signals the whole process group: the
        # child stops too and writes the cases measured so far; wait for that JSON instead of
        # killing the child (subprocess.run would, after 0.25 s) and losing every result
        try:
            return child.wait(timeout=INTERRUPT_GRACE_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            return 130


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.convert is not None:
        doc, path = convert(args.convert, args.out)
        status = 0
    else:
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "raw.json"
            status = run_pytest(args, raw)
            if not raw.exists():
                print("run_ops: pytest wrote no benchmark JSON (nothing measured)", file=sys.stderr)
                return status or 1
            doc, path = convert(raw, args.out)
            if not args.no_raw:
                path.with_name(path.stem + ".raw.json").write_bytes(raw.read_bytes())
    print()
    print(tables.ops_caption(doc))
    for op in sorted({r["op"] for r in doc["results"]}):
        print(f"\n{op}\n")
        print(tables.op_table(doc, op))
    print(f"\nwrote {path} ({len(doc['results'])} cases, {len(doc['skipped'])} skipped)")
    # pytest's exit status 5 (no test ran) or 1 (a case failed) is passed on; skips are fine
    return status


if __name__ == "__main__":
    sys.exit(main())
