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
            except Exception as error:  # any failure (a compiler's, or torch's own flag logic)
                raise CompileError(f"{error!r} (see the compiler output above)") from error

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


def default_cuda_archs(torch) -> None:
    """Without a visible GPU (a login node, a container build) torch cannot pick the GPU
    architectures to compile for and fails (IndexError in _get_cuda_arch_flags) unless
    TORCH_CUDA_ARCH_LIST is set: then build for those of the installed torch build
    ("sm_90" -> "9.0"), saying so. An explicit TORCH_CUDA_ARCH_LIST is always kept."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST") or torch.cuda.is_available():
        return
    flags = torch._C._cuda_getArchFlags() if hasattr(torch._C, "_cuda_getArchFlags") else ""
    archs = [f"{m[1]}.{m[2]}{m[3]}" for m in re.finditer(r"\bsm_(\d+)(\d)([a-z]?)\b", flags or "")]
    if archs:
        os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(archs)
        print(f"exvae-fast: no GPU visible and TORCH_CUDA_ARCH_LIST unset: building the CUDA kernel "
              f"for this torch build's architectures {';'.join(archs)} (set TORCH_CUDA_ARCH_LIST, "
              "e.g. 9.0, to build fewer)", file=sys.stderr)


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
    if with_cuda:
        default_cuda_archs(torch)
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
