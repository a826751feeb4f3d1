"""Active latent units (Burda et al.; paper supplement D, Table 1).

A top-level latent dimension i is active when Var_x[ mu_phi(x)_i ] > threshold (0.01):
the posterior mean of that dimension varies over the data set. For hierarchical models
`encode` gives the top layer (z2), the layer the paper reports.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..models.base import LatentVariableModel
from ..priors.base import check_count
from .mode import check_data, evaluation_mode, iterate_batches, model_device


def active_units(model: LatentVariableModel, data: Tensor, threshold: float = 0.01,
                 batch_size: int = 500, *, progress: bool = True) -> tuple[int, Tensor]:
    """(number of active units, variances [d]) of the posterior means over data [N, D].

    variances: unbiased variance over the N >= 2 examples of each dimension of
    model.encode(x)[0], float64 on the CPU; a unit counts when its variance > threshold.
    """
    check_data(model, data)
    check_count(batch_size, "batch_size")
    if data.shape[0] < 2:
        raise ValueError(f"data: a variance needs at least 2 rows, got {data.shape[0]}")
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not threshold >= 0:
        raise ValueError(f"threshold: expected a number >= 0, got {threshold!r}")
    # Streaming mean / sum of squared deviations, merged per batch (Chan et al.), in
    # float64: summing squares directly cancels badly when |mean| >> std.
    count = 0
    mean = torch.zeros(model.latent_dim, dtype=torch.float64)
    m2 = torch.zeros(model.latent_dim, dtype=torch.float64)
    with evaluation_mode(model):
        for x in iterate_batches(data, batch_size, model_device(model), progress=progress,
                                 desc="active units"):
            mu = model.encode(x)[0].double().cpu()
            n_b = mu.shape[0]
            mean_b = mu.mean(dim=0)
            m2_b = (mu - mean_b).pow(2).sum(dim=0)
            delta = mean_b - mean
            total = count + n_b
            mean = mean + delta * (n_b / total)
            m2 = m2 + m2_b + delta.pow(2) * (count * n_b / total)
            count = total
    variances = m2 / (count - 1)
    return int((variances > threshold).sum()), variances
