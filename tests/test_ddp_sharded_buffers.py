"""shard_model (train/ddp.py) on real gloo processes: DistributedDataParallel must leave each
rank's shard of the exemplar cache alone (DDP broadcasts rank 0's buffers at construction and
before every forward by default), and its gradient all-reduce covers the prior's log-variance.

Two ranks; N = 36 (equal shards: rank 0's rows would silently replace rank 1's) and N = 37
(unequal shards: the broadcast cannot even match the buffers)."""
from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from test_distributed import as_torchrun_process, spawn_team

from exvae_fast.distributed import ShardedLatentCache, init_from_env
from exvae_fast.priors import ExemplarPrior
from exvae_fast.train.ddp import Team, shard_model

WORLD, D = 2, 5
SIZES = (36, 37)


def _encoder(x: torch.Tensor) -> tuple[torch.Tensor, None]:
    """Row-wise encoder mean: [n, 6] -> [n, D]."""
    return torch.tanh(x[:, :D] + 0.5 * x[:, D:D + 1]), None


class _PriorOnly(nn.Module):
    """The smallest model shard_model wraps: an exemplar prior (its log_var the parameter)."""

    def __init__(self, prior: ExemplarPrior) -> None:
        super().__init__()
        self.prior = prior

    def forward(self, z: torch.Tensor, query: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return self.prior.log_prob(z, encoder=_encoder, query=query, indices=indices)


def _prior(n: int) -> ExemplarPrior:
    exemplars = torch.rand(n, 6, generator=torch.Generator().manual_seed(n))
    prior = ExemplarPrior(exemplars, D, mode="retrieval", num_exemplars=20, k=3, backend="torch")
    prior.refresh(_encoder)
    return prior


def _batch(n: int, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank r's (indices [4], query [4, D], z [4, D]): disjoint rows per rank."""
    g = torch.Generator().manual_seed(1000 + n)
    idx = torch.randperm(n, generator=g)[4 * r:4 * r + 4].clone()
    query = _encoder(_prior(n).exemplars[idx])[0] + 0.05 * torch.randn(4, D, generator=g)
    return idx, query, query + 0.1 * torch.randn(4, D, generator=g)


def _state(cache: ShardedLatentCache) -> dict:
    full = cache.gather_full()
    return {"means": full.means, "sq_norms": full.sq_norms, "stamps": full.stamps}


def _scenario(r: int, n: int) -> dict:
    team = Team(r, WORLD)
    plain = _PriorOnly(_prior(n))  # reference: the sharded prior without DDP
    plain.prior.shard_cache()
    model = _PriorOnly(_prior(n))
    before = _state(copy.deepcopy(plain.prior.cache))
    wrapped = shard_model(model, team, torch.device("cpu"))
    out = {"after_wrap": _state(model.prior.cache), "before": before}
    idx, query, z = _batch(n, r)
    steps = []
    for module, prior in ((plain, plain.prior), (wrapped, model.prior)):
        torch.manual_seed(100 + r)  # the same subset pi on either path
        log_prob = module(z, query, idx)
        log_prob.sum().backward()
        steps.append({"log_prob": log_prob.detach(), "state": _state(prior.cache)})
    grad = plain.prior.log_var.grad.clone()
    dist.all_reduce(grad)  # what DDP's all-reduce gives: the mean over the ranks
    out.update(plain=steps[0], ddp=steps[1], want_grad=grad / WORLD, got_grad=model.prior.log_var.grad)
    return out


def _worker(r: int, world: int, port: int, out_dir: str) -> None:
    as_torchrun_process(r, world, port)
    assert init_from_env("cpu", timeout=timedelta(seconds=60))
    try:
        results = {n: _scenario(r, n) for n in SIZES}
    finally:
        dist.destroy_process_group()
    torch.save(results, Path(out_dir) / f"rank{r}.pt")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp_buffers")
    spawn_team(_worker, WORLD, str(out))
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[key], b[key]) for key in ("means", "sq_norms", "stamps"))


@pytest.mark.parametrize("n", SIZES)
def test_ddp_keeps_every_rank_shard_of_the_cache(results, n):
    for r, res in enumerate(results):
        got = res[n]
        assert _same(got["after_wrap"], got["before"]), r  # DDP's construction
        assert _same(got["ddp"]["state"], got["plain"]["state"]), r  # a training forward
        assert torch.equal(got["ddp"]["log_prob"], got["plain"]["log_prob"]), r


@pytest.mark.parametrize("n", SIZES)
def test_ddp_averages_the_prior_log_variance_gradient(results, n):
    for res in results:
        torch.testing.assert_close(res[n]["got_grad"], res[n]["want_grad"])


def test_a_team_trains_on_a_training_set_that_does_not_split_evenly(tmp_path):
    from test_train_ddp import ddp_config, last_state, train_in_processes

    # 101 rows: shards of 51 and 50 (DDP's buffer broadcast aborted gloo at construction)
    train_in_processes(ddp_config(tmp_path, "odd", epochs=1, **{"data.synthetic_size": 101,
                                                                 "prior.num_exemplars": 40}))
    state = last_state(tmp_path / "odd")
    assert state["step"] == 2  # 2 x 25 rows per step; the last row is left for no rank
    assert state["model"]["prior.cache.means"].shape[0] == 101
    assert bool((state["model"]["prior.cache.stamps"] >= 0).all())
