"""The importance-weighted log-likelihood and the ELBO split against closed forms.

Oracle: a linear-Gaussian decoder x | z ~ N(W z + b, s^2 I). Under the prior N(0, I) with
q(z | x) the exact posterior, every importance weight equals p(x): one sample is exact.
Under the exemplar prior r(z) = 1/N sum_n N(z | mu_n, sigma^2 I) (test time: every
exemplar, no leave-one-out), p(x) = 1/N sum_n N(x | W mu_n + b, sigma^2 W W^T + s^2 I).
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from exvae_fast.distributions import log_normal_diag
from exvae_fast.evaluation import evaluate_elbo, log_likelihood
from exvae_fast.models.base import LatentVariableModel, PosteriorSample, reparameterize
from exvae_fast.priors import ExemplarPrior, StandardPrior
from exvae_fast.priors.base import Prior

D, LATENT, S_X = 5, 2, 0.6


class LinearGaussian(LatentVariableModel):
    """x | z ~ N(W z + b, s^2 I); q(z | x) = N(A x + c, diag(exp(q_log_var)))."""

    def __init__(self, prior: Prior, W: Tensor, b: Tensor, A: Tensor, c: Tensor, q_log_var: Tensor) -> None:
        super().__init__(prior)
        self.input_shape, self.latent_dim, self.likelihood = (1, 1, D), LATENT, "gaussian"
        self.W, self.b, self.A, self.c = (nn.Parameter(t.double().clone()) for t in (W, b, A, c))
        self.q_log_var = nn.Parameter(q_log_var.double().clone())

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.double() @ self.A.T + self.c, self.q_log_var.expand(x.shape[0], -1)

    def decode(self, z: Tensor) -> Tensor:
        return z @ self.W.T + self.b

    def posterior_sample(self, x: Tensor) -> PosteriorSample:
        mu, log_var = self.encode(x)
        z = reparameterize(mu, log_var)
        log_px = log_normal_diag(x.double(), self.decode(z), torch.full_like(x, 2 * math.log(S_X), dtype=torch.float64))
        return PosteriorSample(z=z, mu=mu, log_var=log_var, log_q_z=log_normal_diag(z, mu, log_var),
                               log_px=log_px, log_ratio_lower=torch.zeros_like(log_px))


def gaussian_marginal(x: Tensor, W: Tensor, centres: Tensor, var_z: float) -> Tensor:
    """log 1/K sum_k N(x | centres_k, var_z W W^T + s^2 I): x [N, D], centres [K, D] -> [N]."""
    cov = var_z * W @ W.T + S_X ** 2 * torch.eye(D, dtype=torch.float64)
    dist = torch.distributions.MultivariateNormal(centres, covariance_matrix=cov)
    return torch.logsumexp(dist.log_prob(x.double().unsqueeze(1)), 1) - math.log(centres.shape[0])


def orthogonal_decoder(seed: int) -> tuple[Tensor, Tensor]:
    """W [D, d] with orthogonal columns (so the exact posterior covariance is diagonal), b [D]."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(D, LATENT, generator=gen, dtype=torch.float64))
    return q * torch.tensor([1.5, 0.8], dtype=torch.float64), torch.randn(D, generator=gen, dtype=torch.float64)


def exact_posterior_model(prior: Prior, W: Tensor, b: Tensor, prior_mean: Tensor, prior_var: float) -> LinearGaussian:
    """The model whose q(z | x) is the exact posterior under the Gaussian prior N(prior_mean, prior_var I)."""
    precision = torch.eye(LATENT, dtype=torch.float64) / prior_var + W.T @ W / S_X ** 2
    cov = torch.linalg.inv(precision)
    A = cov @ W.T / S_X ** 2
    c = cov @ (prior_mean / prior_var) - A @ b
    return LinearGaussian(prior, W, b, A, c, cov.diagonal().log())


