"""Gradient-normalised Adam (Yu et al. 2017), the optimiser of the paper (supplement L.2)."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

GRAD_NORM_EPS = 1e-7
"""Added to each gradient's L2 norm before dividing: the value of the VampPrior and Exemplar
VAE reference code (AdamNormGrad). A zero gradient stays zero."""


class NormalizedAdam(torch.optim.Optimizer):
    """Adam fed with per-tensor normalised gradients g / (||g||_2 + GRAD_NORM_EPS).

    Each parameter tensor's gradient is scaled to unit L2 norm, so the step is invariant to
    the scale of the loss. The Adam update then follows torch.optim.Adam (Kingma & Ba,
    Algorithm 1: eps added to the bias-corrected sqrt(v)); the reference code adds eps to
    the uncorrected sqrt(v), a difference of order eps that only matters in the first steps.
    weight_decay is an L2 penalty added to the *normalised* gradient, as in the reference
    code, so its strength does not depend on the gradient's scale.

    State per parameter (self.state[p], so state_dict round trips): "step" (int),
    "exp_avg" and "exp_avg_sq" (tensors like p).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 5e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr: expected a finite float > 0, got {lr!r}")
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"betas: expected a pair (beta1, beta2), got {betas!r}")
        for i, beta in enumerate(betas):
            if not (isinstance(beta, (int, float)) and 0.0 <= beta < 1.0):
                raise ValueError(f"betas[{i}]: expected a float in [0, 1), got {beta!r}")
        if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
            raise ValueError(f"eps: expected a finite float >= 0, got {eps!r}")
        if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay) and weight_decay >= 0):
            raise ValueError(f"weight_decay: expected a finite float >= 0, got {weight_decay!r}")
        defaults = {"lr": float(lr), "betas": (float(betas[0]), float(betas[1])), "eps": float(eps),
                    "weight_decay": float(weight_decay)}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One update of every parameter that has a gradient; returns closure() if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("NormalizedAdam does not support sparse gradients")
                if torch.is_complex(p):
                    raise RuntimeError("NormalizedAdam does not support complex parameters")
                grad = p.grad
                # The norm is taken in fp32 at least, so fp16/bf16 gradients cannot overflow it.
                norm = torch.linalg.vector_norm(grad, dtype=torch.promote_types(grad.dtype, torch.float32))
                grad = grad / (norm + GRAD_NORM_EPS).to(grad.dtype)
                if group["weight_decay"] != 0:
                    grad = grad.add(p, alpha=group["weight_decay"])

                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                t = state["step"]

                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                bias_correction1 = 1 - beta1**t
                bias_correction2 = 1 - beta2**t
                denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(group["eps"])
                p.addcdiv_(exp_avg, denom, value=-group["lr"] / bias_correction1)
        return loss
