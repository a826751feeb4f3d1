"""Figures: pixel-exact image grids (PIL) and training curves (matplotlib, Agg canvas).

Matplotlib is used through `Figure` + `FigureCanvasAgg` only, so importing this module
neither selects a pyplot backend nor touches global pyplot state.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import textwrap
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image
from torch import Tensor

SEPARATOR = 128
"""Grey level (0..255) of the 1-pixel lines between cells and of empty cells: visible on
both black-background digits and bright photographs."""
LEAD_GAP = 4
"""Extra separator pixels after a grid's lead columns (an exemplar or a query, then its
samples or neighbours)."""

LOSS_SERIES = (("train_loss", "train loss", 1.0), ("val_elbo", "validation -ELBO", -1.0))
TERM_SERIES = (("train_kl", "train KL", 1.0), ("train_neg_recon", "train -reconstruction", 1.0),
               ("val_kl", "validation KL", 1.0), ("val_neg_recon", "validation -reconstruction", 1.0))
"""(record key, legend label, sign): the curves drawn in the two panels, in nats."""


def save_image_grid(images: Tensor, image_shape: tuple[int, int, int], path: str | os.PathLike,
                    ncol: int | None = None, scale: int | None = None, lead_columns: int = 0) -> None:
    """Write images as one PNG grid: grey for C=1, RGB for C=3.

    images: [N, D] (laid out row by row, ncol columns, default ceil(sqrt(N))) or
    [R, K, D] (R rows of K columns; ncol must then be None or K), values in [0, 1],
    D = C*H*W. scale: integer upscaling factor (default max(1, 64 // max(H, W)), so a
    28x28 digit is drawn at 56x56). Cells are separated by 1-pixel grey lines, with no
    outer border: the PNG is ncol*W*scale + ncol - 1 pixels wide. lead_columns (0 <= L < ncol):
    the first L columns are set apart by LEAD_GAP more separator pixels (when L > 0), e.g. each
    row's exemplar or query before its samples or neighbours.
    """
    channels, height, width = _check_image_shape(image_shape)
    if not isinstance(images, Tensor) or images.dim() not in (2, 3) or not images.is_floating_point():
        raise ValueError("images: expected a floating tensor of shape [N, D] or [R, K, D]")
    if images.shape[-1] != channels * height * width:
        raise ValueError(f"images: last dimension {images.shape[-1]} does not match image_shape "
                         f"{tuple(image_shape)} (D = {channels * height * width})")
    if images.numel() == 0:
        raise ValueError("images: expected at least one image")
    if not (images.isfinite().all() and images.min() >= 0 and images.max() <= 1):
        raise ValueError("images: expected finite values in [0, 1]")
    if images.dim() == 3:
        if ncol is not None and ncol != images.shape[1]:
            raise ValueError(f"ncol: images are laid out as [R, K, D] with K = {images.shape[1]}, got ncol={ncol}")
        ncol = images.shape[1]
        images = images.flatten(0, 1)
    elif ncol is None:
        ncol = math.ceil(math.sqrt(images.shape[0]))
    elif isinstance(ncol, bool) or not isinstance(ncol, int) or ncol < 1:
        raise ValueError(f"ncol: expected an int >= 1, got {ncol!r}")
    if isinstance(lead_columns, bool) or not isinstance(lead_columns, int) or not 0 <= lead_columns < ncol:
        raise ValueError(f"lead_columns: expected an int in [0, ncol={ncol}), got {lead_columns!r}")
    if scale is None:
        scale = max(1, 64 // max(height, width))
    elif isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale: expected an int >= 1, got {scale!r}")

    pixels = (images.detach().cpu().double() * 255).round().byte().numpy()
    pixels = pixels.reshape(-1, channels, height, width).transpose(0, 2, 3, 1)  # [N, H, W, C]
    pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
    cell_h, cell_w = height * scale, width * scale
    nrow = math.ceil(pixels.shape[0] / ncol)
    gap = LEAD_GAP if lead_columns else 0
    canvas = np.full((nrow * (cell_h + 1) - 1, ncol * (cell_w + 1) - 1 + gap, channels), SEPARATOR, dtype=np.uint8)
    for i, cell in enumerate(pixels):
        column = i % ncol
        top, left = (i // ncol) * (cell_h + 1), column * (cell_w + 1) + (gap if column >= lead_columns else 0)
        canvas[top:top + cell_h, left:left + cell_w] = cell
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas[:, :, 0] if channels == 1 else canvas).save(path, format="PNG")


def _check_image_shape(image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    if (not isinstance(image_shape, (tuple, list)) or len(image_shape) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in image_shape)):
        raise ValueError(f"image_shape: expected (C, H, W) positive ints, got {image_shape!r}")
    if image_shape[0] not in (1, 3):
        raise ValueError(f"image_shape: expected C = 1 (grey) or 3 (RGB), got C = {image_shape[0]}")
    return image_shape[0], image_shape[1], image_shape[2]


def _series(records: list[dict[str, Any]], key: str, sign: float) -> tuple[list[float], list[float]]:
    """(epochs, sign * values) of the records that hold a number under both "epoch" and key."""
    points = [(r["epoch"], sign * r[key]) for r in records
              if _is_number(r.get("epoch")) and _is_number(r.get(key))]
    return [p[0] for p in points], [p[1] for p in points]


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def plot_training_curves(records: list[dict[str, Any]], path: str | os.PathLike,
                         title: str = "Training curves") -> None:
    """Write a PNG of a run's curves versus epoch, from its JSON-lines records.

    Left panel: train loss and validation -ELBO; right panel: KL and -reconstruction
    (train, and validation where logged, dashed), all in nats. Records without "epoch" or a key
    are skipped for that curve; at least one curve must have a point.
    """
    if not isinstance(records, (list, tuple)) or not all(isinstance(r, dict) for r in records):
        raise TypeError("records: expected a list of dicts (the run's JSON-lines records)")
    panels = [[(key, label, *_series(records, key, sign)) for key, label, sign in group]
              for group in (LOSS_SERIES, TERM_SERIES)]
    if not any(xs for panel in panels for _, _, xs, _ in panel):
        keys = [key for key, _, _ in LOSS_SERIES + TERM_SERIES]
        raise ValueError(f"records: no record has a numeric 'epoch' and any of {keys}")
    fig = Figure(figsize=(11, 4.2), constrained_layout=True)
    FigureCanvasAgg(fig)
    for ax, panel, ylabel in zip(fig.subplots(1, 2), panels, ("loss (nats)", "ELBO term (nats)")):
        for key, label, xs, ys in panel:
            if xs:
                ax.plot(xs, ys, linestyle="--" if key.startswith("val_") else "-",
                        marker="o" if len(xs) < 30 else None, markersize=3, label=label)
        ax.set_xlabel("epoch")
        _whole_epoch_ticks(ax, [x for _, _, xs, _ in panel for x in xs])
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if ax.has_data():
            ax.legend(loc="best")
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)


def _whole_epoch_ticks(ax: Any, epochs: list[float]) -> None:
    """Integer epoch ticks (matplotlib would put 2.5 ... or, for one epoch, 0.96 ... 1.04)."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if epochs and max(epochs) - min(epochs) < 4:  # too few integers in range for the locator
        first, last = math.floor(min(epochs)), math.ceil(max(epochs))
        ax.set_xticks(range(first, last + 1))
        ax.set_xlim(first - 0.5, last + 0.5)


def plot_embedding(coords: Tensor, path: str | os.PathLike, labels: Tensor | None = None,
                   class_names: tuple[str, ...] | None = None, title: str = "Latent space") -> None:
    """Write a PNG scatter plot of 2-D points coords [n, 2], coloured by labels int64 [n]
    (one colour per class, legend with `class_names[label]` where given, else the label)."""
    if not isinstance(coords, Tensor) or coords.dim() != 2 or coords.shape[1] != 2 or coords.shape[0] == 0:
        raise ValueError("coords: expected a tensor of shape [n, 2] with n >= 1")
    xy = coords.detach().cpu().double().numpy()
    fig = Figure(figsize=(7.5, 6.5), constrained_layout=True)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    size = max(2.0, min(20.0, 20000.0 / xy.shape[0]))  # dense plots get smaller dots
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=size, alpha=0.7, linewidths=0)
    else:
        if not isinstance(labels, Tensor) or labels.shape != (xy.shape[0],):
            raise ValueError(f"labels: expected a tensor of shape [{xy.shape[0]}] (one per point)")
        classes = labels.detach().cpu().long().numpy()
        unique = np.unique(classes)
        if len(unique) <= 20:
            colours = matplotlib.colormaps["tab10" if len(unique) <= 10 else "tab20"]
        else:  # tab20 would repeat colours (Omniglot's 50 alphabets)
            colours = matplotlib.colormaps["turbo"].resampled(len(unique))
        for i, c in enumerate(unique):
            name = class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c)
            mine = classes == c
            ax.scatter(xy[mine, 0], xy[mine, 1], s=size, alpha=0.7, linewidths=0, color=colours(i % colours.N),
                       label=name)
        many = len(unique) > 20  # beside the axes in columns of 20: inside, it would hide the points
        ax.legend(markerscale=max(1.0, 30.0 / size) ** 0.5, fontsize="small", framealpha=0.8,
                  ncol=math.ceil(len(unique) / 20), **({"loc": "upper left", "bbox_to_anchor": (1.0, 1.0)}
                                                       if many else {"loc": "best"}))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)


