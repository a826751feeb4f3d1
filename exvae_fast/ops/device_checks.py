"""Data-dependent argument checks read back in one transfer.

Checking that indices lie in range or that values are finite needs the tensors' data: on
an accelerator each such check, read on its own, is a device-to-host copy that waits for
the device (tens of microseconds of latency per check, more than a small kernel takes).
`DeviceChecks` computes every check of one call on the device, reads all the verdicts with
one copy, and raises the ValueError of the first failing check (NonFiniteError for NaN/Inf),
in the order the checks were added, with the same messages as the one-at-a-time checks of
`validation`.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .errors import NonFiniteError

Message = Callable[[list[int]], "str | None"]


class DeviceChecks:
    """Checks gathered as 0-dim device integers; `verify()` reads them and raises.

    All tensors given to one instance must live on one device. A check may compute on data
    that an earlier check rejects (e.g. index with out-of-range indices): such computations
    clamp their inputs, and the earlier check's error is the one raised.
    """

    def __init__(self) -> None:
        self._values: list[Tensor] = []
        self._rules: list[tuple[int, int, Message, Callable[[str], ValueError]]] = []

    def _add(self, values: list[Tensor], message: Message,
             error: Callable[[str], ValueError] = ValueError) -> None:
        start = len(self._values)
        self._values += [v.reshape(()).to(torch.int64) for v in values]
        self._rules.append((start, len(self._values), message, error))

    def finite(self, x: Tensor, name: str) -> None:
        """x holds no NaN or infinity (else NonFiniteError naming it)."""
        self._add([torch.isfinite(x).all()], lambda v: None if v[0] else f"{name} contains NaN/Inf",
                  lambda message: NonFiniteError(message, argument=name))

    def in_range(self, x: Tensor, name: str, size: int, *, allow_none: bool = False) -> None:
        """Every entry of the index tensor x lies in [0, size) (or is -1 with allow_none)."""
        if x.numel() == 0:
            return
        low = -1 if allow_none else 0

        def message(v: list[int]) -> str | None:
            lo, hi = v
            if lo < low or hi >= size:
                # formatted here, on failure only: under torch.compile, formatting a
                # symbolic size would specialise it (a recompile for every new size)
                allowed = f"[0, {size})" + (" or -1 for none" if allow_none else "")
                return f"{name}: indices must lie in {allowed}, got values in [{lo}, {hi}]"
            return None

        self._add([x.min(), x.max()], message)

    def unique(self, x: Tensor, name: str) -> None:
        """The 1-D index tensor x repeats no value."""
        if x.numel() < 2:
            return
        ordered = torch.sort(x).values
        self.condition((ordered[1:] == ordered[:-1]).any(), f"{name}: expected unique indices, got duplicates")

    def condition(self, failed: Tensor, message: str) -> None:
        """A 0-dim bool tensor that is True when the check fails."""
        self._add([failed], lambda v: message if v[0] else None)

    def first_row(self, bad: Tensor, message: Callable[[int, int], str], detail: Tensor | None = None) -> None:
        """bad: bool [B], True for rows that fail; message(row, detail[row]) names the first
        (detail: int [B], or None and 0 is passed)."""
        if bad.numel() == 0:
            return
        row = torch.argmax(bad.to(torch.int32))
        extra = [detail[row]] if detail is not None else [row * 0]
        self._add([bad.any(), row, *extra], lambda v: message(v[1], v[2]) if v[0] else None)

    def verify(self) -> None:
        """Read every verdict (one device-to-host copy) and raise the first failure."""
        if not self._values:
            return
        host = torch.stack(self._values).tolist()
        for start, stop, message, make_error in self._rules:
            error = message(host[start:stop])
            if error is not None:
                raise make_error(error)
