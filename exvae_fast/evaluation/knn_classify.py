"""k-nearest-neighbour classification in the latent space: how well an unsupervised model's
posterior means separate the classes (the paper's representation-learning evaluation, which
reports the kNN error for several k).

A query takes the majority label among the k training points whose posterior means
mu_phi(x) are nearest to its own (Euclidean, `ops.knn_search`: the fused kernel on CUDA);
a tie between classes goes to the class whose nearest member is nearer. Labels are not used
for anything else, and nothing is trained.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..models.base import LatentVariableModel
from ..ops.validation import check_index, check_shape
from .mode import check_data
from .neighbours import check_neighbour_counts, encode_means, nearest_neighbours


def vote(neighbour_labels: Tensor, num_classes: int) -> Tensor:
    """Majority label of each row of neighbour_labels [B, k] (nearest first): int64 [B]; ties
    go to the class that appears first (whose nearest member is nearest)."""
    batch, k = neighbour_labels.shape
    counts = torch.zeros(batch, num_classes, dtype=torch.int64, device=neighbour_labels.device)
    counts.scatter_add_(1, neighbour_labels, torch.ones_like(neighbour_labels))
    first = torch.full_like(counts, k)
    ranks = torch.arange(k, device=neighbour_labels.device).expand(batch, k)
    first.scatter_reduce_(1, neighbour_labels, ranks, reduce="amin")
    return (counts * (k + 1) - first).argmax(dim=1)  # more votes first, then the nearer class


def _check_labels(labels: object, name: str, rows: int) -> None:
    check_index(labels, name)
    check_shape(labels, name, (rows,))
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"{name}: expected class labels >= 0, got {int(labels.min())}")


def knn_classification_error(model: LatentVariableModel, train: Tensor, train_labels: Tensor,
                             test: Tensor, test_labels: Tensor, ks: Sequence[int] = (1, 3, 5, 10), *,
                             batch_size: int = 500, backend: str = "auto",
                             progress: bool = True) -> dict[int, float]:
    """{k: fraction of the test rows [M, D] whose kNN vote over the training rows [N, D] (labels
    int64 [N] and [M]) is wrong}, in [0, 1]. ks: neighbour counts, each at most N."""
    check_data(model, train, "train")
    check_data(model, test, "test")
    _check_labels(train_labels, "train_labels", train.shape[0])
    _check_labels(test_labels, "test_labels", test.shape[0])
    check_neighbour_counts(ks, train.shape[0], f"the training set has {train.shape[0]} rows")
    keys = encode_means(model, train, batch_size, progress=progress)
    _, neighbours = nearest_neighbours(model, test, keys, max(ks), batch_size=batch_size, backend=backend,
                                       progress=progress)  # [M, k_max], nearest first
    labels = train_labels.to(keys.device)[neighbours]
    truth = test_labels.to(keys.device)
    num_classes = int(max(int(train_labels.max()), int(test_labels.max()))) + 1
    return {k: int((vote(labels[:, :k], num_classes) != truth).sum()) / test.shape[0] for k in ks}
