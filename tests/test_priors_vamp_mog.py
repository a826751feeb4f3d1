"""Baseline priors (VampPrior, mixture of Gaussians): gradients reach the pseudo-inputs and
the encoder, sub-sampling normalises by the number drawn, sampling picks a component then
draws from it, and large mixtures stay finite."""
from __future__ import annotations

import math

import torch
from torch import nn

from exvae_fast.priors import MoGPrior, VampPrior
from exvae_fast.priors.diag_mixture import log_mixture_diag

D, d = 12, 3


class Encoder(nn.Module):
    def __init__(self, log_var: float = -1.0):
        super().__init__()
        self.lin = nn.Linear(D, d)
        self.log_var = log_var

    def forward(self, x):
        mu = self.lin(x)
        return mu, torch.full_like(mu, self.log_var)


def test_default_pseudo_inputs_lie_inside_the_clamp_and_get_gradients():
    # VampPrior's code defaults to N(-0.05, 0.01) under hardtanh(0, 1), which puts every
    # pseudo-input at 0 with a zero gradient; the library's N(0.05, 0.01) must stay trainable.
    torch.manual_seed(0)
    encoder = Encoder()
    prior = VampPrior(d, D, num_components=20).train()
    assert (prior.pseudo_inputs > 0).all() and (prior.pseudo_inputs < 1).all()
    prior.log_prob(torch.randn(8, d), encoder=encoder).sum().backward()
    grad = prior.pseudo_inputs_raw.grad
    assert grad is not None and (grad.abs().sum(1) > 0).all()
    assert encoder.lin.weight.grad is not None and encoder.lin.weight.grad.abs().sum() > 0


def test_vamp_subsampling_is_the_mixture_over_the_drawn_components_normalised_by_m(monkeypatch):
    torch.manual_seed(0)
    encoder = Encoder()
    prior = VampPrior(d, D, num_components=10, components_per_step=4).train()
    drawn = torch.tensor([7, 2, 5, 0])
    monkeypatch.setattr(prior.subsampling, "draw", lambda training, device: drawn if training else None)
    z = torch.randn(5, d)
    mu, log_var = encoder(prior.pseudo_inputs[drawn])
    expected = torch.logsumexp(-0.5 * (math.log(2 * math.pi) + log_var[None] + (z[:, None] - mu[None]) ** 2
                                       * torch.exp(-log_var[None])).sum(-1), 1) - math.log(4)
    out = prior.log_prob(z, encoder=encoder)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    rows_with_grad = (prior.pseudo_inputs_raw.grad.abs().sum(1) > 0).nonzero().flatten()
    assert sorted(rows_with_grad.tolist()) == sorted(drawn.tolist())


def test_vamp_sample_picks_a_component_uniformly_then_draws_from_its_posterior():
    torch.manual_seed(0)
    encoder = Encoder(log_var=math.log(0.01))
    prior = VampPrior(d, D, num_components=4).eval()
    with torch.no_grad():
        encoder.lin.weight.zero_()
        encoder.lin.bias.zero_()
        # component k's posterior mean is 10 * k * e_0 (the pseudo-inputs differ in pixel 0)
        prior.pseudo_inputs_raw.zero_()
        prior.pseudo_inputs_raw[:, 0] = torch.tensor([0.0, 0.25, 0.5, 0.75])
        encoder.lin.weight[0, 0] = 40.0
    z = prior.sample(8000, encoder=encoder)
    which = torch.round(z[:, 0] / 10).long()
    counts = torch.bincount(which, minlength=4).float() / 8000
    torch.testing.assert_close(counts, torch.full((4,), 0.25), atol=0.03, rtol=0)
    residual = z - torch.stack([10.0 * which.float(), torch.zeros_like(z[:, 0]), torch.zeros_like(z[:, 0])], 1)
    torch.testing.assert_close(residual.std(0), torch.full((d,), 0.1), atol=0.01, rtol=0)


