"""The two-level MLP HVAE of the paper (supplement L.1 b; VampPrior models/HVAE_2level.py)."""
from __future__ import annotations

from torch import nn

from .layers import HIDDEN, GatedDense, LikelihoodHead
from .two_level import FeatureDecoder, TwoLevelDecoder, TwoLevelVAE


class HVAE(TwoLevelVAE):
    """Two stochastic layers, all networks gated MLPs with 300 units.

    q(z2 | x): GatedDense D-300-300 -> heads.  q(z1 | x, z2): {GatedDense(D, 300),
    GatedDense(z2, 300)} -> GatedDense(600, 300) -> heads.  p(z1 | z2): GatedDense z2-300-300
    -> heads.  p(x | z1, z2): {GatedDense(z1, 300), GatedDense(z2, 300)} -> GatedDense(600, 300)
    -> Linear(300, D) + Sigmoid (and Linear + Hardtanh(-4.5, 0) log-scale for "logistic").
    """

    def _make_encoders(self) -> tuple[nn.Module, int, nn.Module, int]:
        d = self.input_dim
        return nn.Sequential(GatedDense(d, HIDDEN), GatedDense(HIDDEN, HIDDEN)), HIDDEN, GatedDense(d, HIDDEN), HIDDEN

    def _make_decoder(self) -> TwoLevelDecoder:
        head = LikelihoodHead(lambda: nn.Linear(HIDDEN, self.input_dim), self.likelihood, self.num_bits)
        return FeatureDecoder(self.z1_dim, self.latent_dim, GatedDense(2 * HIDDEN, HIDDEN), head)
