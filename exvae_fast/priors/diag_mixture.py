"""Mixtures of diagonal Gaussians: the shared core of the MoG prior and the VampPrior."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..distributions import log_normal_diag
from .base import Prior, check_count

# Rows x components x dims held at once; bounds memory when IWAE evaluation sends
# tens of thousands of rows through a prior with thousands of components.
ELEMENT_BUDGET = 1 << 24


def log_mixture_diag(z: Tensor, means: Tensor, log_vars: Tensor, log_weights: Tensor | None = None) -> Tensor:
    """log sum_k w_k N(z | means_k, diag exp(log_vars_k)) for z [B, d]; means, log_vars [K, d];
    log_weights [K] normalised log mixture weights (uniform when None). Returns [B].

    Processes the rows in chunks so that no more than ELEMENT_BUDGET values of the
    [B, K, d] broadcast live at once.
    """
    num_components, dim = means.shape
    if log_weights is None:
        log_weights = torch.full((num_components,), -math.log(num_components), device=z.device, dtype=z.dtype)
    rows = max(1, ELEMENT_BUDGET // (num_components * dim))
    out = []
    for start in range(0, z.shape[0], rows):
        zc = z[start:start + rows].unsqueeze(1)  # [b, 1, d]
        log_components = log_normal_diag(zc, means.unsqueeze(0), log_vars.unsqueeze(0))  # [b, K]
        out.append(torch.logsumexp(log_components + log_weights, dim=1))
    return torch.cat(out)


class ComponentSubsampling:
    """Per-step random subsets of K mixture components (paper, appendix K / Table 5).

    In training, each call draws `per_step` distinct components uniformly; in evaluation,
    or when per_step is None, every component takes part.
    """

    def __init__(self, num_components: int, per_step: int | None) -> None:
        self.num_components = check_count(num_components, "num_components")
        if per_step is not None:
            check_count(per_step, "components_per_step")
            if per_step > num_components:
                raise ValueError(
                    f"components_per_step: expected at most num_components={num_components}, got {per_step}")
        self.per_step = per_step

    def draw(self, training: bool, device: torch.device) -> Tensor | None:
        """Indices [m] of the components taking part this step, or None for all of them."""
        if not training or self.per_step is None or self.per_step == self.num_components:
            return None
        return torch.randperm(self.num_components, device=device)[: self.per_step]


def sample_diag_mixture(prior: Prior, means: Tensor, log_vars: Tensor, n: int,
                        logits: Tensor | None = None) -> Tensor:
    """n draws [n, d] from a mixture of diagonal Gaussians (uniform weights when logits is
    None), in the dtype of means."""
    check_count(n, "n")
    if logits is None:
        which = torch.randint(means.shape[0], (n,), device=means.device)
    else:
        which = torch.multinomial(torch.softmax(logits.float(), 0), n, replacement=True)
    noise = torch.randn(n, prior.latent_dim, device=means.device, dtype=means.dtype)
    return means[which] + torch.exp(0.5 * log_vars[which]) * noise
