"""VampPrior (Tomczak & Welling, 2018): a mixture of the variational posteriors of K
learned pseudo-inputs, optionally sub-sampled per step (paper, appendix K)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Encoder, Prior, check_count
from .diag_mixture import ComponentSubsampling, log_mixture_diag, sample_diag_mixture

# Initialisation of the pseudo-inputs: N(0.05, 0.01^2) pixels. A deliberate deviation:
# VampPrior's code (and the Exemplar VAE code) default to N(-0.05, 0.01^2) under a
# hardtanh(0, 1), which sets every pseudo-input to 0 with a zero gradient, so they never
# move (a single frozen component); +0.05 keeps them inside the clamp and trainable.
PSEUDO_INPUT_MEAN = 0.05
PSEUDO_INPUT_STD = 0.01


class VampPrior(Prior):
    """r(z) = 1/K sum_k q(z | u_k) with pseudo-inputs u_k [K, D] clamped to [0, 1].

    The pseudo-inputs are parameters of this module; the encoder is passed at each call.
    `init` ([K, D], e.g. random training images) replaces the default N(0.05, 0.01)
    initialisation (see PSEUDO_INPUT_MEAN for why not VampPrior's default N(-0.05, 0.01)).
    """

    def __init__(self, latent_dim: int, input_dim: int, num_components: int = 500,
                 components_per_step: int | None = None, init: Tensor | None = None) -> None:
        super().__init__()
        self.latent_dim = check_count(latent_dim, "latent_dim")
        check_count(input_dim, "input_dim")
        self.subsampling = ComponentSubsampling(num_components, components_per_step)
        if init is None:
            init = PSEUDO_INPUT_MEAN + PSEUDO_INPUT_STD * torch.randn(num_components, input_dim)
        elif not isinstance(init, Tensor) or not init.is_floating_point():
            raise TypeError(f"init: expected a floating tensor [{num_components}, {input_dim}], got "
                            f"{init.dtype if isinstance(init, Tensor) else type(init).__name__}")
        elif init.shape != (num_components, input_dim):
            raise ValueError(f"init: expected shape [{num_components}, {input_dim}], got {list(init.shape)}")
        self.pseudo_inputs_raw = nn.Parameter(init.detach().clone().float())

    @property
    def pseudo_inputs(self) -> Tensor:
        """[K, D] pseudo-inputs in [0, 1] (hard-tanh to the pixel range, as VampPrior).

        Same forward values as VampPrior's hardtanh(0, 1); the gradient differs only at
        exactly 0 or 1, where clamp passes it and hardtanh does not (so an `init` of binary
        images stays trainable here, while it would be frozen in VampPrior's code).
        """
        return self.pseudo_inputs_raw.clamp(0.0, 1.0)

    def _components(self, encoder: Encoder | None, subset: Tensor | None) -> tuple[Tensor, Tensor]:
        if encoder is None:
            raise ValueError("encoder: VampPrior needs the model's encoder (pass encoder=model.encode)")
        u = self.pseudo_inputs if subset is None else self.pseudo_inputs[subset]
        return encoder(u)

    def log_prob(self, z: Tensor, *, encoder: Encoder | None = None,
                 query: Tensor | None = None, indices: Tensor | None = None) -> Tensor:
        self.check_latents(z)
        means, log_vars = self._components(encoder, self.subsampling.draw(self.training, z.device))
        return log_mixture_diag(z, means, log_vars)

    def sample(self, n: int, *, encoder: Encoder | None = None) -> Tensor:
        with torch.no_grad():
            means, log_vars = self._components(encoder, None)
            return sample_diag_mixture(self, means, log_vars, n)
