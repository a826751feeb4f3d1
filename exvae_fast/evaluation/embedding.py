"""Two-dimensional pictures of the latent space (the paper's t-SNE figures: Figure 5 for
MNIST, supplement Table 4 for Fashion-MNIST test points coloured by their labels).

t-SNE is scikit-learn's (Barnes-Hut, PCA initialisation, learning rate "auto"); it is an
optional dependency (`pip install -e ".[viz]"`). PCA needs nothing beyond torch.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

METHODS = ("tsne", "pca")
METHOD_NAMES = {"tsne": "t-SNE", "pca": "PCA"}  # as written in titles and messages


def embed_2d(points: Tensor, method: str = "tsne", *, perplexity: float = 30.0, seed: int = 0) -> Tensor:
    """points [n, d] (e.g. posterior means) -> float32 [n, 2] on the CPU.

    "pca": projection onto the two leading principal axes (float64 SVD of the centred
    points; the sign of each axis fixed so that its largest loading is positive; a zero
    second coordinate when d = 1). "tsne": scikit-learn's t-SNE with the given perplexity
    (effective number of neighbours, 5-50 usual; must be below n) and seed.
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if not isinstance(points, Tensor) or points.dim() != 2 or not points.is_floating_point():
        raise ValueError("points: expected a floating tensor of shape [n, d]")
    n = points.shape[0]
    if n < 2 or points.shape[1] < 1:
        raise ValueError(f"points: expected at least 2 rows and 1 column, got {list(points.shape)}")
    if not torch.isfinite(points).all():
        raise ValueError("points: contains NaN/Inf")
    x = points.detach().to("cpu", torch.float64)
    if method == "pca":
        return _pca(x).float()
    if isinstance(perplexity, bool) or not isinstance(perplexity, (int, float)) or not math.isfinite(perplexity) \
            or not 0 < perplexity < n:
        raise ValueError(f"perplexity: expected a number in (0, {n}) (below the number of points), got {perplexity!r}")
    try:
        from sklearn.manifold import TSNE
    except ImportError as e:
        raise ImportError("method='tsne' needs scikit-learn: pip install 'exvae-fast[viz]' "
                          "(or use method='pca')") from e
    tsne = TSNE(n_components=2, perplexity=float(perplexity), init="pca", learning_rate="auto",
                random_state=seed)
    return torch.from_numpy(tsne.fit_transform(x.numpy())).float()


def _pca(x: Tensor) -> Tensor:
    """[n, d] float64 -> [n, 2] float64 principal coordinates (see embed_2d)."""
    centred = x - x.mean(0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    axes = vh[:2]  # [min(2, d), d]
    signs = torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True)))
    coords = centred @ (axes * signs).T
    if coords.shape[1] == 1:
        coords = torch.cat([coords, torch.zeros_like(coords)], dim=1)
    return coords
