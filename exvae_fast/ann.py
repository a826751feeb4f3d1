"""FaissIndex: an optional approximate nearest-neighbour index over a latent cache's means
(DESIGN.md section 5: for caches beyond GPU memory, FAISS IVF/HNSW replaces exact search).

FAISS is optional: this module imports without it, and only constructing a `FaissIndex`
needs it (`pip install faiss-cpu`, or faiss-gpu). The index lives on the CPU whatever the
cache's device; queries and results move to and from it.

What is approximate, and what is not. FAISS only proposes a shortlist of 2k keys per query
(2k + 1 with `exclude`); the index then measures each proposed key exactly against its own
float32 CPU copy of the current cache rows (float64 differences rounded to float32, as
`ops.knn_search` does), drops invalid proposals (padding, the excluded index, keys outside
`candidates`), and re-sorts by (distance, index). So returned distances are always the
true distances of the returned rows, rows are ascending with ties to the lower index among
the proposed keys, and a key is never returned that the exact search could not return. The
approximation only decides which neighbours are chosen. A row for which FAISS proposes
fewer than k valid keys (a small candidate set outside the probed IVF lists, a filtered
HNSW walk that dead-ends) is answered by the exact `ops.knn_search` instead, so every row
always has k valid neighbours. Ties: when more keys tie at the k-th distance than FAISS
proposes, which of them are proposed is FAISS's choice (the exact search would take the
lowest indices).

Writes (`update`). IVF: rows are removed and re-added at their new positions (a hash-table
direct map makes removal O(K)), so searches see new positions at once. HNSW graphs cannot
remove nodes: the graph keeps the positions of the last build, while the exact copy, hence
the distances and the ranking of the proposals, follows every write; written rows are
recorded as stale. By default (`max_stale=None`) the graph is rebuilt only by `build`
(the latent cache rebuilds it on every refresh, i.e. once per epoch in training, and after
loading a checkpoint), so neighbour choice sees positions at most one refresh old, like
the authors' once-per-epoch cache. With `max_stale=f` the next search after more than a
fraction f of the rows were written rebuilds the graph first.

Threads. FAISS and PyTorch each bring their own OpenMP runtime (and FAISS an OpenMP
OpenBLAS), whose idle threads busy-wait: both multi-threaded on the same cores slow each
other down (on 2 CPU cores, FAISS on all cores made a small search up to 16x and the
PyTorch matmuls after it up to 11x slower). So each call runs FAISS with `threads` OpenMP
threads, 1 by default; raise it where FAISS has cores to itself (e.g. a large index on the
CPU while the model trains on a GPU).

An index is derived data: it holds no checkpoint state (pickling or deep-copying drops the
FAISS structures; build again from the cache). Memory: the FAISS structures plus one
float32 [N, d] copy of the means, on the CPU.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .ops import knn_search
from .ops.dispatch import KNOWN_BACKENDS, resolve_backend
from .ops.knn import pack_keys, unpack_keys
from .ops.validation import (check_finite, check_float, check_index, check_int, check_range,
                             check_same_device, check_shape, validate_knn_request)

KINDS = ("ivf", "hnsw")
INSTALL_HINT = "pip install faiss-cpu (or faiss-gpu)"


def import_faiss() -> ModuleType:
    """The `faiss` module, or an ImportError that says how to install it."""
    try:
        import faiss
    except ImportError as err:
        raise ImportError(f"FaissIndex needs FAISS, which is not installed: {INSTALL_HINT}") from err
    return faiss


@contextmanager
def _faiss_threads(faiss: ModuleType, count: int | None) -> Iterator[None]:
    """Run FAISS with `count` OpenMP threads inside the block (None: leave as is)."""
    if count is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class FaissIndex:
    """Approximate k-NN over the N rows of a latent cache, squared Euclidean distance.

    kind: "ivf" (IndexIVFFlat over a flat L2 quantizer: nlist k-means lists, nprobe of them
    searched per query) or "hnsw" (IndexHNSWFlat: graph degree m, search beam ef_search,
    construction beam ef_construction).
    seed: seed of the IVF k-means (HNSW draws its levels from FAISS's fixed-seed generator).
    threads: OpenMP threads of FAISS inside this index's calls (None: FAISS's default, all
    cores); see the module docstring.
    deterministic: build HNSW graphs with one thread whatever `threads` says (parallel
    insertion makes the graph depend on thread timing); IVF builds are deterministic anyway.
    max_stale: HNSW only; None or a fraction in (0, 1]: see the module docstring.
    Usage: `build(means)`, then `update` on every cache write, `search` for neighbours.
    """

    def __init__(self, kind: str, *, nlist: int = 1024, nprobe: int = 32, m: int = 32,
                 ef_search: int = 64, ef_construction: int = 40, seed: int = 0,
                 threads: int | None = 1, deterministic: bool = True,
                 max_stale: float | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {', '.join(map(repr, KINDS))}, got {kind!r}")
        check_int(nlist, "nlist", 1)
        check_int(nprobe, "nprobe", 1)
        if kind == "ivf" and nprobe > nlist:
            raise ValueError(f"nprobe: expected at most nlist={nlist} (lists searched per query), got {nprobe}")
        check_int(m, "m", 2)
        check_int(ef_search, "ef_search", 1)
        check_int(ef_construction, "ef_construction", 1)
        check_int(seed, "seed", 0)
        if threads is not None:
            check_int(threads, "threads", 1)
        if not isinstance(deterministic, bool):
            raise TypeError(f"deterministic: expected a bool, got {type(deterministic).__name__}")
        if max_stale is not None:
            if isinstance(max_stale, bool) or not isinstance(max_stale, (int, float)):
                raise TypeError(f"max_stale: expected a float or None, got {type(max_stale).__name__}")
            if not 0 < max_stale <= 1:
                raise ValueError(f"max_stale: expected a fraction in (0, 1] or None, got {max_stale}")
            if kind != "hnsw":
                raise ValueError("max_stale: only for kind='hnsw' (IVF updates rows in place)")
        self._faiss = import_faiss()
        self.kind = kind
        self.nlist, self.nprobe, self.seed, self.threads = nlist, nprobe, seed, threads
        self.m, self.ef_search, self.ef_construction = m, ef_search, ef_construction
        self.deterministic, self.max_stale = deterministic, max_stale
        self._reset()

    def _reset(self) -> None:
        self._index: Any = None
        self._means: Tensor | None = None  # float32 [N, d] CPU: the current rows
        self._stale: Tensor | None = None  # bool [N]: HNSW rows written since the build
        self._rebuild_due = False

    # --- state ------------------------------------------------------------------------

    @property
    def is_built(self) -> bool:
        return self._index is not None

    @property
    def num_items(self) -> int:
        """N, the rows indexed (0 before the first build)."""
        return 0 if self._means is None else self._means.shape[0]

    @property
    def dim(self) -> int:
        """d (0 before the first build)."""
        return 0 if self._means is None else self._means.shape[1]

    @property
    def stale_fraction(self) -> float:
        """Fraction of rows written since the HNSW graph was built (0.0 for IVF)."""
        if self._stale is None:
            return 0.0
        return float(self._stale.sum()) / max(self.num_items, 1)

    def __getstate__(self) -> dict:
        # derived data: pickles and deep copies carry the settings, not the FAISS structures
        state = {key: value for key, value in self.__dict__.items() if key != "_faiss"}
        state.update(_index=None, _means=None, _stale=None, _rebuild_due=False)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._faiss = import_faiss()

    def _check_built(self) -> None:
        if not self.is_built:
            raise ValueError("FaissIndex: not built; call build(means) first")

    # --- build and update -------------------------------------------------------------

    def build(self, means: Tensor) -> None:
        """(Re)build from means [N, d] (any float dtype and device; a float32 CPU copy is
        kept). IVF trains its k-means quantizer on all the means (FAISS sub-samples to 256
        per list beyond that, with the same seed); ValueError when N < nlist (each list
        needs a training point: lower nlist)."""
        check_float(means, "means")
        check_shape(means, "means", ("N", "d"))
        size, dim = means.shape
        if size == 0 or dim == 0:
            raise ValueError(f"means: expected N >= 1 rows of d >= 1, got shape {list(means.shape)}")
        if size >= 2**31:
            raise ValueError(f"means: at most 2^31 - 1 rows, got {size}")
        if self.kind == "ivf" and size < self.nlist:
            raise ValueError(f"nlist: expected at most the N={size} rows to build from (IVF trains "
                             f"one k-means centroid per list), got nlist={self.nlist}")
        copy = means.detach().to("cpu", torch.float32, copy=True).contiguous()
        check_finite(copy, "means")
        self._means = copy
        self._build_faiss()

    def _build_faiss(self) -> None:
        faiss, means = self._faiss, self._means
        dim, points = means.shape[1], means.numpy()
        if self.kind == "ivf":
            quantizer = faiss.IndexFlatL2(dim)
            # FAISS's Python wrapper keeps a reference to the quantizer in the index
            index = faiss.IndexIVFFlat(quantizer, dim, self.nlist, faiss.METRIC_L2)
            index.cp.seed = self.seed
            index.cp.min_points_per_centroid = 1  # N >= nlist is enough; no FAISS warning
            with _faiss_threads(faiss, self.threads):
                index.train(points)
                index.set_direct_map_type(faiss.DirectMap.Hashtable)  # O(K) remove_ids
                index.add_with_ids(points, np.arange(means.shape[0], dtype=np.int64))
            self._stale = None
        else:
            index = faiss.IndexHNSWFlat(dim, self.m, faiss.METRIC_L2)
            index.hnsw.efConstruction = self.ef_construction
            with _faiss_threads(faiss, 1 if self.deterministic else self.threads):
                index.add(points)  # ids are the insertion positions 0..N-1
            self._stale = torch.zeros(means.shape[0], dtype=torch.bool)
        self._index = index
        self._rebuild_due = False

    def update(self, indices: Tensor, values: Tensor) -> None:
        """Write values [K, d] (float) at rows indices (int64 [K], in [0, N)); among
        duplicate indices the last occurrence wins, as in `ops.cache_update_`. IVF moves the
        rows; HNSW records them as stale (module docstring)."""
        self._check_built()
        check_index(indices, "indices")
        check_shape(indices, "indices", ("K",))
        check_float(values, "values")
        check_shape(values, "values", (indices.shape[0], self.dim), "K matching indices, d matching the index")
        check_same_device(indices=indices, values=values)
        check_range(indices, "indices", self.num_items)
        if indices.numel() == 0:
            return
        rows = values.detach().to("cpu", torch.float32)
        check_finite(rows, "values")  # after the float32 conversion: overflow counts
        unique, inverse = torch.unique(indices.cpu(), return_inverse=True)
        order = torch.arange(indices.shape[0])
        last = torch.full_like(unique, -1).scatter_reduce_(0, inverse, order, "amax")
        self._means[unique] = rows[last]
        if self.kind == "ivf":
            ids, faiss = unique.numpy(), self._faiss
            with _faiss_threads(faiss, self.threads):
                removed = self._index.remove_ids(faiss.IDSelectorArray(ids.size, faiss.swig_ptr(ids)))
                if removed != ids.size:  # cannot happen while only this class writes the index
                    raise RuntimeError(f"FaissIndex: removed {removed} of {ids.size} rows; rebuild it")
                self._index.add_with_ids(self._means[unique].numpy(), ids)
        else:
            self._stale[unique] = True
            if self.max_stale is not None and self.stale_fraction > self.max_stale:
                self._rebuild_due = True

    # --- search -----------------------------------------------------------------------

    def search(self, queries: Tensor, k: int, candidates: Tensor | None = None,
               exclude: Tensor | None = None, backend: str = "auto") -> tuple[Tensor, Tensor]:
        """The k nearest rows of each query: (sq_dists [B, k] float32, indices [B, k] int64)
        on the queries' device, each row ascending (ties to the lower index among the keys
        FAISS proposes).

        queries: [B, d] float. candidates: int64 [M], unique rows in [0, N): only those are
        searched (a FAISS IDSelectorBatch). exclude: int64 [B], a row that row b must not
        return (-1: none). Distances: squared Euclidean, exact (float64 differences rounded
        to float32) from the current rows. Rows for which FAISS proposes fewer than k valid
        keys are answered by `ops.knn_search(..., backend=backend)` on the CPU copy (a
        backend that does not run on the CPU, such as a GPU run's "triton", becomes "auto").
        ValueError when some row has fewer than k searchable rows (same check and wording as
        `ops.knn_search`).
        """
        self._check_built()
        self._validate_search(queries, k, candidates, exclude)
        backend = self._fallback_backend(backend)
        device = queries.device
        if queries.shape[0] == 0:
            return (torch.empty(0, k, dtype=torch.float32, device=device),
                    torch.empty(0, k, dtype=torch.int64, device=device))
        if self._rebuild_due:
            self._build_faiss()
        q = queries.detach().cpu()
        pool = None if candidates is None else candidates.cpu().contiguous()
        left_out = None if exclude is None else exclude.cpu()
        # a shortlist of 2k (as the exact reference keeps), ranked again exactly below
        width = min(2 * k + int(exclude is not None), self.num_items)
        selector = None if pool is None else self._faiss.IDSelectorBatch(
            pool.numel(), self._faiss.swig_ptr(pool.numpy()))
        with _faiss_threads(self._faiss, self.threads):
            _, found = self._index.search(np.ascontiguousarray(q.float().numpy()), width,
                                          params=self._params(selector))
        ids = torch.from_numpy(found)
        valid = ids >= 0
        if left_out is not None:
            valid &= ids != left_out[:, None]
        if pool is not None:
            valid &= torch.isin(ids, pool)
        ids = ids.clamp_min(0)
        exact = (q.to(torch.float64)[:, None, :] - self._means[ids].to(torch.float64)).square().sum(-1)
        # NaN orders after +inf in pack_keys, so invalid proposals sort last
        exact = exact.to(torch.float32).masked_fill(~valid, float("nan"))
        dists, indices = unpack_keys(torch.sort(pack_keys(exact, ids), dim=1).values[:, :k])
        short = torch.nonzero(valid.sum(1) < k).squeeze(1)
        if short.numel():
            dists[short], indices[short] = knn_search(
                q[short], self._means, k, candidates=pool,
                exclude=None if left_out is None else left_out[short], backend=backend)
        return dists.to(device), indices.to(device)

    def _fallback_backend(self, backend: str) -> str:
        """`backend` if it runs knn_search on the CPU, "auto" if it is a known backend that
        does not; ValueError for an unknown name."""
        try:
            resolve_backend("knn_search", backend, self._means)
        except ValueError:
            if backend in KNOWN_BACKENDS:
                return "auto"
            raise
        return backend

    def _params(self, selector: Any) -> Any:
        faiss = self._faiss
        if self.kind == "ivf":
            params = faiss.SearchParametersIVF()
            params.nprobe = self.nprobe
        else:
            params = faiss.SearchParametersHNSW()
            params.efSearch = self.ef_search
        if selector is not None:
            params.sel = selector
        return params

    def _validate_search(self, queries: object, k: object, candidates: object, exclude: object) -> None:
        """The checks of `ops.knn_search` except the keys' (validated when written)."""
        validate_knn_request(queries, self.dim, self.num_items, k, candidates, exclude, "the index")

    def __repr__(self) -> str:
        if self.kind == "ivf":
            settings = f"nlist={self.nlist}, nprobe={self.nprobe}, seed={self.seed}, threads={self.threads}"
        else:
            settings = (f"m={self.m}, ef_search={self.ef_search}, ef_construction={self.ef_construction}, "
                        f"threads={self.threads}, max_stale={self.max_stale}")
        built = f"num_items={self.num_items}, dim={self.dim}" if self.is_built else "not built"
        return f"FaissIndex(kind={self.kind!r}, {settings}, {built})"
