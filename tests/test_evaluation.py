"""Evaluation: evaluation_mode, ELBO split, IWAE log-likelihood, bits/dim, active units.

The oracle is a linear-Gaussian model, x | z ~ N(Wz + b, s^2 I) with z ~ N(0, I), whose
marginal p(x) = N(b, W W^T + s^2 I) and expected ELBO are known in closed form.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from exvae_fast.distributions import log_normal_diag
from exvae_fast.evaluation import (active_units, bits_per_dim, evaluate_elbo, evaluation_mode,
                                   log_likelihood, plan_batches)
from exvae_fast.models.base import LatentVariableModel, PosteriorSample, reparameterize
from exvae_fast.priors.standard import StandardPrior

D, LATENT = 6, 2


class LinearGaussian(LatentVariableModel):
    """x | z ~ N(W z + b, s^2 I); q(z | x) = N(A x + c, diag(exp(enc_log_var))).

    Records (training, grad enabled) at every posterior_sample call.
    """

    def __init__(self, W: Tensor, b: Tensor, s: float, A: Tensor, c: Tensor, enc_log_var: Tensor) -> None:
        super().__init__(StandardPrior(W.shape[1]))
        self.input_shape, self.latent_dim, self.likelihood = (1, 2, 3), W.shape[1], "gaussian"
        self.dec = nn.Linear(W.shape[1], W.shape[0])
        self.enc = nn.Linear(W.shape[0], W.shape[1])
        with torch.no_grad():
            self.dec.weight.copy_(W)
            self.dec.bias.copy_(b)
            self.enc.weight.copy_(A)
            self.enc.bias.copy_(c)
        self.enc_log_var = nn.Parameter(enc_log_var.clone())
        self.log_var_x = math.log(s * s)
        self.seen: list[tuple[bool, bool]] = []

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.enc(x), self.enc_log_var.expand(x.shape[0], -1)

    def decode(self, z: Tensor) -> Tensor:
        return self.dec(z)

    def posterior_sample(self, x: Tensor) -> PosteriorSample:
        self.seen.append((self.training, torch.is_grad_enabled()))
        mu, log_var = self.encode(x)
        z = reparameterize(mu, log_var)
        log_px = log_normal_diag(x, self.dec(z), torch.full_like(x, self.log_var_x))
        return PosteriorSample(z=z, mu=mu, log_var=log_var, log_q_z=log_normal_diag(z, mu, log_var),
                               log_px=log_px, log_ratio_lower=torch.zeros_like(log_px))

    def exact_log_px(self, x: Tensor) -> Tensor:
        """log p(x) = log N(x | b, W W^T + s^2 I): [N]."""
        W = self.dec.weight.double()
        cov = W @ W.T + math.exp(self.log_var_x) * torch.eye(W.shape[0], dtype=torch.float64)
        dist = torch.distributions.MultivariateNormal(self.dec.bias.double(), covariance_matrix=cov)
        return dist.log_prob(x.double())

    def expected_terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(E_q log p(x | z), KL(q || N(0, I))), each [N], in closed form."""
        W, s2 = self.dec.weight.double(), math.exp(self.log_var_x)
        m, v = self.enc(x).double(), self.enc_log_var.double().exp()
        resid = x.double() - m @ W.T - self.dec.bias.double()
        recon = (-0.5 * (math.log(2 * math.pi * s2) * W.shape[0] + resid.pow(2).sum(1) / s2)
                 - 0.5 * (W.pow(2).sum(0) * v).sum() / s2)
        kl = 0.5 * (v + m.pow(2) - 1 - v.log()).sum(1)
        return recon, kl


def make_model(seed: int = 0) -> LinearGaussian:
    """A toy whose encoder is a shrunk, over-dispersed version of the exact posterior,
    so that the ELBO is strictly below log p(x) and IWAE has something to close."""
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(D, LATENT, generator=gen)
    b = torch.randn(D, generator=gen)
    s = 0.7
    post_cov = torch.linalg.inv(torch.eye(LATENT) + W.T @ W / s**2)
    A = 0.8 * post_cov @ W.T / s**2
    return LinearGaussian(W, b, s, A, -A @ b, post_cov.diagonal().log() + 0.7)


def sample_data(model: LinearGaussian, n: int, seed: int = 1001) -> Tensor:
    """n draws from the model; seeds far from the tests' global ones, so that the data's
    noise is not the very sequence the posterior sampler later draws."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z = torch.randn(n, LATENT, generator=gen)
        return model.decode(z) + math.exp(0.5 * model.log_var_x) * torch.randn(n, D, generator=gen)


class WeightSpy:
    """Wraps model.log_importance_weights, recording every call's rows and outputs."""

    def __init__(self, model: LatentVariableModel) -> None:
        self.inner, self.calls = model.log_importance_weights, []
        model.log_importance_weights = self

    def __call__(self, x: Tensor) -> Tensor:
        out = self.inner(x)
        self.calls.append((x.clone(), out.clone()))
        return out


