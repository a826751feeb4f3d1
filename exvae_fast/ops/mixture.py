"""Log-density of an isotropic Gaussian mixture, streamed over its components.

The torch backend is the reference (oracle) of the fused kernels. It never holds a B x N
matrix: the forward pass walks over blocks of components keeping a running logsumexp per
row (FlashAttention style) and saves only that [B] vector; the backward pass walks again,
recomputing each block's responsibilities from it and turning them into gradients with
matmuls (no [B, c, d] difference tensor in either pass).

Every block is computed in float64, whatever the inputs' dtype: squared distances by the
centred expansion of `knn.sq_dists`, then logits, responsibilities and the gradient sums
(the z gradient accumulates over all blocks in float64); results are rounded to the inputs'
dtypes at the end. A distance's error is at most (d + 4) * 2^-52 * S, S the squared norms
of the pair about the centre of z (derivation and measurements in the knn module
docstring), so a logit's is at most that over 2 sigma^2: for unit-scale data, far below
float32 resolution unless sigma^2 is tiny.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.autograd.function import FunctionCtx, once_differentiable

from .dispatch import implementation, register
from .knn import Centred, block_starts, centre_of, leave_out_, sq_dists
from .validation import validate_mixture

LOG_2PI = math.log(2.0 * math.pi)

ELEMENT_BUDGET = 2**21
"""Most elements in one block's float64 [B, c] matrices (distances, logits,
responsibilities): a block holds max(1, ELEMENT_BUDGET // B) components, which bounds the
working memory."""


def mixture_log_density(z: Tensor, means: Tensor, log_var: Tensor, exclude: Tensor | None = None,
                        log_weights: Tensor | None = None, backend: str = "auto") -> Tensor:
    """log sum_j w_bj N(z_b | mu_j, exp(log_var) I) in nats, for each row b of z.

    z: [B, d] float. means: [N, d] float (float64/32, bfloat16, float16), N >= 1.
    log_var: 0-dim float tensor, the shared log-variance. exclude: int64 [B], the component
    row b leaves out (-1: none). log_weights: [N] float, unnormalised log mixture weights
    (-inf drops a component); w_bj is their softmax over the components of row b, or
    uniform over those components when omitted.
    Computes in float64; returns [B] in z's dtype.
    Differentiable in z, means, log_var and log_weights (first order).
    """
    validate_mixture(z, means, log_var, exclude, log_weights)
    run = implementation("mixture_log_density", backend, z, means)
    return run(z, means, log_var, exclude, log_weights)


@dataclass
class _Block:
    """One block of components [start, stop) against all B rows, in float64."""

    start: int  # a (symbolic) int pair, not a slice: torch.compile would specialise a slice's
    stop: int  # bounds, recompiling for every N
    means: Centred  # [c, d]: mu_j - centre
    sq_dist: Tensor  # [B, c]: ||z_b - mu_j||^2
    logits: Tensor  # [B, c]: log w_j - ||z_b - mu_j||^2 / (2 sigma^2), -inf where j is left
    # out; the block's own tensor, which its consumer may overwrite
    log_weights: Tensor | None  # [B, c]: log w_j, -inf where j is left out (None when uniform)


def _blocks(z: Centred, means: Tensor, centre: Tensor, log_var: Tensor, exclude: Tensor | None,
            log_weights: Tensor | None) -> Iterator[_Block]:
    """Blocks over the N components; log_var and log_weights are float64."""
    batch = z.points.shape[0]
    size = means.shape[0]
    step = max(1, ELEMENT_BUDGET // max(batch, 1))
    half_precision = 0.5 * _precision(log_var)
    for start in block_starts(size, step):
        stop = min(start + step, size)
        block = Centred.of(means[start:stop], centre)
        sq_dist = sq_dists(z, block)
        logits = sq_dist * -half_precision
        weights = None
        if log_weights is not None:
            weights = log_weights[start:stop].expand(batch, -1)
            logits += weights
        if exclude is not None:
            leave_out_(logits, exclude, start, float("-inf"))
            if weights is not None:
                weights = leave_out_(weights.clone(), exclude, start, float("-inf"))
        yield _Block(start, stop, block, sq_dist, logits, weights)


def _precision(log_var: Tensor) -> Tensor:
    """1 / sigma^2 = exp(-log_var), float64, at most the largest finite float64: below
    log_var ~ -709 it would be inf, and a zero distance times inf a NaN logit (or gradient)
    where the density is finite."""
    return torch.exp(-log_var).clamp_max(torch.finfo(torch.float64).max)


def _logsumexp_(logits: Tensor) -> Tensor:
    """[B] row-wise logsumexp of a [B, c] float64 matrix, overwriting it (torch.logsumexp
    allocates temporaries of its size); a row of -inf gives -inf."""
    top = logits.amax(1, keepdim=True)
    top = top.masked_fill(top == float("-inf"), 0.0)
    return logits.sub_(top).exp_().sum(1).log_().add_(top[:, 0])


def _float64(*tensors: Tensor | None) -> list[Tensor | None]:
    return [None if t is None else t.to(torch.float64) for t in tensors]


class _MixtureLogDensity(torch.autograd.Function):
    """Streaming mixture log-density; saves the inputs and two [B] vectors for backward."""

    @staticmethod
    def forward(ctx: FunctionCtx, z: Tensor, means: Tensor, log_var: Tensor,
                exclude: Tensor | None, log_weights: Tensor | None) -> Tensor:
        lv, lw = _float64(log_var, log_weights)
        batch, dim = z.shape
        centre = centre_of(z)
        lse = torch.full((batch,), float("-inf"), dtype=torch.float64, device=z.device)
        norm = torch.full_like(lse, float("-inf"))
        for block in _blocks(Centred.of(z, centre), means, centre, lv, exclude, lw):
            lse = torch.logaddexp(lse, _logsumexp_(block.logits))
            if block.log_weights is not None:
                norm = torch.logaddexp(norm, torch.logsumexp(block.log_weights, dim=1))
        if lw is None:  # uniform weights: log of the number of components of each row
            count = torch.full((batch,), means.shape[0], dtype=torch.float64, device=z.device)
            norm = torch.log(count if exclude is None else count - (exclude >= 0).to(torch.float64))
        ctx.save_for_backward(z, means, log_var, exclude, log_weights, lse, norm)
        return (lse - norm - 0.5 * dim * (LOG_2PI + lv)).to(z.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor
                 ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, Tensor | None]:
        z, means, log_var, exclude, log_weights, lse, norm = ctx.saved_tensors
        need_z, need_means, need_log_var, _, need_weights = ctx.needs_input_grad
        batch, dim = z.shape
        lv, lw, g = _float64(log_var, log_weights, grad_out)
        centre = centre_of(z)
        zc = Centred.of(z, centre)
        # a row whose every logit is -inf (density underflow) has no responsibilities: p = 0
        lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
        precision = _precision(lv)
        # [g_b (z_b - c) | g_b]: P^T of it gives sum_b g_b p_bj (z_b - c) and sum_b g_b p_bj
        weighted_z = torch.cat([g[:, None] * zc.points, g[:, None]], dim=1)
        # [sum_j p_bj (mu_j - c) | sum_j p_bj], summed over the blocks in float64
        pulled = torch.zeros((batch, dim + 1), dtype=torch.float64, device=z.device)
        grad_means = torch.empty_like(means) if need_means else None
        grad_weights = torch.empty_like(log_weights) if need_weights else None
        sq_dist_per_row = torch.zeros_like(lse)  # sum_j p_bj ||z_b - mu_j||^2
        for block in _blocks(zc, means, centre, lv, exclude, lw):
            p = block.logits.sub_(lse[:, None]).exp_()  # [B, c] responsibilities p_bj
            mu = block.means.points
            if need_z:
                pulled += p @ F.pad(mu, (0, 1), value=1.0)
            if need_means or need_weights:
                weighted_p = (weighted_z.T @ p).T  # [c, d + 1]; faster than p.T @ weighted_z
            if need_means:  # sum_b g_b p_bj (z_b - mu_j) / sigma^2
                pull = weighted_p[:, :dim] - weighted_p[:, dim:] * mu
                grad_means[block.start:block.stop] = (pull * precision).to(means.dtype)
            if need_log_var:
                sq_dist_per_row += torch.linalg.vecdot(p, block.sq_dist)
            if need_weights:  # sum_b g_b (p_bj - wtilde_bj), wtilde: row b's normalised weights
                wtilde = torch.exp(block.log_weights - norm[:, None])
                grad_weights[block.start:block.stop] = (weighted_p[:, dim] - g @ wtilde).to(log_weights.dtype)
        grad_z = None
        if need_z:  # g_b sum_j p_bj (mu_j - z_b) / sigma^2
            pull = pulled[:, :dim] - pulled[:, dim:] * zc.points
            grad_z = (g[:, None] * pull * precision).to(z.dtype)
        grad_log_var = None
        if need_log_var:  # sum_b g_b (sum_j p_bj ||z_b - mu_j||^2 / (2 sigma^2) - d / 2)
            grad_log_var = 0.5 * precision * (g @ sq_dist_per_row) - 0.5 * dim * g.sum()
            grad_log_var = grad_log_var.to(log_var.dtype)
        return grad_z, grad_means, grad_log_var, None, grad_weights


def _mixture_log_density_torch(z: Tensor, means: Tensor, log_var: Tensor,
                               exclude: Tensor | None, log_weights: Tensor | None) -> Tensor:
    return _MixtureLogDensity.apply(z, means, log_var, exclude, log_weights)


register("mixture_log_density", "torch", _mixture_log_density_torch)
