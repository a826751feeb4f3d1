"""Argument checks shared by every backend of the ops (torch reference, Triton, C++).

Conventions: TypeError for a non-tensor or a wrong dtype class, ValueError for wrong shapes,
devices or values. Every message starts with the argument's name. The op-level validators
(`validate_mixture`, `validate_knn`, `validate_cache_update`) run before any computation.
Value checks (ranges, NaN/Inf) read the data, so on an accelerator they synchronise.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .device_checks import DeviceChecks
from .errors import NonFiniteError

CACHE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
"""Storage dtypes of a latent cache."""


def check_tensor(x: object, name: str) -> Tensor:
    """Return x if it is a tensor, else TypeError."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    return x


def check_float(x: object, name: str) -> Tensor:
    """Return x if it is a floating-point tensor, else TypeError."""
    if not check_tensor(x, name).is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {x.dtype}")
    return x


def check_dtype(x: object, name: str, dtypes: Sequence[torch.dtype]) -> Tensor:
    """Return x if it is a tensor of one of `dtypes`, else TypeError."""
    if check_tensor(x, name).dtype not in dtypes:
        names = ", ".join(str(dt).removeprefix("torch.") for dt in dtypes)
        raise TypeError(f"{name}: expected dtype {names}, got {x.dtype}")
    return x


def check_index(x: object, name: str) -> Tensor:
    """Return x if it is an int64 (Long) tensor, else TypeError."""
    return check_dtype(x, name, (torch.int64,))


def check_shape(x: Tensor, name: str, expected: Sequence[int | str], note: str = "") -> None:
    """ValueError unless x.shape matches `expected`: ints must be equal, strings match any size."""
    ok = x.dim() == len(expected) and all(
        isinstance(want, str) or got == want for got, want in zip(x.shape, expected))
    if not ok:
        shown = ", ".join(str(want) for want in expected)
        suffix = f" ({note})" if note else ""
        raise ValueError(f"{name}: expected shape [{shown}]{suffix}, got {list(x.shape)}")