# ---------------------------------------------------------------- evaluation_mode

def test_evaluation_mode_restores_every_flag_and_disables_grad():
    model = make_model()
    model.train()
    model.enc.eval()  # mixed flags must come back exactly as they were
    before = [m.training for m in model.modules()]
    with evaluation_mode(model):
        assert not any(m.training for m in model.modules())
        assert not torch.is_grad_enabled()
    assert [m.training for m in model.modules()] == before
    assert torch.is_grad_enabled()


def test_evaluation_mode_restores_on_exception_and_nests():
    model = make_model().train()
    with pytest.raises(RuntimeError, match="boom"):
        with evaluation_mode(model):
            with evaluation_mode(model):
                pass
            assert not model.training  # the inner exit restored eval, not train
            raise RuntimeError("boom")
    assert all(m.training for m in model.modules())
    with pytest.raises(TypeError, match="model"):
        with evaluation_mode("not a module"):
            pass


# ---------------------------------------------------------------- ELBO

def test_evaluate_elbo_matches_closed_form_and_restores_mode():
    torch.manual_seed(0)
    model = make_model().train()
    x = sample_data(model, 4000)
    # batch_size does not divide N: a dropped last batch (a quarter of the data) would show.
    out = evaluate_elbo(model, x, batch_size=1500, progress=False)
    recon, kl = model.expected_terms(x)
    assert out["elbo"] == pytest.approx(-(out["kl"] + out["neg_recon"]), abs=1e-9)
    # single-sample estimates: compare with the closed-form means within ~5 standard errors
    assert out["kl"] == pytest.approx(kl.mean().item(), abs=0.05)
    assert out["neg_recon"] == pytest.approx(-recon.mean().item(), abs=0.1)
    assert model.training and all(m.training for m in model.modules())
    assert model.seen and all(flags == (False, False) for flags in model.seen)


