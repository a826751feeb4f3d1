"""Single-sample ELBO and its KL / reconstruction split over a data set (paper Table 3)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..models.base import LatentVariableModel
from ..priors.base import check_count
from .mode import check_data, evaluation_mode, iterate_batches, model_device


def evaluate_elbo(model: LatentVariableModel, data: Tensor, batch_size: int = 500, *,
                  progress: bool = True) -> dict[str, float]:
    """Mean single-sample ELBO terms of `model` over data [N, D], in nats per example.

    Returns {"elbo", "kl", "neg_recon"} with elbo = -(kl + neg_recon); one posterior
    sample per example, as in the paper's Table 3. Runs under `evaluation_mode` (so an
    exemplar prior uses its whole, refreshed exemplar cache without leave-one-out).
    Batches of `batch_size` rows are moved to the model's device one at a time.
    """
    check_data(model, data)
    check_count(batch_size, "batch_size")
    device = model_device(model)
    # float64 sums: 1e5 examples of ~100 nats would lose digits in float32.
    recon_sum = torch.zeros((), dtype=torch.float64)
    kl_sum = torch.zeros((), dtype=torch.float64)
    with evaluation_mode(model):
        for x in iterate_batches(data, batch_size, device, progress=progress, desc="ELBO"):
            terms = model(x)
            recon_sum += terms.recon.double().sum().cpu()
            kl_sum += terms.kl.double().sum().cpu()
    n = data.shape[0]
    kl = float(kl_sum) / n
    neg_recon = -float(recon_sum) / n
    return {"elbo": -(kl + neg_recon), "kl": kl, "neg_recon": neg_recon}
