"""Compile the mixture log-density kernels to CUDA cubins without a GPU (a developer check).

    python -m exvae_fast.kernels._mixture_aot            # small tiles, every kernel: quick
    python -m exvae_fast.kernels._mixture_aot --configs  # every autotuned tile per d: time,
                                                         # shared memory, registers, spills
    python -m exvae_fast.kernels._mixture_aot --configs --check --d-pad 64
                                                         # ... exit 1 if one spills
    python -m exvae_fast.kernels._mixture_aot --search   # choose the tiles anew (~20 min)

The Triton interpreter accepts code the compiler rejects (non-constexpr globals, a variable
changing type in a loop, ...), so the CPU test suite also compiles each kernel for sm_90
(ptxas and cuobjdump ship with Triton). Registers and spills come from the cubin
(`cuobjdump --dump-resource-usage`: REG, and STACK, the per-thread local memory that spilled
registers live in). Run without TRITON_INTERPRET=1 in the environment.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass

if os.environ.get("TRITON_INTERPRET") == "1":
    raise SystemExit("unset TRITON_INTERPRET: the interpreter cannot compile kernels")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from . import _mixture_helpers as helpers  # noqa: E402

FLOAT_ARGS = {"refine", "cancel"}
POINTER_TYPES = {"excl_ptr": "*i64", "mu_ptr": "*bf16", "gmu_ptr": "*bf16"}
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


@dataclass(frozen=True)
class Build:
    """One kernel compiled for one target: seconds, shared memory bytes per program,
    registers per thread and stack bytes per thread (spills), or -1 when unreadable."""

    seconds: float
    shared: int
    registers: int
    stack: int


def resources(cubin: bytes) -> tuple[int, int]:
    """(registers, stack bytes) per thread of the one kernel in `cubin`, read by cuobjdump."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        dump = subprocess.run([CUOBJDUMP, "--dump-resource-usage", f.name], capture_output=True,
                              text=True, timeout=60).stdout
    regs, stack = re.search(r"REG:(\d+)", dump), re.search(r"STACK:(\d+)", dump)
    return (int(regs.group(1)) if regs else -1, int(stack.group(1)) if stack else -1)


def build(kernel, *, arch: int = 90, warps: int = 4, **constexprs) -> Build:
    """Compiles `kernel` with the given constexprs for sm_`arch`."""
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
    seconds = time.perf_counter() - start
    regs, stack = resources(compiled.asm["cubin"]) if os.path.exists(CUOBJDUMP) else (-1, -1)
    return Build(seconds, compiled.metadata.shared, regs, stack)


def quick(arch: int) -> None:
    flags = dict(D_PAD=16, HAS_EXCLUDE=True, HAS_WEIGHTS=True)
    for precision in ("ieee", "tf32x3"):
        build(helpers.mixture_forward_partial_kernel, arch=arch, **flags, PRECISION=precision,
              BLOCK_B=16, BLOCK_N=32)
    build(helpers.mixture_combine_kernel, arch=arch, **flags, BLOCK_B=8)
    build(helpers.mixture_backward_means_kernel, arch=arch, **flags, NEED_MEANS=True,
          NEED_WEIGHTS=True, PRECISION="ieee", BLOCK_B=16, BLOCK_N=32)
    build(helpers.mixture_backward_z_kernel, arch=arch, D_PAD=16, BLOCK_B=16)


