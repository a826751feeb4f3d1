"""ShardedLatentCache: the latent cache split by example index over the ranks of a process
group (DESIGN.md section 5), with the interface `ExemplarPrior` and the trainer use on a
`LatentCache`, so the prior runs unchanged on either.

Rank r owns rows [start, stop) = shard_range(N, world, r). Collective methods (every rank
calls them at the same point, with its own arguments, possibly empty): `update_`, `knn`,
`mixture_log_density`, `rows`, `gather_full`, `is_complete`, `check_complete`,
`mean_staleness`. Their arguments are checked on each rank and the verdicts exchanged first:
when one rank's are invalid, every rank raises (that rank its own TypeError/ValueError, the
others a ValueError naming it) before any state changes, so no rank is left waiting.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..cache import LatentCache
from ..ops.device_checks import DeviceChecks
from ..ops.dispatch import resolve_backend
from ..ops.validation import (check_finite, check_float, check_index, check_int, check_shape,
                              check_tensor, validate_knn_request)
from . import comm
from .shard_ops import combine_mixtures, merge_knn, shard_knn, shard_mixture


class ShardedLatentCache(nn.Module):
    """This rank's shard of a latent cache of N rows of dimension d.

    local: a `LatentCache` [stop - start, d] holding rows [start, stop) (its buffers are
    what `state_dict` saves; `gather_full` gives the whole cache). Indices in and out are
    global, int64. Tensors passed in must live on the cache's device, which the group's
    backend must serve (CPU for gloo, this rank's GPU for nccl). Every rank must advance
    the step equally (the trainer calls `advance` once per step on each).
    """

    def __init__(self, num_items: int, dim: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None,
                 group: dist.ProcessGroup | None = None) -> None:
        super().__init__()
        check_int(num_items, "num_items", 1)
        self.group = group
        self.world_size = comm.world_size(group)
        self.rank = comm.rank(group)
        self._num_items = num_items
        self._starts = comm.shard_starts(num_items, self.world_size)
        self.local = LatentCache(self.stop - self.start, dim, dtype=dtype, device=device)
        # rows are never unwritten, so once the ranks agreed that every row was written the
        # check needs no all-reduce (the training step calls it every time) until a state is
        # loaded; the flag only ever comes from that all-reduce, so it is equal on every rank
        self._known_complete = False
        self.register_load_state_dict_post_hook(_forget_completeness)

    @classmethod
    def from_cache(cls, cache: LatentCache, group: dist.ProcessGroup | None = None) -> ShardedLatentCache:
        """This rank's shard of a full cache (owned rows, norms, stamps and the step copied)."""
        if not isinstance(cache, LatentCache):
            raise TypeError(f"cache: expected a LatentCache, got {type(cache).__name__}")
        shard = cls(cache.num_items, cache.dim, cache.means.dtype, cache.means.device, group)
        shard.load_full_(cache)
        return shard

    @property
    def num_items(self) -> int:
        """N, the rows of the whole cache."""
        return self._num_items

    @property
    def dim(self) -> int:
        return self.local.dim

    @property
    def start(self) -> int:
        """First global row of this shard."""
        return self._starts[self.rank]

    @property
    def stop(self) -> int:
        """One past the last global row of this shard."""
        return self._starts[self.rank + 1]

    @property
    def device(self) -> torch.device:
        return self.local.means.device

    @property
    def step(self) -> int:
        return self.local.step

    def advance(self, steps: int = 1) -> None:
        """Move the step counter forward (every rank alike)."""
        self.local.advance(steps)

    def _shard_sizes(self) -> list[int]:
        return [b - a for a, b in zip(self._starts[:-1], self._starts[1:])]

    def _exchange(self, fields: list[int], error: BaseException | None, what: str) -> Tensor:
        return comm.exchange(fields, error, what=what, device=self.device, group=self.group)

    def _gather(self, tensor: Tensor, sizes: list[int]) -> list[Tensor]:
        return comm.all_gather_rows(tensor, self.group, sizes=sizes)

    def _check_on_device(self, **tensors: Tensor | None) -> None:
        for name, tensor in tensors.items():
            if tensor is not None and tensor.device != self.device:
                raise ValueError(f"{name}: on {tensor.device}, but the cache is on {self.device}")

    def _check_indices(self, indices: object, checks: DeviceChecks, name: str = "indices") -> None:
        """Metadata now; the range joins `checks` (read with the call's other data checks)."""
        check_index(indices, name)
        check_shape(indices, name, ("K",))
        self._check_on_device(**{name: indices})
        checks.in_range(indices, name, self.num_items)

    # --- writes -------------------------------------------------------------------------

    @torch.compiler.disable  # eager under torch.compile, like LatentCache.update_: sizes
    # exchanged between ranks and a step stamp that change every step
    def update_(self, indices: Tensor, values: Tensor, backend: str = "auto") -> None:
        """COLLECTIVE. Write values [K_r, d] (detached) at global rows indices (int64 [K_r])
        of every rank; K_r may be 0. Equals one `LatentCache.update_` with the rank-order
        concatenation of all ranks' arguments: among duplicates the last occurrence wins,
        rank 0's rows coming first. Each rank writes the rows it owns (norms and stamps too)."""
        error, fields = None, [0, 0]
        try:
            checks = DeviceChecks()
            self._check_indices(indices, checks)
            check_float(values, "values")
            check_shape(values, "values", (indices.shape[0], self.dim),
                        "K matching indices, d matching the cache")
            self._check_on_device(values=values)
            checks.finite(values, "values")
            dtype = self.local.means.dtype
            if values.dtype != dtype:
                checks.condition(~torch.isfinite(values.to(dtype)).all(),
                                 f"values: overflow the cache's {dtype} storage (Inf after conversion)")
            checks.verify()
            resolve_backend("cache_update_", backend, self.local.means)
            fields = [indices.shape[0], comm.dtype_code(values.dtype)]
        except (TypeError, ValueError) as err:
            error = err
        table = self._exchange(fields, error, "update_")
        sizes = table[:, 0].tolist()
        if sum(sizes) == 0:
            return
        common = _promoted(table[:, 1].tolist())  # what torch.cat of the ranks' values gives
        all_indices = torch.cat(self._gather(indices, sizes))
        all_values = torch.cat(self._gather(values.detach().to(common), sizes))
        owned = (all_indices >= self.start) & (all_indices < self.stop)
        # the owned rows keep their order, so the last occurrence still wins
        self.local.update_(all_indices[owned] - self.start, all_values[owned], backend)

    def refresh_(self, encode: Callable[[Tensor], Tensor], data: Tensor, batch_size: int = 1000,
                 progress: bool = False, backend: str = "auto") -> None:
        """Recompute this shard's rows: means[i] = encode(data[i]) under torch.no_grad(), for
        i in [start, stop). data: the whole training set [N, ...] (replicated on every
        rank). Not collective, but every rank must call it (each refreshes its own rows)."""
        check_tensor(data, "data")
        if data.dim() == 0 or data.shape[0] != self.num_items:
            raise ValueError(f"data: expected shape [{self.num_items}, ...] (one row per cache "
                             f"item), got {list(data.shape)}")
        self.local.refresh_(encode, data[self.start:self.stop], batch_size, progress, backend)

    @property
    def is_fresh(self) -> bool:
        """`LatentCache.is_fresh` of this rank's shard."""
        return self.local.is_fresh

    def load_full_(self, cache: LatentCache) -> None:
        """Take this shard's rows of a full cache (means, norms, stamps) and its step."""
        if not isinstance(cache, LatentCache):
            raise TypeError(f"cache: expected a LatentCache, got {type(cache).__name__}")
        mine = (self.num_items, self.dim, self.local.means.dtype)
        theirs = (cache.num_items, cache.dim, cache.means.dtype)
        if theirs != mine:
            raise ValueError(f"cache: expected {mine[0]} rows of dimension {mine[1]} in {mine[2]}, "
                             f"got {theirs[0]} x {theirs[1]} in {theirs[2]}")
        state = cache.state_dict()
        owned = slice(self.start, self.stop)
        self.local.load_state_dict({"means": state["means"][owned], "sq_norms": state["sq_norms"][owned],
                                    "stamps": state["stamps"][owned], "_step": state["_step"]})
        self._known_complete = False

    # --- reads --------------------------------------------------------------------------

    def gather_full(self) -> LatentCache:
        """COLLECTIVE. The whole cache (means, norms, stamps, step) on every rank, on this
        cache's device: for checkpoints and single-process evaluation."""
        sizes = self._shard_sizes()
        state = self.local.state_dict()
        full = LatentCache(self.num_items, self.dim, dtype=self.local.means.dtype, device=self.device)
        full.load_state_dict({name: torch.cat(self._gather(state[name], sizes))
                              for name in ("means", "sq_norms", "stamps")} | {"_step": state["_step"]})
        return full

    def rows(self, indices: Tensor) -> Tensor:
        """COLLECTIVE. float32 [K_r, d] copy of the global rows indices (int64 [K_r]) of
        each rank, which may repeat and may be empty."""
        error, fields = None, [0]
        try:
            checks = DeviceChecks()
            self._check_indices(indices, checks)
            checks.verify()
            fields = [indices.shape[0]]
        except (TypeError, ValueError) as err:
            error = err
        sizes = self._exchange(fields, error, "rows")[:, 0].tolist()
        if sum(sizes) == 0:
            return torch.empty(0, self.dim, dtype=torch.float32, device=self.device)
        wanted = torch.cat(self._gather(indices, sizes))
        owned = (wanted >= self.start) & (wanted < self.stop)
        mine = torch.zeros(wanted.shape[0], self.dim, dtype=torch.float32, device=self.device)
        mine[owned] = self.local.means[wanted[owned] - self.start].float()
        total = [wanted.shape[0]] * self.world_size
        found = torch.stack(self._gather(mine, total))  # [W, K, d]: each row filled by its owner
        owner = torch.searchsorted(torch.tensor(self._starts[1:], device=self.device), wanted, right=True)
        picked = found[owner, torch.arange(wanted.shape[0], device=self.device)]
        offset = sum(sizes[:self.rank])
        return picked[offset:offset + sizes[self.rank]]

    @property
    def is_complete(self) -> bool:
        """COLLECTIVE. True when every row of the whole cache has been written (one all-reduce
        per call until that was found true, none after it until a state is loaded)."""
        return self._missing() == 0

    @torch.compiler.disable  # eager under torch.compile: a collective and a host read
    def check_complete(self) -> None:
        """COLLECTIVE. ValueError (on every rank) unless every row has been written."""
        missing = self._missing()
        if missing:
            raise ValueError(f"ShardedLatentCache: {missing} of {self.num_items} rows were never "
                             "written; fill it first (ExemplarPrior.refresh(encoder), or the cache's refresh_)")

    def _missing(self) -> int:
        if self._known_complete:
            return 0
        count = (self.local.stamps < 0).sum().reshape(1)
        missing = int(comm.all_reduce_sum(count, self.group))
        self._known_complete = missing == 0
        return missing

    def staleness(self) -> Tensor:
        """[stop - start] int64: steps since each LOCAL row was last written; -1 if never."""
        return self.local.staleness()

    def mean_staleness(self) -> float:
        """COLLECTIVE. Mean staleness in steps over the written rows of the whole cache; nan
        when none was written."""
        written = self.local.stamps >= 0
        ages = (self.step - self.local.stamps[written]).to(torch.float64)
        totals = torch.stack([ages.sum(), written.sum().to(torch.float64)])
        total, count = comm.all_reduce_sum(totals, self.group).tolist()
        return float("nan") if count == 0 else total / count

    # --- search and density -------------------------------------------------------------

    def knn(self, queries: Tensor, k: int, candidates: Tensor | None = None,
            exclude: Tensor | None = None, backend: str = "auto") -> tuple[Tensor, Tensor]:
        """COLLECTIVE. `knn_search` of this rank's queries [B_r, d] (B_r may be 0) over the
        whole cache: (sq_dists [B_r, k] float32, indices [B_r, k] int64 global), equal to the
        single-process search over the full means. candidates: int64 [M_r] global, unique,
        this rank's own (None on every rank, or given on every rank); exclude: int64 [B_r]
        global (-1: none). k may differ per rank; each row needs k searchable keys."""
        error, fields = None, [0] * 5
        try:
            validate_knn_request(queries, self.dim, self.num_items, k, candidates, exclude,
                                 "the cache")
            self._check_on_device(queries=queries)
            check_finite(self.local.means, "keys (this rank's cache shard)")
            resolve_backend("knn_search", backend, queries)
            fields = [queries.shape[0], comm.dtype_code(queries.dtype),
                      -1 if candidates is None else candidates.shape[0], int(exclude is not None), k]
        except (TypeError, ValueError) as err:
            error = err
        table = self._exchange(fields, error, "knn").tolist()
        batches, codes, pools, excluding, ks = (list(column) for column in zip(*table))
        if len({size < 0 for size in pools}) > 1:
            raise ValueError("candidates: given on some ranks and None on others; all ranks must "
                             "agree (a subset on each, or None on each)")
        width = max(ks)
        if sum(batches) > 0:
            all_queries = self._gather(queries.to(_promoted(codes)), batches)
            if exclude is None:
                exclude = torch.full((queries.shape[0],), -1, dtype=torch.int64, device=self.device)
            all_exclude = self._gather(exclude, batches) if any(excluding) else [None] * len(ks)
            all_candidates = ([None] * len(ks) if pools[0] < 0
                              else self._gather(candidates, pools))
            partial = torch.cat([
                shard_knn(q, self.local.means, k_s, self.start, c, e, width, backend)
                for q, k_s, c, e in zip(all_queries, ks, all_candidates, all_exclude)])
            parts = self._gather(partial, [partial.shape[0]] * self.world_size)
        else:
            parts = [torch.empty(0, width, dtype=torch.int64, device=self.device)] * self.world_size
        offset = sum(batches[:self.rank])
        mine = [part[offset:offset + batches[self.rank]] for part in parts]
        return merge_knn(mine, k)

    def mixture_log_density(self, z: Tensor, log_var: Tensor, backend: str = "auto") -> Tensor:
        """COLLECTIVE, evaluation only. [B_r]: log of the uniform mixture over ALL N cached
        means for each row of this rank's z [B_r, d] (B_r may be 0), what
        `ops.mixture_log_density(z, full_means, log_var)` returns, in z's dtype (float32
        tolerance). log_var: 0-dim float, each rank's own. No gradient flows: ValueError when
        autograd is enabled and z or log_var requires grad (run it under torch.no_grad())."""
        error, fields = None, [0, 0, 0]
        try:
            check_float(z, "z")
            check_shape(z, "z", ("B", self.dim), "d matching the cache")
            check_float(log_var, "log_var")
            if log_var.dim() != 0:
                raise ValueError(f"log_var: expected a 0-dim tensor, got shape {list(log_var.shape)}")
            self._check_on_device(z=z, log_var=log_var)
            if torch.is_grad_enabled():
                for name, tensor in (("z", z), ("log_var", log_var)):
                    if tensor.requires_grad:
                        raise ValueError(f"{name}: requires grad, but the sharded mixture is for "
                                         "evaluation only (no gradient crosses the ranks); call "
                                         "it under torch.no_grad()")
            checks = DeviceChecks()
            checks.finite(z, "z")
            checks.finite(log_var, "log_var")
            checks.finite(self.local.means, "means (this rank's cache shard)")
            checks.verify()
            resolve_backend("mixture_log_density", backend, z)
            bits = torch.tensor(float(log_var), dtype=torch.float64).view(torch.int64)
            fields = [z.shape[0], comm.dtype_code(z.dtype), int(bits)]
        except (TypeError, ValueError) as err:
            error = err
        table = self._exchange(fields, error, "mixture_log_density")
        batches = table[:, 0].tolist()
        total = sum(batches)
        if total == 0:
            return z.new_empty(0)
        log_vars = table[:, 2].contiguous().view(torch.float64).repeat_interleave(table[:, 0]).to(self.device)
        all_z = torch.cat(self._gather(z.detach().to(_promoted(table[:, 1].tolist())), batches))
        partial = shard_mixture(all_z, self.local.means, log_vars, backend)
        partials = torch.stack(self._gather(partial, [total] * self.world_size))
        offset = sum(batches[:self.rank])
        combined = combine_mixtures(partials[:, offset:offset + batches[self.rank]], self._shard_sizes())
        return combined.to(z.dtype)

    def extra_repr(self) -> str:
        return (f"num_items={self.num_items}, dim={self.dim}, dtype={self.local.means.dtype}, "
                f"rows=[{self.start}, {self.stop}), rank={self.rank}/{self.world_size}")


def _forget_completeness(module: ShardedLatentCache, incompatible_keys: object) -> None:
    """After load_state_dict (every rank loads its shard), check completeness afresh."""
    module._known_complete = False


def _promoted(codes: list[int]) -> torch.dtype:
    """The dtype torch.cat gives the ranks' tensors (codes from `comm.dtype_code`)."""
    dtype = comm.dtype_of(codes[0])
    for code in codes[1:]:
        dtype = torch.promote_types(dtype, comm.dtype_of(code))
    return dtype
