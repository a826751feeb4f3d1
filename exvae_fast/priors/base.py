"""The contract every prior over the top latent layer follows."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..ops.validation import check_int, check_rows

Encoder = Callable[[Tensor], "tuple[Tensor, Tensor]"]
"""x [B, D] -> (mu [B, d], log_var [B, d]): a model's top-level posterior."""


class Prior(nn.Module):
    """A density r(z) over z [B, d] with `log_prob` and `sample`.

    Priors that are built from the encoder (VampPrior, ExemplarPrior) receive it as
    `encoder=` at every call rather than holding a reference to their parent model.
    `query` ([B, d], the posterior means of the batch) and `indices` ([B], the rows'
    positions in the training set) are only used by the exemplar prior in training.
    """

    latent_dim: int

    def log_prob(
        self,
        z: Tensor,
        *,
        encoder: Encoder | None = None,
        query: Tensor | None = None,
        indices: Tensor | None = None,
    ) -> Tensor:
        """log r(z) in nats for z [B, d]: returns [B]."""
        raise NotImplementedError

    def sample(self, n: int, *, encoder: Encoder | None = None) -> Tensor:
        """n draws from r: [n, d]."""
        raise NotImplementedError

    def sample_near(self, mu: Tensor, log_var: Tensor, n: int) -> Tensor:
        """n draws of z near each of E anchors (mu, log_var [E, d]) -> [E, n, d].

        Default: the posterior N(mu, exp(log_var)); the exemplar prior overrides it with
        its kernel N(mu, sigma^2 I) (the paper's exemplar-conditioned generation).
        """
        check_count(n, "n")
        std = torch.exp(0.5 * log_var).unsqueeze(1)
        return mu.unsqueeze(1) + std * torch.randn(mu.shape[0], n, mu.shape[1], device=mu.device, dtype=mu.dtype)

    def check_latents(self, z: Tensor, name: str = "z") -> None:
        """Raise a clear error unless z is a floating [B, latent_dim] tensor."""
        check_rows(z, name, self.latent_dim)


def check_count(value: int, name: str, minimum: int = 1) -> int:
    """Return value if it is an int >= minimum (default 1), else raise naming the argument."""
    return check_int(value, name, minimum)
