"""Error types of the ops' argument checks that callers may want to tell apart."""
from __future__ import annotations


class NonFiniteError(ValueError):
    """A tensor an op was given holds NaN or infinity. In training this means the model
    diverged, and the trainer reports it as such (`exvae_fast.train.loop.TrainingDiverged`)."""
