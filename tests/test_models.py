"""The paper's models: shapes, ELBO pieces, architecture, initialisation, validation, modes."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from exvae_fast.distributions import log_normal_diag
from exvae_fast.models import (VAE, HVAE, CelebAVAE, ConvHVAE, ELBOTerms, LatentVariableModel, PixelHVAE,
                               build_model)
from exvae_fast.priors.standard import StandardPrior

SETUPS = {  # name -> (input_shape, latent_dim, batch)
    "vae": ((1, 28, 28), 40, 3),
    "hvae": ((1, 28, 28), 40, 3),
    "convhvae": ((1, 28, 28), 40, 2),
    "pixelhvae": ((1, 28, 28), 40, 2),
    "celeba": ((3, 64, 64), 128, 2),
}
SMALL_CELEBA = (3, 16, 16)  # same layers, 1 x 1 bottleneck: keeps the many-call tests fast
CASES = [("vae", "bernoulli"), ("vae", "logistic"), ("hvae", "bernoulli"), ("hvae", "logistic"),
         ("convhvae", "bernoulli"), ("convhvae", "logistic"), ("pixelhvae", "bernoulli"),
         ("pixelhvae", "logistic"), ("celeba", "logistic")]
NAMES = list(SETUPS)
_CACHE: dict[tuple[str, str, bool], LatentVariableModel] = {}


def model_for(name: str, likelihood: str | None = None, full: bool = False) -> LatentVariableModel:
    """A shared model per (name, likelihood), seeded, on the CPU; CelebA at 16 x 16 unless full."""
    likelihood = likelihood or ("logistic" if name == "celeba" else "bernoulli")
    key = (name, likelihood, full)
    if key not in _CACHE:
        torch.manual_seed(0)
        shape, d, _ = SETUPS[name]
        shape = shape if full or name != "celeba" else SMALL_CELEBA
        _CACHE[key] = build_model(name, StandardPrior(d), shape, d, likelihood)
    return _CACHE[key]


def batch_for(model: LatentVariableModel, name: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(SETUPS[name][2], model.input_dim, generator=g)
    return x.round() if model.likelihood == "bernoulli" else torch.round(x * 255) / 255


@pytest.mark.parametrize("name,likelihood", CASES)
def test_shapes_and_finite_elbo(name, likelihood):
    model = model_for(name, likelihood, full=True)
    x = batch_for(model, name)
    b, d = x.shape[0], model.latent_dim
    mu, log_var = model.encode(x)
    assert mu.shape == log_var.shape == (b, d)
    s = model.posterior_sample(x)
    assert s.z.shape == s.mu.shape == s.log_var.shape == (b, d)
    for t in (s.log_q_z, s.log_px, s.log_ratio_lower):
        assert t.shape == (b,) and torch.isfinite(t).all()
    assert (s.log_px < 0).all()
    terms = model(x)
    assert isinstance(terms, ELBOTerms)
    assert terms.recon.shape == terms.kl.shape == terms.elbo.shape == (b,)
    assert torch.isfinite(terms.elbo).all()
    if name != "pixelhvae":  # sequential sampling is tested on small images in test_models_pixel
        out = model.decode(torch.randn(b, d))
        assert out.shape == (b, model.input_dim)
        assert ((out >= 0) & (out <= 1)).all()


@pytest.mark.parametrize("name", NAMES)
def test_posterior_sample_terms(name):
    model = model_for(name)
    s = model.posterior_sample(batch_for(model, name))
    torch.testing.assert_close(s.log_q_z, log_normal_diag(s.z, s.mu, s.log_var))
    if name in ("vae", "celeba"):
        assert (s.log_ratio_lower == 0).all()
    else:  # log p(z1 | z2) - log q(z1 | x, z2)
        assert torch.isfinite(s.log_ratio_lower).all() and (s.log_ratio_lower != 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_gradient_reaches_every_parameter(name):
    model = model_for(name)
    model.zero_grad(set_to_none=True)
    (-model(batch_for(model, name)).elbo.mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("train", [False, True])
def test_methods_keep_the_callers_mode(name, train):
    model = model_for(name)
    model.train(train)
    x = batch_for(model, name)
    model(x)
    model.encode(x)
    if name != "pixelhvae":
        model.decode(torch.randn(x.shape[0], model.latent_dim))
    assert all(m.training == train for m in model.modules())


def test_celeba_batchnorm_follows_the_callers_mode():
    model = model_for("celeba")
    x = batch_for(model, "celeba")
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    model.eval()
    before = bn.running_mean.clone()
    model(x)
    torch.testing.assert_close(bn.running_mean, before, rtol=0, atol=0)
    model.train()
    model(x)
    assert not torch.equal(bn.running_mean, before)


def test_vae_parameter_count_matches_the_architecture():
    def linear(i, o):
        return i * o + o

    d_x, h, d_z = 784, 300, 40
    encoder = 2 * linear(d_x, h) + 2 * linear(h, h) + 2 * linear(h, d_z)      # gated layers, mu, log_var
    decoder = 2 * linear(d_z, h) + 2 * linear(h, h) + linear(h, d_x)
    assert sum(p.numel() for p in VAE(StandardPrior(d_z)).parameters()) == encoder + decoder == 1_116_864
    logistic = VAE(StandardPrior(d_z), likelihood="logistic")
    assert sum(p.numel() for p in logistic.parameters()) == encoder + decoder + linear(h, d_x)


@pytest.mark.parametrize("shape,features", [((1, 28, 28), 294), ((1, 28, 20), 210)])
def test_conv_encoders_end_in_the_reference_feature_sizes(shape, features):
    model = ConvHVAE(StandardPrior(8), shape, latent_dim=8, z1_dim=6)
    assert model.q_z2_head.mean.in_features == features
    assert model.q_z1_joint.h.in_features == 2 * features
    kernels = [m.kernel_size[0] for m in model.q_z2_net.modules() if isinstance(m, nn.Conv2d)][::2]
    assert kernels == [7, 3, 5, 3, 3]
    out_kernels = [m.kernel_size[0] for m in model.decoder.modules() if isinstance(m, nn.Conv2d)]
    assert set(out_kernels[:-1]) == {3} and out_kernels[-1] == 1
    s = model.posterior_sample(torch.rand(2, math.prod(shape)).round())
    assert s.z.shape == (2, 8) and torch.isfinite(s.log_px).all()


class _LinearPrior(StandardPrior):
    """A standard prior that also owns a Linear layer, to see that models leave it alone."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        self.extra = nn.Linear(5, 5)
        nn.init.constant_(self.extra.weight, 0.25)


