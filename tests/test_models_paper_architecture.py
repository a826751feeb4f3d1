"""The paper's architectures pinned down (supplement L.1, VampPrior's models/*.py): layer
shapes, parameter counts, log-variance and log-scale bounds, the two-level conditioning,
the prior on the top layer only, and the causality of the autoregressive decoder."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from exvae_fast.models import HVAE, VAE, CelebAVAE, ConvHVAE, PixelHVAE
from exvae_fast.models.layers import GaussianHead, LikelihoodHead
from exvae_fast.priors.standard import StandardPrior


def _linear(i: int, o: int) -> int:
    return i * o + o


def _gated_linear(i: int, o: int) -> int:
    return 2 * _linear(i, o)


def _gated_conv(i: int, o: int, k: int) -> int:
    return 2 * (i * o * k * k + o)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# Parameter counts derived from the supplement / VampPrior code for 28 x 28 x 1, d_z1 = d_z2 = 40.
_Q_Z1_MLP = _gated_linear(784, 300) + _gated_linear(40, 300) + _gated_linear(600, 300) + 2 * _linear(300, 40)
_P_Z1 = _gated_linear(40, 300) + _gated_linear(300, 300) + 2 * _linear(300, 40)
_CONV_Z2 = (_gated_conv(1, 32, 7) + _gated_conv(32, 32, 3) + _gated_conv(32, 64, 5) + _gated_conv(64, 64, 3)
            + _gated_conv(64, 6, 3))
_CONV_Z1 = (_gated_conv(1, 32, 3) + _gated_conv(32, 32, 3) + _gated_conv(32, 64, 3) + _gated_conv(64, 64, 3)
            + _gated_conv(64, 6, 3))
_CONV_ENCODERS = (_CONV_Z2 + 2 * _linear(294, 40) + _CONV_Z1 + _gated_linear(40, 294) + _gated_linear(588, 300)
                  + 2 * _linear(300, 40))


def test_hvae_parameter_count_matches_the_supplement():
    q_z2 = _gated_linear(784, 300) + _gated_linear(300, 300) + 2 * _linear(300, 40)
    p_x = 2 * _gated_linear(40, 300) + _gated_linear(600, 300) + _linear(300, 784)
    assert _count(HVAE(StandardPrior(40))) == q_z2 + _Q_Z1_MLP + _P_Z1 + p_x == 2_431_024
    logistic = HVAE(StandardPrior(40), likelihood="logistic")
    assert _count(logistic) == q_z2 + _Q_Z1_MLP + _P_Z1 + p_x + _linear(300, 784)


def test_conv_hvae_parameter_count_matches_the_supplement():
    p_x = (2 * _gated_linear(40, 300) + _gated_linear(600, 784) + _gated_conv(1, 64, 3) + 3 * _gated_conv(64, 64, 3)
           + (64 * 1 + 1))  # last layer: 1 x 1 convolution to one channel
    assert _count(ConvHVAE(StandardPrior(40))) == _CONV_ENCODERS + _P_Z1 + p_x == 2_210_861


def test_pixel_hvae_shares_the_conv_encoders_and_p_z1():
    model = PixelHVAE(StandardPrior(40))
    assert _count(model) - _count(model.decoder) == _CONV_ENCODERS + _P_Z1
    # MLPDecoder_x = {MLP[d_z1 - 784], MLP[d_z2 - 784], x} (gated)
    assert _count(model.decoder.z1_net) == _count(model.decoder.z2_net) == _gated_linear(40, 784)


@pytest.mark.parametrize("net,shapes", [
    ("q_z2_net", [(32, 28, 28), (32, 14, 14), (64, 14, 14), (64, 7, 7), (6, 7, 7)]),
    ("q_z1_x_net", [(32, 28, 28), (32, 14, 14), (64, 14, 14), (64, 7, 7), (6, 7, 7)]),
])
def test_conv_encoder_feature_maps(net, shapes):
    """VampPrior convHVAE_2level.py: strides 1, 2, 1, 2, 1 with 'same' padding, 7 x 7 x 6 out.
    (The supplement's "32 x 32 x 32 - 12 x 12 x 32" is a typo: 294 = 7 * 7 * 6 needs these.)"""
    model = ConvHVAE(StandardPrior(40))
    seen: list[tuple[int, ...]] = []
    layers = [m for m in getattr(model, net) if not isinstance(m, (nn.Flatten, nn.Unflatten))]
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape[1:]))) for m in layers]
    getattr(model, net)(torch.rand(2, 784))
    for h in hooks:
        h.remove()
    assert seen == shapes


