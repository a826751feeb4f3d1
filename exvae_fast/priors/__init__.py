"""Priors over the top latent layer: nn.Modules with `log_prob(z, ...)` and `sample(n)`."""
from .base import Prior
from .exemplar import ExemplarPrior
from .mog import MoGPrior
from .standard import StandardPrior
from .vamp import VampPrior

__all__ = ["Prior", "StandardPrior", "MoGPrior", "VampPrior", "ExemplarPrior"]
