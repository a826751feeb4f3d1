"""Fused Triton mixture log-density: launchers, torch.library op with autograd, registration.

    log r(z_b) = logsumexp_{j != exclude_b}(log w_j - ||z_b - mu_j||^2 / (2 sigma^2))
                 - log sum_{j != exclude_b} w_j - d/2 log(2 pi sigma^2)

Forward, two launches (kernels in `_mixture_helpers.py`), never a B x N matrix in memory:
1. `mixture_forward_partial_kernel`, grid (cdiv(B, BLOCK_B), C): the N components are cut
   into C chunks of CHUNK rows (about two chunks per SM); program (i, c) streams its chunk in
   BLOCK_N blocks for its BLOCK_B rows with an online logsumexp and writes per-row partials:
   (max, sum), sum_j p_bj ||z_b - mu_j||^2, sum_j p_bj (mu_j - z_b) ([C, B, d]) and, with
   log_weights, the (max, sum) of the row's normaliser.
2. `mixture_combine_kernel`, grid (cdiv(B, BLOCK_B_COMBINE),): merges the C partials (a
   Triton kernel, not torch ops, so small N stays at two launches) into out and the saved
   lse2, norm2 (base 2), delta_b = sum_j p_bj (mu_j - z_b), msq_b = sum_j p_bj ||z_b - mu_j||^2.
Backward: grad z = g delta / sigma^2 and grad log_var from (delta, msq) in O(B d)
(`mixture_backward_z_kernel`, one program); grad means and grad log_weights by a second pass
over N (`mixture_backward_means_kernel`, grid cdiv(N, BLOCK_N), each program loops over all
rows recomputing p from the saved lse2: no atomics), launched only when needed.
Precision: distances by IEEE float32 dot products of centred rows, and tiles holding a
component that carries weight and whose distance would lose precision (a near neighbour, or
a small sigma) are recomputed by direct differences, moments included (_tile_logits).
Measured against float64 in the interpreter (z 1e-3 from a mean, with and without leaving
it out, d=8/40, sigma^2 = 1, e^-3, e^-6, offsets 0 and 100): output within 4e-7 relative
(8e-6 absolute when |log r| < 200), gradients within 5.4e-6 of their largest entry; the
plain expansion (REFINE_TOLERANCE = inf) reaches 4.2e-5 relative / 3.3e-3 absolute.

Inputs: z, means, log_weights in float32/bfloat16/float16 (all arithmetic in float32),
d <= 256 (padded to a power of two >= 16 for tl.dot). The registered "triton" backend
routes float64 inputs and d > 256 to the torch reference (which computes in float64, as
gradcheck needs). On CUDA the block sizes are autotuned among at most three configs per d
(cached per power-of-two bucket of B and N, d, precision); EXVAE_TRITON_AUTOTUNE=0 or
TRITON_INTERPRET=1 run one fixed configuration instead.

torch.compile: exposed as `torch.library.custom_op`s with `register_fake` and
`register_autograd`, not `triton_op`: a triton_op is decomposed into its kernel launches
while tracing, which fails for interpreted kernels (they cannot run on fake tensors), so the
custom op is the one path that opcheck can test on CPU and that runs unchanged on CUDA.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os

import torch
import triton
from torch import Tensor

from exvae_fast.ops.dispatch import implementation, register
from exvae_fast.ops.validation import validate_mixture

from ._mixture_helpers import (mixture_backward_means_kernel, mixture_backward_z_kernel,
                               mixture_combine_kernel, mixture_forward_partial_kernel)

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
MAX_DIM = 256
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Interpreter: one fixed small configuration (tests exercise several chunks and blocks).
INTERPRET_BLOCK_B, INTERPRET_BLOCK_N, INTERPRET_CHUNKS = 16, 16, 3
DOT_PRECISION = "ieee"
"""`input_precision` of every tl.dot: "ieee" (float32 FMA) or "tf32x3" (three TF32 tensor-core
passes, about 2^-21 relative per product). Plain "tf32" is not accurate enough. The
interpreter ignores it (numpy float32 matmul), so "tf32x3" is only measurable on a GPU."""
DOT_ERROR = {"ieee": 2.0**-22, "tf32x3": 2.0**-20}
"""Typical absolute error of the distance expansion per unit of ||z - c||^2 + ||mu - c||^2."""
REFINE_TOLERANCE = 4e-5
"""Logit error (nats) above which a tile's dot-product distances are recomputed by direct
differences (only tiles with a component that carries weight, see _tile_logits); 0 refines
every such tile, inf never refines."""
CANCEL_RATIO = 2.0**-6
"""A tile is also refined when a component carrying weight is a near neighbour of a row:
||z - mu||^2 < CANCEL_RATIO (||z - c||^2 + ||mu - c||^2) (more than 6 bits would cancel)."""
CHUNK_ALIGN = 128  # CUDA chunk lengths are multiples of every autotuned BLOCK_N
BLOCK_B_COMBINE = 8


AUTOTUNE = os.environ.get("EXVAE_TRITON_AUTOTUNE", "1") != "0"
"""CUDA: autotune the block sizes (each config is a separate compile of tens of seconds, so
EXVAE_TRITON_AUTOTUNE=0 runs `_fixed_config` instead, e.g. for quick correctness checks)."""


MAX_FMAS_PER_THREAD = 1024
"""One tile's dot costs BLOCK_B * BLOCK_N * D_PAD / threads FMAs per thread; well above
this the compile time explodes (64 x 64 x 64 on 4 warps: 70 s with Triton 3.8 for sm_90)."""
SPILL_BUDGET = 32
"""Most stack bytes per thread (spilled registers) an autotuned tile may compile to."""

# The tiles (BLOCK_B, BLOCK_N, warps) that autotuning chooses among, per D_PAD, for the
# forward partial kernel and the means-gradient kernel: the (at most) three with the most
# work per program that compile for sm_90 within SPILL_BUDGET in the retrieval-training
# variant (exclude, no log-weights), else the least spilling one, found by `python -m
# exvae_fast.kernels._mixture_aot --search` with Triton 3.8 (the compiler's numbers are in
# bench/results/sm90-compile/mixture_tiles.log; which tile is fastest only a GPU can tell),
# and the D_PAD 64 tiles checked with Triton 3.6, the GPU image's (at most 8 B there).
# The float32 "ieee" dots are unrolled FMAs whose operands live in registers: a tile of
# the former fixed list (32 x 64 on 8 warps, ...) took 255 registers and spilled 344 B to
# 4.5 KB per thread at D_PAD = 64 (d = 40). Every BLOCK_N divides CHUNK_ALIGN.
FORWARD_TILES: dict[int, list[tuple[int, int, int]]] = {
    16: [(16, 128, 8), (32, 64, 8), (64, 32, 8)],
    32: [(32, 64, 8), (64, 32, 8), (64, 32, 16)],
    64: [(32, 32, 8), (16, 64, 16), (32, 32, 16)],  # not 16 x 64 on 8: 40 B with Triton 3.6
    128: [(16, 32, 8), (16, 32, 16)],
    256: [(16, 32, 8), (16, 32, 16)],
}
BACKWARD_TILES: dict[int, list[tuple[int, int, int]]] = {
    16: [(16, 128, 8), (32, 64, 8), (16, 64, 4)],
    32: [(16, 128, 8), (16, 64, 4), (16, 64, 8)],
    64: [(16, 64, 8), (16, 64, 16), (32, 32, 16)],
    128: [(16, 32, 8), (16, 32, 16)],
    256: [(16, 32, 8)],  # the least spilling tile (96 B); none compiles within the budget
}


def fits(block_b: int, block_n: int, warps: int, d_pad: int) -> bool:
    """Whether a tile's dot stays within MAX_FMAS_PER_THREAD per thread (compile time)."""
    return block_b * block_n * d_pad <= MAX_FMAS_PER_THREAD * 32 * warps


