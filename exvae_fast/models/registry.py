"""Build a model by name: the entry point the training and evaluation code uses."""
from __future__ import annotations

from ..priors.base import Prior
from .base import LatentVariableModel
from .celeba import CelebAVAE
from .conv_hvae import ConvHVAE
from .hvae import HVAE
from .pixel_hvae import PixelHVAE
from .vae import VAE

MODEL_NAMES = ("vae", "hvae", "convhvae", "pixelhvae", "celeba")


def build_model(name: str, prior: Prior, input_shape: tuple[int, int, int], latent_dim: int,
                likelihood: str, num_bits: int = 8) -> LatentVariableModel:
    """The model `name` (one of MODEL_NAMES) with `prior` over its top layer.

    Two-level models get z1_dim = latent_dim (40 and 40 in the paper). num_bits is the
    discretisation of the logistic likelihood (ignored for "bernoulli"); "celeba" only
    supports likelihood="logistic".
    """
    if name == "vae":
        return VAE(prior, input_shape, latent_dim, likelihood, num_bits)
    if name == "hvae":
        return HVAE(prior, input_shape, latent_dim, latent_dim, likelihood, num_bits)
    if name == "convhvae":
        return ConvHVAE(prior, input_shape, latent_dim, latent_dim, likelihood, num_bits)
    if name == "pixelhvae":
        return PixelHVAE(prior, input_shape, latent_dim, latent_dim, likelihood, num_bits)
    if name == "celeba":
        if likelihood != "logistic":
            raise ValueError(f"likelihood: the celeba model is discretised-logistic only, got {likelihood!r}")
        return CelebAVAE(prior, input_shape, latent_dim, num_bits)
    raise ValueError(f"name: expected one of {', '.join(MODEL_NAMES)}, got {name!r}")
