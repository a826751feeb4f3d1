"""The Exemplar VAE prior (paper eq. 5, Algorithm 1).

    r(z) = 1/M' sum_{j in pi, j != i} N(z | mu_phi(x_j), sigma^2 I)

with mu_phi the model's encoder mean, sigma^2 = exp(log_var) one learned scalar, pi a
random subset of M exemplars redrawn every training step and i the training example
itself (leave-one-out). Two training modes:

- "exact": encode all M exemplars of pi with gradient and use the full mixture.
- "retrieval" (Algorithm 1): find the k nearest cached means of each posterior mean
  among pi (self excluded), re-encode only the union U of those neighbours with
  gradient, and approximate r(z_b) by 1/M sum_{j in U, j != i_b} N(z_b | mu_j, sigma^2 I)
  (retrieval_mixture="union", the authors' code) or by 1/M sum_{j in kNN_b} (...) over the
  row's own k neighbours only ("own", the supplement's pseudo-code); fresh means are
  written back to the cache.

In evaluation (module in eval mode) the exemplar set is the whole training set, with
no leave-one-out, read from the latent cache, which must have been refreshed with
`refresh(encoder)` (the trainer does this once per epoch). Under torch.distributed,
`shard_cache()` splits the cache over the ranks (a `ShardedLatentCache`). In retrieval
mode an optional `FaissIndex` (exvae_fast.ann) proposes the neighbours instead of the exact
search; they are re-encoded exactly all the same.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .. import ops
from ..ann import FaissIndex
from ..ops.device_checks import DeviceChecks
from ..ops.dispatch import backend_for
from ..ops.errors import NonFiniteError, blame_non_finite
from ..ops.validation import CACHE_DTYPES, check_float, check_shape, check_tensor
from ..cache import NON_FINITE_CACHE, LatentCache
from ..distributed import ShardedLatentCache
from .base import Encoder, Prior, check_count

MODES = ("exact", "retrieval")
RETRIEVAL_MIXTURES = ("union", "own")
"""Retrieval mode's components of row b: the union of the batch's neighbours, or b's own k."""
INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
"""dtypes `indices` may have (torch indexing takes them all); converted to int64."""
NON_FINITE_ENCODER = "encoder: returned NaN/Inf means for exemplars (has the model diverged?)"
STALE_CACHE_WARNING = ("ExemplarPrior.log_prob in eval mode: the latent cache holds means written by "
                       "training steps since its last refresh (rows encoded by different versions of "
                       "the model, batch rows from binarised inputs); call prior.refresh(encoder) after "
                       "training so that every exemplar is encoded by the final model")


