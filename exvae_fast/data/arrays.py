"""Your own images as a data set ("array"): one NumPy .npz file.

Keys: `train` (required), `val` and `test` (optional), and `train_labels`, `val_labels`,
`test_labels` (optional integer class labels >= 0, one per image). Images are uint8 0..255
or floats in [0, 1], laid out as [N, H, W] (grey), [N, C, H, W] or [N, H, W, C] with C = 1
(grey) or 3 (colour); channels-first is assumed when the second axis is 1 or 3. Every split
must have the same image shape.

A split that is not in the file is carved from a seeded permutation of `train`:
`n_validation` / `n_test` images (default: a tenth of them each, at least one); asking for
a count of a split that the file holds is an error, not a silent override.

Likelihood: grey images default to Bernoulli with dynamic binarisation (as MNIST: training
images stay grey, val/test are binarised once with the seed), colour images to the 8-bit
discretised logistic, which needs uint8 values. `likelihood` overrides the default.
"""
from __future__ import annotations

import os
import zipfile

import numpy as np
import torch

from .splits import LIKELIHOODS, DataSplits, binarize_once, permutation
from .validate import check_count, require_file

NAME = "array"
SPLITS = ("train", "val", "test")
KEYS = (*SPLITS, *(f"{s}_labels" for s in SPLITS))
CHANNELS = (1, 3)


