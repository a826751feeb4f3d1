"""The models' ELBO terms recomputed by hand from their own submodules.

The shape and finiteness checks in test_models pass for a model that samples z1 from the
wrong conditional, forgets the z1 term of the importance weight or scores pixels over the
wrong number of bins. Here every term is rebuilt under the same seed from the model's
submodules and the primitives of `exvae_fast.distributions`, and must agree.
"""
from __future__ import annotations

import pytest
import torch

from exvae_fast.distributions import log_discretized_logistic, log_normal_diag
from exvae_fast.evaluation.likelihood import log_likelihood
from exvae_fast.models import HVAE, VAE, CelebAVAE
from exvae_fast.models.two_level import TwoLevelVAE
from exvae_fast.priors.standard import StandardPrior

from test_models import SMALL_CELEBA, batch_for, model_for

TWO_LEVEL = ["hvae", "convhvae", "pixelhvae"]
SEED = 7


def _grid(model: torch.nn.Module, num_bits: int, rows: int = 3) -> torch.Tensor:
    """Rows of uniform pixels snapped to the 2^num_bits intensity grid."""
    k_max = 2 ** num_bits - 1
    g = torch.Generator().manual_seed(1)
    return torch.round(torch.rand(rows, model.input_dim, generator=g) * k_max) / k_max


def _two_level_by_hand(model: TwoLevelVAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z2, z1, log p(z1 | z2) - log q(z1 | x, z2)) drawn with the RNG as it stands:
    z2 ~ q(z2 | x) first, then z1 ~ q(z1 | x, z2), both reparameterised."""
    mu2, log_var2 = model.q_z2_head(model.q_z2_net(x))
    z2 = mu2 + torch.exp(0.5 * log_var2) * torch.randn_like(mu2)
    mu1, log_var1 = model.q_z1(x, z2)
    z1 = mu1 + torch.exp(0.5 * log_var1) * torch.randn_like(mu1)
    p_mu1, p_log_var1 = model.p_z1(z2)
    return z2, z1, log_normal_diag(z1, p_mu1, p_log_var1) - log_normal_diag(z1, mu1, log_var1)


@pytest.mark.parametrize("name", TWO_LEVEL)
@torch.no_grad()
def test_two_level_posterior_sample_matches_a_hand_computation(name):
    """z2, log_ratio_lower and log_px equal the same seed's hand-drawn z2, z1 ~ q(z1 | x, z2)
    and log p(z1 | z2) - log q(z1 | x, z2): catches z1 set to its mean, q(z1 | .) or
    p(z1 | .) conditioned on mu2 instead of z2, and a wrong log-variance in the ratio."""
    model = model_for(name, "logistic")
    x = batch_for(model, name)
    torch.manual_seed(SEED)
    s = model.posterior_sample(x)
    torch.manual_seed(SEED)
    z2, z1, ratio = _two_level_by_hand(model, x)
    torch.testing.assert_close(s.z, z2)
    torch.testing.assert_close(s.log_ratio_lower, ratio)
    torch.testing.assert_close(s.log_px, model.decoder.log_prob(x, z1, z2))


@pytest.mark.parametrize("name", TWO_LEVEL)
@torch.no_grad()
def test_importance_weight_is_the_single_sample_elbo(name):
    """log w = log p(x | z1, z2) + log p(z1 | z2) - log q(z1 | x, z2) + log r(z2) - log q(z2 | x)
    for the seed's sample, hence equal to that sample's ELBO, and `log_likelihood` with one
    sample returns it: catches an IWAE estimate that drops the z1 term of two-level models
    (it would then exceed the ELBO by KL(q(z1) || p(z1)) on every row)."""
    model = model_for(name)
    x = batch_for(model, name)
    torch.manual_seed(SEED)
    s = model.posterior_sample(x)
    expected = s.log_px + s.log_ratio_lower + model.prior.log_prob(s.z) - s.log_q_z
    torch.manual_seed(SEED)
    torch.testing.assert_close(model.log_importance_weights(x), expected)
    torch.manual_seed(SEED)
    elbo = model(x).elbo
    torch.testing.assert_close(elbo, expected)
    torch.manual_seed(SEED)
    ll = log_likelihood(model, x, num_samples=1, progress=False)
    torch.testing.assert_close(ll.float(), elbo)  # float32 sums, whatever order they ran in


@torch.no_grad()
def test_celeba_scores_pixels_over_its_num_bits():
    """A 5-bit CelebA VAE's log_px is the 5-bit discretised logistic of its decoder means,
    not the 8-bit one (a 5-bit bin is ~8x wider, about 2 nats more per pixel)."""
    torch.manual_seed(0)
    model = CelebAVAE(StandardPrior(8), SMALL_CELEBA, 8, num_bits=5).eval()
    x = _grid(model, 5, rows=2)
    torch.manual_seed(SEED)
    s = model.posterior_sample(x)
    mean = model.decode(s.z)
    torch.testing.assert_close(s.log_px, log_discretized_logistic(x, mean, model.log_scale, 5))
    assert (s.log_px - log_discretized_logistic(x, mean, model.log_scale, 8) > model.input_dim).all()


@torch.no_grad()
def test_vae_logistic_head_scores_pixels_over_its_num_bits():
    """VAE(likelihood="logistic", num_bits=5): log_px is the 5-bit discretised logistic of
    the head's (mean, log_scale), not the 8-bit one the head would default to."""
    torch.manual_seed(0)
    model = VAE(StandardPrior(8), (1, 8, 8), 8, likelihood="logistic", num_bits=5)
    x = _grid(model, 5)
    torch.manual_seed(SEED)
    s = model.posterior_sample(x)
    mean, log_scale = model.p_x_head(model.p_x_net(s.z))
    torch.testing.assert_close(s.log_px, log_discretized_logistic(x, mean, log_scale, 5))
    assert not torch.allclose(s.log_px, log_discretized_logistic(x, mean, log_scale, 8))


@torch.no_grad()
def test_hvae_logistic_head_scores_pixels_over_its_num_bits():
    """HVAE(likelihood="logistic", num_bits=5): log_px is the 5-bit discretised logistic of
    p(x | z1, z2) at the seed's hand-drawn latents, not the 8-bit one."""
    torch.manual_seed(0)
    model = HVAE(StandardPrior(8), (1, 8, 8), 8, z1_dim=8, likelihood="logistic", num_bits=5)
    x = _grid(model, 5)
    torch.manual_seed(SEED)
    s = model.posterior_sample(x)
    torch.manual_seed(SEED)
    z2, z1, _ = _two_level_by_hand(model, x)
    mean, log_scale = model.decoder.params(z1, z2)
    torch.testing.assert_close(s.log_px, log_discretized_logistic(x, mean, log_scale, 5))
    assert not torch.allclose(s.log_px, log_discretized_logistic(x, mean, log_scale, 8))
