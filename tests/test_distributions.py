"""Log-densities of exvae_fast.distributions against closed forms and normalisation."""
from __future__ import annotations

import math

import pytest
import torch

from exvae_fast.distributions import (log_bernoulli, log_discretized_logistic, log_normal_diag,
                                      log_normal_standard, sample_discretized_logistic)


def test_log_normal_diag_and_standard_match_torch():
    g = torch.Generator().manual_seed(0)
    x, mean, log_var = torch.randn(3, 5, 7, generator=g, dtype=torch.float64).unbind(0)
    want = torch.distributions.Normal(mean, torch.exp(0.5 * log_var)).log_prob(x).sum(-1)
    torch.testing.assert_close(log_normal_diag(x, mean, log_var), want)
    torch.testing.assert_close(log_normal_standard(x), torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(-1))


def test_log_bernoulli_normalised_and_matches_torch():
    probs = torch.tensor([[0.0], [1e-9], [0.3], [0.5], [0.999], [1.0]], dtype=torch.float64)
    p0, p1 = (torch.exp(log_bernoulli(torch.full_like(probs, v), probs)) for v in (0.0, 1.0))
    total = p0 + p1
    torch.testing.assert_close(total, torch.ones(6, dtype=torch.float64))
    x = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
    p = torch.tensor([[0.2, 0.7, 0.9], [0.4, 0.5, 0.6]])
    torch.testing.assert_close(log_bernoulli(x, p), torch.distributions.Bernoulli(probs=p).log_prob(x).sum(-1))


def test_log_bernoulli_is_clamped():
    out = log_bernoulli(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert torch.isfinite(out)
    assert out.item() == pytest.approx(2 * math.log(1e-5), rel=1e-4)


@pytest.mark.parametrize("num_bits", [8, 5, 1])
def test_discretized_logistic_sums_to_one_over_all_bins(num_bits):
    k = 2 ** num_bits
    g = torch.Generator().manual_seed(num_bits)
    mean = torch.rand(1, 64, 1, generator=g, dtype=torch.float64) * 1.6 - 0.3  # also outside [0, 1]
    log_scale = torch.rand(1, 64, 1, generator=g, dtype=torch.float64) * 7.0 - 6.0
    bins = (torch.arange(k, dtype=torch.float64) / (k - 1)).view(k, 1, 1)
    log_p = log_discretized_logistic(bins, mean, log_scale, num_bits)  # [K, 64]
    torch.testing.assert_close(torch.logsumexp(log_p, 0), torch.zeros(64, dtype=torch.float64), atol=1e-10, rtol=0)


def test_discretized_logistic_matches_cdf_difference_and_edges():
    mean = torch.tensor([0.3, 0.5, 0.9], dtype=torch.float64)
    log_scale = torch.tensor([-2.0, -3.0, -1.0], dtype=torch.float64)
    s = torch.exp(log_scale)
    for k in (0, 17, 128, 255):
        c = torch.full_like(mean, k / 255)
        hi = torch.sigmoid((c + 0.5 / 255 - mean) / s) if k < 255 else torch.ones_like(c)
        lo = torch.sigmoid((c - 0.5 / 255 - mean) / s) if k > 0 else torch.zeros_like(c)
        got = log_discretized_logistic(c.unsqueeze(-1), mean.unsqueeze(-1), log_scale.unsqueeze(-1))
        torch.testing.assert_close(got, torch.log(hi - lo))


def test_discretized_logistic_snaps_to_bin_centres():
    mean, log_scale = torch.tensor([0.4]), torch.tensor([-2.5])
    centre = log_discretized_logistic(torch.tensor([100 / 255]), mean, log_scale)
    # the nearest centre on either side (a floor would put 99.6 / 255 in bin 99)
    for offset in (0.4, -0.4):
        near = log_discretized_logistic(torch.tensor([(100 + offset) / 255]), mean, log_scale)
        assert near.item() == centre.item(), offset
    assert log_discretized_logistic(torch.tensor([100.6 / 255]), mean, log_scale).item() != centre.item()


def test_discretized_logistic_far_tail_is_finite_and_exact():
    # The CDF difference underflows (log P ~ -100 .. -1e4); the result must match the
    # mid-bin density approximation pdf(c) * width, accurate when the bin is narrow vs s.
    c = torch.tensor([0.0, 127 / 255, 128 / 255, 1.0], dtype=torch.float64)
    mean = torch.tensor([6.0, -5.0, 30.0, -20.0], dtype=torch.float64)
    log_scale = torch.full_like(c, math.log(0.05))
    got32 = log_discretized_logistic(c.float().unsqueeze(-1), mean.float().unsqueeze(-1),
                                     log_scale.float().unsqueeze(-1))
    got = log_discretized_logistic(c.unsqueeze(-1), mean.unsqueeze(-1), log_scale.unsqueeze(-1))
    assert torch.isfinite(got32).all() and (got < -90).all()
    torch.testing.assert_close(got32.double(), got, rtol=1e-5, atol=0)
    u = (c[1:3] - mean[1:3]) / 0.05
    log_pdf_mid = u - math.log(0.05) - 2 * torch.nn.functional.softplus(u)
    torch.testing.assert_close(got[1:3], log_pdf_mid - math.log(255), rtol=0, atol=1e-3)


def test_discretized_logistic_gradients_finite_in_tails():
    mean = torch.tensor([[-40.0, 0.5, 40.0]], requires_grad=True)
    log_scale = torch.tensor([[-6.0, -6.0, 3.0]], requires_grad=True)
    log_discretized_logistic(torch.tensor([[0.6, 0.0, 0.5]]), mean, log_scale).sum().backward()
    assert torch.isfinite(mean.grad).all() and torch.isfinite(log_scale.grad).all()


def test_discretized_logistic_rejects_bad_num_bits():
    with pytest.raises(ValueError, match="num_bits"):
        log_discretized_logistic(torch.zeros(1), torch.zeros(1), torch.zeros(1), num_bits=0)


def test_sample_discretized_logistic_frequencies_match_probabilities():
    torch.manual_seed(0)
    num_bits, n = 2, 200_000
    mean, log_scale = torch.tensor(0.4), torch.tensor(-1.2)
    draws = sample_discretized_logistic(mean.expand(n), log_scale, num_bits)
    bins = torch.arange(4, dtype=torch.float32) / 3
    freq = torch.stack([(draws == b).float().mean() for b in bins])
    want = torch.exp(log_discretized_logistic(bins.unsqueeze(-1), mean, log_scale.view(1), num_bits))
    assert freq.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(freq, want, atol=5e-3, rtol=0)
