"""Log-densities used by the models and priors. All return nats, summed over the last
dimension unless stated: inputs [..., d] -> output [...]."""
from __future__ import annotations

import math

import torch
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)


def log_normal_diag(x: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """log N(x | mean, diag(exp(log_var))), broadcasting; sums the last dimension."""
    return -0.5 * (LOG_2PI + log_var + (x - mean).pow(2) * torch.exp(-log_var)).sum(-1)


def log_normal_standard(x: Tensor) -> Tensor:
    """log N(x | 0, I); sums the last dimension."""
    return -0.5 * (LOG_2PI + x.pow(2)).sum(-1)
