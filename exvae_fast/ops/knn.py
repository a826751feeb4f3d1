"""Exact k-nearest-neighbour search under squared Euclidean distance, and the blockwise
float64 distances it shares with the mixture log-density.

The torch backend is the reference (oracle) of the fused kernels: it walks over blocks of
keys, computing a block's [B, c] squared distances with one float64 matmul (no [B, c, d]
difference tensor), and merges each block into a running shortlist of 2k keys per query, so
it never holds a B x N matrix. The shortlist is then measured again with direct float64
differences and re-sorted: the returned distances are those of the brute-force formula.

Accuracy of the expansion. Both ops first shift all points by one centre c (the mean of the
queries, or of z): distances do not change, the shift is exact for coordinates within a
factor 2 of c's (Sterbenz), and the norms that cancel measure the spread of the data about
the batch instead of its distance from the origin. With S = ||x - c||^2 + ||y - c||^2, the
float64 value of ||x - c||^2 + ||y - c||^2 - 2 (x - c).(y - c) is within

    (d + 4) * 2^-52 * S

of ||x - y||^2 (gamma_{d+2} for the three sums, plus the rounding of the shift); measured
on random and clustered float32 and float64 data (offsets up to 1e6, close pairs included)
the error reached 2.2, 2.7, 4.5 and 7.8 x 2^-52 * S for d = 2, 8, 40, 128. Negative results
are clamped at 0. This is below the float32 rounding of the distance except for pairs much
closer than the data's spread: for unit-variance data in d = 40 (S ~ 80), distances under
about 1e-3 (measured constant; 4e-3 by the bound). knn_search re-measures its shortlist
exactly, so this error can only decide a near tie at the k-th place, and only when more
than k keys crowd within it (the shortlist's margin); the mixture uses the distances as
computed, a logit error of at most bound / (2 sigma^2). Float64 inputs get the same absolute error: a pair at squared distance
1e-10 * S keeps about 5 significant digits.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from .dispatch import implementation, register
from .validation import validate_knn

ELEMENT_BUDGET = 2**21
"""Most elements in one block's [B, c] distance matrix: a block holds
max(1, ELEMENT_BUDGET // B) keys, which bounds the working memory."""


@dataclass(frozen=True)
class Centred:
    """Points shifted by a common centre, in float64, with their squared norms."""

    points: Tensor  # [n, d] float64: x - centre
    norms: Tensor  # [n] float64: ||x - centre||^2

    @classmethod
    def of(cls, x: Tensor, centre: Tensor) -> Centred:
        """x [n, d] any float dtype, centre [d] float64."""
        points = x - centre  # promotes to float64
        return cls(points, torch.linalg.vecdot(points, points))


def centre_of(x: Tensor) -> Tensor:
    """[d] float64 mean of the rows of x [n, d] (zeros when n = 0)."""
    return x.to(torch.float64).sum(0) / max(x.shape[0], 1)


def sq_dists(x: Centred, y: Centred) -> Tensor:
    """[n, m] float64 ||x_b - y_j||^2 = ||x_b||^2 + ||y_j||^2 - 2 x_b.y_j, clamped at 0
    (error bound in the module docstring)."""
    cross = torch.addmm(y.norms[None, :], x.points, y.points.T, alpha=-2)
    return cross.add_(x.norms[:, None]).clamp_min_(0)


def block_starts(size: int, step: int) -> Iterator[int]:
    """0, step, 2 step, ... below size, as range(0, size, step). Under torch.compile a
    symbolic size stays symbolic (range() would specialise it, recompiling for every new
    number of components, keys or candidates; retrieval's changes every step): it is only
    compared with multiples of step, which guards on its number of blocks."""
    start = 0
    while start < size:
        yield start
        start += step


def leave_out_(block: Tensor, columns: Tensor, start: int, value: float) -> Tensor:
    """block[b, columns[b] - start] = value in place, for the rows b whose column falls in
    this block's range [start, start + c); columns [B] int64 (-1: none). O(B) work: a
    gather and a scatter instead of a [B, c] mask."""
    width = block.shape[1]
    local = columns - start
    inside = ((local >= 0) & (local < width))[:, None]
    local = local.clamp(0, width - 1)[:, None]
    return block.scatter_(1, local, block.gather(1, local).masked_fill(inside, value))


def knn_search(queries: Tensor, keys: Tensor, k: int, candidates: Tensor | None = None,
               exclude: Tensor | None = None, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """The k nearest keys of each query: (sq_dists [B, k] float32, indices [B, k] int64).

    queries: [B, d] float. keys: [N, d] float, N >= 1, finite. k: int >= 1.
    candidates: int64 [M], unique indices into keys; only those keys are searched.
    exclude: int64 [B], a key index that row b must not return (-1: none).
    Distances are squared Euclidean, float64 direct differences rounded to float32 (keys are
    shortlisted by the float64 expansion, see the module docstring, then ranked by these).
    Each row is ascending, ties going to the lower key index. `indices` index `keys` (not
    `candidates`).
    ValueError when some row has fewer than k searchable keys.
    """
    validate_knn(queries, keys, k, candidates, exclude)
    run = implementation("knn_search", backend, queries, keys)
    return run(queries, keys, k, candidates, exclude)


def pack_keys(dists: Tensor, positions: Tensor) -> Tensor:
    """int64 keys ordered as (dists, positions): dists float32 >= 0, inf or NaN, whose bit
    patterns order like the values (NaN last), in the high word; positions < 2^32 in the
    low word. One int64 topk then selects by distance with ties to the lower position."""
    return dists.view(torch.int32).to(torch.int64).bitwise_left_shift_(32).bitwise_or_(positions)


def _smallest(packed: Tensor, count: int) -> Tensor:
    """The min(count, c) smallest entries of each row of packed [B, c], unordered."""
    count = min(count, packed.shape[1])
    return torch.topk(packed, count, dim=1, largest=False, sorted=False).values


def unpack_keys(packed: Tensor) -> tuple[Tensor, Tensor]:
    return (packed >> 32).to(torch.int32).view(torch.float32), packed & 0xFFFFFFFF


def _knn_search_torch(queries: Tensor, keys: Tensor, k: int, candidates: Tensor | None,
                      exclude: Tensor | None) -> tuple[Tensor, Tensor]:
    batch = queries.shape[0]
    device = queries.device
    # positions in `pool` (ascending key indices) break ties, as indices into keys would
    pool = None if candidates is None else torch.sort(candidates).values
    size = keys.shape[0] if pool is None else pool.numel()
    excluded = exclude
    if pool is not None and exclude is not None:  # the excluded key's position in the pool
        where = torch.searchsorted(pool, exclude).clamp_max(size - 1)
        excluded = torch.where(pool[where] == exclude, where, -1)
    step = max(1, ELEMENT_BUDGET // max(batch, 1))
    # a shortlist of 2k by the expansion (rounded to float32), re-ranked exactly: a key of the
    # exact top k is lost only if k + 1 others, not copies of it, come before it by the
    # expansion but after it exactly, all within the expansion's error of its distance
    width = min(2 * k, size)
    centre = centre_of(queries)
    q = Centred.of(queries, centre)
    shortlist = torch.empty((batch, 0), dtype=torch.int64, device=device)
    for start in block_starts(size, step):
        stop = min(start + step, size)
        block = keys[start:stop] if pool is None else keys[pool[start:stop]]
        dists = sq_dists(q, Centred.of(block, centre)).to(torch.float32)
        if excluded is not None:
            # NaN's bits order after +inf's, so an excluded key is never chosen over a real
            # one (even at distance inf), and validation guarantees k real keys per row
            leave_out_(dists, excluded, start, float("nan"))
        packed = pack_keys(dists, torch.arange(start, stop, device=device))
        merged = torch.cat([shortlist, _smallest(packed, width)], dim=1)
        shortlist = _smallest(merged, width)
    positions = unpack_keys(shortlist)[1]
    indices = positions if pool is None else pool[positions]
    diff = queries.to(torch.float64)[:, None, :] - keys[indices].to(torch.float64)  # [B, width, d]
    exact = diff.square().sum(-1).to(torch.float32)
    if exclude is not None:  # it can be in the shortlist when fewer than 2k keys are searched
        exact = exact.masked_fill(indices == exclude[:, None], float("nan"))
    return unpack_keys(torch.sort(pack_keys(exact, indices), dim=1).values[:, :k])


register("knn_search", "torch", _knn_search_torch)
