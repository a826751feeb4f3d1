"""Micro-benchmark of `mixture_log_density` (B=100, d=40, N from 1e3 to 1e6, float32):
the library's torch reference, Triton and C++ backends, the naive PyTorch version (cdist
+ logsumexp, materialises B x N) and KeOps `LazyTensor.logsumexp` when importable. The
library backends are timed through `dispatch.implementation`, without the public op's
argument validation (the same for every backend; it reads the data, e.g. a finiteness pass
over the means, which would blur the comparison with the outside peers).

Modes: forward (no autograd), backward (only `out.backward(g)`, the forward made untimed
before each round), full (forward + backward). Bytes counted (the least each call must
move): forward reads means once (N d 4 B); backward reads means and writes their
gradient (2 N d 4 B); full is both (3 N d 4 B); z, log_var and the [B] output are
negligible. FLOPs: 2 B N d per pass over the distances (forward 1 pass, backward 3:
distances, z-gradient, means-gradient). Variant "tf32x3": the Triton kernels with TF32
tensor-core dots (three passes) instead of float32 FMAs (forward and full, after the rest).

    pytest bench/test_mixture_log_density.py --benchmark-json raw.json   (or `exvae bench ops`)
"""
from __future__ import annotations

import math

import pytest
import torch

import common
from conftest import check_size

OP = "mixture_log_density"
PASSES = {"forward": 1, "backward": 3, "full": 4}
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _library(backend: str, device: torch.device):
    from exvae_fast.ops import dispatch

    run = dispatch.implementation(OP, backend, torch.empty(1, device=device))

    def call(z, means, log_var):
        return run(z, means, log_var, None, None)
    return call


def _naive(z, means, log_var):
    sq = torch.cdist(z, means, compute_mode="donot_use_mm_for_euclid_dist").square()  # [B, N]
    logits = -0.5 * torch.exp(-log_var) * sq
    return torch.logsumexp(logits, dim=1) - math.log(means.shape[0]) - z.shape[1] * (HALF_LOG_2PI + 0.5 * log_var)


def _keops(z, means, log_var):
    from pykeops.torch import LazyTensor

    scale = (-0.5 * torch.exp(-log_var)).reshape(1)
    sq = ((LazyTensor(z[:, None, :]) - LazyTensor(means[None, :, :])) ** 2).sum(-1)
    lse = (sq * LazyTensor(scale)).logsumexp(dim=1).squeeze(1)
    return lse - math.log(means.shape[0]) - z.shape[1] * (HALF_LOG_2PI + 0.5 * log_var)


def implementation(provider: str, device: torch.device):
    if provider in common.LIBRARY_BACKENDS:
        return _library(provider, device)
    return {"torch-naive": _naive, "keops": _keops}[provider]


PEERS = {"keops": lambda: common.importable("pykeops.torch")}


def setup_mixture(n: int, device: torch.device, mode: str, seed: int = 0) -> common.Rotation:
    """Input sets (z [B, d], means [N, d], log_var []) on `device`, rotated between rounds;
    leaves requiring grad for the backward and full modes. Means lie around the queries at a
    realistic spread (sigma^2 = 1, posterior means of unit scale)."""
    grad = mode != "forward"
    gen = torch.Generator(device=device).manual_seed(seed)

    def make(i: int):
        z = torch.randn(common.B, common.D, generator=gen, device=device).requires_grad_(grad)
        means = torch.randn(n, common.D, generator=gen, device=device).requires_grad_(grad)
        log_var = torch.tensor(0.0, device=device).requires_grad_(grad)
        return z, means, log_var
    return common.Rotation(make, n * common.D * 4 * (2 if grad else 1))


RUN_ORDER_MODES = ("full", "forward", "backward")
"""common.MODES in run order: forward + backward (the goal's measure) first, so that a
--bench-deadline that runs out skips the least important cases."""


@pytest.mark.parametrize("n", common.SIZES_N, ids=lambda n: f"N{n}")
@pytest.mark.parametrize("provider", common.PROVIDERS)
@pytest.mark.parametrize("mode", RUN_ORDER_MODES)
def test_mixture_log_density(benchmark, bench_device, bench_settings, mode: str, provider: str, n: int) -> None:
    run_case(benchmark, bench_device, bench_settings, mode, provider, n)


@pytest.mark.parametrize("n", common.SIZES_N, ids=lambda n: f"N{n}")
@pytest.mark.parametrize("mode", ["full", "forward"])
def test_mixture_log_density_tf32x3(benchmark, bench_device, bench_settings, monkeypatch,
                                    mode: str, n: int) -> None:
    """The Triton kernels with DOT_PRECISION "tf32x3" (TF32 tensor cores, three passes) instead
    of "ieee" (float32 FMAs): series "variant=tf32x3". Collected last, so a time-budgeted run
    reaches it only after every other case."""
    reason = common.provider_skip_reason(OP, "triton", bench_device, PEERS)
    if reason:
        pytest.skip(reason)
    from exvae_fast.kernels import mixture_log_density as fused

    monkeypatch.setattr(fused, "DOT_PRECISION", "tf32x3")
    run_case(benchmark, bench_device, bench_settings, mode, "triton", n, variant="tf32x3")


def run_case(benchmark, bench_device, bench_settings, mode: str, provider: str, n: int,
             variant: str = "") -> None:
    """Times one (mode, provider, N) case; `variant` labels a non-default configuration."""
    check_size(bench_settings, n)
    reason = common.provider_skip_reason(OP, provider, bench_device, PEERS)
    if reason:
        pytest.skip(reason)
    fn = implementation(provider, bench_device)
    inputs = setup_mixture(n, bench_device, mode)
    grad_out = torch.ones(common.B, device=bench_device)

    def fresh():
        z, means, log_var = inputs.next()
        for t in (z, means, log_var):
            t.grad = None
        return z, means, log_var

    if mode == "forward":
        def prepare():
            return inputs.next()

        def call(state):
            with torch.no_grad():
                fn(*state)
    elif mode == "backward":
        def prepare():
            return fn(*fresh())

        def call(out):
            out.backward(grad_out)
    else:
        def prepare():
            return fresh()

        def call(state):
            fn(*state).backward(grad_out)

    elements = n * common.D
    bytes_moved = {"forward": 1, "backward": 2, "full": 3}[mode] * elements * 4
    info = {"op": OP, "provider": provider, "mode": mode, "N": n, "B": common.B, "d": common.D,
            "dtype": "float32", "variant": variant, "rotation_sets": inputs.count,
            "bytes": bytes_moved, "flops": PASSES[mode] * 2 * common.B * elements}
    common.measure(benchmark, call, prepare, device=bench_device, info=info,
                   target_s=bench_settings["target_s"], min_rounds=bench_settings["min_rounds"],
                   max_rounds=bench_settings["max_rounds"])