def plot_metric_points(panels: dict[str, list[tuple[str, float, float | None]]], path: str | os.PathLike,
                     xlabel: str, title: str) -> None:
    """Write a PNG of one metric, one panel per key of `panels` (e.g. a data set): each entry
    (label, mean, sample std or None) a point with its error bar (points rather than bars, so
    that no axis baseline exaggerates differences)."""
    if not panels or not all(panels.values()):
        raise ValueError("panels: expected at least one panel, each with at least one entry")
    rows = max(len(entries) for entries in panels.values())
    fig = Figure(figsize=(5.5 * len(panels), 0.45 * rows + 1.6), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, entries) in zip(axes, panels.items()):
        y = list(range(len(entries)))[::-1]  # the first entry on top
        errors = [0.0 if e[2] is None else e[2] for e in entries]
        ax.errorbar([e[1] for e in entries], y, xerr=errors, fmt="o", capsize=3)
        ax.set_yticks(y, [e[0] for e in entries], fontsize="small")
        ax.set_ylim(-0.5, len(entries) - 0.5)
        ax.set_xlabel("\n".join(textwrap.wrap(xlabel, 45)))  # a long metric name fits its panel
        ax.set_title(name)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))  # wide numbers ("-100.4") must not collide
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a JSON-lines file of objects (one record per line; blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such JSON-lines file")
    records = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {number}: malformed JSON ({err.msg})") from err
            if not isinstance(record, dict):
                raise ValueError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")
            records.append(record)
    return records