def check_int(value: object, name: str, minimum: int) -> int:
    """Return value if it is an int (not bool) >= minimum: TypeError / ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return value


def check_rows(x: object, name: str, width: int, device: torch.device | None = None) -> Tensor:
    """Return x if it is a non-empty floating [B, width] tensor (on `device` when given)."""
    check_float(x, name)
    check_shape(x, name, ("B", width))
    if x.shape[0] == 0:
        raise ValueError(f"{name}: empty batch (B = 0)")
    if device is not None and x.device != device:
        raise ValueError(f"{name}: on {x.device}, but expected {device}")
    return x


def check_same_device(**tensors: Tensor | None) -> None:
    """ValueError unless all given (non-None) tensors live on one device."""
    given = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(given.values())) > 1:
        where = ", ".join(f"{name} on {device}" for name, device in given.items())
        raise ValueError(f"expected all tensors on one device, got {where}")


def check_finite(x: Tensor, name: str) -> None:
    """NonFiniteError (a ValueError) if x holds a NaN or an infinity."""
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteError(f"{name} contains NaN/Inf", argument=name)


def check_range(x: Tensor, name: str, size: int, *, allow_none: bool = False) -> None:
    """ValueError unless every entry of the index tensor x lies in [0, size) (or is -1 when
    `allow_none`, meaning "no index")."""
    if x.numel() == 0:
        return
    low = -1 if allow_none else 0
    lo, hi = int(x.min()), int(x.max())
    if lo < low or hi >= size:
        allowed = f"[0, {size})" + (" or -1 for none" if allow_none else "")
        raise ValueError(f"{name}: indices must lie in {allowed}, got values in [{lo}, {hi}]")


def check_unique(x: Tensor, name: str) -> None:
    """ValueError if the 1-D index tensor x repeats a value."""
    if torch.unique(x).numel() != x.numel():
        raise ValueError(f"{name}: expected unique indices, got duplicates")


def _check_points(x: object, name: str, rows: str) -> None:
    """TypeError / ValueError unless x is a floating [rows, d] tensor with d >= 1."""
    check_float(x, name)
    check_shape(x, name, (rows, "d"))
    if x.shape[1] == 0:
        raise ValueError(f"{name}: expected shape [{rows}, d] with d >= 1, got {list(x.shape)}")


def _check_components(x: object, name: str, like: Tensor, like_name: str) -> None:
    """TypeError / ValueError unless x is a floating [N, d] tensor, N >= 1, with the d of
    `like` ([B, d])."""
    check_float(x, name)
    d = like.shape[1]
    check_shape(x, name, ("N", d), f"d matching {like_name}")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one row (N >= 1), got shape {list(x.shape)}")


def _check_exclude(exclude: object, rows: Tensor, rows_name: str) -> None:
    """TypeError / ValueError unless exclude is int64 [B], B the number of rows."""
    check_index(exclude, "exclude")
    check_shape(exclude, "exclude", (rows.shape[0],), f"one entry per row of {rows_name}")


def validate_mixture(z: object, means: object, log_var: object, exclude: object,
                     log_weights: object) -> None:
    """Checks of `mixture_log_density`: z [B, d] float, means [N, d] float with N >= 1,
    log_var 0-dim float, exclude int64 [B] in [-1, N), log_weights float [N] without NaN or
    +Inf; every row must keep at least one component of non-zero weight."""
    _check_points(z, "z", "B")
    _check_components(means, "means", z, "z")
    check_float(log_var, "log_var")
    if log_var.dim() != 0:
        raise ValueError(f"log_var: expected a 0-dim tensor, got shape {list(log_var.shape)}")
    size = means.shape[0]
    if exclude is not None:
        _check_exclude(exclude, z, "z")
    if log_weights is not None:
        check_float(log_weights, "log_weights")
        check_shape(log_weights, "log_weights", (size,), "one per row of means")
    check_same_device(z=z, means=means, log_var=log_var, exclude=exclude, log_weights=log_weights)
    checks = DeviceChecks()
    checks.finite(z, "z")
    checks.finite(means, "means")
    checks.finite(log_var, "log_var")
    if exclude is not None:
        checks.in_range(exclude, "exclude", size, allow_none=True)
    if log_weights is not None:
        checks.condition((log_weights.isnan() | (log_weights == float("inf"))).any(),
                         "log_weights contains NaN/+Inf (only -inf is allowed, to drop a component)")
    _check_participation(checks, z, size, exclude, log_weights)
    checks.verify()


def _check_participation(checks: DeviceChecks, z: Tensor, size: int, exclude: Tensor | None,
                         log_weights: Tensor | None) -> None:
    """Adds the check naming the first row of z whose mixture has no component left."""
    if log_weights is None:
        alive = torch.ones(size, dtype=torch.bool, device=z.device)
    else:
        alive = log_weights > float("-inf")
    count = alive.sum().expand(z.shape[0])
    if exclude is not None:  # clamped: an out-of-range exclude is reported by its own check
        count = count - ((exclude >= 0) & alive[exclude.clamp(0, size - 1)]).long()
    if log_weights is None:
        checks.first_row(count == 0, lambda row, _: f"exclude: row {row} leaves out the only "
                         f"component (N={size}), so its mixture is empty")
    else:
        checks.first_row(count == 0, lambda row, _: f"log_weights: row {row} has weight -inf on "
                         "every component it does not exclude, so its mixture is empty")


def validate_knn(queries: object, keys: object, k: object, candidates: object,
                 exclude: object) -> None:
    """Checks of `knn_search`: queries [B, d] float, keys [N, d] float with N >= 1 and finite,
    k int >= 1, candidates int64 [M] unique in [0, N), exclude int64 [B] in [-1, N), and k at
    most the number of keys each row can search."""
    _check_points(queries, "queries", "B")
    _check_components(keys, "keys", queries, "queries")
    check_int(k, "k", 1)
    size = keys.shape[0]
    if candidates is not None:
        check_index(candidates, "candidates")
        check_shape(candidates, "candidates", ("M",))
    if exclude is not None:
        _check_exclude(exclude, queries, "queries")
    check_same_device(queries=queries, keys=keys, candidates=candidates, exclude=exclude)
    checks = DeviceChecks()
    checks.finite(queries, "queries")
    checks.finite(keys, "keys")
    _check_searchable(checks, k, size, candidates, exclude)


def validate_knn_request(queries: object, dim: int, size: int, k: object, candidates: object,
                         exclude: object, keys_name: str) -> None:
    """The checks of `knn_search` that need only the keys' count `size` and width `dim`
    (for holders of the keys: an approximate index, a sharded cache; `keys_name` names them
    in messages): queries [B, dim] finite float, k int >= 1, candidates int64 [M] unique in
    [0, size), exclude int64 [B] in [-1, size), on queries' device, and k at most the keys
    each row can search."""
    check_float(queries, "queries")
    check_shape(queries, "queries", ("B", dim), f"d matching {keys_name}")
    check_int(k, "k", 1)
    if candidates is not None:
        check_index(candidates, "candidates")
        check_shape(candidates, "candidates", ("M",))
    if exclude is not None:
        check_index(exclude, "exclude")
        check_shape(exclude, "exclude", (queries.shape[0],), "one entry per row of queries")
    check_same_device(queries=queries, candidates=candidates, exclude=exclude)
    checks = DeviceChecks()
    checks.finite(queries, "queries")
    _check_searchable(checks, k, size, candidates, exclude)


def _check_searchable(checks: DeviceChecks, k: int, size: int, candidates: Tensor | None,
                      exclude: Tensor | None) -> None:
    """candidates unique in [0, size), exclude in [-1, size), and k keys searchable per row;
    runs `checks` (one read of every verdict)."""
    pool = size if candidates is None else candidates.numel()
    what = "keys" if candidates is None else "candidates"
    if pool == 0:
        raise ValueError("candidates: expected at least one key index (None searches every key), got none")
    if k > pool:
        raise ValueError(f"k: expected k <= {pool} (the number of {what}), got k={k}")
    if candidates is not None:
        checks.in_range(candidates, "candidates", size)
        checks.unique(candidates, "candidates")
    if exclude is not None:
        checks.in_range(exclude, "exclude", size, allow_none=True)
        removed = exclude >= 0 if candidates is None else torch.isin(exclude, candidates)
        counts = pool - removed.long()
        checks.first_row(counts < k, lambda row, count: f"k: row {row} can search only {count} "
                         f"{what} ({pool} minus its excluded index), got k={k}", counts)
    checks.verify()


def _check_writable(x: Tensor, name: str) -> None:
    """ValueError unless an in-place op may write x: no two of its elements share memory
    (a stride-0 dimension, as from `expand`), and, with autograd enabled, x does not
    require grad (the write is not differentiable, so autograd would not see it)."""
    if any(stride == 0 and length > 1 for stride, length in zip(x.stride(), x.shape)):
        raise ValueError(f"{name}: its elements share memory (a stride-0 dimension, e.g. from "
                         f"expand), so rows cannot be written separately; pass {name}.clone()")
    if x.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"{name}: requires grad, but the in-place write is not differentiable; "
                         "write it under torch.no_grad(), or pass a tensor that does not require grad")


def validate_cache_update(cache: object, indices: object, values: object, norms: object,
                          stamps: object, step: object) -> None:
    """Checks of `cache_update_`: cache [N, d] float32/bfloat16/float16, indices int64 [K] in
    [0, N), values float [K, d] finite and finite once converted to the cache dtype, norms
    float32 [N], stamps int64 [N] given together with an int step >= 0 (and with norms);
    cache, norms and stamps writable in place (see `_check_writable`)."""
    check_dtype(cache, "cache", CACHE_DTYPES)
    check_shape(cache, "cache", ("N", "d"))
    size, dim = cache.shape
    check_index(indices, "indices")
    check_shape(indices, "indices", ("K",))
    check_float(values, "values")
    check_shape(values, "values", (indices.shape[0], dim), "K matching indices, d matching cache")
    if norms is not None:
        check_dtype(norms, "norms", (torch.float32,))
        check_shape(norms, "norms", (size,), "one per cache row")
    if stamps is not None:
        check_index(stamps, "stamps")
        check_shape(stamps, "stamps", (size,), "one per cache row")
        if step is None:
            raise ValueError("stamps: given without step (the value to stamp written rows with)")
        if norms is None:
            raise ValueError("stamps: given without norms (norms and stamps are updated together)")
    if step is not None:
        if stamps is None:
            raise ValueError("step: given without stamps")
        check_int(step, "step", 0)
    check_same_device(cache=cache, indices=indices, values=values, norms=norms, stamps=stamps)
    for name, target in (("cache", cache), ("norms", norms), ("stamps", stamps)):
        if target is not None:
            _check_writable(target, name)
    checks = DeviceChecks()
    checks.in_range(indices, "indices", size)
    checks.finite(values, "values")
    if values.dtype != cache.dtype:
        checks.condition(~torch.isfinite(values.to(cache.dtype)).all(),
                         f"values: overflow the cache's {cache.dtype} storage (Inf after conversion)")
    checks.verify()
