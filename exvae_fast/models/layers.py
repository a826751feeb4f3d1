"""Building blocks of the models: gated layers (Dauphin et al., 2017; the paper's activation
"throughout"), masked convolutions and causal self-attention for the autoregressive decoder,
the Gaussian and likelihood output heads, and He initialisation as in the VampPrior code.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributions import (check_num_bits, log_bernoulli, log_discretized_logistic,
                             sample_discretized_logistic)
from ..priors.base import check_count

HIDDEN = 300
"""Width of every fully connected hidden layer (paper section L.1, VampPrior code)."""

LOG_VAR_BOUNDS = (-6.0, 2.0)
"""Hardtanh range of the Gaussian log-variances (VampPrior models/*.py)."""

LOG_SCALE_BOUNDS = (-4.5, 0.0)
"""Hardtanh range of the grey-scale logistic log-scales (VampPrior p_x_logvar)."""


class _Gated(nn.Module):
    """h(x) * sigmoid(g(x)) over two parallel branches with identical shapes."""

    def __init__(self, h: nn.Module, g: nn.Module) -> None:
        super().__init__()
        self.h = h
        self.g = g

    def forward(self, x: Tensor) -> Tensor:
        return self.h(x) * torch.sigmoid(self.g(x))


class GatedDense(_Gated):
    """Gated fully connected layer: [..., in_features] -> [..., out_features]."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(nn.Linear(in_features, out_features), nn.Linear(in_features, out_features))


class GatedConv2d(_Gated):
    """Gated convolution: [B, in, H, W] -> [B, out, H', W'] (nn.Conv2d geometry)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0) -> None:
        super().__init__(nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding),
                         nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding))


class MaskedConv2d(nn.Conv2d):
    """PixelCNN masked convolution, stride 1, 'same' padding: [B, in, H, W] -> [B, out, H, W].

    In raster order, output position i sees input positions j < i (mask "A") or j <= i
    (mask "B") within the kernel. Only the first `masked_in_channels` input channels
    (default: all) are masked; the rest are conditioning maps that depend on the latents
    alone, so every position of them may be seen without breaking causality.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, mask_type: str,
                 masked_in_channels: int | None = None) -> None:
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type: expected 'A' or 'B', got {mask_type!r}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size: expected an odd int, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        m = in_channels if masked_in_channels is None else masked_in_channels
        centre = kernel_size // 2
        mask = torch.ones_like(self.weight)
        mask[:, :m, centre, centre + (mask_type == "B"):] = 0.0
        mask[:, :m, centre + 1:, :] = 0.0
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)


class GatedMaskedConv2d(_Gated):
    """Gated pair of `MaskedConv2d` with the same mask: [B, in, H, W] -> [B, out, H, W]."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, mask_type: str,
                 masked_in_channels: int | None = None) -> None:
        super().__init__(
            MaskedConv2d(in_channels, out_channels, kernel_size, mask_type, masked_in_channels),
            MaskedConv2d(in_channels, out_channels, kernel_size, mask_type, masked_in_channels))


class CausalSelfAttention(nn.Module):
    """Residual multi-head attention over the H*W raster positions: position i attends to
    positions j < i strictly (PixelSNAIL's mask).

    Queries see the features h_i and the (row, column) coordinates of i; keys and values see
    h_j, the pixels x_j and the coordinates of j. Because j < i strictly, the raw pixels may
    enter the keys and values, so every position has a direct view of every earlier pixel
    (no PixelCNN blind spot). h must be strictly causal (h_i a function of pixels < i, as
    after a mask-"A" convolution and mask-"B" ones), since the residual and the query carry
    h_i to output i. Position 0 has no past: its output is h_0.
    """

    def __init__(self, channels: int, pixel_channels: int, num_heads: int = 4) -> None:
        super().__init__()
        check_count(channels, "channels")
        check_count(pixel_channels, "pixel_channels")
        check_count(num_heads, "num_heads")
        if channels % num_heads:
            raise ValueError(f"num_heads: {num_heads} does not divide channels={channels}")
        self.num_heads = num_heads
        self.query = nn.Linear(channels + 2, channels)
        self.key_value = nn.Linear(channels + pixel_channels + 2, 2 * channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, h: Tensor, x: Tensor) -> Tensor:
        """h [B, C, H, W] features, x [B, pixel_channels, H, W] pixels -> [B, C, H, W]."""
        b, c, height, width = h.shape
        n, heads = height * width, self.num_heads
        rows = torch.linspace(-0.5, 0.5, height, device=h.device, dtype=h.dtype)
        cols = torch.linspace(-0.5, 0.5, width, device=h.device, dtype=h.dtype)
        coords = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), -1).reshape(1, n, 2).expand(b, n, 2)
        feats = h.flatten(2).transpose(1, 2)                                              # [B, N, C]
        q = self.query(torch.cat([feats, coords], -1)).view(b, n, heads, -1).transpose(1, 2)
        kv = self.key_value(torch.cat([feats, x.flatten(2).transpose(1, 2), coords], -1))
        k, v = kv.view(b, n, 2, heads, -1).permute(2, 0, 3, 1, 4)
        # j < i; row 0 has no allowed key, so it takes j = 0 and its result is discarded.
        allowed = torch.ones(n, n, dtype=torch.bool, device=h.device).tril(-1)
        allowed[0, 0] = True
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)                   # [B, heads, N, C/heads]
        att = self.out(att.transpose(1, 2).reshape(b, n, c))
        att = torch.cat([torch.zeros_like(att[:, :1]), att[:, 1:]], 1)
        return h + att.transpose(1, 2).reshape(b, c, height, width)


class GaussianHead(nn.Module):
    """Features [B, F] -> (mean [B, d], log_var [B, d]): two linear maps, the log-variance
    squashed by Hardtanh(*log_var_bounds) unless the bounds are None."""

    def __init__(self, in_features: int, out_features: int,
                 log_var_bounds: tuple[float, float] | None = LOG_VAR_BOUNDS) -> None:
        super().__init__()
        self.mean = nn.Linear(in_features, out_features)
        self.log_var = nn.Linear(in_features, out_features)
        self.log_var_bounds = log_var_bounds

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        log_var = self.log_var(h)
        if self.log_var_bounds is not None:
            log_var = F.hardtanh(log_var, *self.log_var_bounds)
        return self.mean(h), log_var


class LikelihoodHead(nn.Module):
    """Decoder features -> parameters of p(x | .), each flattened to [B, D].

    `make_layer()` builds a layer mapping the features to D values (a Linear to D, or a
    convolution to C channels). "bernoulli": probs = sigmoid(layer(h)), log_scale None.
    "logistic": mean = sigmoid(layer(h)) and log_scale = Hardtanh(-4.5, 0)(layer'(h)) of a
    discretised logistic over 2^num_bits bins (VampPrior's "gray" input type).
    """

    def __init__(self, make_layer: Callable[[], nn.Module], likelihood: str, num_bits: int = 8) -> None:
        super().__init__()
        self.likelihood = likelihood
        self.num_bits = check_num_bits(num_bits)
        self.mean = make_layer()
        self.log_scale = make_layer() if likelihood == "logistic" else None

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor | None]:
        mean = torch.sigmoid(self.mean(h)).flatten(1)
        if self.log_scale is None:
            return mean, None
        return mean, F.hardtanh(self.log_scale(h), *LOG_SCALE_BOUNDS).flatten(1)

    def log_prob(self, x: Tensor, params: tuple[Tensor, Tensor | None]) -> Tensor:
        """log p(x | params) for x [B, D] in [0, 1]: [B] nats."""
        mean, log_scale = params
        if log_scale is None:
            return log_bernoulli(x, mean)
        return log_discretized_logistic(x, mean, log_scale, self.num_bits)

    def sample(self, params: tuple[Tensor, Tensor | None]) -> Tensor:
        """One draw of every pixel given params: [B, D] (binary, or bin centres in [0, 1])."""
        mean, log_scale = params
        if log_scale is None:
            return torch.bernoulli(mean)
        return sample_discretized_logistic(mean, log_scale, self.num_bits)


def he_init_(root: nn.Module, exclude: nn.Module | None = None) -> None:
    """He initialisation of every nn.Linear under root, except those under `exclude`
    (the prior, whose own init must survive): weight ~ N(0, 2 / fan_in), bias unchanged
    (VampPrior utils/nn.py he_init). Convolutions keep PyTorch's default."""
    skipped = set() if exclude is None else {id(m) for m in exclude.modules()}
    with torch.no_grad():
        for m in root.modules():
            if isinstance(m, nn.Linear) and id(m) not in skipped:
                m.weight.normal_(0.0, math.sqrt(2.0 / m.in_features))
