"""Sampling from trained models (paper Figures 1-4, supplement G) and exemplar-based data
augmentation (paper section 5 / supplement M).

Every function runs under `evaluation_mode` (no gradients; the caller's train/eval flags
are restored afterwards), decodes at most `batch_size` latents per decoder call and
returns images flattened to D = C*H*W with values in [0, 1], on the CPU.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .atomic_io import atomic_write
from .data.arrays import CHANNELS, image_layout, unit_float_images
from .evaluation.mode import check_data, check_model, evaluation_mode, iterate_batches, model_device
from .models.base import LatentVariableModel
from .priors.base import check_count


def _decode(model: LatentVariableModel, z: Tensor, batch_size: int) -> Tensor:
    """Decode z [M, d] in chunks of batch_size rows -> images [M, D] on the model's device."""
    return torch.cat([model.decode(z[i:i + batch_size]) for i in range(0, z.shape[0], batch_size)])


def _samples_near(model: LatentVariableModel, x: Tensor, per_exemplar: int, batch_size: int) -> Tensor:
    """Decoded draws of z near each row of x [E, D] -> [E, per_exemplar, D] (model device)."""
    mu, log_var = model.encode(x)
    z = model.prior.sample_near(mu, log_var, per_exemplar)
    expected = (x.shape[0], per_exemplar, mu.shape[1])
    if z.shape != expected:
        raise RuntimeError(f"prior.sample_near returned shape {list(z.shape)}; expected {list(expected)}")
    return _decode(model, z.reshape(-1, z.shape[-1]), batch_size).view(x.shape[0], per_exemplar, -1)


def sample_images(model: LatentVariableModel, n: int, batch_size: int = 500) -> Tensor:
    """n images from the model's prior: z ~ r(z), x = decode(z) -> [n, D].

    For the exemplar prior, r(z) picks random exemplars and perturbs their encodings.
    """
    check_model(model)
    check_count(n, "n")
    check_count(batch_size, "batch_size")
    chunks = []
    with evaluation_mode(model):
        for start in range(0, n, batch_size):
            z = model.prior.sample(min(batch_size, n - start), encoder=model.encode)
            chunks.append(model.decode(z).cpu())
    return torch.cat(chunks)


def exemplar_conditioned_samples(model: LatentVariableModel, exemplars: Tensor, per_exemplar: int,
                                 batch_size: int = 500, *, progress: bool = False) -> Tensor:
    """per_exemplar samples generated around each exemplar [E, D] -> [E, per_exemplar, D].

    z ~ prior.sample_near(encode(exemplar)): the exemplar prior's shared kernel
    N(mu_phi(x), sigma^2 I) (paper Figure 2); other priors use the posterior q(z | x).
    Exemplars are encoded max(1, batch_size // per_exemplar) at a time, so that one
    exemplar batch's images on the device stay near batch_size rows.
    """
    check_data(model, exemplars, "exemplars")
    check_count(per_exemplar, "per_exemplar")
    check_count(batch_size, "batch_size")
    batches = iterate_batches(exemplars, max(1, batch_size // per_exemplar), model_device(model),
                              progress=progress, desc="exemplar samples")
    with evaluation_mode(model):
        return torch.cat([_samples_near(model, x, per_exemplar, batch_size).cpu() for x in batches])


def iterative_generation(model: LatentVariableModel, start: Tensor, steps: int,
                         batch_size: int = 500) -> Tensor:
    """Chains x_{t+1} = decode(z), z ~ prior.sample_near(encode(x_t)), from x_0 = start
    [E, D] (exemplars or noise images; supplement G) -> [steps + 1, E, D], x_0 included."""
    check_data(model, start, "start")
    check_count(steps, "steps")
    check_count(batch_size, "batch_size")
    device = model_device(model)
    columns = []
    with evaluation_mode(model):
        for x in iterate_batches(start, batch_size, device):
            chain = [x.cpu()]
            for _ in range(steps):
                x = _samples_near(model, x, 1, batch_size)[:, 0]
                chain.append(x.cpu())
            columns.append(torch.stack(chain))
    return torch.cat(columns, dim=1)


def augment_dataset(model: LatentVariableModel, images: Tensor, labels: Tensor | None, per_example: int,
                    batch_size: int = 500, *, progress: bool = True) -> tuple[Tensor, Tensor | None]:
    """Exemplar-conditioned samples of every training image, labelled like their exemplar.

    images [N, D], labels [N] (integer) or None -> (aug_images [N * per_example, D],
    aug_labels [N * per_example] int64 or None); rows i * per_example ... (i + 1) *
    per_example - 1 come from image i. A classifier is then trained on real + augmented
    data (paper section 5.3, supplement M).
    """
    check_data(model, images, "images")
    check_count(per_example, "per_example")
    if labels is not None:
        _check_labels(labels, images.shape[0])
    samples = exemplar_conditioned_samples(model, images, per_example, batch_size, progress=progress)
    aug_labels = None if labels is None else labels.cpu().long().repeat_interleave(per_example)
    return samples.flatten(0, 1), aug_labels


def _check_labels(labels: Tensor, count: int) -> None:
    if not isinstance(labels, Tensor) or labels.shape != (count,):
        shape = list(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels: expected a tensor of shape [{count}], got {shape}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels: expected an integer dtype, got {labels.dtype}")


def _check_input_shape(input_shape: tuple[int, int, int], dim: int) -> tuple[int, int, int]:
    """(C, H, W) as ints, or ValueError: three positive sizes, C in CHANNELS, C*H*W = dim."""
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list, torch.Size)) else ()
    if len(shape) != 3 or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in shape):
        raise ValueError(f"input_shape: expected three positive integers (C, H, W), got {input_shape!r}")
    if shape[0] not in CHANNELS:
        raise ValueError(f"input_shape: expected C in {CHANNELS} (grey or colour), got {shape}")
    if shape[0] * shape[1] * shape[2] != dim:
        raise ValueError(f"input_shape: {shape} holds {shape[0] * shape[1] * shape[2]} values per image; "
                         f"the images have D = {dim}")
    return shape