def _fixed_config(tiles: dict[int, list[tuple[int, int, int]]], d_pad: int) -> tuple[int, int, int]:
    """(BLOCK_B, BLOCK_N, warps) without autotuning: the interpreter's small fixed tile, or
    the first (largest) of the kernel's tiles for d."""
    if INTERPRET:
        return INTERPRET_BLOCK_B, INTERPRET_BLOCK_N, 1
    return tiles[d_pad][0]


def _tuned(kernel, tiles: dict[int, list[tuple[int, int, int]]]):
    """`kernel` autotuned among its tiles for the launch's D_PAD (each a compile of seconds
    to tens of seconds), cached per power-of-two bucket of B and N, D_PAD and precision, in
    memory and on disk (Triton's cache directory holds every tile's timings as
    <kernel>.autotune.json), so later processes skip the benchmarking."""
    union = sorted({tile for row in tiles.values() for tile in row})
    configs = [triton.Config({"BLOCK_B": b, "BLOCK_N": n}, num_warps=w, num_stages=2)
               for b, n, w in union]

    def prune(configs, named_args, **kwargs):
        wanted = tiles[kwargs["D_PAD"]]
        return [c for c in configs
                if (c.kwargs["BLOCK_B"], c.kwargs["BLOCK_N"], c.num_warps) in wanted]

    return triton.autotune(configs, key=["B_KEY", "N_KEY", "D_PAD", "PRECISION"],
                           prune_configs_by={"early_config_prune": prune},
                           cache_results=True)(kernel)


