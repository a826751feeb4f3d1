"""Log-densities used by the models and priors. All return nats, summed over the last
dimension unless stated: inputs [..., d] -> output [...]."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)


def log_normal_diag(x: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """log N(x | mean, diag(exp(log_var))), broadcasting; sums the last dimension."""
    return -0.5 * (LOG_2PI + log_var + (x - mean).pow(2) * torch.exp(-log_var)).sum(-1)


def log_normal_standard(x: Tensor) -> Tensor:
    """log N(x | 0, I); sums the last dimension."""
    return -0.5 * (LOG_2PI + x.pow(2)).sum(-1)


def working_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype the log-densities compute and sum in: the inputs' promoted dtype, at least
    float32. In float16 / bfloat16, 1 - 1e-5 rounds to 1 and a sum over D pixels loses whole nats."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def log_bernoulli(x: Tensor, probs: Tensor, eps: float = 1e-5) -> Tensor:
    """log Bernoulli(x | probs) with probs clamped to [eps, 1 - eps] (the VampPrior
    reference's bound), so a confident mistake costs at most -log(eps) nats per dimension.
    x in {0, 1} (values in [0, 1] give the cross-entropy); broadcasting; sums the last dimension;
    computed in `working_dtype` (float32 for half-precision inputs)."""
    dtype = working_dtype(x, probs)
    x, p = x.to(dtype), probs.to(dtype).clamp(eps, 1.0 - eps)
    return (x * torch.log(p) + (1.0 - x) * torch.log1p(-p)).sum(-1)


def check_num_bits(num_bits: int) -> int:
    """Return num_bits if it is an int in [1, 16], else raise naming the argument."""
    if isinstance(num_bits, bool) or not isinstance(num_bits, int) or not 1 <= num_bits <= 16:
        raise ValueError(f"num_bits: expected an int in [1, 16], got {num_bits!r}")
    return num_bits


def log_discretized_logistic(x: Tensor, mean: Tensor, log_scale: Tensor, num_bits: int = 8) -> Tensor:
    """log P(x) of a logistic(mean, s = exp(log_scale)) discretised to K = 2^num_bits bins on [0, 1].

    Bin k = 0..K-1 is centred at c_k = k / (K-1) with half-width h = 1 / (2 (K-1)) and has
    mass F(c_k + h) - F(c_k - h); the first and last bins extend to -inf / +inf (as in
    PixelCNN++), so the K masses sum to 1. x is snapped to the nearest centre (values outside
    [0, 1] fall in the edge bins). Broadcasting; sums the last dimension; nats; computed in
    `working_dtype` (the widest input dtype, float32 for half-precision inputs).

    Stability: with a = (c + h - mean) / s and b = (c - h - mean) / s,
    sigmoid(a) - sigmoid(b) = sigmoid(a) * sigmoid(-b) * (1 - exp(-(a - b))), so
    log P = logsigmoid(a) + logsigmoid(-b) + log(-expm1(-2h / s)). Every term is computed
    without cancellation, so far-tail bins (where the CDF difference underflows) are exact;
    this replaces PixelCNN++'s mid-bin density fallback, which approximates the same mass
    by pdf(c) * 2h.
    """
    k_max = 2 ** check_num_bits(num_bits) - 1
    dtype = working_dtype(x, mean, log_scale)
    x, mean, log_scale = x.to(dtype), mean.to(dtype), log_scale.to(dtype)
    k = torch.round(x.clamp(0.0, 1.0) * k_max)
    # Edges from the bin index, (k +- 0.5) / k_max: bin k's upper edge and bin k+1's lower edge
    # are then the same float (c + h and c' - h round apart, and a tiny scale turns that
    # rounding into whole units of probability given to both bins, or to neither).
    inv_scale = torch.exp(-log_scale)
    upper = F.logsigmoid(((k + 0.5) / k_max - mean) * inv_scale)   # log F(c + h)
    lower = F.logsigmoid((mean - (k - 0.5) / k_max) * inv_scale)   # log (1 - F(c - h))
    width = torch.log(-torch.expm1(-inv_scale / k_max))            # log (1 - exp(-(a - b)))
    first, last = k == 0, k == k_max
    log_p = (torch.where(last, 0.0, upper) + torch.where(first, 0.0, lower)
             + torch.where(first | last, 0.0, width))
    return log_p.sum(-1)


def sample_discretized_logistic(mean: Tensor, log_scale: Tensor, num_bits: int = 8) -> Tensor:
    """One draw per element from the discretised logistic of `log_discretized_logistic`:
    bin centres k / (2^num_bits - 1) in [0, 1], same shape as mean (broadcast with log_scale),
    in their promoted dtype; drawn in `working_dtype` (half-precision noise stops a few scales
    from the mean and lands on a coarse grid)."""
    k_max = 2 ** check_num_bits(num_bits) - 1
    out_dtype = torch.promote_types(mean.dtype, log_scale.dtype)
    dtype = working_dtype(mean, log_scale)
    mean, log_scale = torch.broadcast_tensors(mean.to(dtype), log_scale.to(dtype))
    tiny = torch.finfo(dtype).tiny
    u = torch.rand_like(mean).clamp(tiny, 1.0 - torch.finfo(dtype).eps)
    y = mean + torch.exp(log_scale) * (torch.log(u) - torch.log1p(-u))
    # Clamping before rounding sends the tails to the edge bins, which extend to +-inf.
    return (torch.round(y.clamp(0.0, 1.0) * k_max) / k_max).to(out_dtype)
