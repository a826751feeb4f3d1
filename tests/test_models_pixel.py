"""The autoregressive pieces: masks, causal attention, PixelHVAE causality and sampling."""
from __future__ import annotations

import pytest
import torch

from exvae_fast.models import PixelHVAE
from exvae_fast.models.layers import CausalSelfAttention, MaskedConv2d
from exvae_fast.priors.standard import StandardPrior


@pytest.mark.parametrize("mask_type,centre", [("A", 0.0), ("B", 1.0)])
def test_masked_conv_masks_only_the_image_channels(mask_type, centre):
    conv = MaskedConv2d(3, 4, 3, mask_type, masked_in_channels=1)
    want = torch.tensor([[1.0, 1.0, 1.0], [1.0, centre, 0.0], [0.0, 0.0, 0.0]])
    assert torch.equal(conv.mask[:, 0], want.expand(4, 3, 3))
    assert (conv.mask[:, 1:] == 1).all()
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(conv(x), torch.nn.functional.conv2d(x, conv.weight * conv.mask, conv.bias, padding=1))


def test_causal_self_attention_sees_strictly_earlier_positions():
    torch.manual_seed(0)
    att = CausalSelfAttention(8, 1, num_heads=2)
    h, x = torch.randn(1, 8, 5, 6), torch.rand(1, 1, 5, 6).round()
    base = att(h, x).flatten(2)
    torch.testing.assert_close(base[..., 0], h.flatten(2)[..., 0], rtol=0, atol=0)  # no past at 0
    i = 13
    h_future, x_future = h.clone(), x.clone()
    h_future.view(1, 8, -1)[..., i + 1:] += torch.randn(8, 30 - i - 1)  # features after i
    x_future.view(1, 1, -1)[..., i:] = 1.0 - x_future.view(1, 1, -1)[..., i:]  # pixels from i on
    torch.testing.assert_close(att(h_future, x_future).flatten(2)[..., :i + 1], base[..., :i + 1], rtol=0, atol=1e-6)
    for j in (0, i - 1):  # any earlier pixel is in view
        x_past = x.clone()
        x_past.view(-1)[j] = 1.0 - x_past.view(-1)[j]
        assert (att(h, x_past).flatten(2)[..., i] - base[..., i]).abs().max() > 1e-4


@pytest.mark.parametrize("likelihood", ["bernoulli", "logistic"])
def test_pixel_decoder_is_autoregressive(likelihood):
    """Output i must not change when pixels >= i change, and must change with pixel i - 1."""
    torch.manual_seed(0)
    dec = PixelHVAE(StandardPrior(40), likelihood=likelihood).decoder
    positions = [0, 1, 27, 28, 29, 405, 782, 783]
    x = torch.rand(1, 784).round().expand(len(positions), -1)
    future, previous = x.clone(), x.clone()
    for row, i in enumerate(positions):
        future[row, i:] = 1.0 - future[row, i:]    # every pixel >= i flipped
        previous[row, i] = 1.0 - previous[row, i]  # only pixel i flipped
    with torch.no_grad():
        cond = dec.condition(torch.randn(1, 40), torch.randn(1, 40)).expand(len(positions), -1, -1, -1)
        base, fut, prev = (dec.params(v, cond) for v in (x, future, previous))
    for k in range(2 if likelihood == "logistic" else 1):
        for row, i in enumerate(positions):
            torch.testing.assert_close(fut[k][row, :i + 1], base[k][row, :i + 1], rtol=0, atol=1e-6)
            if i + 1 < 784:
                assert (prev[k][row, i + 1] - base[k][row, i + 1]).abs() > 1e-6
    # Pixel 0 reaches the last pixel, far outside the convolutions' field: through attention.
    assert (prev[0][0, 783] - base[0][0, 783]).abs() > 1e-6


def test_pixel_sampling_follows_the_conditionals():
    """decode samples pixel by pixel: frequencies of x_0 and of x_1 given x_0 match the model."""
    torch.manual_seed(2)
    model = PixelHVAE(StandardPrior(4), (1, 2, 2), latent_dim=4, z1_dim=4)
    dec, n = model.decoder, 3000
    with torch.no_grad():  # sharper conditionals than at init, so that x_1 visibly depends on x_0
        for p in dec.parameters():
            p.mul_(3.0)
    z1, z2 = torch.randn(1, 4).expand(n, -1), torch.randn(1, 4).expand(n, -1)
    x = dec.generate(z1, z2)
    assert x.shape == (n, 4) and set(x.unique().tolist()) <= {0.0, 1.0}
    cond = dec.condition(z1[:2], z2[:2])
    with torch.no_grad():
        p0 = dec.params(torch.zeros(2, 4), cond)[0][0, 0]
        p1 = dec.params(torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]), cond)[0][:, 1]
    assert abs(p1[1] - p1[0]) > 0.3  # x_1 really depends on x_0 here
    assert x[:, 0].mean().item() == pytest.approx(p0.item(), abs=0.04)
    for a in (0, 1):
        rows = x[:, 0] == a
        assert rows.sum() > 500
        assert x[rows, 1].mean().item() == pytest.approx(p1[a].item(), abs=0.05)


@pytest.mark.parametrize("train", [False, True])
def test_pixel_decode_shapes_values_and_mode(train):
    torch.manual_seed(0)
    model = PixelHVAE(StandardPrior(6), (1, 8, 8), latent_dim=6, z1_dim=5, likelihood="logistic", num_bits=3)
    model.train(train)
    out = model.decode(torch.randn(3, 6))
    assert out.shape == (3, 64) and not out.requires_grad
    torch.testing.assert_close(out * 7, torch.round(out * 7))
    assert ((out >= 0) & (out <= 1)).all()
    assert all(m.training == train for m in model.modules())
    with pytest.raises(ValueError, match=r"\[B, 6\]"):
        model.decode(torch.randn(3, 5))