_forward_tuned = _tuned(mixture_forward_partial_kernel, FORWARD_TILES)
_backward_tuned = _tuned(mixture_backward_means_kernel, BACKWARD_TILES)


def _launch(kernel, tuned, tiles, grid, args, kwargs) -> None:
    """Runs `kernel` with a fixed config (interpreter, AUTOTUNE off) or `tuned`; grid maps
    (BLOCK_B, BLOCK_N) to the launch grid."""
    if INTERPRET or not AUTOTUNE:
        block_b, block_n, warps = _fixed_config(tiles, kwargs["D_PAD"])
        kernel[grid(block_b, block_n)](*args, **kwargs, BLOCK_B=block_b, BLOCK_N=block_n,
                                       num_warps=warps)
    else:
        tuned[lambda meta: grid(meta["BLOCK_B"], meta["BLOCK_N"])](*args, **kwargs)


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _bucket(n: int) -> int:
    """Autotune key: the next power of two, so varying N (retrieval) does not retune."""
    return triton.next_power_of_2(max(n, 1))


def _chunking(size: int, batch: int, device: torch.device) -> tuple[int, int]:
    """(chunk length, number of chunks C) for N = size: about two chunks per SM on CUDA, and
    C * B < 2^31, as the kernels index the [C, B] partials in int32."""
    if INTERPRET or device.type != "cuda":
        align, target = INTERPRET_BLOCK_N, INTERPRET_CHUNKS
    else:
        align, target = CHUNK_ALIGN, 2 * _sm_count(device)
    target = max(1, min(target, (2**31 - 1) // max(batch, 1)))
    chunk = triton.cdiv(triton.cdiv(size, target), align) * align
    return chunk, triton.cdiv(size, chunk)


def _d_pad(dim: int) -> int:
    return max(16, triton.next_power_of_2(dim))


def _center(z: Tensor) -> Tensor:
    """float32 [d]: the mean of the rows of z, subtracted from z and means before the dot
    products so the distance expansion cancels less (see _mixture_helpers)."""
    return z.mean(0, dtype=torch.float32)


def _refine() -> tuple[float, float]:
    """The kernels' (refine, cancel) arguments, see _tile_logits: DOT_ERROR over the
    tolerance in base-2 logit units, and the cancellation ratio; (0, 0) when the tolerance
    is inf (never refine)."""
    if math.isinf(REFINE_TOLERANCE):
        return 0.0, 0.0
    tol2 = max(REFINE_TOLERANCE * math.log2(math.e), 1e-30)
    return min(DOT_ERROR[DOT_PRECISION] / tol2, 1e30), CANCEL_RATIO


def _check_launch(z: Tensor, means: Tensor, log_weights: Tensor | None) -> None:
    """Structural checks of the kernels (no data reads; validate_mixture does the rest)."""
    if z.device.type != "cuda" and not INTERPRET:
        raise ValueError(f"z: the Triton kernels need a CUDA tensor (or TRITON_INTERPRET=1), "
                         f"got device {z.device}")
    if z.shape[1] > MAX_DIM:
        raise ValueError(f"z: the Triton kernels support d <= {MAX_DIM}, got d={z.shape[1]}")
    for name, t in (("z", z), ("means", means), ("log_weights", log_weights)):
        if t is not None and t.dtype not in KERNEL_DTYPES:
            raise TypeError(f"{name}: the Triton kernels take float32, bfloat16 or float16, "
                            f"got {t.dtype}")


def _on_device(t: Tensor):
    """Makes t's device current: Triton launches on the current CUDA device and its current
    stream, not the tensors', so inputs on cuda:1 under a current cuda:0 would be read from
    the wrong device (illegal address) and raced against torch's work on cuda:1's stream."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _forward_launch(z: Tensor, means: Tensor, log_var: Tensor, exclude: Tensor | None,
                    log_weights: Tensor | None) -> tuple[Tensor, ...]:
    """(out [B] z.dtype, lse2 [B], norm2 [B], delta [B, d], msq [B]; float32 but out)."""
    _check_launch(z, means, log_weights)
    with _on_device(z):
        z, means, log_var = z.contiguous(), means.contiguous(), log_var.contiguous()
        exclude = None if exclude is None else exclude.contiguous()
        log_weights = None if log_weights is None else log_weights.contiguous()
        (batch, dim), size = z.shape, means.shape[0]
        f32 = dict(dtype=torch.float32, device=z.device)
        out = torch.empty(batch, dtype=z.dtype, device=z.device)
        lse2, norm2, msq = (torch.empty(batch, **f32) for _ in range(3))
        delta = torch.empty(batch, dim, **f32)
        if batch == 0:
            return out, lse2, norm2, delta, msq
        chunk, chunks = _chunking(size, batch, z.device)
        m, s, q, wm, ws = (torch.empty(chunks, batch, **f32) for _ in range(5))
        acc = torch.empty(chunks, batch, dim, **f32)
        flags = dict(D_PAD=_d_pad(dim), HAS_EXCLUDE=exclude is not None,
                     HAS_WEIGHTS=log_weights is not None)
        args = (z, means, _center(z), log_var, exclude, log_weights, m, s, q, acc, wm, ws,
                batch, size, dim, chunk, *_refine(), _bucket(batch), _bucket(size))
        _launch(mixture_forward_partial_kernel, _forward_tuned, FORWARD_TILES,
                lambda block_b, block_n: (triton.cdiv(batch, block_b), chunks),
                args, dict(**flags, PRECISION=DOT_PRECISION))
        mixture_combine_kernel[(triton.cdiv(batch, BLOCK_B_COMBINE),)](
            m, s, q, acc, wm, ws, log_var, exclude, out, lse2, norm2, delta, msq,
            batch, size, dim, chunks, **flags, BLOCK_B=BLOCK_B_COMBINE)
        return out, lse2, norm2, delta, msq


def _backward_launch(grad_out: Tensor, z: Tensor, means: Tensor, log_var: Tensor,
                     exclude: Tensor | None, log_weights: Tensor | None, lse2: Tensor,
                     norm2: Tensor, delta: Tensor, msq: Tensor, need_z: bool, need_means: bool,
                     need_weights: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(grad z, grad means, grad log_var, grad log_weights); an unneeded one is empty."""
    with _on_device(z):
        grad_out, z, means = grad_out.contiguous(), z.contiguous(), means.contiguous()
        exclude = None if exclude is None else exclude.contiguous()
        log_weights = None if log_weights is None else log_weights.contiguous()
        (batch, dim), size = z.shape, means.shape[0]
        need_weights = need_weights and log_weights is not None
        grad_z = torch.empty_like(z)  # O(B d): computed with grad log_var even when unneeded
        grad_lv = torch.zeros_like(log_var)
        grad_means = torch.zeros_like(means) if need_means else means.new_empty(0)
        grad_lw = (torch.zeros_like(log_weights) if need_weights else grad_out.new_empty(0))
        if batch == 0:
            return grad_z if need_z else z.new_empty(0), grad_means, grad_lv, grad_lw
        d_pad = _d_pad(dim)
        mixture_backward_z_kernel[(1,)](grad_out, delta, msq, log_var, grad_z, grad_lv, batch, dim,
                                        D_PAD=d_pad, BLOCK_B=16)
        if need_means or need_weights:
            args = (grad_out, z, means, _center(z), log_var, exclude, log_weights, lse2, norm2,
                    grad_means, grad_lw,
                    batch, size, dim, *_refine(), _bucket(batch), _bucket(size))
            flags = dict(D_PAD=d_pad, HAS_EXCLUDE=exclude is not None,
                         HAS_WEIGHTS=log_weights is not None, NEED_MEANS=need_means,
                         NEED_WEIGHTS=need_weights, PRECISION=DOT_PRECISION)
            _launch(mixture_backward_means_kernel, _backward_tuned, BACKWARD_TILES,
                    lambda block_b, block_n: (triton.cdiv(size, block_n),), args, flags)
        return grad_z if need_z else z.new_empty(0), grad_means, grad_lv, grad_lw


# ---------------------------------------------------------------- torch.library integration

@torch.library.custom_op("exvae_fast::mixture_log_density_triton", mutates_args=())
def mixture_forward_op(z: Tensor, means: Tensor, log_var: Tensor, exclude: Tensor | None,
                       log_weights: Tensor | None
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Fused forward: (out [B] in z's dtype, then the backward's float32 inputs lse2 [B] and
    norm2 [B] (base-2 logs), delta [B, d], msq [B]). Expects validated inputs
    (validate_mixture)."""
    return _forward_launch(z, means, log_var, exclude, log_weights)


@mixture_forward_op.register_fake
def _(z, means, log_var, exclude, log_weights):
    batch, dim = z.shape
    vec = z.new_empty(batch, dtype=torch.float32)
    return (z.new_empty(batch), vec, torch.empty_like(vec),
            z.new_empty(batch, dim, dtype=vec.dtype), torch.empty_like(vec))


@torch.library.custom_op("exvae_fast::mixture_log_density_triton_backward", mutates_args=())
def mixture_backward_op(grad_out: Tensor, z: Tensor, means: Tensor, log_var: Tensor,
                        exclude: Tensor | None, log_weights: Tensor | None, lse2: Tensor,
                        norm2: Tensor, delta: Tensor, msq: Tensor, need_z: bool,
                        need_means: bool, need_weights: bool
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(grad z, grad means, grad log_var, grad log_weights); an unneeded one is empty [0]."""
    return _backward_launch(grad_out, z, means, log_var, exclude, log_weights, lse2, norm2, delta,
                            msq, need_z, need_means, need_weights)


@mixture_backward_op.register_fake
def _(grad_out, z, means, log_var, exclude, log_weights, lse2, norm2, delta, msq, need_z,
      need_means, need_weights):
    need_weights = need_weights and log_weights is not None
    # contiguous, as the launcher's (it makes z and means contiguous first): empty_like
    # would copy the strides of a transposed z or means
    return (z.new_empty(z.shape) if need_z else z.new_empty(0),
            means.new_empty(means.shape) if need_means else means.new_empty(0),
            torch.empty_like(log_var),
            torch.empty_like(log_weights) if need_weights else grad_out.new_empty(0))


def _setup_context(ctx, inputs, output):
    z, means, log_var, exclude, log_weights = inputs
    _, lse2, norm2, delta, msq = output
    ctx.mark_non_differentiable(lse2, norm2, delta, msq)
    ctx.save_for_backward(z, means, log_var, exclude, log_weights, lse2, norm2, delta, msq)


def _backward(ctx, grad_out, *_aux_grads):
    z, means, log_var, exclude, log_weights, lse2, norm2, delta, msq = ctx.saved_tensors
    need_z, need_means, need_lv, _, need_weights = ctx.needs_input_grad
    grad_z, grad_means, grad_lv, grad_lw = mixture_backward_op(
        grad_out, z, means, log_var, exclude, log_weights, lse2, norm2, delta, msq, need_z,
        need_means, need_weights)
    return (grad_z if need_z else None, grad_means if need_means else None,
            grad_lv if need_lv else None, None, grad_lw if need_weights else None)


mixture_forward_op.register_autograd(_backward, setup_context=_setup_context)


def mixture_log_density_triton(z: Tensor, means: Tensor, log_var: Tensor,
                               exclude: Tensor | None = None,
                               log_weights: Tensor | None = None) -> Tensor:
    """The "triton" backend of `exvae_fast.ops.mixture_log_density` (same contract; inputs
    already validated). float64 inputs and d > 256 go to the torch reference."""
    tensors = (z, means, log_var, log_weights)
    if z.shape[1] > MAX_DIM or any(t is not None and t.dtype == torch.float64 for t in tensors):
        return implementation("mixture_log_density", "torch", z)(z, means, log_var, exclude,
                                                                 log_weights)
    # contiguous once here, so the op and its backward see the same (saved) buffers
    z, means = z.contiguous(), means.contiguous()
    log_weights = None if log_weights is None else _shifted(log_weights).contiguous()
    return mixture_forward_op(z, means, log_var, exclude, log_weights)[0]


def _shifted(log_weights: Tensor) -> Tensor:
    """log_weights [N] minus their largest finite value (a constant: the density, which
    normalises the weights, and its gradients are unchanged). The kernels add log w_j to the
    logits and subtract the normaliser in float32, so weights offset by C lost about
    C * 2^-24 nats each way (0.1 nats at C = 1e6); shifted, the error is the input's own
    rounding. float32 (the kernels' precision): bfloat16/float16 differences would round to
    the weights' dtype (2 nats at 500 in bfloat16). All -inf (refused where it would leave a
    row empty) is left as it is. One shift serves every row: a row that leaves out a weight
    far above all the others keeps an error of about that gap * 2^-24 nats."""
    log_weights = log_weights.float()
    top = log_weights.detach().max()
    return log_weights - torch.where(top.isfinite(), top, top.new_zeros(()))


def mixture_log_density(z: Tensor, means: Tensor, log_var: Tensor, exclude: Tensor | None = None,
                        log_weights: Tensor | None = None) -> Tensor:
    """Validates (raising before any launch) and runs the fused kernels; see
    `exvae_fast.ops.mixture_log_density` for shapes and semantics."""
    validate_mixture(z, means, log_var, exclude, log_weights)
    return mixture_log_density_triton(z, means, log_var, exclude, log_weights)


def register_backend() -> None:
    """Registers the "triton" backend: CUDA with priority 10 (above the torch reference).
    Under TRITON_INTERPRET=1 it also accepts CPU tensors, with priority -1 so that "auto"
    still picks torch there (the interpreter is for tests, not speed)."""
    if INTERPRET:
        register("mixture_log_density", "triton", mixture_log_density_triton,
                 devices={"cuda", "cpu"}, priority=-1)
    else:
        register("mixture_log_density", "triton", mixture_log_density_triton,
                 devices={"cuda"}, priority=10)
