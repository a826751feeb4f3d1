"""The contract every model in `exvae_fast.models` follows.

A model is an encoder/decoder pair with one *top* stochastic layer whose prior is
pluggable (`exvae_fast.priors`). Everything below the top layer (for the two-level
models: q(z1 | x, z2) and p(z1 | z2)) is part of the model itself.

Shapes: images travel flattened, x [B, D] with D = C*H*W, values in [0, 1]
(binary for Bernoulli models). Latents are [B, d] with d = `latent_dim`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..ops.validation import check_rows
from ..priors.base import Prior, check_count

LIKELIHOODS = ("bernoulli", "logistic")
"""p(x | z): Bernoulli for binary images, discretised logistic for grey/colour ones."""


@dataclass
class PosteriorSample:
    """One reparameterised posterior sample per row and the prior-free ELBO terms.

    z, mu, log_var: [B, d] top-level sample, posterior mean and log-variance.
    log_q_z: [B] log q(z_top | x) in nats.
    log_px: [B] log p(x | latents) in nats.
    log_ratio_lower: [B] log p(z1 | z2) - log q(z1 | x, z2) (zeros for one-layer models).
    """

    z: Tensor
    mu: Tensor
    log_var: Tensor
    log_q_z: Tensor
    log_px: Tensor
    log_ratio_lower: Tensor


@dataclass
class ELBOTerms:
    """Per-example ELBO pieces in nats, each [B]: elbo = recon - kl."""

    recon: Tensor
    kl: Tensor

    @property
    def elbo(self) -> Tensor:
        return self.recon - self.kl


class LatentVariableModel(nn.Module):
    """Base class: subclasses implement `encode`, `posterior_sample` and `decode`.

    Attributes set by subclasses: `input_shape` (C, H, W), `latent_dim` (top layer d),
    `likelihood` ("bernoulli" or "logistic"), all through `configure`.
    """

    input_shape: tuple[int, int, int]
    latent_dim: int
    likelihood: str

    def __init__(self, prior: Prior) -> None:
        super().__init__()
        if not isinstance(prior, Prior):
            raise TypeError(f"prior: expected an exvae_fast.priors.Prior, got {type(prior).__name__}")
        self.prior = prior

    def configure(self, input_shape: tuple[int, int, int], latent_dim: int, likelihood: str) -> None:
        """Validate and set `input_shape` (C, H, W), `latent_dim` (must equal the prior's)
        and `likelihood` (one of LIKELIHOODS); every model calls this first."""
        shape = tuple(input_shape)
        if len(shape) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
            raise ValueError(f"input_shape: expected three positive ints (C, H, W), got {input_shape!r}")
        check_count(latent_dim, "latent_dim")
        if latent_dim != self.prior.latent_dim:
            raise ValueError(f"latent_dim: the model's top layer has {latent_dim} dimensions but the prior "
                             f"has {self.prior.latent_dim}")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood: expected one of {LIKELIHOODS}, got {likelihood!r}")
        self.input_shape = shape
        self.latent_dim = latent_dim
        self.likelihood = likelihood

    @property
    def input_dim(self) -> int:
        c, h, w = self.input_shape
        return c * h * w

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Top-level posterior q(z | x): x [B, D] -> (mu [B, d], log_var [B, d])."""
        raise NotImplementedError

    def posterior_sample(self, x: Tensor) -> PosteriorSample:
        """Draw one reparameterised sample of every latent layer for each row of x [B, D]."""
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:
        """Top-level latents z [B, d] -> image [B, D] in [0, 1] (mean of p(x | z); for
        two-level models z1 is drawn from p(z1 | z2); autoregressive decoders sample)."""
        raise NotImplementedError

    def check_input(self, x: Tensor, name: str = "x") -> None:
        """Raise a clear error unless x is a floating [B, D] tensor on this model's device."""
        check_rows(x, name, self.input_dim, next(self.parameters()).device)

    def check_latents(self, z: Tensor, name: str = "z") -> None:
        """Raise a clear error unless z is a floating [B, latent_dim] tensor on this model's device."""
        check_rows(z, name, self.latent_dim, next(self.parameters()).device)

    def forward(self, x: Tensor, indices: Tensor | None = None) -> ELBOTerms:
        """Single-sample ELBO terms for x [B, D].

        indices: LongTensor [B], positions of the rows of x in the training set; the
        exemplar prior needs them for leave-one-out and cache write-back in training.
        """
        self.check_input(x)
        s = self.posterior_sample(x)
        log_prior = self.prior.log_prob(s.z, encoder=self.encode, query=s.mu, indices=indices)
        kl = s.log_q_z - s.log_ratio_lower - log_prior
        return ELBOTerms(recon=s.log_px, kl=kl)

    def log_importance_weights(self, x: Tensor) -> Tensor:
        """log w = log p(x, latents) - log q(latents | x) for one sample per row: [B]."""
        s = self.posterior_sample(x)
        log_prior = self.prior.log_prob(s.z, encoder=self.encode, query=s.mu)
        return s.log_px + s.log_ratio_lower + log_prior - s.log_q_z


def reparameterize(mu: Tensor, log_var: Tensor) -> Tensor:
    """z = mu + exp(log_var / 2) * eps, eps ~ N(0, I); same shape as mu."""
    return mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)
