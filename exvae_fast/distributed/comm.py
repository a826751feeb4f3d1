"""Thin helpers over torch.distributed: process-group set-up from torchrun's variables,
balanced sharding of an index range, and gathers of tensors whose row count differs per rank.

Every helper also runs without a process group (a single process is world 1, rank 0), so
sharded code paths work unchanged outside torchrun. Collectives move raw bytes (uint8 rows),
so any dtype travels exactly on gloo (CPU) and nccl (CUDA); the tensors must live on a device
the group's backend serves (CPU for gloo, the rank's GPU for nccl).
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from ..ops.errors import NonFiniteError
from ..ops.validation import check_int, check_tensor

MAX_DIMS = 8
"""Most dimensions of a tensor that `all_gather_rows` gathers without known sizes."""

_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
           torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128)
"""dtypes with a code (their position) in the headers that ranks exchange."""


def is_distributed(group: dist.ProcessGroup | None = None) -> bool:
    """True when a process group is initialised and has more than one rank."""
    return world_size(group) > 1


def world_size(group: dist.ProcessGroup | None = None) -> int:
    """Number of ranks of `group` (default: the world); 1 without a process group."""
    if not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size(group)


def rank(group: dist.ProcessGroup | None = None) -> int:
    """This process's rank in `group` (default: the world); 0 without a process group."""
    if not dist.is_available() or not dist.is_initialized():
        return 0
    return dist.get_rank(group)


def _env_int(name: str) -> int | None:
    """The integer value of environment variable `name` (None when unset)."""
    raw = os.environ.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}: expected an integer environment variable, got {raw!r}") from None


