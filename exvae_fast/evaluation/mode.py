"""How evaluation and generation touch a model: eval mode without gradients, restored
afterwards, and the plumbing shared by every evaluator (argument checks, the model's
device, batched iteration with an optional progress bar)."""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn

from ..models.base import LIKELIHOODS, LatentVariableModel
from ..progress import stage_progress


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
    """Raise a clear error unless data is a floating [N, model.input_dim] tensor, N >= 1,
    without NaN/Inf, and of pixel values in [0, 1] for the library's pixel likelihoods
    (Bernoulli, discretised logistic); one pass over the data.

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
    low, high = (float(v) for v in torch.aminmax(data))
    if not math.isfinite(low) or not math.isfinite(high):
        raise ValueError(f"{name}: contains NaN/Inf")
    if model.likelihood in LIKELIHOODS and not 0 <= low <= high <= 1:
        raise ValueError(f"{name}: expected pixel values in [0, 1] (images in 0..255 divided by 255), "
                         f"got values in [{low:g}, {high:g}]")


def iterate_batches(data: Tensor, batch_size: int, device: torch.device, *,
                    progress: bool = False, desc: str = "") -> Iterator[Tensor]:
    """Consecutive row batches of data [N, D], each moved to `device`: [<=batch_size, D]."""
    starts = range(0, data.shape[0], batch_size)
    with stage_progress(desc, len(starts), progress, label=f"{desc or 'batches'} ({data.shape[0]} rows)") as bar:
        for start in starts:
            yield data[start:start + batch_size].to(device)
            bar.update()
