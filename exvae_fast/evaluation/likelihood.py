"""Importance-weighted log-likelihood (Burda et al.'s IWAE bound) and bits per dimension.

    log p(x) ~= logsumexp_{s=1..S} log w_s - log S,   log w_s = log p(x, z_s) - log q(z_s | x)

The estimate is batched over test points *and* samples: each call of
`model.log_importance_weights` sees P points, each repeated S_c times (P * S_c <= max_rows),
and a running logsumexp per point accumulates the chunks of S_c samples.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..models.base import LatentVariableModel
from ..priors.base import check_count
from ..progress import stage_progress
from .mode import check_data, evaluation_mode, model_device


def plan_batches(num_points: int, num_samples: int, max_rows: int) -> tuple[int, int]:
    """(points_per_batch, samples_per_chunk) with points * samples <= max_rows.

    All S samples of a point go in one call when S <= max_rows (as many points as fit);
    otherwise one point per call and the samples are split into chunks of max_rows.
    """
    check_count(num_points, "num_points")
    check_count(num_samples, "num_samples")
    check_count(max_rows, "max_rows")
    samples_per_chunk = min(num_samples, max_rows)
    points_per_batch = min(num_points, max(1, max_rows // samples_per_chunk))
    return points_per_batch, samples_per_chunk


def log_likelihood(model: LatentVariableModel, data: Tensor, num_samples: int = 5000,
                   max_rows: int = 50000, progress: bool = True) -> Tensor:
    """Importance-weighted estimate of log p(x) in nats for each row of data [N, D] -> [N].

    num_samples: S importance samples per point (the paper uses 5000).
    max_rows: most rows passed to one `log_importance_weights` call (bounds memory).
    Returns float64 on the CPU. Runs under `evaluation_mode`. The estimate is a
    stochastic lower bound of log p(x) whose bias shrinks as S grows.
    """
    check_data(model, data)
    points, chunk = plan_batches(data.shape[0], num_samples, max_rows)
    device = model_device(model)
    num_points = data.shape[0]
    calls = math.ceil(num_points / points) * math.ceil(num_samples / chunk)
    result = torch.empty(num_points, dtype=torch.float64)
    with evaluation_mode(model), stage_progress("log p(x)", calls, progress, label=(
            f"log p(x) ({num_points} points, {num_samples} samples each)")) as bar:
        for start in range(0, num_points, points):
            x = data[start:start + points].to(device)
            p = x.shape[0]
            full_chunk = x.repeat_interleave(chunk, dim=0)  # [p * chunk, D], point-major
            total = torch.full((p,), -math.inf, dtype=torch.float64, device=device)
            for done in range(0, num_samples, chunk):
                s = min(chunk, num_samples - done)
                rows = full_chunk if s == chunk else x.repeat_interleave(s, dim=0)
                log_w = model.log_importance_weights(rows)
                if log_w.shape != (p * s,):
                    raise RuntimeError(f"log_importance_weights returned shape {list(log_w.shape)} "
                                       f"for {p * s} rows; expected [{p * s}]")
                total = torch.logaddexp(total, log_w.view(p, s).double().logsumexp(dim=1))
                bar.update()
            result[start:start + p] = (total - math.log(num_samples)).cpu()
    return result


def bits_per_dim(log_likelihood: Tensor, num_dims: int) -> float:
    """Mean negative log-likelihood in bits per dimension: mean(-ll) / (D ln 2).

    log_likelihood: [N] in nats (e.g. from `log_likelihood`); num_dims: D = C*H*W.
    The discretised-logistic likelihood already assigns a probability *mass* to the
    data's intensity bins, so no dequantisation offset is added (paper Table 2, CelebA).
    """
    check_count(num_dims, "num_dims")
    if not isinstance(log_likelihood, Tensor) or log_likelihood.dim() != 1 or log_likelihood.numel() == 0:
        raise ValueError("log_likelihood: expected a non-empty 1-D tensor of per-example nats")
    return float(-log_likelihood.double().mean()) / (num_dims * math.log(2.0))