def test_conv_hvae_decoder_geometry():
    """p(x | z1, z2): GatedDense(600, 784) -> 28 x 28 x 1 -> four gated 3 x 3 (64) -> 1 x 1 conv."""
    dec = ConvHVAE(StandardPrior(40)).decoder
    convs = [(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding)
             for m in dec.modules() if isinstance(m, nn.Conv2d)]
    gated = [(1, 64), (64, 64), (64, 64), (64, 64)]
    assert convs[:8] == [(i, o, (3, 3), (1, 1), (1, 1)) for i, o in gated for _ in range(2)]
    assert convs[8:] == [(64, 1, (1, 1), (1, 1), (0, 0))]
    assert (dec.joint[0].h.in_features, dec.joint[0].h.out_features) == (600, 784)


def test_celeba_parameter_count_matches_the_authors_model():
    """Supplement L.1 e / sajadn/Exemplar-VAE models/celebA.py: 5 x 5 convolutions with
    BatchNorm + ELU, 3-128-256-512-1024 down to 4 x 4, mirrored decoder, d = 128, one
    shared logistic log-scale."""
    def conv5(i: int, o: int) -> int:
        return i * o * 25 + o

    widths = [3, 128, 256, 512, 1024]
    encoder = sum(conv5(i, o) + 2 * o for i, o in zip(widths, widths[1:])) + 2 * _linear(1024 * 16, 128)
    decoder = (_linear(128, 1024 * 16) + 2 * 1024 * 16
               + sum(conv5(i, o) + 2 * o for i, o in [(1024, 512), (512, 256), (256, 128)]) + conv5(128, 3))
    model = CelebAVAE(StandardPrior(128))
    assert _count(model) == encoder + decoder + 1 == 40_774_916
    assert _heads(model)[0].log_var_bounds is None  # unbounded, as in the authors' code


def _heads(model: nn.Module) -> list[GaussianHead]:
    return [m for m in model.modules() if isinstance(m, GaussianHead)]


@pytest.mark.parametrize("cls", [VAE, HVAE, ConvHVAE, PixelHVAE])
def test_every_gaussian_log_variance_is_hardtanh_minus6_2(cls):
    """VampPrior: q(z|x), q(z1|x,z2) and p(z1|z2) log-variances pass Hardtanh(-6, 2)."""
    torch.manual_seed(0)
    model = cls(StandardPrior(40))
    heads = _heads(model)
    assert len(heads) == (1 if cls is VAE else 3)
    for head in heads:
        h = 50.0 * torch.randn(5, head.mean.in_features)
        mean, log_var = head(h)
        assert log_var.min() >= -6.0 and log_var.max() <= 2.0
        assert (log_var == -6.0).any() and (log_var == 2.0).any()  # really clamped, not squashed
        torch.testing.assert_close(log_var, torch.clamp(head.log_var(h), -6.0, 2.0))
        torch.testing.assert_close(mean, head.mean(h))  # the mean is unbounded


@pytest.mark.parametrize("cls", [VAE, HVAE, ConvHVAE, PixelHVAE])
def test_logistic_head_mean_is_sigmoid_and_log_scale_in_minus4_5_0(cls):
    model = cls(StandardPrior(40), likelihood="logistic")
    head = next(m for m in model.modules() if isinstance(m, LikelihoodHead))
    assert head.likelihood == "logistic" and head.num_bits == 8
    torch.manual_seed(0)
    if isinstance(head.mean, nn.Linear):
        h = 30.0 * torch.randn(3, head.mean.in_features)
    else:
        h = 30.0 * torch.randn(3, head.mean.in_channels, 28, 28)
    mean, log_scale = head(h)
    torch.testing.assert_close(mean, torch.sigmoid(head.mean(h)).flatten(1))
    torch.testing.assert_close(log_scale, torch.clamp(head.log_scale(h), -4.5, 0.0).flatten(1))
    assert (log_scale == -4.5).any() and (log_scale == 0.0).any()


