"""2-D pictures of the latent space: PCA exactness, t-SNE keeps clusters apart, the plot."""
from __future__ import annotations

import sys

import pytest
import torch
from PIL import Image

from exvae_fast.evaluation import embed_2d
from exvae_fast.plots import plot_embedding


def clusters(n_per=40, d=40, classes=3, spread=0.3, seed=0):
    """Well-separated Gaussian clusters in d dimensions: ([n, d] float32, labels [n])."""
    g = torch.Generator().manual_seed(seed)
    centres = 5.0 * torch.randn(classes, d, generator=g)
    labels = torch.arange(classes).repeat_interleave(n_per)
    return centres[labels] + spread * torch.randn(labels.numel(), d, generator=g), labels


def nearest_label_agreement(coords, labels):
    """Share of points whose nearest other point (in 2-D) has the same label."""
    dist = torch.cdist(coords.double(), coords.double())
    dist.fill_diagonal_(float("inf"))
    return float((labels[dist.argmin(1)] == labels).double().mean())


def test_pca_recovers_a_planar_point_set_up_to_rotation():
    g = torch.Generator().manual_seed(1)
    plane = torch.randn(60, 2, generator=g, dtype=torch.float64) * torch.tensor([3.0, 1.0], dtype=torch.float64)
    basis, _ = torch.linalg.qr(torch.randn(10, 2, generator=g, dtype=torch.float64))
    points = plane @ basis.T + 7.0  # a plane in 10-d, off the origin
    coords = embed_2d(points, "pca").double()
    torch.testing.assert_close(torch.cdist(coords, coords), torch.cdist(plane, plane), atol=1e-4, rtol=1e-5)
    assert coords.var(0)[0] > coords.var(0)[1]  # the leading axis first
    assert torch.equal(coords, embed_2d(-(-points), "pca").double())  # deterministic signs


def test_pca_of_one_dimensional_points_pads_a_zero_axis():
    coords = embed_2d(torch.tensor([[1.0], [2.0], [4.0]]), "pca")
    assert coords.shape == (3, 2) and torch.equal(coords[:, 1], torch.zeros(3))
    torch.testing.assert_close(coords[:, 0], torch.tensor([-4.0, -1.0, 5.0]) / 3)


def test_tsne_keeps_clusters_apart():
    pytest.importorskip("sklearn", reason="scikit-learn is in the test extras; t-SNE needs it")
    points, labels = clusters()
    coords = embed_2d(points, "tsne", perplexity=10, seed=0)
    assert coords.shape == (120, 2) and coords.dtype == torch.float32 and torch.isfinite(coords).all()
    assert nearest_label_agreement(coords, labels) == 1.0
    # the same seed gives the same picture
    torch.testing.assert_close(coords, embed_2d(points, "tsne", perplexity=10, seed=0))


def test_tsne_without_scikit_learn_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)
    with pytest.raises(ImportError, match=r"exvae-fast\[viz\]"):
        embed_2d(torch.randn(10, 3), "tsne", perplexity=3)


@pytest.mark.parametrize("points, kwargs, message", [
    (torch.randn(10, 3), {"method": "umap"}, "method"),
    (torch.randn(10), {}, "points"),
    (torch.randn(1, 3), {}, "points"),
    (torch.tensor([[0.0, float("nan")], [1.0, 2.0]]), {"method": "pca"}, "NaN"),
    (torch.randn(10, 3), {"perplexity": 10}, "perplexity"),
    (torch.randn(10, 3), {"perplexity": float("nan")}, "perplexity"),
])
def test_bad_input_names_the_argument(points, kwargs, message):
    with pytest.raises(ValueError, match=message):
        embed_2d(points, **kwargs)


def test_plot_embedding_writes_a_png(tmp_path):
    points, labels = clusters(n_per=5)
    coords = embed_2d(points, "pca")
    plot_embedding(coords, tmp_path / "labelled.png", labels, ("zero", "one", "two"))
    plot_embedding(coords, tmp_path / "plain.png")
    for name in ("labelled.png", "plain.png"):
        with Image.open(tmp_path / name) as img:
            assert img.size == (750, 650)
    with pytest.raises(ValueError, match="labels"):
        plot_embedding(coords, tmp_path / "x.png", labels[:3])
    with pytest.raises(ValueError, match="coords"):
        plot_embedding(coords[:, :1], tmp_path / "x.png")
