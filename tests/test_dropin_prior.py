"""ExemplarPrior as a drop-in prior for a model that is not one of exvae_fast.models: the
README's "With your own model" recipe, step by step."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import exvae_fast as ex


class TinyVAE(nn.Module):
    """A user's own VAE: any encoder returning (mu, log_var) works with the prior."""

    def __init__(self, dim: int = 20, latent: int = 4) -> None:
        super().__init__()
        self.enc = nn.Linear(dim, 2 * latent)
        self.dec = nn.Linear(latent, dim)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_var = self.enc(x).chunk(2, dim=1)
        return mu, log_var.clamp(-6, 2)


def neg_elbo(model: TinyVAE, prior: ex.priors.ExemplarPrior, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    mu, log_var = model.encode(x)
    z = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)
    recon = -F.binary_cross_entropy_with_logits(model.dec(z), x, reduction="none").sum(1)
    log_q = (-0.5 * (math.log(2 * math.pi) + log_var + (z - mu) ** 2 / log_var.exp())).sum(1)
    log_r = prior.log_prob(z, encoder=model.encode, query=mu, indices=idx)  # [B]
    return -(recon - log_q + log_r).mean()


@pytest.mark.parametrize("mode", ["retrieval", "exact"])
def test_exemplar_prior_trains_a_model_of_your_own(mode):
    torch.manual_seed(0)
    data = (torch.rand(200, 20) < torch.linspace(0.1, 0.9, 20)).float()
    model = TinyVAE()
    prior = ex.priors.ExemplarPrior(data, latent_dim=4, mode=mode, k=5, num_exemplars=100)
    params = list(model.parameters()) + list(prior.parameters())  # the prior learns log sigma^2
    opt = torch.optim.Adam(params, lr=1e-2)
    prior.refresh(model.encode)  # Algorithm 1: fill the latent cache once per epoch
    assert prior.cache.is_complete
    start = None
    for step in range(60):
        idx = torch.randperm(200)[:25]
        loss = neg_elbo(model, prior, data[idx], idx)
        opt.zero_grad()
        loss.backward()
        assert prior.log_var.grad is not None and model.enc.weight.grad.abs().sum() > 0
        opt.step()
        prior.cache.advance()
        start = float(loss.detach()) if start is None else start
        if step % 20 == 19:
            prior.refresh(model.encode)
    assert float(loss.detach()) < start  # it learns
    assert prior.cache.step == 60 and prior.cache.mean_staleness() >= 0
    # evaluation: the whole training set is the mixture, no leave-one-out, no gradient
    model.eval()
    prior.eval()
    with torch.no_grad():
        mu, _ = model.encode(data[:10])
        log_r = prior.log_prob(mu)
    assert log_r.shape == (10,) and torch.isfinite(log_r).all()
    assert prior.sample(7).shape == (7, 4)