def every_config(arch: int, d_pads: list[int]) -> list[str]:
    """Compiles every autotuned tile of both tuned kernels for each D_PAD, in the variant
    retrieval training runs (exclude on, no log-weights, means gradient); prints a line each
    and returns those whose stack exceeds the kernels' SPILL_BUDGET."""
    from .mixture_log_density import BACKWARD_TILES, FORWARD_TILES, SPILL_BUDGET

    spilling = []
    kernels = (("forward", helpers.mixture_forward_partial_kernel, FORWARD_TILES, {}),
               ("backward", helpers.mixture_backward_means_kernel, BACKWARD_TILES,
                dict(NEED_MEANS=True, NEED_WEIGHTS=False)))
    for d_pad in d_pads:
        for name, kernel, tiles, extra in kernels:
            for block_b, block_n, warps in tiles[d_pad]:
                b = build(kernel, arch=arch, warps=warps, D_PAD=d_pad, HAS_EXCLUDE=True,
                          HAS_WEIGHTS=False, PRECISION="ieee", BLOCK_B=block_b, BLOCK_N=block_n,
                          **extra)
                line = (f"{name} D_PAD={d_pad} BLOCK_B={block_b} BLOCK_N={block_n} warps={warps}: "
                        f"{b.seconds:.1f} s, {b.shared} B shared, {b.registers} registers, "
                        f"{b.stack} B stack")
                print(line, flush=True)
                if b.stack > SPILL_BUDGET:
                    spilling.append(line)
    return spilling


def search(arch: int, d_pads: list[int]) -> None:
    """Compiles a grid of tiles for each D_PAD and kernel and prints the FORWARD_TILES /
    BACKWARD_TILES tables: per D_PAD the (at most) three tiles within SPILL_BUDGET with the
    most (BLOCK_B x BLOCK_N) work per program, then the fewest warps, else the least spilling
    tile (about 20 minutes on 2 cores; tiles whose dot would unroll past
    MAX_FMAS_PER_THREAD are not tried)."""
    from .mixture_log_density import SPILL_BUDGET, fits

    grid = [(b, n, w) for b in (16, 32, 64) for n in (32, 64, 128) for w in (4, 8, 16)
            if b * n >= 32 * w]
    kernels = (("FORWARD_TILES", helpers.mixture_forward_partial_kernel, {}),
               ("BACKWARD_TILES", helpers.mixture_backward_means_kernel,
                dict(NEED_MEANS=True, NEED_WEIGHTS=False)))
    for table, kernel, extra in kernels:
        rows = {}
        for d_pad in d_pads:
            stacks = {}
            for block_b, block_n, warps in grid:
                if not fits(block_b, block_n, warps, d_pad):
                    continue
                b = build(kernel, arch=arch, warps=warps, D_PAD=d_pad, HAS_EXCLUDE=True,
                          HAS_WEIGHTS=False, PRECISION="ieee", BLOCK_B=block_b, BLOCK_N=block_n,
                          **extra)
                print(f"# {table} D_PAD={d_pad} {block_b}x{block_n} warps={warps}: "
                      f"{b.registers} registers, {b.stack} B stack", flush=True)
                stacks[block_b, block_n, warps] = b.stack
            clean = sorted((t for t, stack in stacks.items() if 0 <= stack <= SPILL_BUDGET),
                           key=lambda t: (-t[0] * t[1], t[2]))
            rows[d_pad] = clean[:3] or [min(stacks, key=stacks.get)]
        print(f"{table} = {rows}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x 10")
    parser.add_argument("--configs", action="store_true", help="compile every autotuned tile")
    parser.add_argument("--d-pad", type=int, nargs="+", default=[16, 32, 64, 128, 256],
                        help="with --configs: these D_PAD values")
    parser.add_argument("--check", action="store_true",
                        help="with --configs: exit 1 when a tile spills past SPILL_BUDGET")
    parser.add_argument("--search", action="store_true",
                        help="compile a grid of tiles and print new FORWARD_/BACKWARD_TILES")
    args = parser.parse_args()
    if args.search:
        search(args.arch, args.d_pad)
        return
    if not args.configs:
        quick(args.arch)
        print("compiled")
        return
    spilling = every_config(args.arch, args.d_pad)
    print("compiled")
    if args.check and spilling:
        raise SystemExit("spilling tiles:\n" + "\n".join(spilling))


if __name__ == "__main__":
    main()
