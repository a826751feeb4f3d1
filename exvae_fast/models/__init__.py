"""The paper's models (supplement L.1): encoder/decoder pairs with a pluggable prior over
the top latent layer. Images travel flattened, x [B, D] in [0, 1]."""
from .base import ELBOTerms, LatentVariableModel, PosteriorSample
from .celeba import CelebAVAE
from .conv_hvae import ConvHVAE
from .hvae import HVAE
from .pixel_hvae import PixelHVAE
from .registry import MODEL_NAMES, build_model
from .vae import VAE

__all__ = ["LatentVariableModel", "PosteriorSample", "ELBOTerms", "VAE", "HVAE", "ConvHVAE", "PixelHVAE",
           "CelebAVAE", "build_model", "MODEL_NAMES"]
