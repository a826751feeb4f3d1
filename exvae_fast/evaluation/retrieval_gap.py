"""How much of a trained exemplar prior the k nearest exemplars carry (Algorithm 1's bet).

Retrieval-augmented training (paper, Algorithm 1) replaces the exemplar mixture by its k
components nearest to the posterior mean, on the grounds that the rest is negligible. This
measures that claim on a trained model, against the exemplar set of the test-time prior (the
whole training set, N exemplars, a row of the training set leaving itself out). For a row x
with z ~ q(z | x) and the M' exemplars taking part:

    log r(z)   = log (1/M') sum_{j}               N(z | mu_j, sigma^2 I)   (exact prior)
    log r_k(z) = log (1/M') sum_{j in kNN_k(mu)}  N(z | mu_j, sigma^2 I)   (retrieval, same M')
    gap_k(x)   = log r(z) - log r_k(z) >= 0  nats;   exp(-gap_k) = the share of r(z) they carry

kNN_k(mu) are the k cached means nearest to the row's posterior mean mu_phi(x) (Euclidean, as
Algorithm 1 retrieves them), not to z; with an approximate index attached to the cache
(`LatentCache.attach_index`) they are that index's neighbours, as in training, so the gap
then also counts what the approximate search misses. In training Algorithm 1 also restricts the search to a
random half of the exemplars; this measures the approximation itself, without that sampling.
Everything after the neighbour search is computed in float64.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..models.base import LatentVariableModel, reparameterize
from ..ops import mixture_log_density
from ..ops.validation import check_index, check_range, check_shape
from ..priors.base import check_count
from ..priors.exemplar import ExemplarPrior
from .mode import check_data, evaluation_mode, iterate_batches, model_device
from .neighbours import check_neighbour_counts

QUANTILES = {"median": 0.5, "p90": 0.9, "p99": 0.99}


def retrieval_gap(model: LatentVariableModel, data: Tensor, ks: Sequence[int] = (1, 5, 10, 50), *,
                  indices: Tensor | None = None, batch_size: int = 500,
                  progress: bool = True) -> dict[int, Tensor]:
    """{k: gap_k [N] float64 nats (CPU)} for the rows of data [N, D], one z ~ q(z | x) per row.

    model: a model whose prior is an `ExemplarPrior` with a complete cache (e.g. after
    `prior.refresh(model.encode)`). indices: int64 [N], the rows' positions in the training
    set (each leaves itself out, so M' = num_items - 1), or None for rows from outside it
    (M' = num_items). ks: strictly increasing counts, at most M'.
    """
    check_data(model, data)
    check_count(batch_size, "batch_size")
    prior = model.prior
    if not isinstance(prior, ExemplarPrior):
        raise TypeError(f"model: the retrieval gap needs an ExemplarPrior, got {type(prior).__name__}")
    prior.cache.check_complete()
    if indices is not None:
        check_index(indices, "indices")
        check_shape(indices, "indices", (data.shape[0],))
        check_range(indices, "indices", prior.num_items)
    taking_part = prior.num_items - (indices is not None)  # M'
    check_neighbour_counts(ks, taking_part, f"only {taking_part} exemplars take part in each row's prior")
    if list(ks) != sorted(set(ks)):
        raise ValueError(f"ks: expected strictly increasing counts, got {list(ks)}")
    device = model_device(model)
    gaps: dict[int, list[Tensor]] = {k: [] for k in ks}
    start = 0
    with evaluation_mode(model):
        means = prior.cache.means.double()  # [N_exemplars, d]
        log_var = prior.log_var.double()
        norm_const = (math.log(taking_part)
                      + 0.5 * prior.latent_dim * (math.log(2 * math.pi) + log_var))
        for x in iterate_batches(data, batch_size, device, progress=progress, desc="retrieval gap"):
            exclude = None if indices is None else indices[start:start + x.shape[0]].to(device)
            start += x.shape[0]
            mu, post_log_var = model.encode(x)
            z = reparameterize(mu, post_log_var).double()
            exact = mixture_log_density(z, means, log_var, exclude=exclude, backend="torch")
            _, neighbours = prior.cache.knn(mu, ks[-1], exclude=exclude)  # [B, k_max], nearest first
            sq = (z.unsqueeze(1) - means[neighbours]).pow(2).sum(-1)  # [B, k_max]
            logits = -sq / (2 * torch.exp(log_var))
            for k in ks:
                truncated = torch.logsumexp(logits[:, :k], dim=1) - norm_const
                gaps[k].append((exact - truncated).cpu())
    return {k: torch.cat(parts) for k, parts in gaps.items()}


def summarize_gap(gaps: dict[int, Tensor]) -> dict[str, dict[str, float]]:
    """Per k (as a string key, for JSON): mean, median, p90, p99 and max of gap_k in nats, and
    `mass`, the mean share exp(-gap_k) of the prior density carried by the k neighbours."""
    summary = {}
    for k, gap in gaps.items():
        row = {"mean": float(gap.mean()), "max": float(gap.max()),
               "mass": float(torch.exp(-gap).mean())}
        row.update({name: float(torch.quantile(gap, q)) for name, q in QUANTILES.items()})
        summary[str(k)] = row
    return summary
