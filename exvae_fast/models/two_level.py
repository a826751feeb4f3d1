"""Shared machinery of the two-stochastic-layer models (HVAE, ConvHVAE, PixelHVAE).

    q(z2 | x) q(z1 | x, z2),   p(x | z1, z2) p(z1 | z2) r(z2)

z2 is the top layer (latent_dim, prior r); z1 (z1_dim) is internal to the model. The
layout follows VampPrior models/HVAE_2level.py and convHVAE_2level.py (supplement L.1):
    q(z2 | x):     enc_z2(x) -> features F2 -> Linear mean, Hardtanh(-6, 2)(Linear) log-var
    q(z1 | x, z2): {enc_z1(x) [F1], GatedDense(z2 -> F1)} -> GatedDense(2 F1 -> 300) -> heads
    p(z1 | z2):    GatedDense z2-300-300 -> heads
    p(x | z1, z2): a `TwoLevelDecoder` chosen by the subclass.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..distributions import check_num_bits, log_normal_diag
from ..priors.base import Prior, check_count
from .base import LatentVariableModel, PosteriorSample, reparameterize
from .layers import HIDDEN, GatedDense, GaussianHead, LikelihoodHead, he_init_


class TwoLevelDecoder(nn.Module):
    """p(x | z1, z2) for z1 [B, z1_dim], z2 [B, latent_dim], x [B, D]."""

    def log_prob(self, x: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
        """log p(x | z1, z2): [B] nats."""
        raise NotImplementedError

    def generate(self, z1: Tensor, z2: Tensor) -> Tensor:
        """An image [B, D] in [0, 1]: the mean, or a sample for autoregressive decoders."""
        raise NotImplementedError


class FeatureDecoder(TwoLevelDecoder):
    """Non-autoregressive p(x | z1, z2): {GatedDense(z1 -> 300), GatedDense(z2 -> 300)} ->
    `joint` (concatenated [B, 600] -> features) -> `head` (a LikelihoodHead)."""

    def __init__(self, z1_dim: int, z2_dim: int, joint: nn.Module, head: LikelihoodHead) -> None:
        super().__init__()
        self.z1_net = GatedDense(z1_dim, HIDDEN)
        self.z2_net = GatedDense(z2_dim, HIDDEN)
        self.joint = joint
        self.head = head

    def params(self, z1: Tensor, z2: Tensor) -> tuple[Tensor, Tensor | None]:
        """(mean [B, D], log_scale [B, D] or None) of p(x | z1, z2)."""
        return self.head(self.joint(torch.cat((self.z1_net(z1), self.z2_net(z2)), 1)))

    def log_prob(self, x: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
        return self.head.log_prob(x, self.params(z1, z2))

    def generate(self, z1: Tensor, z2: Tensor) -> Tensor:
        return self.params(z1, z2)[0]


class TwoLevelVAE(LatentVariableModel):
    """Base of the two-level models; subclasses supply `_make_encoders` and `_make_decoder`.

    The attribute `z1_dim` is the size of the lower layer; `latent_dim` that of z2.
    """

    def __init__(self, prior: Prior, input_shape: tuple[int, int, int] = (1, 28, 28), latent_dim: int = 40,
                 z1_dim: int = 40, likelihood: str = "bernoulli", num_bits: int = 8) -> None:
        super().__init__(prior)
        self.configure(input_shape, latent_dim, likelihood)
        self.z1_dim = check_count(z1_dim, "z1_dim")
        self.num_bits = check_num_bits(num_bits)
        self.q_z2_net, f2, self.q_z1_x_net, f1 = self._make_encoders()
        self.q_z2_head = GaussianHead(f2, latent_dim)
        self.q_z1_z2_net = GatedDense(latent_dim, f1)
        self.q_z1_joint = GatedDense(2 * f1, HIDDEN)
        self.q_z1_head = GaussianHead(HIDDEN, z1_dim)
        self.p_z1_net = nn.Sequential(GatedDense(latent_dim, HIDDEN), GatedDense(HIDDEN, HIDDEN))
        self.p_z1_head = GaussianHead(HIDDEN, z1_dim)
        self.decoder = self._make_decoder()
        he_init_(self, exclude=prior)

    def _make_encoders(self) -> tuple[nn.Module, int, nn.Module, int]:
        """(enc_z2, F2, enc_z1, F1): networks mapping x [B, D] to [B, F2] and [B, F1]."""
        raise NotImplementedError

    def _make_decoder(self) -> TwoLevelDecoder:
        """p(x | z1, z2), built from the validated attributes."""
        raise NotImplementedError

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x)
        return self.q_z2_head(self.q_z2_net(x))

    def q_z1(self, x: Tensor, z2: Tensor) -> tuple[Tensor, Tensor]:
        """q(z1 | x, z2): (mean, log_var), each [B, z1_dim]."""
        h = self.q_z1_joint(torch.cat((self.q_z1_x_net(x), self.q_z1_z2_net(z2)), 1))
        return self.q_z1_head(h)

    def p_z1(self, z2: Tensor) -> tuple[Tensor, Tensor]:
        """p(z1 | z2): (mean, log_var), each [B, z1_dim]."""
        return self.p_z1_head(self.p_z1_net(z2))

    def posterior_sample(self, x: Tensor) -> PosteriorSample:
        self.check_input(x)
        mu2, log_var2 = self.q_z2_head(self.q_z2_net(x))
        z2 = reparameterize(mu2, log_var2)
        mu1, log_var1 = self.q_z1(x, z2)
        z1 = reparameterize(mu1, log_var1)
        p_mu1, p_log_var1 = self.p_z1(z2)
        ratio = log_normal_diag(z1, p_mu1, p_log_var1) - log_normal_diag(z1, mu1, log_var1)
        return PosteriorSample(z=z2, mu=mu2, log_var=log_var2, log_q_z=log_normal_diag(z2, mu2, log_var2),
                               log_px=self.decoder.log_prob(x, z1, z2), log_ratio_lower=ratio)

    def decode(self, z: Tensor) -> Tensor:
        """z2 [B, latent_dim] -> image [B, D]; z1 is drawn from p(z1 | z2)."""
        self.check_latents(z)
        z1 = reparameterize(*self.p_z1(z))
        return self.decoder.generate(z1, z)
