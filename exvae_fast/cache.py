"""LatentCache: the posterior means mu_phi(x_n) of the whole training set, for retrieval."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .ann import FaissIndex
from .ops import cache_update_, knn_search, mixture_log_density
from .ops.errors import blame_non_finite
from .ops.validation import CACHE_DTYPES, check_index, check_int, check_range, check_shape, check_tensor
from .progress import stage_progress

NON_FINITE_CACHE = ("cache: the cached means contain NaN/Inf (they were changed around update_, or a state "
                    "dict holding them was loaded); refresh_() the cache")


class LatentCache(nn.Module):
    """Posterior means of N training examples, with per-row squared norms and write stamps.

    All state lives in buffers, so it moves with `.to(device)` and is saved in `state_dict`
    (checkpoints hold the cache). The storage dtype is fixed at construction: module-wide
    casts such as `model.double()` move the buffers but keep their dtypes, and a state dict
    saved in another dtype is converted on loading, as a write would store it (norms of the
    rows as stored; ValueError when a row overflows the storage dtype).

    Buffers: means [N, d] (storage dtype), sq_norms [N] float32 (squared norm of each stored
    row), stamps [N] int64 (step at which the row was last written; -1: never written).

    An optional approximate index (`attach_index`, a `FaissIndex`) serves `knn`; it is derived
    data, outside `state_dict`: built from the means at its first use (`update_` or `knn`)
    after attaching or loading a state dict, rebuilt at the end of every `refresh_`, and
    sent every `update_`. (Building before a write, not after, keeps a resumed run's index
    equal to the uninterrupted run's.)
    """

    means: Tensor
    sq_norms: Tensor
    stamps: Tensor

    def __init__(self, num_items: int, dim: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        check_int(num_items, "num_items", 1)
        check_int(dim, "dim", 1)
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype: expected a torch.dtype, got {type(dtype).__name__}")
        if dtype not in CACHE_DTYPES:
            raise ValueError(f"dtype: expected one of {', '.join(map(str, CACHE_DTYPES))}, got {dtype}")
        self.register_buffer("means", torch.zeros(num_items, dim, dtype=dtype, device=device))
        self.register_buffer("sq_norms", torch.zeros(num_items, dtype=torch.float32, device=device))
        self.register_buffer("stamps", torch.full((num_items,), -1, dtype=torch.int64, device=device))
        self.register_buffer("_step", torch.zeros((), dtype=torch.int64, device=device))
        # host copy of _step, so reading the step never synchronises an accelerator
        self._host_step = 0
        self.register_load_state_dict_pre_hook(_convert_loaded_means)
        self.register_load_state_dict_post_hook(_reload_host_step)
        self._index: FaissIndex | None = None
        self._index_dirty = False  # True: the index must be built from the means before use
        # rows are never unwritten, so once every row was written a check needs no scan of the
        # stamps (and no accelerator synchronisation) until a state dict is loaded
        self._known_complete = False
        self._fresh = False  # see is_fresh

    @property
    def num_items(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def step(self) -> int:
        """Current training step (number of `advance` calls, summed)."""
        return self._host_step

    def advance(self, steps: int = 1) -> None:
        """Move the step counter forward; the trainer calls it once per optimisation step."""
        check_int(steps, "steps", 0)
        self._host_step += steps
        self._step.fill_(self._host_step)

    @torch.compiler.disable  # eager under torch.compile: K and the step stamp change every step
    # (a host int, so compiling it would recompile each step up to the limit) and an ANN index
    # update is host code (the op, called directly, compiles: torch.ops.exvae_fast.cache_update_)
    def update_(self, indices: Tensor, values: Tensor, backend: str = "auto") -> None:
        """Write values [K, d] (detached) at rows indices (int64 [K]); the last duplicate wins.
        Updates sq_norms and stamps (to the current step) of the written rows."""
        check_tensor(values, "values")
        self._ensure_index()
        cache_update_(self.means, indices, values.detach(), norms=self.sq_norms,
                      stamps=self.stamps, step=self.step, backend=backend)
        if self._index is not None:
            # the rows as stored (rounded to the cache dtype, duplicates resolved)
            self._index.update(indices, self.means[indices])
        self._fresh = False

    def refresh_(self, encode: Callable[[Tensor], Tensor], data: Tensor, batch_size: int = 1000,
                 progress: bool = False, backend: str = "auto") -> None:
        """Recompute every row: means[i:i+bs] = encode(data[i:i+bs]) under torch.no_grad().

        data: [N, ...], indexed along dim 0 (may live on another device: each batch is moved
        to the cache's device before `encode`). encode: batch -> [bs, d] posterior means.
        Train/eval modes are left as they are (the caller chooses). progress: `stage_progress`.
        """
        check_tensor(data, "data")
        check_int(batch_size, "batch_size", 1)
        if data.dim() == 0 or data.shape[0] != self.num_items:
            raise ValueError(f"data: expected shape [{self.num_items}, ...] (one row per cache "
                             f"item), got {list(data.shape)}")
        device = self.means.device
        # every row changes: the index is left out of the writes and built once at the end
        # (should encode fail midway, it stays marked for a rebuild at its next use)
        index, self._index = self._index, None
        try:
            with torch.no_grad():
                starts = range(0, self.num_items, batch_size)
                with stage_progress("refreshing latent cache", len(starts), progress,
                                    label=f"refreshing latent cache ({self.num_items} rows)") as bar:
                    for start in starts:
                        stop = min(start + batch_size, self.num_items)
                        encoded = encode(data[start:stop].to(device))
                        self.update_(torch.arange(start, stop, device=device), encoded, backend)
                        bar.update()
            self._fresh = True
        finally:
            self._index, self._index_dirty = index, True
        self._ensure_index()

    @property
    def is_fresh(self) -> bool:
        """True when the last write was a whole `refresh_` (every row encoded by one model, as
        evaluation needs), False after a partial `update_` (training steps) or before any
        write. A loaded state dict counts as fresh: it is taken as it was saved."""
        return self._fresh

    @property
    def index(self) -> FaissIndex | None:
        """The attached approximate index, or None (exact search)."""
        return self._index

    def attach_index(self, index: FaissIndex | None) -> None:
        """Serve `knn` from `index` (built from the means at its first use: the next `knn`
        or `update_`), or from the exact `knn_search` again with None."""
        if index is not None and not isinstance(index, FaissIndex):
            raise TypeError(f"index: expected a FaissIndex or None, got {type(index).__name__}")
        self._index = index
        self._index_dirty = True

    def _ensure_index(self) -> None:
        """Build the attached index from the means if it is marked for it (or was never built)."""
        if self._index is not None and (self._index_dirty or not self._index.is_built):
            self._index.build(self.means)
            self._index_dirty = False

    def knn(self, queries: Tensor, k: int, candidates: Tensor | None = None,
            exclude: Tensor | None = None, backend: str = "auto") -> tuple[Tensor, Tensor]:
        """`knn_search` over the cached means: (sq_dists [B, k] float32, indices [B, k] int64).
        Rows never written hold zeros: call `check_complete` first where that matters.
        With an attached index, `FaissIndex.search` answers (approximate neighbours, exact
        distances) and `backend` applies to its exact fallback rows only."""
        if self._index is not None:
            self._ensure_index()
            return self._index.search(queries, k, candidates=candidates, exclude=exclude,
                                      backend=backend)
        with blame_non_finite("keys", NON_FINITE_CACHE):
            return knn_search(queries, self.means, k, candidates=candidates, exclude=exclude,
                              backend=backend)

    def mixture_log_density(self, z: Tensor, log_var: Tensor, backend: str = "auto") -> Tensor:
        """[B]: log of the uniform mixture over all N cached means (`ops.mixture_log_density`
        of z [B, d] with shared log-variance log_var, 0-dim); differentiable in z and log_var."""
        with blame_non_finite("means", NON_FINITE_CACHE):
            return mixture_log_density(z, self.means, log_var, backend=backend)

    def rows(self, indices: Tensor) -> Tensor:
        """float32 [K, d] copy of the cached means at indices (int64 [K], may repeat)."""
        check_index(indices, "indices")
        check_shape(indices, "indices", ("K",))
        check_range(indices, "indices", self.num_items)
        return self.means[indices.to(self.means.device)].float()

    @property
    def is_complete(self) -> bool:
        """True when every row has been written at least once."""
        if not self._known_complete:
            self._known_complete = bool((self.stamps >= 0).all())
        return self._known_complete

    @torch.compiler.disable  # eager under torch.compile: a host read (no graph break warning)
    def check_complete(self) -> None:
        """ValueError unless every row has been written at least once (scans the stamps only
        until that was once found true: the training step calls it every time)."""
        if self.is_complete:
            return
        missing = int((self.stamps < 0).sum())
        raise ValueError(f"LatentCache: {missing} of {self.num_items} rows were never "
                         "written; fill it first (ExemplarPrior.refresh(encoder), or the cache's refresh_)")

    def staleness(self) -> Tensor:
        """[N] int64: steps since each row was last written; -1 for rows never written."""
        return torch.where(self.stamps >= 0, self.step - self.stamps, -1)

    def mean_staleness(self) -> float:
        """Mean staleness in steps over the written rows; nan when none was written."""
        written = self.stamps >= 0
        if not bool(written.any()):
            return float("nan")
        return float((self.step - self.stamps[written]).double().mean())

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> "LatentCache":
        # keep every buffer's dtype under module-wide casts (model.double(), .half(), .to(dtype)):
        # fn only tells where the buffer goes
        for name, buf in self._buffers.items():
            moved = fn(buf)
            self._buffers[name] = moved if moved.dtype == buf.dtype else buf.to(moved.device)
        return self

    def extra_repr(self) -> str:
        return f"num_items={self.num_items}, dim={self.dim}, dtype={self.means.dtype}"


def _convert_loaded_means(module: LatentCache, state_dict: dict, prefix: str, *_: object) -> None:
    """Before load_state_dict: means [N, d] saved in another dtype are converted to the
    storage dtype here (load_state_dict passes a copy of the dict), and sq_norms [N] are
    recomputed from the rows as stored, so that they stay the norms of the stored rows."""
    means = state_dict.get(prefix + "means")
    dtype = module.means.dtype
    if not isinstance(means, Tensor) or means.dtype == dtype or means.shape != module.means.shape:
        return  # same dtype, or a mismatch that load_state_dict itself reports
    stored = means.detach().to(dtype)
    if not bool(torch.isfinite(stored).all()):
        raise ValueError(f"means: the loaded {means.dtype} rows overflow the cache's {dtype} "
                         "storage (NaN/Inf after conversion)")
    state_dict[prefix + "means"] = stored
    state_dict[prefix + "sq_norms"] = stored.float().square().sum(1)


def _reload_host_step(module: LatentCache, incompatible_keys: object) -> None:
    """After load_state_dict, take the step from the loaded buffer; the means changed, so an
    attached index is rebuilt before its next use."""
    module._host_step = int(module._step)
    module._index_dirty = True
    module._known_complete = False
    module._fresh = True