def check_exemplar_counts(num_items: int, num_exemplars: int | None, k: int, mode: str, leave_one_out: bool,
                          *, prefix: str = "", items: str = "exemplars") -> int:
    """M, the exemplars drawn per step (num_exemplars, by default half of the num_items
    exemplars, at least 2), after checking that it fits them and leaves every row a component
    and, in retrieval mode, k neighbours; ValueError naming `prefix` + the argument."""
    drawn = max(2, num_items // 2) if num_exemplars is None else check_count(num_exemplars, f"{prefix}num_exemplars")
    if drawn > num_items:
        raise ValueError(f"{prefix}num_exemplars: expected at most the {num_items} {items}, got {drawn}")
    check_count(k, f"{prefix}k")
    available = drawn - int(leave_one_out)
    if available < 1:  # a row drawing its own exemplar would have an empty prior
        raise ValueError(f"{prefix}num_exemplars: expected at least 2 with leave-one-out, got {drawn}")
    if mode == "retrieval" and k > available:
        source = (f"{prefix}num_exemplars = {drawn}" if num_exemplars is not None else
                  f"{prefix}num_exemplars, by default half of the {num_items} {items}: {drawn}")
        raise ValueError(f"{prefix}k: expected at most {available} ({source}"
                         f"{', less one for leave-one-out' if leave_one_out else ''}), got {k}")
    return drawn


class ExemplarPrior(Prior):
    """Exemplar prior over `exemplars` [N, D] (the non-binarised training images).

    num_exemplars: M, the per-step sub-sample (default: half the exemplars, paper L.2, at least
        2 so that leave-one-out leaves a component).
    k: neighbours per row in retrieval mode (paper: 10; 5 for CelebA).
    retrieval_mixture: retrieval mode's mixture for row b: "union" (default, the authors'
        code: every neighbour any row of the batch retrieved, less b's own exemplar) or
        "own" (Algorithm 1 as printed: b's own k neighbours); both divide by M.
    init_log_var: starting value of log sigma^2.
    backend: ops backend ("auto" | "torch" | "triton" | "cpp") for every op call.
    index: retrieval mode only: an approximate FAISS index for the neighbour search,
    attached to the cache (`LatentCache.attach_index`); None: exact search.
    """

    def __init__(self, exemplars: Tensor, latent_dim: int, *, mode: str = "retrieval",
                 num_exemplars: int | None = None, k: int = 10, retrieval_mixture: str = "union",
                 leave_one_out: bool = True, init_log_var: float = 0.0, backend: str = "auto",
                 cache_dtype: torch.dtype = torch.float32, index: FaissIndex | None = None) -> None:
        super().__init__()
        if not isinstance(exemplars, Tensor) or exemplars.dim() != 2 or not exemplars.is_floating_point():
            raise ValueError("exemplars: expected a floating tensor of shape [N, D]")
        num_items = exemplars.shape[0]
        if num_items < 2:
            raise ValueError(f"exemplars: expected at least 2 rows, got {num_items}")
        if not torch.isfinite(exemplars).all():
            raise ValueError("exemplars: contains NaN/Inf")
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        if retrieval_mixture not in RETRIEVAL_MIXTURES:
            raise ValueError(f"retrieval_mixture: expected one of {RETRIEVAL_MIXTURES}, got {retrieval_mixture!r}")
        if retrieval_mixture != "union" and mode != "retrieval":
            raise ValueError(f"retrieval_mixture: {retrieval_mixture!r} needs mode='retrieval' (exact mode "
                             f"has no neighbours), got mode={mode!r}")
        _check_cache_dtype(cache_dtype)
        self.latent_dim = check_count(latent_dim, "latent_dim")
        self.mode = mode
        self.num_exemplars = check_exemplar_counts(num_items, num_exemplars, k, mode, leave_one_out)
        self.k = k
        self.retrieval_mixture = retrieval_mixture
        self.leave_one_out = leave_one_out
        self.backend = backend
        self.log_var = nn.Parameter(torch.tensor(_check_init_log_var(init_log_var)))
        # Not persistent: the images come from the data set, not from checkpoints.
        self.register_buffer("exemplars", exemplars.detach(), persistent=False)
        self.cache = LatentCache(num_items, latent_dim, dtype=cache_dtype, device=exemplars.device)
        if index is not None and mode != "retrieval":
            raise ValueError(f"index: only used by retrieval mode's neighbour search, got mode={mode!r}")
        self.cache.attach_index(index)

    @property
    def num_items(self) -> int:
        return self.exemplars.shape[0]

    @property
    def backend(self) -> str:
        """The ops backend of every op call; may be changed between steps."""
        return self._backend

    @backend.setter
    def backend(self, backend: str) -> None:
        # One run-wide setting; each op takes it where it has that backend (else "auto").
        ops_backends = (backend_for("mixture_log_density", backend), backend_for("knn_search", backend),
                        backend_for("cache_update_", backend))  # ValueError naming backend, before any change
        self._backend = backend
        self._mixture_backend, self._knn_backend, self._update_backend = ops_backends

    @property
    def cache_dtype(self) -> torch.dtype:
        """Storage dtype of the latent cache (fixed at construction)."""
        return self.cache.means.dtype

    def shard_cache(self, group: dist.ProcessGroup | None = None) -> None:
        """Replace the cache by this rank's shard of it (`ShardedLatentCache.from_cache`).

        Afterwards every cache call of the prior is collective (training steps, refresh,
        evaluation log_prob, sample): all ranks must run the same number of steps and
        calls. In retrieval mode each rank keeps its own subset pi, drawn from its own RNG;
        evaluation log_prob needs torch.no_grad(). Not with an approximate index (ValueError).
        """
        if getattr(self.cache, "index", None) is not None:
            raise ValueError("index: an approximate (FAISS) index cannot serve a sharded cache; "
                             "use the exact search (prior.index = 'exact') with torch.distributed")
        self.cache = ShardedLatentCache.from_cache(self.cache, group)

    def refresh(self, encoder: Encoder, batch_size: int = 1000) -> None:
        """Re-encode every exemplar into the cache (no gradient, mode unchanged)."""
        with blame_non_finite("values", NON_FINITE_ENCODER):
            self.cache.refresh_(lambda x: self._encode_means(encoder, x), self.exemplars, batch_size,
                                backend=self._update_backend)

    def _encode_means(self, encoder: Encoder, x: Tensor) -> Tensor:
        """mu [n, d] of encoder(x) = (mu, log_var) for x [n, D]; ValueError naming the
        encoder when its first output is not a floating [n, latent_dim] tensor."""
        mu = encoder(x)[0]
        if not isinstance(mu, Tensor) or not mu.is_floating_point() \
                or tuple(mu.shape) != (x.shape[0], self.latent_dim):
            got = (f"{mu.dtype} of shape {list(mu.shape)}" if isinstance(mu, Tensor)
                   else type(mu).__name__)
            raise ValueError(f"encoder: expected it to return (mu, log_var) with mu a floating "
                             f"[{x.shape[0]}, {self.latent_dim}] tensor ([n, latent_dim]), but its "
                             f"first output is {got}")
        return mu

    def log_prob(self, z: Tensor, *, encoder: Encoder | None = None,
                 query: Tensor | None = None, indices: Tensor | None = None) -> Tensor:
        self.check_latents(z)
        if not self.training:
            self.cache.check_complete()
            if not self.cache.is_fresh:
                warnings.warn(STALE_CACHE_WARNING, stacklevel=2)
            return self.cache.mixture_log_density(z, self.log_var, backend=self._mixture_backend)
        if encoder is None:
            raise ValueError("encoder: the exemplar prior needs the model's encoder in training")
        if query is None and self.mode == "retrieval":
            raise ValueError("query: retrieval mode needs the batch's posterior means [B, d]")
        indices = self._check_batch(z, query, indices)
        if self.mode == "exact":
            return self._log_prob_exact(z, encoder, query, indices)
        return self._log_prob_retrieval(z, encoder, query.detach(), indices)

    def _check_batch(self, z: Tensor, query: Tensor | None, indices: Tensor | None) -> Tensor | None:
        """Checks a training batch's query [B, d] (float, finite) and indices [B] (any
        integer dtype, in [0, N)) before any state changes, reading the data once; returns
        the indices as int64 on the exemplars' device (None when not needed). (The encoder's
        output is checked as it comes: a retrieval step failing there has already written the
        batch's own, checked means to the cache, as Algorithm 1 does first.)"""
        batch, checks = z.shape[0], DeviceChecks()
        if query is not None:
            check_float(query, "query")
            check_shape(query, "query", (batch, self.latent_dim), "the rows of z, latent_dim")
            if query.device != z.device:
                raise ValueError(f"query: on {query.device}, but z is on {z.device}")
            checks.finite(query, "query")
        if indices is None:
            if self.leave_one_out or self.mode == "retrieval":
                raise ValueError("indices: training needs the batch's training-set indices [B] "
                                 "(leave-one-out and cache write-back)")
        else:
            indices = self._as_index(indices, batch)
            checks.in_range(indices, "indices", self.num_items)
        checks.verify()
        return indices

    def _as_index(self, indices: object, batch: int) -> Tensor:
        """indices (a tensor of an `INDEX_DTYPES` dtype, shape [batch]) as int64 on the
        exemplars' device."""
        check_tensor(indices, "indices")
        if indices.dtype not in INDEX_DTYPES:
            raise TypeError(f"indices: expected an integer tensor (int64, or another width), "
                            f"got {indices.dtype}")
        check_shape(indices, "indices", (batch,), "one per row of z")
        return indices.to(self.exemplars.device, torch.int64)

    def _draw_subset(self) -> Tensor:
        """pi: M distinct exemplar indices, redrawn every step."""
        return torch.randperm(self.num_items, device=self.exemplars.device)[: self.num_exemplars]

    def _positions(self, members: Tensor, indices: Tensor | None) -> Tensor | None:
        """Position of each indices[b] within `members` (-1 where absent), or None
        without leave-one-out."""
        if indices is None or not self.leave_one_out:
            return None
        where = torch.full((self.num_items,), -1, dtype=torch.int64, device=members.device)
        where[members] = torch.arange(members.numel(), device=members.device)
        return where[indices]

    def _log_prob_exact(self, z: Tensor, encoder: Encoder, query: Tensor | None,
                        indices: Tensor | None) -> Tensor:
        subset = self._draw_subset()
        means = self._encode_means(encoder, self.exemplars[subset])
        exclude = self._positions(subset, indices)
        with blame_non_finite("means", NON_FINITE_ENCODER):
            log_r = ops.mixture_log_density(z, means, self.log_var, exclude=exclude,
                                            backend=self._mixture_backend)
        # free write-back: keeps the cache fresh. One write, so that it is all or nothing;
        # the batch's means come last and win over the subset's for the same rows
        rows, values = subset, means.detach()
        if query is not None and indices is not None:
            rows = torch.cat([subset, indices])
            values = torch.cat([values, query.detach()])
        self.cache.update_(rows, values, backend=self._update_backend)
        return log_r

    def _log_prob_retrieval(self, z: Tensor, encoder: Encoder, query: Tensor, indices: Tensor) -> Tensor:
        self.cache.check_complete()
        # The batch's own fresh means go in first, so that rows of this batch find each
        # other with up-to-date positions; self-matches are excluded by the search. As in
        # Algorithm 1 (Cache.update(i, mu_i)) these are the means of the training inputs,
        # dynamically binarised for grey data, until a re-encoding of the (grey) exemplar
        # as a neighbour or the epoch's refresh writes the exemplar's own mean.
        self.cache.update_(indices, query, backend=self._update_backend)
        subset = self._draw_subset()
        exclude = indices if self.leave_one_out else None
        _, neighbours = self.cache.knn(query, self.k, candidates=subset, exclude=exclude,
                                       backend=self._knn_backend)
        union = torch.unique(neighbours)  # sorted; each neighbour re-encoded once
        means = self._encode_means(encoder, self.exemplars[union])
        with blame_non_finite("values", NON_FINITE_ENCODER):
            self.cache.update_(union, means.detach(), backend=self._update_backend)
        # Algorithm 1 divides the sum by M (M - 1 when the row's own exemplar is in pi)
        total = torch.full(z.shape[:1], float(self.num_exemplars), dtype=z.dtype, device=z.device)
        if self.leave_one_out:
            total = total - (self._positions(subset, indices) >= 0).to(z.dtype)
        if self.retrieval_mixture == "own":
            own = means[torch.searchsorted(union, neighbours)]  # [B, k, d]: row b's neighbours
            return _gaussian_log_sum(z, own, self.log_var) - torch.log(total)
        exclude_in_union = self._positions(union, indices)
        log_mixture = ops.mixture_log_density(z, means, self.log_var, exclude=exclude_in_union,
                                              backend=self._mixture_backend)
        # mixture_log_density averages over the U'_b members taking part
        taking_part = torch.full_like(log_mixture, float(union.numel()))
        if exclude_in_union is not None:
            taking_part = taking_part - (exclude_in_union >= 0).to(log_mixture.dtype)
        return log_mixture + torch.log(taking_part) - torch.log(total)

    def sample(self, n: int, *, encoder: Encoder | None = None) -> Tensor:
        """Pick n exemplars uniformly and draw z ~ N(mu_j, sigma^2 I) from the cache: [n, d]
        in the dtype of log_var (the module's, whatever the cache's storage dtype)."""
        check_count(n, "n")
        self.cache.check_complete()
        with torch.no_grad():
            which = torch.randint(self.num_items, (n,), device=self.exemplars.device)
            means = self.cache.rows(which).to(self.log_var.dtype)
            if not bool(torch.isfinite(means).all()):
                raise NonFiniteError(NON_FINITE_CACHE)
            return means + torch.exp(0.5 * self.log_var) * torch.randn_like(means)

    def sample_near(self, mu: Tensor, log_var: Tensor, n: int) -> Tensor:
        """Exemplar-conditioned draws z ~ N(mu_e, sigma^2 I): [E, n, d] (paper Figure 2)."""
        check_count(n, "n")
        std = torch.exp(0.5 * self.log_var).to(mu.dtype)
        return mu.unsqueeze(1) + std * torch.randn(mu.shape[0], n, mu.shape[1], device=mu.device, dtype=mu.dtype)

    def extra_repr(self) -> str:
        mixture = f", retrieval_mixture={self.retrieval_mixture!r}" if self.mode == "retrieval" else ""
        return (f"num_items={self.num_items}, latent_dim={self.latent_dim}, mode={self.mode!r}, "
                f"num_exemplars={self.num_exemplars}, k={self.k}{mixture}, leave_one_out={self.leave_one_out}, "
                f"backend={self.backend!r}")


def _gaussian_log_sum(z: Tensor, means: Tensor, log_var: Tensor) -> Tensor:
    """log sum_j N(z_b | means[b, j], exp(log_var) I) for z [B, d], means [B, k, d]: [B] in z's
    dtype, from direct differences (no cancellation; B*k*d is small)."""
    dim = z.shape[1]
    sq_dists = (z.unsqueeze(1) - means.to(z.dtype)).square().sum(-1)  # [B, k]
    log_var = log_var.to(z.dtype)
    log_kernel = -0.5 * (dim * (math.log(2 * math.pi) + log_var) + sq_dists * torch.exp(-log_var))
    return torch.logsumexp(log_kernel, dim=1)


def _check_cache_dtype(dtype: object) -> None:
    """TypeError / ValueError naming cache_dtype unless it is a latent cache storage dtype."""
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"cache_dtype: expected a torch.dtype, got {type(dtype).__name__}")
    if dtype not in CACHE_DTYPES:
        raise ValueError(f"cache_dtype: expected one of {', '.join(map(str, CACHE_DTYPES))}, got {dtype}")


def _check_init_log_var(value: object) -> float:
    """value as a float if it is a finite real number (a Python, NumPy or 0-dim torch
    scalar), else TypeError / ValueError naming init_log_var (a NaN would only fail in the
    first training step's mixture)."""
    try:
        if isinstance(value, (bool, str, bytes)):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"init_log_var: expected a real number, got {type(value).__name__}") from None
    if not math.isfinite(number):
        raise ValueError(f"init_log_var: expected a finite number, got {number}")
    return number
