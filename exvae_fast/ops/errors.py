"""Error types of the ops' argument checks that callers may want to tell apart."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class NonFiniteError(ValueError):
    """A tensor an op was given holds NaN or infinity. In training this means the model
    diverged, and the trainer reports it as such (`exvae_fast.train.loop.TrainingDiverged`).
    `argument`: the name of the op's argument that held it (None when not one argument), so
    that a caller passing its own state (a cache, an encoder's output) can say which."""

    def __init__(self, message: str, argument: str | None = None) -> None:
        super().__init__(message)
        self.argument = argument


@contextmanager
def blame_non_finite(argument: str, message: str) -> Iterator[None]:
    """Re-raise a NonFiniteError about an op's `argument` with `message`: the caller's own
    name for what it passed there (the latent cache, an encoder's output)."""
    try:
        yield
    except NonFiniteError as error:
        if error.argument != argument:
            raise
        raise NonFiniteError(message) from error