def test_mog_sample_follows_the_learned_weights_and_parameters_learn():
    torch.manual_seed(0)
    prior = MoGPrior(1, num_components=2).eval()
    with torch.no_grad():
        prior.means.copy_(torch.tensor([[-10.0], [10.0]]))
        prior.log_vars.fill_(math.log(0.01))
        prior.logits.copy_(torch.log(torch.tensor([0.2, 0.8])))
    z = prior.sample(10000)
    torch.testing.assert_close((z[:, 0] > 0).float().mean(), torch.tensor(0.8), atol=0.02, rtol=0)
    prior.train()
    prior.log_prob(torch.randn(6, 1)).sum().backward()
    for p in (prior.means, prior.log_vars, prior.logits):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_mixture_log_density_is_finite_and_exact_for_many_far_components():
    torch.manual_seed(0)
    k = 5000
    means = torch.randn(k, d)
    log_vars = torch.full((k, d), -6.0)
    z = torch.full((3, d), 50.0)  # every component is thousands of nats away
    out = log_mixture_diag(z, means, log_vars)
    expected = torch.logsumexp(-0.5 * (math.log(2 * math.pi) + log_vars.double()[None]
                                       + (z.double()[:, None] - means.double()[None]) ** 2
                                       * torch.exp(-log_vars.double()[None])).sum(-1), 1) - math.log(k)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-3)


def reference_mixture(z, means, log_vars, log_weights):
    """float64 log sum_k w_k N(z | means_k, diag exp(log_vars_k)) from the whole [B, K, d]."""
    z, means, log_vars = z.double(), means.double(), log_vars.double()
    log_normal = -0.5 * (math.log(2 * math.pi) + log_vars[None] + (z[:, None] - means[None]) ** 2
                         * torch.exp(-log_vars[None])).sum(-1)
    return torch.logsumexp(log_normal + log_weights.double(), 1)


def test_rows_processed_in_chunks_are_each_their_own(monkeypatch):
    """A budget of 2 rows x K x d per chunk (IWAE sends tens of thousands of rows through a
    VampPrior(500)): 7 rows in 4 uneven chunks, each scored against its own z."""
    from exvae_fast.priors import diag_mixture

    gen = torch.Generator().manual_seed(1)
    means, log_vars = torch.randn(5, d, generator=gen), 0.3 * torch.randn(5, d, generator=gen)
    log_weights = torch.log_softmax(torch.randn(5, generator=gen), 0)
    z = torch.randn(7, d, generator=gen)
    monkeypatch.setattr(diag_mixture, "ELEMENT_BUDGET", 2 * 5 * d)
    out = log_mixture_diag(z, means, log_vars, log_weights)
    torch.testing.assert_close(out.double(), reference_mixture(z, means, log_vars, log_weights))


def test_vamp_components_are_the_encodings_of_the_clamped_pseudo_inputs():
    """Raw pseudo-inputs outside [0, 1] are clamped to the pixel range before encoding."""
    encoder = Encoder()
    raw = torch.linspace(-1.0, 2.0, 3 * D).reshape(3, D)
    prior = VampPrior(d, D, num_components=3, init=raw).eval()
    z = torch.randn(4, d)
    mu, log_var = encoder(raw.clamp(0.0, 1.0))
    want = reference_mixture(z, mu, log_var, torch.full((3,), -math.log(3)))
    torch.testing.assert_close(prior.log_prob(z, encoder=encoder).double(), want.detach())


def test_mog_subsampling_renormalises_the_weights_over_the_drawn_components(monkeypatch):
    """Training with components_per_step: the mixture of the drawn components, their learned
    weights renormalised over the subset (paper appendix K)."""
    torch.manual_seed(0)
    prior = MoGPrior(d, num_components=6, components_per_step=3).train()
    with torch.no_grad():
        prior.logits.copy_(torch.randn(6))
        prior.log_vars.copy_(0.2 * torch.randn(6, d))
    drawn = torch.tensor([4, 1, 3])
    monkeypatch.setattr(prior.subsampling, "draw", lambda training, device: drawn if training else None)
    z = torch.randn(5, d)
    want = reference_mixture(z, prior.means[drawn], prior.log_vars[drawn],
                             torch.log_softmax(prior.logits[drawn], 0))
    torch.testing.assert_close(prior.log_prob(z).double(), want.detach())
    prior.eval()  # every component, weights over all of them
    torch.testing.assert_close(prior.log_prob(z).double(), reference_mixture(
        z, prior.means, prior.log_vars, torch.log_softmax(prior.logits, 0)).detach())