def test_evaluate_elbo_validates_arguments():
    model = make_model()
    with pytest.raises(ValueError, match=r"\[N, 6\]"):
        evaluate_elbo(model, torch.zeros(3, 5), progress=False)
    with pytest.raises(ValueError, match="at least one row"):
        evaluate_elbo(model, torch.zeros(0, D), progress=False)
    with pytest.raises(TypeError, match="floating"):
        evaluate_elbo(model, torch.zeros(3, D, dtype=torch.long), progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_elbo(model, torch.zeros(3, D), batch_size=0, progress=False)


# ---------------------------------------------------------------- log-likelihood

def test_iwae_converges_to_exact_log_likelihood_and_beats_elbo():
    torch.manual_seed(0)
    model = make_model()
    x = sample_data(model, 40)
    exact = model.exact_log_px(x)
    recon, kl = model.expected_terms(x)
    elbo = recon - kl
    gap = (exact - elbo).mean().item()
    assert gap > 0.5  # the toy's encoder is poor enough for the test to mean something
    ll = log_likelihood(model, x, num_samples=20000, progress=False)
    assert ll.shape == (40,) and ll.dtype == torch.float64
    # Here Var(w) / E[w]^2 ~ 1, so at S = 20000 each estimate has a standard deviation of
    # ~0.007 nats and a bias of ~1/(2S): 0.05 is > 6 sigma for the worst of 40 points.
    assert (ll - exact).abs().max().item() < 0.05
    assert abs((ll - exact).mean().item()) < 0.01
    assert ll.mean().item() > elbo.mean().item() + 0.9 * gap
    x2 = sample_data(model, 4000, seed=1002)
    single = log_likelihood(model, x2, num_samples=1, progress=False)
    recon2, kl2 = model.expected_terms(x2)
    assert single.mean().item() == pytest.approx((recon2 - kl2).mean().item(), abs=0.15)


@pytest.mark.parametrize("max_rows", [1000, 100, 7, 3])
def test_batching_accumulates_exactly_the_weights_of_each_point(max_rows):
    torch.manual_seed(0)
    model = make_model()
    num_points, num_samples = 50, 20
    x = sample_data(model, num_points)
    spy = WeightSpy(model)
    ll = log_likelihood(model, x, num_samples=num_samples, max_rows=max_rows, progress=False)
    points, chunk = plan_batches(num_points, num_samples, max_rows)
    assert len(spy.calls) == math.ceil(num_points / points) * math.ceil(num_samples / chunk)
    assert all(rows.shape[0] <= max_rows for rows, _ in spy.calls)
    # Reference: every weight the model returned, grouped by the point its row repeats.
    rows = torch.cat([r for r, _ in spy.calls])
    weights = torch.cat([w for _, w in spy.calls]).double()
    for i in range(num_points):
        mine = weights[(rows == x[i]).all(dim=1)]
        assert mine.numel() == num_samples
        expected = torch.logsumexp(mine, 0) - math.log(num_samples)
        assert ll[i].item() == pytest.approx(expected.item(), abs=1e-9)


def test_one_call_when_everything_fits():
    model = make_model()
    spy = WeightSpy(model)
    log_likelihood(model, sample_data(model, 50), num_samples=20, max_rows=1000, progress=False)
    assert len(spy.calls) == 1 and spy.calls[0][0].shape == (1000, D)


def test_plan_batches():
    assert plan_batches(50, 20, 1000) == (50, 20)
    assert plan_batches(50, 20, 100) == (5, 20)
    assert plan_batches(50, 5000, 50000) == (10, 5000)
    assert plan_batches(3, 5000, 1200) == (1, 1200)
    assert plan_batches(2, 20, 30) == (1, 20)


def test_log_likelihood_validates_arguments_and_restores_mode():
    model = make_model().train()
    x = sample_data(model, 4)
    with pytest.raises(ValueError, match="num_samples"):
        log_likelihood(model, x, num_samples=0, progress=False)
    with pytest.raises(TypeError, match="num_samples"):
        log_likelihood(model, x, num_samples=2.5, progress=False)
    with pytest.raises(ValueError, match="max_rows"):
        log_likelihood(model, x, max_rows=0, progress=False)
    with pytest.raises(ValueError, match=r"\[N, 6\]"):
        log_likelihood(model, x[:, :3], progress=False)
    with pytest.raises(ValueError, match="at least one row"):
        log_likelihood(model, x[:0], progress=False)
    log_likelihood(model, x, num_samples=3, progress=False)
    assert all(m.training for m in model.modules())


def test_bits_per_dim():
    ll = torch.tensor([-100.0, -300.0])
    assert bits_per_dim(ll, 50) == pytest.approx(200.0 / (50 * math.log(2)))
    # a uniform distribution over 256 levels per dimension is exactly 8 bits/dim
    assert bits_per_dim(torch.full((3,), -12 * math.log(256)), 12) == pytest.approx(8.0)
    with pytest.raises(ValueError, match="num_dims"):
        bits_per_dim(ll, 0)
    with pytest.raises(ValueError, match="log_likelihood"):
        bits_per_dim(torch.zeros(0), 3)


# ---------------------------------------------------------------- active units

def test_active_units_counts_dimensions_with_known_variance():
    model = make_model().train()
    # encoder mean = x[:, :2] * scale, data built so each column's unbiased variance is known
    with torch.no_grad():
        model.enc.weight.zero_()
        model.enc.weight[0, 0], model.enc.weight[1, 1] = 1.0, 1.0
        model.enc.bias.fill_(1000.0)  # a large offset must not spoil the variance
    v = torch.randn(1001, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    v = (v - v.mean()) / v.std()
    x = torch.zeros(1001, D, dtype=torch.float64)
    x[:, 0], x[:, 1] = 0.5 * v, 0.09 * v  # variances 0.25 and 0.0081 (< 0.01)
    model.double()
    for batch_size in (1001, 97):
        count, variances = active_units(model, x, batch_size=batch_size, progress=False)
        assert count == 1
        assert variances.tolist() == pytest.approx([0.25, 0.0081], rel=1e-9)
    assert active_units(model, x, threshold=0.005, progress=False)[0] == 2
    assert all(m.training for m in model.modules())
    with pytest.raises(ValueError, match="threshold"):
        active_units(model, x, threshold=-1.0, progress=False)
    with pytest.raises(ValueError, match="2 rows"):
        active_units(model, x[:1], progress=False)


# ---------------------------------------------------------------- the real VAE

@pytest.mark.parametrize("prior_name", ["standard", "exemplar"])
def test_real_vae_smoke(prior_name):
    from exvae_fast.models import VAE
    from exvae_fast.priors import ExemplarPrior

    torch.manual_seed(0)
    train = torch.rand(20, 784)
    prior = StandardPrior(8) if prior_name == "standard" else ExemplarPrior(train, 8, mode="exact")
    model = VAE(prior, input_shape=(1, 28, 28), latent_dim=8, likelihood="bernoulli").train()
    if prior_name == "exemplar":
        prior.refresh(model.encode)  # evaluation reads the whole exemplar set from the cache
    x = (torch.rand(6, 784) > 0.5).float()
    out = evaluate_elbo(model, x, batch_size=4, progress=False)
    assert math.isfinite(out["elbo"]) and out["neg_recon"] > 0
    ll = log_likelihood(model, x, num_samples=16, max_rows=40, progress=False)
    assert ll.shape == (6,) and torch.isfinite(ll).all()
    assert ll.mean().item() > out["elbo"] - 5  # IWAE(16) is above a single-sample ELBO up to noise
    count, variances = active_units(model, x, progress=False)
    with evaluation_mode(model), torch.no_grad():
        means = model.encode(x)[0].double()
    torch.testing.assert_close(variances, means.var(dim=0))
    assert variances.min() > 0.05 and count == 8  # a random encoder: every unit varies with x
    assert all(m.training for m in model.modules())
