"""Data-parallel training across processes: the trainer's side of DESIGN.md section 5.

Launched by torchrun (`torchrun --nproc_per_node W -m exvae_fast train ...`), every process
trains on its own slice of each global batch: `train.batch_size` rows per process, so
W * batch_size rows per step. DistributedDataParallel averages the gradients; an exemplar
prior's latent cache is sharded by example index (`ShardedLatentCache`: kNN as local top-k
plus an all-gather merge, write-backs sent to the owning shard). Rank 0 writes the run folder;
a checkpoint holds the whole cache and every rank's RNG state, so it loads in one process
(evaluate, sample, augment) and resumes exactly under the same number of processes.
Without torchrun's environment nothing here communicates and a run is the single-process one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..distributed import ShardedLatentCache, init_from_env
from ..priors import ExemplarPrior


@dataclass(frozen=True)
class Team:
    """This process's place among the training processes (rank 0 of 1 when alone)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def join(device: torch.device) -> tuple[Team, torch.device]:
    """Join torchrun's process group when launched by it (gloo on CPU, nccl on CUDA).
    Returns the team and this process's device: cuda:LOCAL_RANK for CUDA runs."""
    if not init_from_env(device.type):
        return Team(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return Team(dist.get_rank(), dist.get_world_size()), device


def leave(team: Team) -> None:
    """Leave the process group joined by `join` (a no-op when alone)."""
    if team.distributed and dist.is_initialized():
        dist.destroy_process_group()


def shard_model(model: nn.Module, team: Team, device: torch.device) -> nn.Module:
    """Shard the exemplar prior's cache across the team and wrap the model in
    DistributedDataParallel; returns the module to call for training steps (the model
    itself when alone). Call after loading any checkpoint (which holds the whole cache)."""
    if not team.distributed:
        return model
    prior = getattr(model, "prior", None)
    if isinstance(prior, ExemplarPrior) and not isinstance(prior.cache, ShardedLatentCache):
        prior.shard_cache()
    # DDP broadcasts rank 0's buffers at construction and before every forward: that would
    # overwrite every other rank's cache shard with rank 0's rows (or abort in gloo when the
    # shards differ in size), and resend the replicated exemplar images at every step
    if isinstance(prior, ExemplarPrior):
        owned = {id(t) for t in (*prior.cache.buffers(), prior.exemplars)}
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            model, [name for name, t in model.named_buffers() if id(t) in owned])
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


def epoch_order(num_items: int, team: Team, device: torch.device) -> Tensor:
    """A random permutation of range(num_items) (int64, CPU), drawn from rank 0's torch RNG
    and shared by every rank, so that the ranks split one order between them."""
    order = torch.randperm(num_items)
    if team.distributed:
        shared = order.to(device)
        dist.broadcast(shared, src=0)
        order = shared.cpu()
    return order


def rank_batches(order: Tensor, batch_size: int, team: Team, steps: int | None = None) -> list[tuple[Tensor, int]]:
    """(this rank's rows, the global batch's row count) of each step: `order` cut into global
    batches of batch_size * W rows, each split into W near-equal slices. A last global batch
    with fewer than W rows is dropped, since every rank must take the same number of steps.
    `steps` caps the count."""
    chunks = list(order.split(batch_size * team.world))
    if chunks and chunks[-1].numel() < team.world:
        chunks.pop()
    mine = [(chunk.tensor_split(team.world)[team.rank], chunk.numel()) for chunk in chunks]
    return mine if steps is None else mine[:steps]


def rank_loss(loss: Tensor, rows: int, batch_rows: int, team: Team) -> Tensor:
    """The loss to back-propagate on this rank: its mean `loss` over its `rows` of the step,
    weighted by its share of the step's `batch_rows`, so that DDP's average of the ranks'
    gradients is the gradient of the mean over all of them (a last global batch splits
    unevenly); unchanged alone and for even splits."""
    return loss if rows * team.world == batch_rows else loss * (rows * team.world / batch_rows)


def all_finite(loss: Tensor, team: Team) -> bool:
    """Whether the loss is finite on every rank (one all-reduce when distributed), so that
    all ranks stop together when one diverges."""
    finite = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
    if team.distributed:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())


def sum_across(values: Tensor, team: Team) -> Tensor:
    """values summed over the ranks (in place; returned as is when alone)."""
    if team.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def mean_across(record: dict[str, float], team: Team, device: torch.device) -> dict[str, float]:
    """Each float of `record` averaged over the ranks (e.g. validation ELBOs measured with
    each rank's own posterior samples), so that every rank takes the same decisions."""
    if not team.distributed:
        return record
    keys = sorted(record)
    values = torch.tensor([float(record[key]) for key in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return {key: float(value) / team.world for key, value in zip(keys, values.tolist())}


def full_state_dict(model: nn.Module) -> dict:
    """model.state_dict() with a sharded exemplar cache replaced by the whole cache, under
    the keys of an unsharded model (collective when the cache is sharded)."""
    state = model.state_dict()
    cache = getattr(getattr(model, "prior", None), "cache", None)
    if not isinstance(cache, ShardedLatentCache):
        return state
    prefix = "prior.cache."
    whole = {prefix + key: value for key, value in cache.gather_full().state_dict().items()}
    kept = {key: value for key, value in state.items() if not key.startswith(prefix)}
    return type(state)({**kept, **whole})


def gather_objects(obj: object, team: Team) -> list:
    """[obj of rank 0, obj of rank 1, ...] (pickled through the process group)."""
    if not team.distributed:
        return [obj]
    out: list = [None] * team.world
    dist.all_gather_object(out, obj)
    return out
