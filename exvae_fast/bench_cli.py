"""`exvae bench epoch | ops | priors | augment | plot [ARGS...]`: the benchmarks of the source checkout's bench/.

The benchmark scripts live in the repository's bench/ folder (pytest-benchmark files are
not part of the installed package), so this command needs a source checkout, installed
in editable mode (`pip install -e .`, as the Makefile does) or run from it with
`python -m exvae_fast`. ARGS go to the script unchanged:

    exvae bench epoch --quick            -> python bench/epoch_time.py --quick
    exvae bench ops --quick              -> python bench/run_ops.py --quick
    exvae bench priors                   -> python bench/prior_study.py
    exvae bench augment                  -> python bench/augment_study.py
    exvae bench plot --markdown          -> python bench/plot.py --markdown
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

TARGETS = {"epoch": "epoch_time", "ops": "run_ops", "priors": "prior_study", "augment": "augment_study",
           "plot": "plot"}


def bench_dir() -> Path:
    """The checkout's bench/ folder; FileNotFoundError when the package is not in a checkout."""
    folder = Path(__file__).resolve().parent.parent / "bench"
    if not (folder / "common.py").is_file():
        raise FileNotFoundError(
            f"exvae bench needs the source checkout's bench/ folder (looked in {folder}); "
            "install the package from a checkout with `pip install -e .`")
    return folder


def load_script(name: str) -> ModuleType:
    """Import bench/<name>.py as a module (bench/ goes on sys.path for its own imports)."""
    folder = bench_dir()
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    module_name = f"exvae_bench_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def run(target: str, args: list[str]) -> int:
    """Run bench target ("epoch", "ops", "priors", "augment" or "plot") with its command-line `args`."""
    if target not in TARGETS:
        raise ValueError(f"bench target: expected one of {', '.join(TARGETS)}, got {target!r}")
    return int(load_script(TARGETS[target]).main(list(args)) or 0)
