"""A learned mixture of diagonal Gaussians (paper, appendix K: "VAE w/ Mixture of Gaussians")."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Encoder, Prior, check_count
from .diag_mixture import ComponentSubsampling, log_mixture_diag, sample_diag_mixture


class MoGPrior(Prior):
    """r(z) = sum_k softmax(logits)_k N(z | m_k, diag exp(s_k)) with K learned components.

    Means start from N(0, I) draws, log-variances at 0, weights uniform. With
    `components_per_step` a random subset of components is used in each training step
    (weights renormalised over the subset).
    """

    def __init__(self, latent_dim: int, num_components: int = 500,
                 components_per_step: int | None = None) -> None:
        super().__init__()
        self.latent_dim = check_count(latent_dim, "latent_dim")
        self.subsampling = ComponentSubsampling(num_components, components_per_step)
        self.means = nn.Parameter(torch.randn(num_components, latent_dim))
        self.log_vars = nn.Parameter(torch.zeros(num_components, latent_dim))
        self.logits = nn.Parameter(torch.zeros(num_components))

    def log_prob(self, z: Tensor, *, encoder: Encoder | None = None,
                 query: Tensor | None = None, indices: Tensor | None = None) -> Tensor:
        self.check_latents(z)
        subset = self.subsampling.draw(self.training, z.device)
        means, log_vars, logits = self.means, self.log_vars, self.logits
        if subset is not None:
            means, log_vars, logits = means[subset], log_vars[subset], logits[subset]
        return log_mixture_diag(z, means, log_vars, torch.log_softmax(logits, 0))

    def sample(self, n: int, *, encoder: Encoder | None = None) -> Tensor:
        with torch.no_grad():
            return sample_diag_mixture(self, self.means, self.log_vars, n, self.logits)
