"""The two-level HVAE with an autoregressive decoder (supplement L.1 d, "PixelSNAIL HVAE";
encoders and conditioning as in VampPrior models/PixelHVAE_2level.py)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .conv_hvae import conv_encoders
from .layers import CausalSelfAttention, GatedDense, GatedMaskedConv2d, LikelihoodHead, MaskedConv2d
from .two_level import TwoLevelDecoder, TwoLevelVAE

AR_CHANNELS = 64
AR_LAYERS = 4
AR_HEADS = 4


class PixelDecoder(TwoLevelDecoder):
    """p(x | z1, z2) = prod_i p(x_i | x_<i, z1, z2) over raster order, for one-channel images.

    A gated-PixelCNN-with-causal-attention stand-in for the paper's PixelSNAIL:
    z1 and z2 each go through GatedDense to D and are reshaped to a (1, H, W) map; these two
    maps are concatenated with x and passed through a mask-"A" gated 3x3 convolution (x
    masked, the latent maps seen in full), three mask-"B" gated 3x3 convolutions (64
    channels each), a residual causal self-attention block over the H*W positions (i attends
    to j < i; keys and values also see the pixels x_j, so every earlier pixel is in view),
    and a mask-"B" 3x3 convolution to the output (probs, or mean and log-scale for
    "logistic"). Output i depends on x_<i only.
    """

    def __init__(self, input_shape: tuple[int, int, int], z1_dim: int, z2_dim: int, likelihood: str,
                 num_bits: int) -> None:
        super().__init__()
        c, h, w = input_shape
        if c != 1:
            raise ValueError(f"input_shape: the autoregressive decoder models one channel, got {c}")
        self.input_shape = input_shape
        d = c * h * w
        self.z1_net = GatedDense(z1_dim, d)
        self.z2_net = GatedDense(z2_dim, d)
        n = AR_CHANNELS
        self.convs = nn.Sequential(
            GatedMaskedConv2d(3 * c, n, 3, "A", masked_in_channels=c),
            *(GatedMaskedConv2d(n, n, 3, "B") for _ in range(AR_LAYERS - 1)))
        self.attention = CausalSelfAttention(n, c, AR_HEADS)
        self.head = LikelihoodHead(lambda: MaskedConv2d(n, c, 3, "B"), likelihood, num_bits)

    def condition(self, z1: Tensor, z2: Tensor) -> Tensor:
        """Latent maps [B, 2C, H, W], fixed while pixels are generated."""
        return torch.cat((self.z1_net(z1), self.z2_net(z2)), 1).view(-1, 2 * self.input_shape[0],
                                                                    *self.input_shape[1:])

    def params(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor | None]:
        """Per-pixel (mean [B, D], log_scale [B, D] or None) given x [B, D] and the latent maps."""
        image = x.view(-1, *self.input_shape)
        return self.head(self.attention(self.convs(torch.cat((image, cond), 1)), image))

    def log_prob(self, x: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
        return self.head.log_prob(x, self.params(x, self.condition(z1, z2)))

    @torch.no_grad()
    def generate(self, z1: Tensor, z2: Tensor) -> Tensor:
        """Ancestral sampling, one pixel per pass (D passes): [B, D] binary for "bernoulli",
        bin centres for "logistic". No gradients."""
        cond = self.condition(z1, z2)
        x = cond.new_zeros(cond.shape[0], math.prod(self.input_shape))
        for i in range(x.shape[1]):
            x[:, i] = self.head.sample(self.params(x, cond))[:, i]
        return x


class PixelHVAE(TwoLevelVAE):
    """Two stochastic layers: the ConvHVAE encoders and p(z1 | z2), and a `PixelDecoder`.

    `decode(z2)` draws z1 ~ p(z1 | z2) and then samples the image pixel by pixel (D sequential
    decoder passes, no gradients), returning binary images for "bernoulli". Inputs must have
    one channel.
    """

    def _make_encoders(self) -> tuple[nn.Module, int, nn.Module, int]:
        return conv_encoders(self.input_shape)

    def _make_decoder(self) -> TwoLevelDecoder:
        return PixelDecoder(self.input_shape, self.z1_dim, self.latent_dim, self.likelihood, self.num_bits)
