"""How evaluation and generation touch a model: eval mode without gradients, restored
afterwards, and the plumbing shared by every evaluator (argument checks, the model's
device, batched iteration with an optional progress bar)."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..models.base import LatentVariableModel


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in eval mode under `torch.no_grad()`; on exit (also on an exception)
    give every submodule back the train/eval flag it had on entry, so that callers never
    find their model's mode changed behind their back."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    flags = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            yield model
    finally:
        for module, training in flags:
            module.training = training


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a state-less model."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def check_model(model: LatentVariableModel) -> None:
    """Raise unless model follows the `LatentVariableModel` contract."""
    if not isinstance(model, LatentVariableModel):
        raise TypeError(f"model: expected an exvae_fast LatentVariableModel, got {type(model).__name__}")


def check_data(model: LatentVariableModel, data: Tensor, name: str = "data") -> None:
    """Raise a clear error unless data is a floating [N, model.input_dim] tensor, N >= 1.

    The data may live on any device: evaluators move one batch at a time to the model.
    """
    check_model(model)
    if not isinstance(data, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(data).__name__}")
    if data.dim() != 2 or data.shape[1] != model.input_dim:
        raise ValueError(f"{name}: expected shape [N, {model.input_dim}] (flattened images), "
                         f"got {list(data.shape)}")
    if data.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one row, got none")
    if not data.is_floating_point():
        raise TypeError(f"{name}: expected a floating dtype, got {data.dtype}")


def show_progress(progress: bool) -> bool:
    """Whether to draw a progress bar: only when asked for and stderr is a terminal."""
    return bool(progress) and sys.stderr.isatty()


def log_progress(progress: bool) -> bool:
    """Whether to print plain progress lines instead: asked for, but stderr is not a terminal
    (a log file would fill with a bar's carriage-return updates)."""
    return bool(progress) and not sys.stderr.isatty()


LOG_EVERY_S = 60.0
"""Seconds between progress lines in a log file (the first after that long, none for a
stage that ends sooner)."""


class _LineProgress:
    """`stage_progress`'s reporter for a log file: a line every LOG_EVERY_S seconds with the
    share done and the time left at the rate so far, and one when the stage ends."""

    def __init__(self, desc: str, total: int, unit: str) -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.done = 0
        self.start = self.last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= LOG_EVERY_S and 0 < self.done < self.total:
            self.last = now
            elapsed = now - self.start
            left = elapsed * (self.total - self.done) / self.done
            self._print(f"{100 * self.done / self.total:.0f}% ({self.done}/{self.total} {self.unit}), "
                        f"{elapsed:.0f} s so far, about {left:.0f} s left")

    def close(self) -> None:
        self._print(f"done in {time.perf_counter() - self.start:.1f} s")

    def _print(self, text: str) -> None:
        print(f"{self.desc}: {text}", file=sys.stderr, flush=True)


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass


@contextmanager
def stage_progress(desc: str, total: int, progress: bool, *, unit: str = "batches",
                   label: str | None = None) -> Iterator:
    """Progress of a stage of `total` steps; yields an object whose update(n) counts n done.

    On a terminal a tqdm bar titled `desc`; asked for but stderr not a terminal (a log file,
    a batch job), plain lines headed `label` (default `desc`) every LOG_EVERY_S seconds and
    when the stage ends, never a bar's carriage-return updates; nothing when not asked for."""
    if show_progress(progress):
        with tqdm(total=total, desc=desc, leave=False) as bar:
            yield bar
    elif log_progress(progress):
        lines = _LineProgress(label or desc, total, unit)
        yield lines
        lines.close()
    else:
        yield _NoProgress()


def iterate_batches(data: Tensor, batch_size: int, device: torch.device, *,
                    progress: bool = False, desc: str = "") -> Iterator[Tensor]:
    """Consecutive row batches of data [N, D], each moved to `device`: [<=batch_size, D]."""
    starts = range(0, data.shape[0], batch_size)
    with stage_progress(desc, len(starts), progress, label=f"{desc or 'batches'} ({data.shape[0]} rows)") as bar:
        for start in starts:
            yield data[start:start + batch_size].to(device)
            bar.update()
