"""Image grids (pixel-exact), training curves and the JSON-lines reader."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from exvae_fast.plots import LEAD_GAP, SEPARATOR, plot_training_curves, read_jsonl, save_image_grid


def test_grey_grid_size_and_pixels(tmp_path):
    images = torch.zeros(5, 784)
    images[0] = 1.0                   # white
    images[3] = 0.25                  # dark grey: round(63.75) = 64
    path = tmp_path / "grid.png"
    save_image_grid(images, (1, 28, 28), path)  # 3 columns x 2 rows, upscaled x2
    with Image.open(path) as im:
        assert im.mode == "L"
        px = np.asarray(im)
    assert px.shape == (2 * 56 + 1, 3 * 56 + 2)
    assert (px[:56, :56] == 255).all()                  # the white image is white
    assert (px[:56, 57:113] == 0).all()                 # the black one black
    assert (px[:, 56] == SEPARATOR).all() and (px[56, :] == SEPARATOR).all()
    assert (px[57:, :56] == 64).all()                   # image 3 starts the second row
    assert (px[57:, 57:113] == 0).all()
    assert (px[57:, 114:] == SEPARATOR).all()           # empty sixth cell


def test_rgb_grid_rows_columns_and_channel_order(tmp_path):
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 3 * 4 * 5, generator=gen)  # [R=2, K=3, D], C=3, H=4, W=5
    path = tmp_path / "rgb.png"
    save_image_grid(images, (3, 4, 5), path, scale=1)
    with Image.open(path) as im:
        assert im.mode == "RGB"
        px = np.asarray(im)
    assert px.shape == (2 * 4 + 1, 3 * 5 + 2, 3)
    cell = px[5:9, 6:11]                                 # row 1, column 1
    expected = np.round(images[1, 1].double().numpy().reshape(3, 4, 5) * 255).transpose(1, 2, 0)
    np.testing.assert_array_equal(cell, expected)


def test_grid_sets_lead_columns_apart(tmp_path):
    images = torch.stack([torch.ones(2, 4), torch.zeros(2, 4), torch.full((2, 4), 0.5)], dim=1)  # [R=2, K=3, D]
    path = tmp_path / "lead.png"
    save_image_grid(images, (1, 2, 2), path, scale=1, lead_columns=1)
    with Image.open(path) as im:
        px = np.asarray(im)
    assert px.shape == (2 * 2 + 1, 3 * 2 + 2 + LEAD_GAP)
    assert (px[:2, :2] == 255).all() and (px[3:, :2] == 255).all()   # the lead column, unmoved
    assert (px[:, 2:3 + LEAD_GAP] == SEPARATOR).all()                 # 1 + LEAD_GAP pixels after it
    assert (px[:2, 3 + LEAD_GAP:5 + LEAD_GAP] == 0).all()             # the other columns shifted right
    assert (px[:2, 6 + LEAD_GAP:] == 128).all() and (px[:, 5 + LEAD_GAP] == SEPARATOR).all()


def test_grid_default_scale_and_ncol(tmp_path):
    path = tmp_path / "big.png"
    save_image_grid(torch.ones(4, 3 * 64 * 64), (3, 64, 64), path, ncol=4)
    with Image.open(path) as im:
        assert im.size == (4 * 64 + 3, 64)


@pytest.mark.parametrize("images, shape, kwargs, match", [
    (torch.zeros(2, 10), (1, 28, 28), {}, "does not match image_shape"),
    (torch.full((2, 4), 1.5), (1, 2, 2), {}, r"\[0, 1\]"),
    (torch.zeros(2, 3, 4), (1, 2, 2), {"ncol": 2}, "ncol"),
    (torch.zeros(2, 8), (2, 2, 2), {}, "C = 1"),
    (torch.zeros(2, 4), (1, 2, 2), {"scale": 0}, "scale"),
    (torch.zeros(2, 4), (1, 2, 2), {"ncol": 2, "lead_columns": 2}, "lead_columns"),
    (torch.zeros(2, 4), (1, 2, 2), {"lead_columns": -1}, "lead_columns"),
])
def test_grid_rejects_bad_arguments(tmp_path, images, shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        save_image_grid(images, shape, tmp_path / "x.png", **kwargs)
    assert not (tmp_path / "x.png").exists()


def test_training_curves_png(tmp_path):
    records = [
        {"epoch": 1, "train_loss": 120.0, "train_kl": 20.0, "train_neg_recon": 100.0, "val_elbo": -118.0},
        {"epoch": 2, "train_loss": 110.0, "train_kl": 22.0, "train_neg_recon": 88.0},   # no validation
        {"epoch": 3, "train_loss": 105.0, "val_elbo": -107.0, "val_kl": 23.0},
        {"event": "test", "test_elbo": -100.0},                                       # no epoch
    ]
    path = tmp_path / "curves.png"
    plot_training_curves(records, path, title="run 1")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (1100, 420)
        px = np.asarray(im.convert("L"))
    assert px.min() < 100 and px.max() == 255  # curves and text drawn on a white page


def test_training_curves_reject_unplottable_records(tmp_path):
    with pytest.raises(ValueError, match="epoch"):
        plot_training_curves([{"train_loss": 1.0}, {"epoch": 1}], tmp_path / "c.png")
    with pytest.raises(TypeError, match="records"):
        plot_training_curves({"epoch": 1}, tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


def test_importing_plots_leaves_pyplot_alone():
    # a fresh interpreter: other test modules may have imported pyplot in this one
    code = "import sys, exvae_fast.plots; assert 'matplotlib.pyplot' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_read_jsonl(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text(json.dumps({"epoch": 1, "train_loss": 2.5}) + "\n\n" + json.dumps({"epoch": 2}) + "\n")
    assert read_jsonl(path) == [{"epoch": 1, "train_loss": 2.5}, {"epoch": 2}]
    path.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3, \n')
    with pytest.raises(ValueError, match="line 3: malformed JSON"):
        read_jsonl(path)
    path.write_text('{"epoch": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match="line 2: expected a JSON object"):
        read_jsonl(path)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        read_jsonl(tmp_path / "missing.jsonl")


@pytest.mark.parametrize("epochs", [1, 20])
def test_training_curves_tick_whole_epochs(tmp_path, monkeypatch, epochs):
    """Epoch ticks are integers (a one-epoch run had 0.96 ... 1.04, twenty epochs 2.5, 7.5)."""
    from matplotlib.figure import Figure

    drawn = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (drawn.append(fig), original(fig, *a, **k))[1])
    records = [{"epoch": e, "train_loss": 100.0 / e, "val_elbo": -100.0 / e, "train_kl": 1.0 * e,
                "train_neg_recon": 90.0} for e in range(1, epochs + 1)]
    plot_training_curves(records, tmp_path / "c.png")
    (fig,) = drawn
    for ax in fig.axes:
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