def init_from_env(device_type: str, timeout: timedelta | None = None) -> bool:
    """Initialise the default process group from torchrun's variables; returns whether the
    run is distributed (world size > 1).

    Without WORLD_SIZE (or with WORLD_SIZE=1) nothing is initialised. Otherwise RANK,
    LOCAL_RANK, MASTER_ADDR and MASTER_PORT must be set and consistent (ValueError naming
    the variable). Backend: "nccl" for device_type "cuda" (after selecting GPU LOCAL_RANK),
    "gloo" otherwise. An already initialised group is kept.
    timeout: collective timeout (torch's default when None).
    """
    if not isinstance(device_type, str):
        raise TypeError(f"device_type: expected a str, got {type(device_type).__name__}")
    if dist.is_available() and dist.is_initialized():
        return is_distributed()
    world = _env_int("WORLD_SIZE")
    if world is None or world == 1:
        return False
    if world < 1:
        raise ValueError(f"WORLD_SIZE: expected an integer >= 1, got {world}")
    if not dist.is_available():
        raise ValueError(f"WORLD_SIZE={world}, but this torch build has no torch.distributed")
    ranks = {name: _env_int(name) for name in ("RANK", "LOCAL_RANK")}
    missing = [name for name, value in ranks.items() if value is None]
    missing += [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise ValueError(f"{', '.join(missing)}: not set, but WORLD_SIZE={world} asks for a "
                         "distributed run (launch with torchrun)")
    if not 0 <= ranks["RANK"] < world:
        raise ValueError(f"RANK: expected a value in [0, {world}) (WORLD_SIZE={world}), got {ranks['RANK']}")
    local_world = _env_int("LOCAL_WORLD_SIZE") or world
    if not 0 <= ranks["LOCAL_RANK"] < min(local_world, world):
        raise ValueError(f"LOCAL_RANK: expected a value in [0, {min(local_world, world)}), "
                         f"got {ranks['LOCAL_RANK']}")
    port = _env_int("MASTER_PORT")
    if not 0 < port < 65536:
        raise ValueError(f"MASTER_PORT: expected a port in [1, 65535], got {port}")
    if device_type == "cuda":
        torch.cuda.set_device(ranks["LOCAL_RANK"])
    extra = {} if timeout is None else {"timeout": timeout}
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo", **extra)
    return is_distributed()


def shard_range(num_items: int, world: int, rank: int) -> tuple[int, int]:
    """[start, stop) of the contiguous block of `rank` when num_items rows are split over
    `world` ranks: blocks differ by at most one row, the first num_items % world ranks
    holding the larger ones. Requires num_items >= world >= 1 (no empty shard)."""
    check_int(num_items, "num_items", 1)
    check_int(world, "world", 1)
    check_int(rank, "rank", 0)
    if rank >= world:
        raise ValueError(f"rank: expected a value in [0, {world}), got {rank}")
    if num_items < world:
        raise ValueError(f"num_items: expected at least one item per rank (>= {world}), got {num_items}")
    base, extra = divmod(num_items, world)
    start = rank * base + min(rank, extra)
    return start, start + base + int(rank < extra)


def shard_starts(num_items: int, world: int) -> list[int]:
    """The start of every rank's block, and num_items at the end: [world + 1]."""
    return [shard_range(num_items, world, r)[0] for r in range(world)] + [num_items]


def dtype_code(dtype: torch.dtype) -> int:
    """Code of a dtype in exchanged headers; TypeError for dtypes without one."""
    if dtype not in _DTYPES:
        raise TypeError(f"dtype {dtype} cannot be exchanged between ranks")
    return _DTYPES.index(dtype)


def dtype_of(code: int) -> torch.dtype:
    """Inverse of `dtype_code`."""
    return _DTYPES[code]


INVALID, NON_FINITE = 1, 2
"""`exchange`'s verdict codes of a rank whose checks failed (0: passed)."""


def exchange(fields: Sequence[int], error: BaseException | None, *, what: str,
             device: torch.device, group: dist.ProcessGroup | None = None) -> Tensor:
    """All-gather a small header of ints from every rank, raising on EVERY rank when the
    arguments of one were invalid: int64 [world, len(fields)], in rank order.

    error: the exception this rank's argument checks raised (None when they passed): it is
    re-raised here, after the exchange, and the other ranks raise a ValueError naming this
    rank (a NonFiniteError when every failing rank's was one: NaN/Inf, a diverged model to
    the trainer on every rank), so no rank is left waiting in a later collective and none
    has changed any state.
    """
    row = torch.zeros(1 + len(fields), dtype=torch.int64, device=device)
    row[0] = 0 if error is None else NON_FINITE if isinstance(error, NonFiniteError) else INVALID
    if error is None:
        row[1:] = torch.tensor(list(fields), dtype=torch.int64)
    if is_distributed(group):
        parts = [torch.empty_like(row) for _ in range(world_size(group))]
        dist.all_gather(parts, row, group=group)
        table = torch.stack(parts).cpu()
    else:
        table = row[None].cpu()
    if error is not None:
        raise error
    failed = torch.nonzero(table[:, 0]).flatten().tolist()
    if failed:
        kind = NonFiniteError if all(int(table[r, 0]) == NON_FINITE for r in failed) else ValueError
        raise kind(f"{what}: rank(s) {', '.join(map(str, failed))} passed invalid arguments"
                   f"{' (NaN/Inf)' if kind is NonFiniteError else ''} (the error is raised there); "
                   "nothing was done on any rank")
    return table[:, 1:]


def all_reduce_sum(tensor: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Element-wise sum over the ranks of `tensor` (in place, also returned)."""
    if is_distributed(group):
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


def all_gather_rows(tensor: Tensor, group: dist.ProcessGroup | None = None, *,
                    sizes: Sequence[int] | None = None) -> list[Tensor]:
    """All-gather of tensors [n_r, ...] whose leading size n_r differs per rank (0 allowed):
    one tensor per rank, in rank order, each [n_r, ...] in the common dtype.

    Every rank must pass the same dtype and trailing shape (ValueError on every rank
    otherwise). The sizes are gathered first and rows padded to the largest; `sizes` (one
    per rank, known to every caller) skips that exchange and its checks.
    """
    check_tensor(tensor, "tensor")
    if not is_distributed(group):
        return [tensor]
    if sizes is None:
        sizes = _exchange_shapes(tensor, group)
    return _gather_padded(tensor, list(sizes), group)


def _exchange_shapes(tensor: Tensor, group: dist.ProcessGroup | None) -> list[int]:
    """Leading sizes of every rank's tensor, after checking dtypes and trailing shapes agree."""
    error = None
    fields = [0] * (2 + MAX_DIMS)
    if not 1 <= tensor.dim() <= MAX_DIMS:
        error = ValueError(f"tensor: expected 1 to {MAX_DIMS} dimensions (rows first), got "
                           f"shape {list(tensor.shape)}")
    else:
        try:
            fields[:2 + tensor.dim()] = [dtype_code(tensor.dtype), tensor.dim(), *tensor.shape]
        except TypeError as err:
            error = err
    table = exchange(fields, error, what="all_gather_rows", device=tensor.device, group=group)
    first = table[0].clone()
    first[2] = 0
    for r in range(table.shape[0]):
        mine = table[r].clone()
        mine[2] = 0  # leading sizes may differ
        if not torch.equal(mine, first):
            raise ValueError(f"tensor: dtype or trailing shape differs across ranks (rank 0: "
                             f"{_describe(table[0])}, rank {r}: {_describe(table[r])})")
    return table[:, 2].tolist()


def _describe(header: Tensor) -> str:
    """'float32 [n, 4]' from a header row (dtype code, ndim, shape...)."""
    ndim = int(header[1])
    return f"{dtype_of(int(header[0]))} {['n'] + header[3:2 + ndim].tolist()}"


def _gather_padded(tensor: Tensor, sizes: list[int], group: dist.ProcessGroup | None) -> list[Tensor]:
    """The padded all-gather, on rows viewed as raw bytes (exact for every dtype)."""
    trailing = tuple(tensor.shape[1:])
    count = tensor.shape[0]
    raw = tensor.detach().contiguous().reshape(count, math.prod(trailing)).view(torch.uint8)
    most = max(sizes)
    if most == 0 or raw.shape[1] == 0:  # nothing to move
        return [tensor.new_empty((size, *trailing)) for size in sizes]
    padded = raw.new_zeros((most, raw.shape[1]))
    padded[:count] = raw
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=group)
    return [part[:size].view(tensor.dtype).reshape(size, *trailing) for part, size in zip(parts, sizes)]
