"""The two-level convolutional HVAE of the paper (supplement L.1 c; VampPrior
models/convHVAE_2level.py), and its encoders, which PixelHVAE shares."""
from __future__ import annotations

from torch import nn

from .layers import HIDDEN, GatedConv2d, GatedDense, LikelihoodHead
from .two_level import FeatureDecoder, TwoLevelDecoder, TwoLevelVAE

ENCODER_CHANNELS = 6
"""Channels of the last encoder map (7 x 7 x 6 = 294 features for 28 x 28 inputs)."""

DECODER_CHANNELS = 64


def _conv_encoder(input_shape: tuple[int, int, int], kernels: tuple[int, ...]) -> nn.Sequential:
    """x [B, C*H*W] -> [B, 6 * ceil(H/4) * ceil(W/4)]: five gated convolutions with
    channels 32, 32, 64, 64, 6, strides 1, 2, 1, 2, 1, 'same' padding, the given kernels."""
    c = input_shape[0]
    widths = (c, 32, 32, 64, 64, ENCODER_CHANNELS)
    layers = [GatedConv2d(widths[i], widths[i + 1], k, 2 if i in (1, 3) else 1, k // 2)
              for i, k in enumerate(kernels)]
    return nn.Sequential(nn.Unflatten(1, input_shape), *layers, nn.Flatten())


def conv_encoders(input_shape: tuple[int, int, int]) -> tuple[nn.Module, int, nn.Module, int]:
    """(enc_z2, F, enc_z1, F) of ConvHVAE / PixelHVAE: enc_z2 has kernels 7, 3, 5, 3, 3
    (paper: first layer 7, third 5), enc_z1 kernels 3 throughout; both end in F features
    (294 for 28 x 28, 210 for the 28 x 20 Frey faces)."""
    _, h, w = input_shape
    features = ENCODER_CHANNELS * ((h + 3) // 4) * ((w + 3) // 4)
    return (_conv_encoder(input_shape, (7, 3, 5, 3, 3)), features,
            _conv_encoder(input_shape, (3, 3, 3, 3, 3)), features)


class ConvHVAE(TwoLevelVAE):
    """Two stochastic layers with gated convolutional encoders and decoder.

    q(z2 | x): conv encoder (kernels 7, 3, 5, 3, 3) -> F -> heads.  q(z1 | x, z2): {conv
    encoder (kernels 3), GatedDense(z2, F)} -> GatedDense(2F, 300) -> heads.  p(z1 | z2):
    GatedDense z2-300-300 -> heads.  p(x | z1, z2): {GatedDense(z1, 300), GatedDense(z2, 300)}
    -> GatedDense(600, D) reshaped to (C, H, W) -> 4 gated 3x3 convolutions with 64 channels ->
    1x1 convolution to C channels + Sigmoid (and a 1x1 convolution + Hardtanh(-4.5, 0)
    log-scale for "logistic").
    """

    def _make_encoders(self) -> tuple[nn.Module, int, nn.Module, int]:
        return conv_encoders(self.input_shape)

    def _make_decoder(self) -> TwoLevelDecoder:
        c = self.input_shape[0]
        n = DECODER_CHANNELS
        joint = nn.Sequential(
            GatedDense(2 * HIDDEN, self.input_dim), nn.Unflatten(1, self.input_shape),
            GatedConv2d(c, n, 3, 1, 1), GatedConv2d(n, n, 3, 1, 1),
            GatedConv2d(n, n, 3, 1, 1), GatedConv2d(n, n, 3, 1, 1))
        head = LikelihoodHead(lambda: nn.Conv2d(n, c, 1), self.likelihood, self.num_bits)
        return FeatureDecoder(self.z1_dim, self.latent_dim, joint, head)
