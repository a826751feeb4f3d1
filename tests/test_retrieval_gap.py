"""retrieval_gap: the share of the exemplar prior its k nearest exemplars carry, against a
float64 brute force written here (all distances, sort, logsumexp)."""
from __future__ import annotations

import math

import pytest
import torch

from exvae_fast.evaluation import retrieval_gap, summarize_gap
from exvae_fast.models import VAE
from exvae_fast.priors import ExemplarPrior, StandardPrior

SHAPE, LATENT, N = (1, 4, 4), 3, 30


def trained_like(num_items: int = N, init_log_var: float = -1.5, refresh: bool = True) -> VAE:
    torch.manual_seed(0)
    exemplars = torch.rand(num_items, 16)
    prior = ExemplarPrior(exemplars, LATENT, k=2, init_log_var=init_log_var)
    model = VAE(prior, input_shape=SHAPE, latent_dim=LATENT)
    if refresh:
        prior.refresh(model.encode)
    return model


def brute_force(model: VAE, x: torch.Tensor, ks, indices, seed: int, batch_size: int):
    """{k: gap_k} by the definition: mixture over every exemplar but the row's own, minus
    the mixture over the k exemplars whose cached means are nearest to mu (float64); x encoded
    and z drawn batch by batch as retrieval_gap does (torch's CPU randn is not split-invariant,
    and a GEMM may round a row differently by the batch's size or the row's position in it:
    one encode of all rows gives mu ~1e-7 off, which the 1e-6 / 1e-9 tolerances below would
    only just absorb, machine-dependently)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        parts = [model.encode(batch) for batch in x.split(batch_size)]
        mu = torch.cat([m for m, _ in parts])
        z = torch.cat([m + torch.exp(0.5 * v) * torch.randn_like(m) for m, v in parts]).double()
        var = math.exp(float(model.prior.log_var))
    means = model.prior.cache.means.double()
    out = {k: torch.empty(x.shape[0], dtype=torch.float64) for k in ks}
    for b in range(x.shape[0]):
        keep = torch.ones(means.shape[0], dtype=torch.bool, device=means.device)
        if indices is not None:
            keep[indices[b]] = False
        others = means[keep]
        log_n = (-((z[b] - others) ** 2).sum(1) / (2 * var)
                 - 0.5 * LATENT * math.log(2 * math.pi * var))
        exact = torch.logsumexp(log_n, 0) - math.log(others.shape[0])
        order = torch.argsort(((mu[b].double() - others) ** 2).sum(1))
        for k in ks:
            out[k][b] = float(exact - (torch.logsumexp(log_n[order[:k]], 0) - math.log(others.shape[0])))
    return out


@pytest.mark.parametrize("leave_one_out", [True, False])
def test_gap_matches_brute_force_and_vanishes_when_every_exemplar_is_retrieved(leave_one_out):
    model = trained_like()
    if leave_one_out:
        rows = torch.tensor([0, 7, 29, 3, 18])
        x, indices, taking_part = model.prior.exemplars[rows], rows, N - 1
    else:
        x, indices, taking_part = torch.rand(6, 16), None, N
    ks = (1, 2, 5, taking_part)
    torch.manual_seed(1)
    gaps = retrieval_gap(model, x, ks, indices=indices, batch_size=4, progress=False)
    expected = brute_force(model, x, ks, indices, seed=1, batch_size=4)
    for k in ks:
        assert gaps[k].dtype == torch.float64 and gaps[k].shape == (x.shape[0],)
        torch.testing.assert_close(gaps[k], expected[k], rtol=1e-6, atol=1e-9)
    assert (gaps[1] > 1e-3).any()  # one neighbour misses mass the test can see
    assert torch.all(gaps[taking_part].abs() < 1e-9)
    for smaller, larger in zip(ks, ks[1:]):
        assert torch.all(gaps[larger] <= gaps[smaller] + 1e-12)
    assert torch.all(gaps[1] >= -1e-12)


def test_summary_statistics():
    gaps = {1: torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)}
    row = summarize_gap(gaps)["1"]
    assert row["mean"] == pytest.approx(1.5) and row["max"] == 3.0 and row["median"] == pytest.approx(1.5)
    assert row["mass"] == pytest.approx(float(torch.exp(-gaps[1]).mean()))
    assert row["p90"] == pytest.approx(2.7) and row["p99"] == pytest.approx(2.97)


def test_rejects_bad_arguments():
    model = trained_like()
    x = model.prior.exemplars[:3]
    with pytest.raises(ValueError, match="ks: expected strictly increasing"):
        retrieval_gap(model, x, (5, 2), progress=False)
    with pytest.raises(ValueError, match="ks: expected a non-empty"):
        retrieval_gap(model, x, (), progress=False)
    with pytest.raises(ValueError, match="ks"):
        retrieval_gap(model, x, (0, 2), progress=False)
    with pytest.raises(ValueError, match=f"only {N - 1} exemplars"):
        retrieval_gap(model, x, (N,), indices=torch.arange(3), progress=False)
    with pytest.raises(ValueError, match="indices"):
        retrieval_gap(model, x, (1,), indices=torch.arange(4), progress=False)
    with pytest.raises(ValueError, match="indices"):
        retrieval_gap(model, x, (1,), indices=torch.tensor([0, 1, N]), progress=False)
    with pytest.raises(TypeError, match="indices"):
        retrieval_gap(model, x, (1,), indices=torch.arange(3).int(), progress=False)
    with pytest.raises(ValueError, match="data"):
        retrieval_gap(model, x[:, :10], (1,), progress=False)
    with pytest.raises(ValueError, match="never written"):
        retrieval_gap(trained_like(refresh=False), x, (1,), progress=False)
    standard = VAE(StandardPrior(LATENT), input_shape=SHAPE, latent_dim=LATENT)
    with pytest.raises(TypeError, match="ExemplarPrior"):
        retrieval_gap(standard, x, (1,), progress=False)


@pytest.mark.gpu
def test_cuda_gap_matches_brute_force():
    """On CUDA the neighbours come from the fused kNN search; the gap still matches the float64
    definition (and the brute force draws z the same way on the same device)."""
    model = trained_like(num_items=200).cuda()
    model.prior.refresh(model.encode)
    rows = torch.arange(0, 200, 7, device="cuda")
    x, ks = model.prior.exemplars[rows], (1, 10, 199)
    torch.manual_seed(3)
    gaps = retrieval_gap(model, x, ks, indices=rows, batch_size=500, progress=False)
    expected = brute_force(model, x, ks, rows.cpu(), seed=3, batch_size=500)
    for k in ks:
        torch.testing.assert_close(gaps[k], expected[k].cpu(), rtol=1e-6, atol=1e-7)