def _read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    try:
        content = np.load(path, allow_pickle=False)
        if isinstance(content, np.ndarray):  # a .npy file: one array, no split names
            arrays = None
        else:
            with content as f:
                arrays = {key: f[key] for key in f.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        # numpy takes a file that is neither .npz nor .npy for a pickle, and suggests loading it
        # unsafely: say what the file is not instead
        why = ("neither a .npz archive nor a .npy array (numpy would have to unpickle it, which is "
               "never done here)" if "pickle" in str(err) else str(err))
        raise ValueError(f"{NAME}: cannot read {str(path)!r} as a NumPy .npz file: {why}") from err
    if arrays is None:
        raise ValueError(f"{NAME}: {str(path)!r} holds a single array (.npy), not a .npz archive; save the "
                         "images with np.savez(path, train=images, ...)")
    return arrays


def image_layout(array: np.ndarray, key: str) -> tuple[tuple[int, int, int], bool]:
    """((C, H, W), channels_last) of a split's array, or ValueError."""
    if array.ndim == 3:
        return (1, *array.shape[1:]), False
    if array.ndim == 4 and array.shape[1] in CHANNELS:
        return tuple(array.shape[1:]), False
    if array.ndim == 4 and array.shape[3] in CHANNELS:
        return (array.shape[3], *array.shape[1:3]), True
    raise ValueError(f"{NAME}: {key} has shape {array.shape}; expected [N, H, W], [N, C, H, W] or "
                     f"[N, H, W, C] with C in {CHANNELS}")


def unit_float_images(array: np.ndarray, key: str, channels_last: bool) -> torch.Tensor:
    """[N, ...] uint8 or float in [0, 1] -> float32 [N, C*H*W] channel-major."""
    if array.shape[0] < 1:
        raise ValueError(f"{NAME}: {key} holds no images")
    if channels_last:
        array = np.moveaxis(array, -1, 1)
    if array.dtype == np.uint8:
        values = torch.from_numpy(array.reshape(array.shape[0], -1).astype(np.float32)).div_(255.0)
    elif np.issubdtype(array.dtype, np.floating):
        values = torch.from_numpy(array.reshape(array.shape[0], -1).astype(np.float32))
        if not torch.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise ValueError(f"{NAME}: {key} holds floats outside [0, 1] (or NaN/Inf); expected values in "
                             "[0, 1] or uint8 0..255")
    else:
        raise ValueError(f"{NAME}: {key} has dtype {array.dtype}; expected uint8 (0..255) or floats in [0, 1]")
    return values


def _labels(array: np.ndarray, key: str, count: int) -> torch.Tensor:
    if not np.issubdtype(array.dtype, np.integer) or array.shape != (count,):
        raise ValueError(f"{NAME}: {key} must be integers of shape [{count}] (one per image), got "
                         f"{array.dtype} {array.shape}")
    if count and array.min() < 0:
        raise ValueError(f"{NAME}: {key} must be class labels >= 0, got {array.min()}")
    return torch.from_numpy(array.astype(np.int64))


def load_array_dataset(root: str | os.PathLike, *, seed: int, n_validation: int | None = None,
                       n_test: int | None = None, likelihood: str | None = None) -> DataSplits:
    """DataSplits of the images in an .npz file (`root`: the file, or a folder holding data.npz);
    see the module docstring for its keys and conventions."""
    path = require_file(root, NAME, "data.npz")
    content = _read_npz(path)
    unknown = sorted(set(content) - set(KEYS))
    if unknown or "train" not in content:
        raise ValueError(f"{NAME}: {str(path)!r} holds keys {sorted(content)}; expected 'train' and optionally "
                         f"{', '.join(repr(k) for k in KEYS[1:])}")
    orphans = [f"{s}_labels" for s in SPLITS if f"{s}_labels" in content and s not in content]
    if orphans:
        raise ValueError(f"{NAME}: {str(path)!r} holds {', '.join(orphans)} but not the images they label")
    for split, count in (("val", n_validation), ("test", n_test)):
        if count is not None:
            check_count(count, f"n_{'validation' if split == 'val' else 'test'}")
            if split in content:
                raise ValueError(f"{NAME}: {str(path)!r} holds its own {split!r} split; "
                                 f"n_{'validation' if split == 'val' else 'test'} only sizes a split carved from train")
    shape, channels_last = image_layout(content["train"], "train")
    images, labels = {}, {}
    for split in SPLITS:
        if split not in content:
            continue
        split_shape, split_last = image_layout(content[split], split)
        if (split_shape, split_last) != (shape, channels_last):
            raise ValueError(f"{NAME}: {split} images have shape {content[split].shape[1:]}; train's are "
                             f"{content['train'].shape[1:]}")
        images[split] = unit_float_images(content[split], split, channels_last)
        if f"{split}_labels" in content:
            labels[split] = _labels(content[f"{split}_labels"], f"{split}_labels", images[split].shape[0])
    if likelihood is None:
        likelihood = "bernoulli" if shape[0] == 1 else "logistic"
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood: expected one of {LIKELIHOODS} or None, got {likelihood!r}")
    if likelihood == "logistic" and any(content[s].dtype != np.uint8 for s in images):
        raise ValueError(f"{NAME}: the discretised logistic likelihood models 8-bit values; store the images "
                         "as uint8 0..255 (or use likelihood 'bernoulli')")
    _carve(images, labels, seed, n_validation, n_test)
    binarize = likelihood == "bernoulli"
    if binarize:
        for split in ("val", "test"):
            images[split] = binarize_once(images[split], seed, f"{NAME}/{split}")
    return DataSplits(name=NAME, **images, input_shape=shape, likelihood=likelihood, dynamic_binarization=binarize,
                      num_bits=8, **{f"{s}_labels": labels.get(s) for s in SPLITS})


def _carve(images: dict, labels: dict, seed: int, n_validation: int | None, n_test: int | None) -> None:
    """Take the missing val/test splits from a seeded permutation of train, in place."""
    missing = {s: n for s, n in (("val", n_validation), ("test", n_test)) if s not in images}
    if not missing:
        return
    total = images["train"].shape[0]
    sizes = {s: n if n is not None else max(1, total // 10) for s, n in missing.items()}
    if sum(sizes.values()) >= total:
        raise ValueError(f"{NAME}: carving {', '.join(f'{n} {s}' for s, n in sizes.items())} images out of the "
                         f"{total} training images leaves none to train on")
    order = permutation(total, seed, NAME)
    start = total
    for split, size in sizes.items():
        picked = order[start - size:start]
        start -= size
        images[split] = images["train"][picked]
        if "train" in labels:
            labels[split] = labels["train"][picked]
    kept = order[:start]
    images["train"] = images["train"][kept]
    if "train" in labels:
        labels["train"] = labels["train"][kept]
