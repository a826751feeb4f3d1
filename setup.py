"""Packaging. `kernels/` is installed as `exvae_fast.kernels` (design card layout), and the
C++/CUDA extension `exvae_fast._C` is built from `csrc/` against the torch already installed:

    pip install --no-build-isolation -e .

(an isolated build would see no torch, or fetch another one). It is a CUDAExtension when
torch is a CUDA build and nvcc is found (CUDA_HOME, or nvcc on PATH), else a CppExtension
with OpenMP. The extension is optional: without torch at build time, or when it fails to
compile, the package installs without it (pip shows why with -v), and the ops use their
torch backends, warning once.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.errors import CompileError

packages = find_packages(include=["exvae_fast", "exvae_fast.*"]) + ["exvae_fast.kernels"]


def openmp_flags() -> list[str]:
    """Compiler/linker flags for OpenMP, which at::parallel_for needs in the extension's own
    code (ATen's OpenMP backend is header-inlined). Apple clang ships without OpenMP."""
    if sys.platform.startswith("linux"):
        return ["-fopenmp"]
    if sys.platform == "win32":
        return ["/openmp"]
    return []


def optional_build(build_extension: type) -> type:
    """torch's BuildExtension, whose compile failures (RuntimeError) become setuptools'
    CompileError, which setuptools turns into a warning for an optional extension."""

    class OptionalBuildExtension(build_extension):
        def build_extension(self, ext) -> None:
            try:
                super().build_extension(ext)
            except RuntimeError as error:
                raise CompileError(f"{error} (see the compiler output above)") from error

    return OptionalBuildExtension


def export_cuda_home() -> None:
    """torch takes the CUDA toolkit to be the parent of the directory of the `nvcc` on PATH,
    which is wrong when that nvcc is a wrapper script (e.g. /usr/local/bin/nvcc running a
    toolkit in /usr/local/cuda-13.0): then ask nvcc for its toolkit (`--dryrun` prints
    TOP=...) and export CUDA_HOME, unless CUDA_HOME or CUDA_PATH is set already."""
    nvcc = shutil.which("nvcc")
    if nvcc is None or os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    if (Path(nvcc).resolve().parents[1] / "include" / "cuda_runtime.h").exists():
        return
    try:
        dry = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return
    top = re.search(r"^#\$ TOP=(.+)$", dry.stdout + dry.stderr, re.MULTILINE)
    if top and (Path(top.group(1).strip()) / "include" / "cuda_runtime.h").exists():
        os.environ["CUDA_HOME"] = str(Path(top.group(1).strip()).resolve())


def extension_build() -> dict:
    """setup() arguments that build exvae_fast._C, or none when torch is not importable."""
    export_cuda_home()
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        print("exvae-fast: torch is not importable in this build environment, so the C++ "
              "extension exvae_fast._C is not built; install torch first and build with "
              "`pip install --no-build-isolation -e .`", file=sys.stderr)
        return {}
    with_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    sources = ["csrc/cache_update.cpp", "csrc/python_module.cpp"]
    cxx = ["-O3", *openmp_flags()] if sys.platform != "win32" else ["/O2", *openmp_flags()]
    kwargs = dict(py_limited_api=True, optional=True, extra_link_args=openmp_flags(),
                  depends=["csrc/cache_update.h"])
    if with_cuda:
        extension = cpp_extension.CUDAExtension(
            "exvae_fast._C", [*sources, "csrc/cache_update_cuda.cu"],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]}, **kwargs)
    else:
        extension = cpp_extension.CppExtension(
            "exvae_fast._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)
    return dict(
        ext_modules=[extension],
        cmdclass={"build_ext": optional_build(cpp_extension.BuildExtension)},
        # the module uses only the limited Python API: one wheel per platform, any CPython
        options={"bdist_wheel": {"py_limited_api": "cp310"}},
    )


setup(
    packages=packages,
    package_dir={"exvae_fast.kernels": "kernels"},
    package_data={"exvae_fast.data": ["*.npz"]},
    include_package_data=True,
    **extension_build(),
)
