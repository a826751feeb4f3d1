"""Log-density of an isotropic Gaussian mixture, streamed over its components.

The torch backend is the reference (oracle) of the fused kernels. It never holds a B x N
matrix: the forward pass walks over blocks of components keeping a running logsumexp per
row (FlashAttention style) and saves only that [B] vector; the backward pass walks again,
recomputing each block's responsibilities from it.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from .dispatch import implementation, register
from .validation import validate_mixture

LOG_2PI = math.log(2.0 * math.pi)

ELEMENT_BUDGET = 2**24
"""Most elements in one block's [B, chunk, d] difference tensor: the block size is
max(1, ELEMENT_BUDGET // (B * d)) components, which bounds the working memory."""


def mixture_log_density(z: Tensor, means: Tensor, log_var: Tensor, exclude: Tensor | None = None,
                        log_weights: Tensor | None = None, backend: str = "auto") -> Tensor:
    """log sum_j w_bj N(z_b | mu_j, exp(log_var) I) in nats, for each row b of z.

    z: [B, d] float. means: [N, d] float (float64/32, bfloat16, float16), N >= 1.
    log_var: 0-dim float tensor, the shared log-variance. exclude: int64 [B], the component
    row b leaves out (-1: none). log_weights: [N] float, unnormalised log mixture weights
    (-inf drops a component); w_bj is their softmax over the components of row b, or
    uniform over those components when omitted.
    Computes in float32 (float64 when any input is float64); returns [B] in z's dtype.
    Differentiable in z, means, log_var and log_weights (first order).
    """
    validate_mixture(z, means, log_var, exclude, log_weights)
    run = implementation("mixture_log_density", backend, z, means)
    return run(z, means, log_var, exclude, log_weights)


@dataclass
class _Block:
    """One block of components [start, stop) against all B rows, in the compute dtype."""

    rows: slice
    diff: Tensor  # [B, c, d]: z_b - mu_j
    sq_dist: Tensor  # [B, c]: ||z_b - mu_j||^2
    logits: Tensor  # [B, c]: log w_j - ||z_b - mu_j||^2 / (2 sigma^2), -inf where j is left out
    log_weights: Tensor | None  # [B, c]: log w_j, -inf where j is left out (None when uniform)


def _blocks(z: Tensor, means: Tensor, log_var: Tensor, exclude: Tensor | None,
            log_weights: Tensor | None) -> Iterator[_Block]:
    """Blocks over the N components; z, log_var and log_weights are in the compute dtype."""
    batch, dim = z.shape
    size = means.shape[0]
    step = max(1, ELEMENT_BUDGET // max(batch * dim, 1))
    half_precision = 0.5 * torch.exp(-log_var)
    for start in range(0, size, step):
        stop = min(start + step, size)
        # direct differences, not ||z||^2 - 2 z.mu + ||mu||^2, which cancels when z is near mu
        diff = z[:, None, :] - means[start:stop].to(z.dtype)[None, :, :]
        sq_dist = diff.square().sum(-1)
        logits = -half_precision * sq_dist
        weights = None
        if log_weights is not None:
            weights = log_weights[start:stop].expand(batch, -1)
            logits = logits + weights
        if exclude is not None:
            left_out = exclude[:, None] == torch.arange(start, stop, device=z.device)[None, :]
            logits = logits.masked_fill(left_out, float("-inf"))
            if weights is not None:
                weights = weights.masked_fill(left_out, float("-inf"))
        yield _Block(slice(start, stop), diff, sq_dist, logits, weights)


def _compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float64 when any input is float64, else float32."""
    wide = any(t is not None and t.dtype == torch.float64 for t in tensors)
    return torch.float64 if wide else torch.float32


class _MixtureLogDensity(torch.autograd.Function):
    """Streaming mixture log-density; saves the inputs and two [B] vectors for backward."""

    @staticmethod
    def forward(ctx: FunctionCtx, z: Tensor, means: Tensor, log_var: Tensor,
                exclude: Tensor | None, log_weights: Tensor | None) -> Tensor:
        dtype = _compute_dtype(z, means, log_var, log_weights)
        zc, lv = z.to(dtype), log_var.to(dtype)
        lw = None if log_weights is None else log_weights.to(dtype)
        batch, dim = z.shape
        lse = torch.full((batch,), float("-inf"), dtype=dtype, device=z.device)
        norm = torch.full_like(lse, float("-inf"))
        for block in _blocks(zc, means, lv, exclude, lw):
            lse = torch.logaddexp(lse, torch.logsumexp(block.logits, dim=1))
            if block.log_weights is not None:
                norm = torch.logaddexp(norm, torch.logsumexp(block.log_weights, dim=1))
        if lw is None:  # uniform weights: log of the number of components of each row
            count = torch.full((batch,), means.shape[0], dtype=dtype, device=z.device)
            norm = torch.log(count if exclude is None else count - (exclude >= 0).to(dtype))
        ctx.save_for_backward(z, means, log_var, exclude, log_weights, lse, norm)
        return (lse - norm - 0.5 * dim * (LOG_2PI + lv)).to(z.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor
                 ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, Tensor | None]:
        z, means, log_var, exclude, log_weights, lse, norm = ctx.saved_tensors
        need_z, need_means, need_log_var, _, need_weights = ctx.needs_input_grad
        dtype, dim = lse.dtype, z.shape[1]
        zc, lv = z.to(dtype), log_var.to(dtype)
        lw = None if log_weights is None else log_weights.to(dtype)
        g = grad_out.to(dtype)
        # a row whose every logit is -inf (density underflow) has no responsibilities: p = 0
        lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
        precision = torch.exp(-lv)
        grad_z = torch.zeros_like(zc) if need_z else None
        grad_means = torch.empty_like(means) if need_means else None
        grad_weights = torch.empty_like(log_weights) if need_weights else None
        weighted_sq_dist = torch.zeros((), dtype=dtype, device=z.device)
        for block in _blocks(zc, means, lv, exclude, lw):
            p = torch.exp(block.logits - lse[:, None])  # [B, c] responsibilities p_bj
            gp = g[:, None] * p
            if need_z:  # sum_j p_bj (mu_j - z_b) / sigma^2, scaled below
                grad_z -= torch.einsum("bc,bcd->bd", gp, block.diff)
            if need_means:  # sum_b g_b p_bj (z_b - mu_j) / sigma^2
                grad_means[block.rows] = (torch.einsum("bc,bcd->cd", gp, block.diff) * precision
                                          ).to(means.dtype)
            if need_log_var:
                weighted_sq_dist += (gp * block.sq_dist).sum()
            if need_weights:  # sum_b g_b (p_bj - wtilde_bj), wtilde: row b's normalised weights
                wtilde = torch.exp(block.log_weights - norm[:, None])
                grad_weights[block.rows] = (g[:, None] * (p - wtilde)).sum(0).to(log_weights.dtype)
        if need_z:
            grad_z = (grad_z * precision).to(z.dtype)
        grad_log_var = None
        if need_log_var:  # sum_b g_b (sum_j p_bj ||z_b - mu_j||^2 / (2 sigma^2) - d / 2)
            grad_log_var = (0.5 * precision * weighted_sq_dist - 0.5 * dim * g.sum()).to(log_var.dtype)
        return grad_z, grad_means, grad_log_var, None, grad_weights


def _mixture_log_density_torch(z: Tensor, means: Tensor, log_var: Tensor,
                               exclude: Tensor | None, log_weights: Tensor | None) -> Tensor:
    return _MixtureLogDensity.apply(z, means, log_var, exclude, log_weights)


register("mixture_log_density", "torch", _mixture_log_density_torch)
