"""Compile the mixture log-density kernels to CUDA cubins without a GPU (a developer check).

    python -m exvae_fast.kernels._mixture_aot            # small tiles, every kernel: quick
    python -m exvae_fast.kernels._mixture_aot --configs  # every autotuned config per d, timed

The Triton interpreter accepts code the compiler rejects (non-constexpr globals, a variable
changing type in a loop, ...), so the CPU test suite also compiles each kernel for sm_90
(ptxas ships with Triton). Run without TRITON_INTERPRET=1 in the environment.
"""
from __future__ import annotations

import argparse
import os
import time

if os.environ.get("TRITON_INTERPRET") == "1":
    raise SystemExit("unset TRITON_INTERPRET: the interpreter cannot compile kernels")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from . import _mixture_helpers as helpers  # noqa: E402

FLOAT_ARGS = {"refine", "cancel"}
POINTER_TYPES = {"excl_ptr": "*i64", "mu_ptr": "*bf16", "gmu_ptr": "*bf16"}


def build(kernel, *, arch: int = 90, warps: int = 4, **constexprs) -> tuple[float, int]:
    """Compiles `kernel` with the given constexprs; returns (seconds, shared memory bytes)."""
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = POINTER_TYPES.get(name, "*fp32")
        else:
            signature[name] = "fp32" if name in FLOAT_ARGS else "i32"
    start = time.perf_counter()
    compiled = triton.compile(ASTSource(kernel, signature, constexprs=constexprs),
                              target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": warps, "num_stages": 2})
    return time.perf_counter() - start, compiled.metadata.shared


def quick(arch: int) -> None:
    flags = dict(D_PAD=16, HAS_EXCLUDE=True, HAS_WEIGHTS=True)
    for precision in ("ieee", "tf32x3"):
        build(helpers.mixture_forward_partial_kernel, arch=arch, **flags, PRECISION=precision,
              BLOCK_B=16, BLOCK_N=32)
    build(helpers.mixture_combine_kernel, arch=arch, **flags, BLOCK_B=8)
    build(helpers.mixture_backward_means_kernel, arch=arch, **flags, NEED_MEANS=True,
          NEED_WEIGHTS=True, PRECISION="ieee", BLOCK_B=16, BLOCK_N=32)
    build(helpers.mixture_backward_z_kernel, arch=arch, D_PAD=16, BLOCK_B=16)


def every_config(arch: int) -> None:
    from .mixture_log_density import CONFIGS, _prune

    for d_pad in (16, 64, 128, 256):
        for cfg in _prune(CONFIGS, {}, D_PAD=d_pad):
            tile = dict(BLOCK_B=cfg.kwargs["BLOCK_B"], BLOCK_N=cfg.kwargs["BLOCK_N"])
            flags = dict(D_PAD=d_pad, HAS_EXCLUDE=True, HAS_WEIGHTS=False, PRECISION="ieee")
            fwd = build(helpers.mixture_forward_partial_kernel, arch=arch, warps=cfg.num_warps,
                        **flags, **tile)
            bwd = build(helpers.mixture_backward_means_kernel, arch=arch, warps=cfg.num_warps,
                        **flags, NEED_MEANS=True, NEED_WEIGHTS=False, **tile)
            print(f"d_pad={d_pad} {tile} warps={cfg.num_warps}: forward {fwd[0]:.1f} s "
                  f"({fwd[1]} B shared), backward {bwd[0]:.1f} s ({bwd[1]} B shared)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x 10")
    parser.add_argument("--configs", action="store_true", help="time every autotuned config")
    args = parser.parse_args()
    every_config(args.arch) if args.configs else quick(args.arch)
    print("compiled")


if __name__ == "__main__":
    main()