@pytest.mark.parametrize("cls", [VAE, HVAE, ConvHVAE, PixelHVAE])
def test_he_init_on_linear_layers_but_not_the_prior(cls):
    torch.manual_seed(0)
    model = cls(_LinearPrior(40))
    assert (model.prior.extra.weight == 0.25).all()
    weights = [m.weight for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.in_features >= 300]
    for w in weights:
        assert w.std().item() == pytest.approx(math.sqrt(2.0 / w.shape[1]), rel=0.06)


@pytest.mark.parametrize("name", NAMES)
def test_prior_dimension_must_match(name):
    shape, d, _ = SETUPS[name]
    with pytest.raises(ValueError, match="latent_dim"):
        build_model(name, StandardPrior(d + 1), shape, d, "logistic")


def test_build_model_classes_and_errors():
    expected = {"vae": VAE, "hvae": HVAE, "convhvae": ConvHVAE, "pixelhvae": PixelHVAE}
    for name, cls in expected.items():
        assert type(build_model(name, StandardPrior(4), (1, 8, 8), 4, "bernoulli")) is cls
    assert type(build_model("celeba", StandardPrior(4), (3, 16, 16), 4, "logistic", num_bits=5)) is CelebAVAE
    with pytest.raises(ValueError, match="vae, hvae, convhvae, pixelhvae, celeba"):
        build_model("resnet", StandardPrior(4), (1, 8, 8), 4, "bernoulli")
    with pytest.raises(ValueError, match="likelihood"):
        build_model("celeba", StandardPrior(4), (3, 16, 16), 4, "bernoulli")
    with pytest.raises(ValueError, match="likelihood"):
        VAE(StandardPrior(4), (1, 8, 8), 4, likelihood="gaussian")
    with pytest.raises(ValueError, match="num_bits"):
        HVAE(StandardPrior(4), (1, 8, 8), 4, likelihood="logistic", num_bits=0)
    with pytest.raises(ValueError, match="input_shape"):
        VAE(StandardPrior(4), (28, 28), 4)
    with pytest.raises(ValueError, match="input_shape"):
        CelebAVAE(StandardPrior(4), (3, 20, 20), 4)
    with pytest.raises(ValueError, match="one channel"):
        PixelHVAE(StandardPrior(4), (3, 8, 8), 4)
    with pytest.raises(TypeError, match="Prior"):
        VAE(nn.Linear(2, 2))


@pytest.mark.parametrize("name", ["vae", "hvae", "convhvae"])
def test_inputs_and_latents_are_validated(name):
    model = model_for(name)
    with pytest.raises(ValueError, match=r"\[B, 784\]"):
        model(torch.rand(2, 783))
    with pytest.raises(ValueError, match=r"\[B, 784\]"):
        model.encode(torch.rand(2, 1, 28, 28))
    with pytest.raises(TypeError, match="floating"):
        model.posterior_sample(torch.ones(2, 784, dtype=torch.long))
    with pytest.raises(ValueError, match="meta"):
        model.encode(torch.empty(2, 784, device="meta"))
    with pytest.raises(ValueError, match=r"\[B, 40\]"):
        model.decode(torch.randn(2, 39))
    with pytest.raises(TypeError, match="floating"):
        model.decode(torch.ones(2, 40, dtype=torch.int64))
