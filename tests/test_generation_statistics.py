"""Generation from the exemplar prior, by its statistics: unconditional samples pick an exemplar
uniformly and draw z ~ N(mu_n, sigma^2 I); exemplar-conditioned samples draw z ~ N(mu_e,
sigma^2 I). An identity decoder (D = d) shows the latents themselves."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from exvae_fast.generation import exemplar_conditioned_samples, sample_images
from exvae_fast.models.base import LatentVariableModel
from exvae_fast.priors import ExemplarPrior

LATENT = 2


class IdentityModel(LatentVariableModel):
    """encode(x) = (x, const); decode(z) = z: the images are the latents."""

    def __init__(self, prior: ExemplarPrior) -> None:
        super().__init__(prior)
        # not a pixel likelihood: the "images" are points in R^2, far apart next to sigma
        self.input_shape, self.latent_dim, self.likelihood = (1, 1, LATENT), LATENT, "identity"
        self.dummy = nn.Parameter(torch.zeros(()))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x + 0 * self.dummy, torch.full_like(x, 3.0)  # a wide q must not be used

    def decode(self, z: Tensor) -> Tensor:
        return z


def make(log_var: float) -> tuple[IdentityModel, Tensor]:
    exemplars = torch.tensor([[-6.0, 0.0], [0.0, 0.0], [6.0, 3.0]])
    prior = ExemplarPrior(exemplars, LATENT, mode="exact", init_log_var=log_var)
    model = IdentityModel(prior)
    prior.refresh(model.encode)
    return model, exemplars


def test_unconditional_samples_pick_exemplars_uniformly_with_the_prior_kernel():
    torch.manual_seed(0)
    model, exemplars = make(math.log(0.25))
    z = sample_images(model, 30000, batch_size=7000)
    nearest = torch.cdist(z, exemplars).argmin(1)
    shares = torch.bincount(nearest, minlength=3).double() / z.shape[0]
    assert torch.allclose(shares, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.015)
    offsets = z - exemplars[nearest]
    assert torch.allclose(offsets.var(0), torch.full((LATENT,), 0.25), rtol=0.05)
    assert offsets.mean(0).abs().max() < 0.02


def test_exemplar_conditioned_samples_use_sigma_not_the_posterior_variance():
    torch.manual_seed(0)
    model, exemplars = make(math.log(0.04))
    out = exemplar_conditioned_samples(model, exemplars, per_exemplar=4000, batch_size=1000)
    assert out.shape == (3, 4000, LATENT)
    assert torch.allclose(out.mean(1), exemplars, atol=0.02)
    assert torch.allclose(out.var(1), torch.full((3, LATENT), 0.04), rtol=0.08)