def test_exact_posterior_gives_the_exact_log_likelihood_with_one_sample():
    torch.manual_seed(0)
    W, b = orthogonal_decoder(0)
    model = exact_posterior_model(StandardPrior(LATENT), W, b, torch.zeros(LATENT, dtype=torch.float64), 1.0)
    x = torch.randn(30, D, dtype=torch.float64) * 2
    exact = gaussian_marginal(x, W, b.unsqueeze(0), 1.0)
    for samples, max_rows in ((1, 50000), (7, 3)):
        ll = log_likelihood(model, x, num_samples=samples, max_rows=max_rows, progress=False)
        assert torch.allclose(ll, exact, atol=1e-9)
    # and the single-sample ELBO of a zero-gap posterior is log p(x) too
    terms = evaluate_elbo(model, x, batch_size=7, progress=False)
    assert terms["elbo"] == pytest.approx(exact.mean().item(), abs=1e-9)
    assert terms["kl"] > 0 and terms["neg_recon"] > 0
    assert terms["elbo"] == pytest.approx(-(terms["kl"] + terms["neg_recon"]), abs=1e-12)


def exemplar_model(exemplars: Tensor, seed: int, log_var: float) -> LinearGaussian:
    W, b = orthogonal_decoder(seed)
    prior = ExemplarPrior(exemplars.float(), LATENT, mode="exact", init_log_var=log_var)
    prior.double()
    gen = torch.Generator().manual_seed(seed + 1)
    A = 0.5 * torch.randn(LATENT, D, generator=gen, dtype=torch.float64)
    model = LinearGaussian(prior, W, b, A, torch.zeros(LATENT, dtype=torch.float64),
                           torch.full((LATENT,), -1.0, dtype=torch.float64))
    prior.refresh(model.encode)
    return model


def test_identical_exemplars_with_exact_posterior_give_zero_variance_weights():
    """All exemplars equal: r(z) = N(mu_0, sigma^2 I), and q is its exact posterior."""
    torch.manual_seed(0)
    exemplars = torch.rand(1, D).expand(6, D).clone()
    model = exemplar_model(exemplars, 3, log_var=-0.4)
    mu0 = model.encode(exemplars[:1])[0].detach()[0]
    var = math.exp(-0.4)
    W, b = model.W.detach(), model.b.detach()
    exact_q = exact_posterior_model(model.prior, W, b, mu0, var)
    with torch.no_grad():
        model.A.copy_(exact_q.A)
        model.c.copy_(exact_q.c)
        model.q_log_var.copy_(exact_q.q_log_var)
    # the cache still holds mu0 for every exemplar (computed with the old encoder)
    x = torch.randn(25, D, dtype=torch.float64)
    exact = gaussian_marginal(x, W, (W @ mu0 + b).unsqueeze(0), var)
    ll = log_likelihood(model.train(), x, num_samples=3, max_rows=4, progress=False)
    assert torch.allclose(ll, exact, atol=1e-9)
    assert evaluate_elbo(model, x, batch_size=10, progress=False)["elbo"] == pytest.approx(exact.mean().item(),
                                                                                         abs=1e-6)


def test_exemplar_prior_log_likelihood_uses_every_exemplar_without_leave_one_out():
    """Distinct exemplars, training rows as test points: converges to the closed form of the
    whole-set mixture; leave-one-out would lower the mean by ~0.17 nats here."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(5)
    exemplars = 3 * torch.randn(8, D, generator=gen, dtype=torch.float64)
    model = exemplar_model(exemplars, 1, log_var=-0.5)
    means = model.prior.cache.means.double()
    W, b, var = model.W.detach(), model.b.detach(), math.exp(-0.5)
    # proposal: the exact posterior under the moment-matched Gaussian of the mixture
    spread = var + means.var(0, unbiased=False).mean().item()
    proposal = exact_posterior_model(StandardPrior(LATENT), W, b, means.mean(0), spread)
    with torch.no_grad():
        model.A.copy_(proposal.A)
        model.c.copy_(proposal.c)
        model.q_log_var.copy_(proposal.q_log_var)
    exact = gaussian_marginal(exemplars, W, means @ W.T + b, var)
    loo = torch.stack([gaussian_marginal(exemplars[i:i + 1], W, means[torch.arange(8) != i] @ W.T + b, var)[0]
                       for i in range(8)])
    assert (loo - exact).mean().item() < -0.15  # the test can tell the two apart
    ll = log_likelihood(model, exemplars, num_samples=20000, progress=False)
    assert (ll - exact).abs().max().item() < 0.08
    assert abs((ll - exact).mean().item()) < 0.03