def save_augmented(path: str | os.PathLike, images: Tensor, labels: Tensor | None,
                   input_shape: tuple[int, int, int]) -> None:
    """Write images [M, D] in [0, 1] (D = C*H*W, channel-major) and labels [M] (or None)
    as an `array` data set file (`exvae_fast.data.arrays`), trainable as it is.

    input_shape: (C, H, W), C = 1 or 3, e.g. `model.input_shape`. Stored as "train" uint8
    (round(255 x)) shaped [M, H, W] for grey images and [M, C, H, W] for colour ones --
    channels first, since the reader takes a second axis of 1 or 3 for channels, which
    [M, H, W, C] with H = 1 or 3 would break -- and "train_labels" int64 >= 0 (absent for
    None). The file is written to a temporary name in the same folder and moved into place
    with os.replace, so a crash never leaves a truncated file at `path`.
    """
    if not isinstance(images, Tensor) or images.dim() != 2 or not images.is_floating_point():
        raise ValueError("images: expected a floating tensor of shape [M, D]")
    if images.shape[0] < 1:
        raise ValueError("images: expected at least one image (the array reader refuses an empty train split)")
    channels, height, width = _check_input_shape(input_shape, images.shape[1])
    if not (torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1):
        raise ValueError("images: expected finite values in [0, 1]")
    layout = (height, width) if channels == 1 else (channels, height, width)
    pixels = (images.detach().cpu().double() * 255).round().to(torch.uint8)
    arrays = {"train": pixels.reshape(images.shape[0], *layout).numpy()}
    if labels is not None:
        _check_labels(labels, images.shape[0])
        if labels.min() < 0:  # the reader takes class labels >= 0 only
            raise ValueError(f"labels: expected class labels >= 0, got {int(labels.min())}")
        arrays["train_labels"] = labels.detach().cpu().long().numpy()
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def load_augmented(path: str | os.PathLike) -> tuple[Tensor, Tensor | None]:
    """Read a `save_augmented` file -> (images [M, D] float32 in [0, 1], labels [M] int64 or None).

    Takes the current layout ("train" uint8 [M, H, W], [M, C, H, W] or [M, H, W, C], read as
    the array reader reads it; "train_labels") and
    that of earlier versions ("images" uint8 [M, D], "labels"). To read the file as a data
    set, with its image shape and splits, use `load_dataset("array", path)` instead.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no augmented data set at {path}")
    with np.load(path, allow_pickle=False) as archive:
        if "train" in archive.files:  # read as the array reader does (channels-last too)
            key, label_key, ranks = "train", "train_labels", (3, 4)
        else:
            key, label_key, ranks = "images", "labels", (2,)
        pixels = archive[key] if key in archive.files else None
        if pixels is None or pixels.dtype != np.uint8 or pixels.ndim not in ranks:
            raise ValueError(f"{path}: expected a uint8 'train' array of shape [M, H, W], [M, C, H, W] or "
                             "[M, H, W, C] (or an older file's 'images' [M, D])")
        if key == "train":
            images = unit_float_images(pixels, key, image_layout(pixels, key)[1])
        else:
            images = torch.from_numpy(pixels.astype(np.float32) / 255.0)
        labels = torch.from_numpy(archive[label_key].astype(np.int64)) if label_key in archive.files else None
    if labels is not None and labels.shape != (images.shape[0],):
        raise ValueError(f"{path}: '{label_key}' has shape {list(labels.shape)}; expected [{images.shape[0]}]")
    return images, labels
