"""Retrieval in a trained model's latent space: the training images whose posterior means
are nearest to a query's (the paper's link between generative models and nearest-neighbour
retrieval). The search is `ops.knn_search`: the fused Triton kernel on CUDA."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..models.base import LatentVariableModel
from ..ops import knn_search
from ..ops.validation import check_float, check_index, check_shape
from ..priors.base import check_count
from .mode import check_data, evaluation_mode, iterate_batches, model_device


def check_neighbour_counts(ks: object, most: int, why: str) -> None:
    """ValueError unless ks is a non-empty sequence of counts >= 1, each at most `most`
    (`why` completes the message: "... neighbours asked for, but <why>")."""
    if isinstance(ks, (str, bytes)) or not isinstance(ks, Sequence) or len(ks) == 0:
        raise ValueError(f"ks: expected a non-empty sequence of neighbour counts, got {ks!r}")
    for k in ks:
        check_count(k, "ks")
        if k > most:
            raise ValueError(f"ks: {k} neighbours asked for, but {why}")


def encode_means(model: LatentVariableModel, data: Tensor, batch_size: int = 500, *,
                 progress: bool = False) -> Tensor:
    """Posterior means mu_phi(x) of the rows of data [N, D]: float32 [N, d] on the model's device."""
    check_data(model, data)
    check_count(batch_size, "batch_size")
    with evaluation_mode(model):
        return torch.cat([model.encode(x)[0].float() for x in iterate_batches(
            data, batch_size, model_device(model), progress=progress, desc="encode")])


def nearest_neighbours(model: LatentVariableModel, queries: Tensor, key_means: Tensor, k: int, *,
                       exclude: Tensor | None = None, batch_size: int = 500, backend: str = "auto",
                       progress: bool = False) -> tuple[Tensor, Tensor]:
    """The k rows of key_means [N, d] (e.g. `encode_means(model, train)`) nearest to each query's
    posterior mean, queries [Q, D] images: (squared distances float32 [Q, k], indices int64
    [Q, k]), nearest first, on the model's device. exclude: int64 [Q], a key each query skips
    (its own index when the queries are training images), -1 for none."""
    check_data(model, queries, "queries")
    check_float(key_means, "key_means")  # named here: knn_search would call it keys
    check_shape(key_means, "key_means", ("N", model.latent_dim), "the model's latent_dim")
    check_count(k, "k")
    if k > key_means.shape[0]:
        raise ValueError(f"k: expected at most {key_means.shape[0]} (the rows of key_means), got {k}")
    if exclude is not None:  # checked whole here: each batch below sees only its slice
        check_index(exclude, "exclude")
        check_shape(exclude, "exclude", (queries.shape[0],), "one key index per query")
    means = encode_means(model, queries, batch_size, progress=progress)
    parts = []
    for start in range(0, means.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        skip = None if exclude is None else exclude[rows].to(means.device)
        parts.append(knn_search(means[rows], key_means, k, exclude=skip, backend=backend))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
