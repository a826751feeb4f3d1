"""The source distribution holds what a build needs (the extension's header and CUDA kernel
included, whichever machine made it), and the wheel built from it installs a complete
package: the compiled extension, the Triton kernels, the embedded digits, the CLI."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what a build or a user of the sdist needs, relative to the repository root
REQUIRED = ("setup.py", "pyproject.toml", "MANIFEST.in", "LICENSE", "README.md", "CMakeLists.txt")
REQUIRED_GLOBS = ("csrc/*", "kernels/*.py", "exvae_fast/**/*.py", "exvae_fast/data/*.npz", "configs/**/*.toml")
NOT_SOURCES = (".git", ".venv", "build", "dist", "runs", "results", "__pycache__", "*.egg-info", "*.so",
               ".pytest_cache", ".hypothesis", "kernels")  # exvae_fast/kernels: a link some builds make


def _copy_sources(dest: Path) -> Path:
    """The checkout's sources (no venv, build outputs or results) copied to dest."""
    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = set(shutil.ignore_patterns(*NOT_SOURCES)(folder, names))
        return skipped - ({"kernels"} if Path(folder) == ROOT else set())  # the top-level kernels/ is a source

    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    tree = _copy_sources(tmp_path_factory.mktemp("checkout") / "exvae-fast")
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(out)], cwd=tree, check=True,
                   capture_output=True)
    (archive,) = out.glob("exvae[-_]fast-*.tar.gz")  # setuptools < 69.3 keeps the hyphen
    return archive


def test_the_sdist_holds_every_source_a_build_needs(sdist):
    with tarfile.open(sdist) as tar:
        members = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    wanted = set(REQUIRED) | {str(p.relative_to(ROOT)) for pattern in REQUIRED_GLOBS for p in ROOT.glob(pattern)
                              if p.is_file() and "__pycache__" not in p.parts}
    assert {"csrc/cache_update.h", "csrc/cache_update_cuda.cu"} <= wanted  # the files that went missing
    assert not wanted - members, sorted(wanted - members)


@pytest.mark.slow
def test_the_wheel_built_from_the_sdist_installs_a_complete_package(sdist, tmp_path):
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path, filter="data")
    (source,) = tmp_path.glob("exvae[-_]fast-*")
    wheels = tmp_path / "wheels"
    # against the torch installed here, as the README's install does (no isolated build)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps", "-w",
                    str(wheels), str(source)], check=True, capture_output=True)
    (wheel,) = wheels.glob("exvae_fast-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert {"exvae_fast/kernels/knn_search.py", "exvae_fast/kernels/mixture_log_density.py",
            "exvae_fast/data/mnist_5k.npz"} <= names
    built_here = importlib.util.find_spec("exvae_fast._C") is not None
    assert not built_here or any(n.startswith("exvae_fast/_C") for n in names)  # built where it builds here
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    check = ("import exvae_fast, exvae_fast.kernels.knn_search, torch\n"
             f"assert exvae_fast.__file__.startswith({str(site)!r}), exvae_fast.__file__\n"
             "from exvae_fast.data import load_dataset\n"
             "assert load_dataset('mnist-5k').train.shape == (4000, 784)\n"
             "from exvae_fast.ops import cache_update_\n"
             "cache = torch.zeros(3, 2)\n"
             f"cache_update_(cache, torch.tensor([2, 2]), torch.tensor([[1., 2.], [3., 4.]]), "
             f"backend={'cpp' if built_here else 'torch'!r})\n"
             "assert cache[2].tolist() == [3., 4.] and not cache[:2].any()\n")
    env = {**os.environ, "PYTHONPATH": str(site), "TRITON_INTERPRET": "1"}
    subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env, check=True)
    cli = subprocess.run([sys.executable, "-m", "exvae_fast", "--help"], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True)
    assert "augment" in cli.stdout