def _differ(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Every row changed (at init the pixel decoder's response to z is small but present)."""
    return bool(((a - b).abs().reshape(a.shape[0], -1).amax(1) > 0).all())


@pytest.mark.parametrize("cls", [HVAE, ConvHVAE, PixelHVAE])
def test_two_level_conditioning(cls):
    """q(z1 | x, z2) sees x and z2; p(z1 | z2) sees z2; p(x | z1, z2) sees z1 and z2."""
    torch.manual_seed(0)
    model = cls(StandardPrior(40), (1, 12, 12), z1_dim=30)  # small image: the conditioning is what counts
    x, x2 = torch.rand(2, 144).round(), torch.rand(2, 144).round()
    z2, z2b, z1, z1b = torch.randn(2, 40), torch.randn(2, 40), torch.randn(2, 30), torch.randn(2, 30)
    with torch.no_grad():
        base = model.q_z1(x, z2)
        assert all(t.shape == (2, 30) for t in base)
        assert _differ(model.q_z1(x2, z2)[0], base[0]) and _differ(model.q_z1(x, z2b)[0], base[0])
        assert _differ(model.p_z1(z2b)[0], model.p_z1(z2)[0])
        lp = model.decoder.log_prob(x, z1, z2)
        assert lp.shape == (2,)
        assert _differ(model.decoder.log_prob(x, z1b, z2), lp) and _differ(model.decoder.log_prob(x, z1, z2b), lp)


class _SpyPrior(StandardPrior):
    """Records the latents the model hands to its prior."""

    def log_prob(self, z, **kwargs):
        self.seen = z
        return super().log_prob(z, **kwargs)


@pytest.mark.parametrize("cls", [HVAE, ConvHVAE])
def test_prior_sees_the_top_layer_only(cls):
    """r is over z2 (d = 40); z1 (here 30) enters through log p(z1 | z2) - log q(z1 | x, z2)."""
    model = cls(_SpyPrior(40), (1, 12, 12), z1_dim=30)
    x = torch.rand(3, 144).round()
    torch.manual_seed(5)
    s = model.posterior_sample(x)
    torch.manual_seed(5)
    terms = model(x)
    torch.testing.assert_close(model.prior.seen, s.z)
    log_r = StandardPrior(40).log_prob(s.z)
    torch.testing.assert_close(terms.kl, s.log_q_z - s.log_ratio_lower - log_r)
    torch.testing.assert_close(terms.recon, s.log_px)


@pytest.mark.parametrize("likelihood", ["bernoulli", "logistic"])
def test_pixel_decoder_perturbing_pixel_i_leaves_outputs_up_to_i_unchanged(likelihood):
    """Every pixel i of a 6 x 7 image: changing x_i alone leaves outputs 0..i exactly as they
    were, and changes every output after i (attention gives each one all earlier pixels)."""
    torch.manual_seed(0)
    dec = PixelHVAE(StandardPrior(4), (1, 6, 7), latent_dim=4, z1_dim=3, likelihood=likelihood).decoder
    d = 42
    x = torch.rand(1, d).round() if likelihood == "bernoulli" else torch.round(torch.rand(1, d) * 255) / 255
    batch = x.repeat(d + 1, 1)
    idx = torch.arange(d)
    batch[idx + 1, idx] = 1.0 - batch[idx + 1, idx] if likelihood == "bernoulli" else (batch[idx + 1, idx] + 0.5) % 1
    # Row r of the perturbed batch is compared with row r of a batch of the unperturbed image:
    # a GEMM may round a row differently by its position in the batch (tail blocks), never by
    # what the other rows hold, so only the content of row r differs between the two.
    with torch.no_grad():
        cond = dec.condition(torch.randn(1, 3), torch.randn(1, 4)).expand(d + 1, -1, -1, -1)
        params = [p for p in dec.params(batch, cond) if p is not None]
        plain = [p for p in dec.params(x.repeat(d + 1, 1), cond) if p is not None]
    for k, (p, q) in enumerate(zip(params, plain)):
        diff = (p[1:] - q[1:]).abs()  # row i: pixel i perturbed
        past = torch.ones(d, d, dtype=torch.bool).tril()  # positions j <= i
        assert diff[past].max() == 0.0
        if k == 0:  # the mean / probs (the log-scale may sit on its Hardtanh bound)
            assert (diff[~past] > 0).all()


@pytest.mark.parametrize("cls", [VAE, HVAE, ConvHVAE, PixelHVAE])
def test_he_init_everywhere_but_convolutions_and_biases(cls):
    """VampPrior utils/nn.py he_init: every Linear weight ~ N(0, 2 / fan_in), whatever its
    width; biases and convolutions keep PyTorch's default uniform(+-1 / sqrt(fan_in))."""
    torch.manual_seed(0)
    model = cls(StandardPrior(40))
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            want = (2.0 / m.in_features) ** 0.5
            assert m.weight.std().item() == pytest.approx(want, rel=0.1), name
            assert m.bias.abs().max() <= m.in_features ** -0.5, name
        elif isinstance(m, nn.Conv2d):
            bound = (m.in_channels * m.kernel_size[0] * m.kernel_size[1]) ** -0.5
            assert m.weight.abs().max() <= bound and m.bias.abs().max() <= bound, name
