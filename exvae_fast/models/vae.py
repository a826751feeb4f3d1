"""The one-layer MLP VAE of the paper (supplement L.1 a; VampPrior models/VAE.py)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..distributions import log_normal_diag
from ..priors.base import Prior
from .base import LatentVariableModel, PosteriorSample, reparameterize
from .layers import HIDDEN, GatedDense, GaussianHead, LikelihoodHead, he_init_


class VAE(LatentVariableModel):
    """q(z | x) = N(mu(x), diag exp(log_var(x))), p(x | z) Bernoulli or discretised logistic.

    Encoder: GatedDense D-300-300; mu = Linear(300, d); log_var = Hardtanh(-6, 2)(Linear(300, d)).
    Decoder: GatedDense d-300-300, then Linear(300, D) + Sigmoid (the Bernoulli probs or the
    logistic mean) and, for likelihood="logistic", Linear(300, D) + Hardtanh(-4.5, 0) for the
    log-scale over 2^num_bits bins. Linear weights He-initialised.
    """

    def __init__(self, prior: Prior, input_shape: tuple[int, int, int] = (1, 28, 28), latent_dim: int = 40,
                 likelihood: str = "bernoulli", num_bits: int = 8) -> None:
        super().__init__(prior)
        self.configure(input_shape, latent_dim, likelihood)
        d = self.input_dim
        self.q_z_net = nn.Sequential(GatedDense(d, HIDDEN), GatedDense(HIDDEN, HIDDEN))
        self.q_z_head = GaussianHead(HIDDEN, latent_dim)
        self.p_x_net = nn.Sequential(GatedDense(latent_dim, HIDDEN), GatedDense(HIDDEN, HIDDEN))
        self.p_x_head = LikelihoodHead(lambda: nn.Linear(HIDDEN, d), likelihood, num_bits)
        he_init_(self, exclude=prior)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x)
        return self.q_z_head(self.q_z_net(x))

    def posterior_sample(self, x: Tensor) -> PosteriorSample:
        self.check_input(x)
        mu, log_var = self.q_z_head(self.q_z_net(x))
        z = reparameterize(mu, log_var)
        log_px = self.p_x_head.log_prob(x, self.p_x_head(self.p_x_net(z)))
        return PosteriorSample(z=z, mu=mu, log_var=log_var, log_q_z=log_normal_diag(z, mu, log_var),
                               log_px=log_px, log_ratio_lower=torch.zeros_like(log_px))

    def decode(self, z: Tensor) -> Tensor:
        self.check_latents(z)
        return self.p_x_head(self.p_x_net(z))[0]
