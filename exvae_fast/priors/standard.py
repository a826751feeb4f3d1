"""N(0, I): the plain VAE prior."""
from __future__ import annotations

import torch
from torch import Tensor

from ..distributions import log_normal_standard
from .base import Encoder, Prior, check_count


class StandardPrior(Prior):
    """r(z) = N(z | 0, I) over d dimensions."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = check_count(latent_dim, "latent_dim")
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # tracks device and dtype

    def log_prob(self, z: Tensor, *, encoder: Encoder | None = None,
                 query: Tensor | None = None, indices: Tensor | None = None) -> Tensor:
        self.check_latents(z)
        return log_normal_standard(z)

    def sample(self, n: int, *, encoder: Encoder | None = None) -> Tensor:
        """z ~ N(0, I): [n, d] in the module's dtype (that of `model.double()` etc.)."""
        check_count(n, "n")
        return torch.randn(n, self.latent_dim, device=self._anchor.device, dtype=self._anchor.dtype)
