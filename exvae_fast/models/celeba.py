"""The CelebA VAE (supplement L.1 e; the authors' sajadn/Exemplar-VAE models/celebA.py at
commit e312725, default options divide_size=1, less_upsample=False)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..distributions import check_num_bits, log_discretized_logistic, log_normal_diag
from ..priors.base import Prior
from .base import LatentVariableModel, PosteriorSample, reparameterize
from .layers import GaussianHead, he_init_

WIDTHS = (128, 256, 512, 1024)
"""Channels of the four encoder stages (reversed in the decoder)."""


def _conv_bn_elu(in_channels: int, out_channels: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 5, stride, 2), nn.BatchNorm2d(out_channels), nn.ELU()]


class CelebAVAE(LatentVariableModel):
    """One stochastic layer (d = 128) over 64 x 64 colour images, discretised logistic p(x | z).

    Encoder: four 5x5 stride-2 convolutions (3 -> 128 -> 256 -> 512 -> 1024 channels, 64 -> 4
    pixels), each followed by BatchNorm + ELU, flattened to 1024 * 4 * 4; mu and log_var are
    Linear maps of it (unbounded, as in the authors' code). Decoder: Linear(d, 1024 * 4 * 4) +
    BatchNorm1d + ELU, reshaped to (1024, 4, 4); three stages of nearest x2 upsampling + 5x5
    convolution (1024 -> 512 -> 256 -> 128) + BatchNorm + ELU; a last x2 upsampling and a 5x5
    convolution to C channels + Sigmoid give the logistic means. The log-scale is one learned
    scalar shared by all pixels (initialised to 0). BatchNorm follows the caller's train/eval
    mode; in training mode the decoder needs batches of at least 2. H and W must be multiples
    of 16.
    """

    def __init__(self, prior: Prior, input_shape: tuple[int, int, int] = (3, 64, 64), latent_dim: int = 128,
                 num_bits: int = 8) -> None:
        super().__init__(prior)
        self.configure(input_shape, latent_dim, "logistic")
        self.num_bits = check_num_bits(num_bits)
        c, h, w = self.input_shape
        if h % 16 or w % 16:
            raise ValueError(f"input_shape: H and W must be multiples of 16, got {h} x {w}")
        bottom = (WIDTHS[-1], h // 16, w // 16)
        features = WIDTHS[-1] * (h // 16) * (w // 16)
        encoder: list[nn.Module] = [nn.Unflatten(1, self.input_shape)]
        for cin, cout in zip((c,) + WIDTHS[:-1], WIDTHS):
            encoder += _conv_bn_elu(cin, cout, 2)
        self.encoder = nn.Sequential(*encoder, nn.Flatten())
        self.q_z_head = GaussianHead(features, latent_dim, log_var_bounds=None)
        decoder: list[nn.Module] = [nn.Linear(latent_dim, features), nn.BatchNorm1d(features), nn.ELU(),
                                    nn.Unflatten(1, bottom)]
        for cin, cout in zip(WIDTHS[:0:-1], WIDTHS[-2::-1]):
            decoder += [nn.Upsample(scale_factor=2), *_conv_bn_elu(cin, cout, 1)]
        self.decoder = nn.Sequential(*decoder, nn.Upsample(scale_factor=2), nn.Conv2d(WIDTHS[0], c, 5, 1, 2),
                                     nn.Sigmoid(), nn.Flatten())
        self.log_scale = nn.Parameter(torch.zeros(1))
        he_init_(self, exclude=prior)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x)
        return self.q_z_head(self.encoder(x))

    def posterior_sample(self, x: Tensor) -> PosteriorSample:
        self.check_input(x)
        mu, log_var = self.q_z_head(self.encoder(x))
        z = reparameterize(mu, log_var)
        log_px = log_discretized_logistic(x, self.decoder(z), self.log_scale, self.num_bits)
        return PosteriorSample(z=z, mu=mu, log_var=log_var, log_q_z=log_normal_diag(z, mu, log_var),
                               log_px=log_px, log_ratio_lower=torch.zeros_like(log_px))

    def decode(self, z: Tensor) -> Tensor:
        """z [B, d] -> the logistic means [B, D] in (0, 1)."""
        self.check_latents(z)
        return self.decoder(z)
