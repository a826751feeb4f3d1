"""The sharded latent cache (exvae_fast.distributed) on real processes: gloo on CPU.

One spawn per world size (2 and 3 ranks, N = 37 rows: shards of unequal size) runs every
scenario in turn; each rank saves its results and the tests compare them with the
single-process reference computed here. Inputs come from seeded generators, so workers and
the parent build the same tensors independently. Scenarios that expect errors run between
valid calls: a later valid result also proves the ranks stayed in step.
"""
from __future__ import annotations

import contextlib
import copy
import os
import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from exvae_fast import LatentCache, ops
from exvae_fast.distributed import comm
from exvae_fast.distributed import (ShardedLatentCache, all_gather_rows, init_from_env,
                                    is_distributed, rank, shard_range, world_size)
from exvae_fast.distributed.shard_ops import combine_mixtures
from exvae_fast.priors import ExemplarPrior

N, D = 37, 5
WORLDS = (2, 3)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _means() -> torch.Tensor:
    """[N, D] float32; duplicate rows 11 = 10 (one shard) and 20 = 3 (two shards)."""
    means = torch.randn(N, D, generator=_gen(0))
    means[11] = means[10]
    means[20] = means[3]
    return means


def _full_cache(dtype: torch.dtype = torch.float32, step: int = 0) -> LatentCache:
    cache = LatentCache(N, D, dtype)
    cache.advance(step)
    cache.update_(torch.arange(N), _means() * (1 + step))
    return cache


# --- scenario inputs (built identically by workers and parent) ---------------------------

def _gathered_inputs(world: int) -> list[dict[str, torch.Tensor]]:
    sizes = [3, 0, 2][:world]
    return [{"float32": torch.arange(n * 4, dtype=torch.float32).reshape(n, 4) + 100 * r,
             "int64": torch.arange(n, dtype=torch.int64) + 2**40 + r,
             "bool": torch.arange(2 * n).reshape(n, 2) % (r + 2) == 0,
             "bfloat16": torch.full((n, 3), 1.5 + r, dtype=torch.bfloat16)}
            for r, n in enumerate(sizes)]


def _knn_cases(world: int) -> dict[str, list[tuple]]:
    """name -> per rank (queries, k, candidates, exclude); names ending in '!' must fail."""
    g = _gen(world)
    means = _means()

    def noise(n: int) -> torch.Tensor:
        return torch.randn(n, D, generator=g)

    def near(rows: list[int]) -> torch.Tensor:  # right next to a key (or key 0 for -1)
        return means[[max(i, 0) for i in rows]] + 1e-3 * noise(len(rows))

    def ix(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64)

    cases = {
        "k1_empty_rank": [(noise(0) if r == 1 else noise(4 + r), 1, None, None) for r in range(3)],
        "ties": [(means[[3, 10, 20, 11]].clone(), 3, None, None) for _ in range(3)],
        # excluded keys in every shard, next to their row (so leaving them out matters)
        "exclude": [(near(e), 3, None, ix(e)) for e in ([3, 20, 36, -1, 10], [0, 36, 20, 11], [24, 25, -1])],
        # rank 1 searches shard 0 only: the other shards hold none of its candidates
        "candidates": [(near([int(c0), int(c1), 30, -1, 3]), 3, c, ix([int(c0), int(c1), 30, -1, 3]))
                       for c in (torch.randperm(N, generator=g)[:15], torch.arange(10),
                                 torch.randperm(N, generator=g)[:20])
                       for c0, c1 in [c[:2].tolist()]],
        # k = every searchable key (and k differs per rank); rank 0 has no rows
        "all_searchable": [(noise(0), 8, torch.randperm(N, generator=g)[:8], None),
                           (near([2, 5, 8]), 6, torch.arange(2, 9), ix([2, 5, 8])),
                           (noise(2), 7, ix([0, 36, 18, 19, 25, 24, 12, 13]), ix([0, 36]))],
        "all_keys": [(noise(3), N - 1, None, ix([r, N - 1 - r, 20])) for r in range(3)],
        "mixed_candidates!": [(noise(2), 1, torch.arange(10) if r == 0 else None, None) for r in range(3)],
        "k_too_big!": [(noise(2), 1, None, None)] * 2 + [(noise(2), N, None, ix([0, -1]))],
        "duplicate_candidates!": [(noise(1), 1, ix([4, 4]) if r == 0 else ix([1]), None) for r in range(3)],
    }
    cases["after_errors"] = cases["exclude"]
    cases = {name: per_rank[:world] for name, per_rank in cases.items()}
    # the failing argument sits on the last rank when not on rank 0
    cases["k_too_big!"][-1] = (noise(2), N, None, ix([0, -1]))
    return cases


def _update_calls(world: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Two collective updates: per rank (indices, values); duplicates within and across ranks,
    K = 0 on some rank in each; rows 31..36 stay unwritten."""
    g = _gen(10 + world)
    calls = ([[5, 21, 5, 18, 19, 30], [21, 0, 12, 21, 5], []],
             [[], [24, 24, 1], [18, 2]])
    return [[(torch.tensor(rows, dtype=torch.int64), 3 * torch.randn(len(rows), D, generator=g))
             for rows in call[:world]] for call in calls]


def _initial_cache(dtype: torch.dtype) -> LatentCache:
    """Rows [0, 30) written at step 0, then two steps taken."""
    cache = LatentCache(N, D, dtype)
    cache.update_(torch.arange(30), _means()[:30])
    cache.advance(2)
    return cache


def _mixture_inputs(world: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = _gen(20 + world)
    return [(torch.randn(n, D, generator=g), torch.tensor(-0.4 + 0.1 * r))
            for r, n in enumerate([6, 0, 3][:world])]


def _encode(x: torch.Tensor) -> torch.Tensor:
    """Row-wise (no batch-size dependence): [n, 7] -> [n, D]."""
    return 2 * torch.tanh(x[:, :D])


def _refresh_data() -> torch.Tensor:
    return torch.randn(N, 7, generator=_gen(5))


ROWS = ([36, 0, 36, 18, 19], [], [25, 24, 13, 12])


def _prior_encoder(x: torch.Tensor) -> tuple[torch.Tensor, None]:
    """Row-wise encoder mean: [n, 6] -> [n, D]."""
    return torch.tanh(x[:, :D] + 0.5 * x[:, D:D + 1]), None


def _make_prior() -> ExemplarPrior:
    exemplars = torch.rand(N, 6, generator=_gen(7))
    prior = ExemplarPrior(exemplars, D, mode="retrieval", num_exemplars=20, k=3, backend="torch")
    prior.refresh(_prior_encoder)
    return prior


def _prior_batches(world: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per rank (indices [4], query [4, D], z [4, D], z for evaluation [3, D]); the ranks'
    batches are disjoint, as a DistributedSampler makes them."""
    g = _gen(30)
    perm = torch.randperm(N, generator=g)
    exemplars = _make_prior().exemplars
    out = []
    for r in range(world):
        idx = perm[4 * r:4 * r + 4].clone()
        query = _prior_encoder(exemplars[idx])[0] + 0.05 * torch.randn(4, D, generator=g)
        out.append((idx, query, query + 0.1 * torch.randn(4, D, generator=g), torch.randn(3, D, generator=g)))
    return out


# --- worker side ----------------------------------------------------------------------

def _outcome(fn):
    """fn()'s value, or (error type name, message) for TypeError/ValueError."""
    try:
        return fn()
    except (TypeError, ValueError) as err:
        return (type(err).__name__, str(err))


def _state(cache: LatentCache) -> dict:
    return {"means": cache.means, "sq_norms": cache.sq_norms, "stamps": cache.stamps, "step": cache.step}


def _run_comm(r: int, world: int) -> dict:
    mine = _gathered_inputs(world)[r]
    out = {"info": (is_distributed(), rank(), world_size())}
    out |= {name: all_gather_rows(t) for name, t in mine.items()}
    odd = torch.zeros(1, 4 + (r == world - 1))  # trailing shape differs on the last rank
    out["mismatch"] = _outcome(lambda: all_gather_rows(odd))
    out["after"] = all_gather_rows(mine["int64"])
    return out


def _run_knn(r: int, world: int) -> dict:
    cache = ShardedLatentCache.from_cache(_full_cache())
    return {name: _outcome(lambda: cache.knn(q, k, candidates=c, exclude=e))
            for name, per_rank in _knn_cases(world).items() for q, k, c, e in [per_rank[r]]}


def _run_update(r: int, world: int) -> dict:
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        cache = ShardedLatentCache.from_cache(_initial_cache(dtype))
        first, second = _update_calls(world)
        cache.update_(*first[r])
        cache.advance(1)
        cache.update_(*second[r])
        ok = (torch.tensor([1]), torch.zeros(1, D))
        bad = {"indices": (torch.tensor([N]), torch.zeros(1, D)),
               "values": (torch.tensor([1]), torch.tensor([[float("nan")] * D])),
               "dtype": (torch.tensor([1], dtype=torch.int32), torch.zeros(1, D))}
        owner = {"indices": world - 1, "values": 0, "dtype": world - 1}
        errors = {name: _outcome(lambda: cache.update_(*(args if r == owner[name] else ok)))
                  for name, args in bad.items()}
        out[str(dtype)] = {"errors": errors, "full": _state(cache.gather_full()),
                           "staleness": cache.staleness(), "mean_staleness": cache.mean_staleness(),
                           "complete": cache.is_complete, "check": _outcome(cache.check_complete),
                           "range": (cache.start, cache.stop)}
    return out


def _run_mixture(r: int, world: int) -> dict:
    cache = ShardedLatentCache.from_cache(_full_cache())
    z, log_var = _mixture_inputs(world)[r]
    log_var = log_var.clone().requires_grad_(True)  # a parameter, as in the prior
    with torch.no_grad():
        value = cache.mixture_log_density(z, log_var, backend="torch")
    grad_z = z.clone().requires_grad_(r == 0)
    error = _outcome(lambda: cache.mixture_log_density(grad_z, log_var.detach()))
    with torch.no_grad():
        again = cache.mixture_log_density(z, log_var)
    return {"value": value, "error": error, "again": again}


@contextlib.contextmanager
def _no_collectives() -> Iterator[None]:
    """Make every all-reduce of the sharded cache raise inside the block."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("unexpected all-reduce")
    saved, comm.all_reduce_sum = comm.all_reduce_sum, refuse
    try:
        yield
    finally:
        comm.all_reduce_sum = saved


def _reloaded_completeness(cache: ShardedLatentCache, partial: LatentCache) -> list[bool]:
    """is_complete after load_full_ of partial, then after a state dict load of a complete
    cache's shard and of the partial one's."""
    complete_state = copy.deepcopy(cache.state_dict())
    assert cache.is_complete
    with _no_collectives():  # agreed once: later checks need no all-reduce
        cache.check_complete()
        assert cache.is_complete
    cache.load_full_(partial)
    out = [cache.is_complete]
    cache.load_state_dict(complete_state)
    out.append(cache.is_complete)
    cache.load_full_(partial)
    partial_state = copy.deepcopy(cache.state_dict())
    cache.load_state_dict(complete_state)
    assert cache.is_complete
    cache.load_state_dict(partial_state)
    return out + [cache.is_complete]


def _run_refresh(r: int, world: int) -> dict:
    cache = ShardedLatentCache(N, D)
    out = {"complete_before": cache.is_complete, "check_before": _outcome(cache.check_complete),
           "stale_before": cache.mean_staleness()}
    cache.refresh_(_encode, _refresh_data(), batch_size=4)
    out["refreshed"] = _state(cache.gather_full())
    out["complete_after"] = cache.is_complete
    cache.advance(3)
    cache.update_(torch.tensor([[2, 30], [36], [20, 21, 22]][r]), torch.ones([2, 1, 3][r], D))
    out["mean_staleness"] = cache.mean_staleness()
    out["rows"] = cache.rows(torch.tensor(ROWS[r], dtype=torch.int64))
    cache.load_full_(_full_cache(step=7))
    out["loaded"] = _state(cache.gather_full())
    # completeness, once agreed, is forgotten when a state with unwritten rows is loaded
    out["complete_after_partial_load"] = _reloaded_completeness(cache, _initial_cache(torch.float32))
    half = ShardedLatentCache.from_cache(_full_cache(torch.bfloat16, step=1))
    out["half"] = _state(half.gather_full())
    out["half_rows"] = half.rows(torch.tensor(ROWS[r], dtype=torch.int64))
    return out


def _run_prior(r: int, world: int) -> dict:
    prior = _make_prior()
    prior.shard_cache()
    idx, query, z, z_eval = _prior_batches(world)[r]
    prior.train()
    torch.manual_seed(100 + r)  # the seed of this rank's subset pi
    log_prob = prior.log_prob(z, encoder=_prior_encoder, query=query, indices=idx)
    full = _state(prior.cache.gather_full())
    prior.eval()
    with torch.no_grad():
        log_prob_eval = prior.log_prob(z_eval)
    grad_error = _outcome(lambda: prior.log_prob(z_eval))  # log_var requires grad
    torch.manual_seed(200 + r)
    samples = prior.sample(3)
    return {"log_prob": log_prob.detach(), "full": full, "log_prob_eval": log_prob_eval,
            "grad_error": grad_error, "samples": samples,
            "is_sharded": isinstance(prior.cache, ShardedLatentCache)}


SCENARIOS = {"comm": _run_comm, "knn": _run_knn, "update": _run_update, "mixture": _run_mixture,
             "refresh": _run_refresh, "prior": _run_prior}


def as_torchrun_process(r: int, world: int, port: int) -> None:
    """Give this spawned process torchrun's variables (rank r of `world` on localhost:port)
    and one CPU thread (the ranks share the machine's cores)."""
    os.environ.update(WORLD_SIZE=str(world), RANK=str(r), LOCAL_RANK=str(r),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)


def _worker(r: int, world: int, port: int, out_dir: str) -> None:
    as_torchrun_process(r, world, port)
    # a desynchronised collective fails after this timeout instead of hanging the suite
    assert init_from_env("cpu", timeout=timedelta(seconds=60))
    try:
        results = {name: run(r, world) for name, run in SCENARIOS.items()}
    finally:
        dist.destroy_process_group()
    torch.save(results, Path(out_dir) / f"rank{r}.pt")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn_team(worker, world: int, *args) -> None:
    """worker(rank, world, port, *args) in `world` spawned processes on a free localhost port;
    once more on another port if the chosen one was taken in between (the only retry)."""
    for attempt in range(2):
        try:
            mp.start_processes(worker, args=(world, free_port(), *args), nprocs=world, join=True,
                               start_method="spawn")
            return
        except mp.ProcessRaisedException as err:
            if attempt or "address already in use" not in str(err).lower():
                raise


@pytest.fixture(scope="module", params=WORLDS, ids=[f"world{w}" for w in WORLDS])
def run(request, tmp_path_factory) -> tuple[int, list[dict]]:
    """(world, per-rank results) of one spawn of `world` gloo processes."""
    world = request.param
    out = tmp_path_factory.mktemp(f"world{world}")
    spawn_team(_worker, world, str(out))
    return world, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


def _assert_state(got: dict, want: LatentCache) -> None:
    assert torch.equal(got["means"], want.means)
    assert torch.equal(got["sq_norms"], want.sq_norms)
    assert torch.equal(got["stamps"], want.stamps)
    assert got["step"] == want.step


def _assert_peer_error(outcome, failing: list[int], name: str, kind: str = "ValueError") -> None:
    """outcome is the ValueError (a NonFiniteError for NaN/Inf) that a rank gets when another
    rank's arguments failed."""
    assert outcome[0] == kind and name in outcome[1]
    assert f"rank(s) {', '.join(map(str, failing))}" in outcome[1] and "nothing was done" in outcome[1]


# --- tests without processes ------------------------------------------------------------

def test_shard_range_balances_contiguous_blocks():
    assert [shard_range(10, 3, r) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert [shard_range(37, 2, r) for r in range(2)] == [(0, 19), (19, 37)]
    assert [shard_range(5, 5, r) for r in range(5)] == [(r, r + 1) for r in range(5)]
    assert shard_range(7, 1, 0) == (0, 7)
    for n in range(3, 40):
        for w in range(1, 4):
            blocks = [shard_range(n, w, r) for r in range(w)]
            assert blocks[0][0] == 0 and blocks[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
            assert max(b - a for a, b in blocks) - min(b - a for a, b in blocks) <= 1


@pytest.mark.parametrize("args, error, name", [
    ((2, 3, 0), ValueError, "num_items"), ((0, 1, 0), ValueError, "num_items"),
    ((10, 0, 0), ValueError, "world"), ((10, 3, 3), ValueError, "rank"),
    ((10, 3, -1), ValueError, "rank"), ((10.0, 3, 0), TypeError, "num_items"),
    ((10, True, 0), TypeError, "world"),
])
def test_shard_range_rejects_bad_arguments(args, error, name):
    with pytest.raises(error, match=f"^{name}:"):
        shard_range(*args)


TORCHRUN_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.mark.parametrize("env, name", [
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE"), ({"WORLD_SIZE": "0"}, "WORLD_SIZE"),
    ({"WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "RANK"),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "h"}, "MASTER_PORT"),
    ({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "RANK"),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "LOCAL_RANK"),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "0"}, "MASTER_PORT"),
])
def test_init_from_env_rejects_inconsistent_variables(monkeypatch, env, name):
    for var in TORCHRUN_VARS:
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=f"^{name}"):
        init_from_env("cpu")
    assert not dist.is_initialized()


def test_init_from_env_without_torchrun_is_single_process(monkeypatch):
    for var in TORCHRUN_VARS:
        monkeypatch.delenv(var, raising=False)
    assert init_from_env("cpu") is False
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_from_env("cuda") is False
    assert not dist.is_initialized()
    assert (is_distributed(), rank(), world_size()) == (False, 0, 1)
    with pytest.raises(TypeError, match="^device_type"):
        init_from_env(None)


def test_single_process_shard_is_the_whole_cache():
    full = _full_cache(step=2)
    shard = ShardedLatentCache.from_cache(full)
    assert (shard.start, shard.stop, shard.num_items, shard.dim, shard.step) == (0, N, N, D, 2)
    queries = torch.randn(4, D, generator=_gen(3))
    exclude = torch.tensor([3, -1, 20, 36])
    got = shard.knn(queries, 4, exclude=exclude)
    want = full.knn(queries, 4, exclude=exclude)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    with torch.no_grad():
        torch.testing.assert_close(shard.mixture_log_density(queries, torch.tensor(0.3)),
                                   full.mixture_log_density(queries, torch.tensor(0.3)))
    assert torch.equal(shard.rows(torch.tensor([5, 5, 0])), full.rows(torch.tensor([5, 5, 0])))
    _assert_state(_state(shard.gather_full()), full)
    with pytest.raises(ValueError, match="^indices"):
        shard.update_(torch.tensor([N]), torch.zeros(1, D))
    with pytest.raises(ValueError, match="^log_var: requires grad"):
        shard.mixture_log_density(queries, torch.tensor(0.3, requires_grad=True))
    _assert_state(_state(shard.gather_full()), full)  # the failed calls wrote nothing
    assert all_gather_rows(queries)[0] is queries


def test_latent_cache_rows_and_mixture():
    cache = _full_cache(torch.bfloat16)
    idx = torch.tensor([4, 0, 4])
    rows = cache.rows(idx)
    assert rows.dtype == torch.float32 and torch.equal(rows, cache.means[idx].float())
    rows[0] = 0  # a copy
    assert cache.means[4].abs().sum() > 0
    with pytest.raises(ValueError, match="^indices"):
        cache.rows(torch.tensor([N]))
    with pytest.raises(TypeError, match="^indices"):
        cache.rows(torch.tensor([1.0]))
    z = torch.randn(3, D, generator=_gen(4), requires_grad=True)
    log_var = torch.tensor(-0.2, requires_grad=True)
    value = cache.mixture_log_density(z, log_var)
    torch.testing.assert_close(value, ops.mixture_log_density(z, cache.means, log_var))
    value.sum().backward()  # differentiable in z and log_var on one process
    assert z.grad is not None and log_var.grad is not None


def test_combine_mixtures_is_the_mixture_over_the_union():
    means, z = _means(), torch.randn(4, D, generator=_gen(8), dtype=torch.float64)
    log_var = torch.tensor(0.1, dtype=torch.float64)
    parts = torch.stack([ops.mixture_log_density(z, means[a:b], log_var) for a, b in [(0, 5), (5, 37)]])
    torch.testing.assert_close(combine_mixtures(parts, [5, 32]), ops.mixture_log_density(z, means, log_var),
                               rtol=1e-12, atol=1e-12)


# --- tests on spawned processes ---------------------------------------------------------

def test_all_gather_rows_with_uneven_sizes_and_dtypes(run):
    world, results = run
    inputs = _gathered_inputs(world)
    for r, res in enumerate(results):
        assert res["comm"]["info"] == (True, r, world)
        for name in inputs[0]:
            got = res["comm"][name]
            assert len(got) == world
            for s in range(world):
                want = inputs[s][name]
                assert got[s].dtype == want.dtype and torch.equal(got[s], want)
        kind, message = res["comm"]["mismatch"]
        assert kind == "ValueError" and message.startswith("tensor: dtype or trailing shape differs")
        assert all(torch.equal(a, b["int64"]) for a, b in zip(res["comm"]["after"], inputs))


def test_sharded_knn_equals_single_process_search(run):
    world, results = run
    means = _means()
    for name, per_rank in _knn_cases(world).items():
        if name.endswith("!"):
            continue
        for r, (queries, k, candidates, exclude) in enumerate(per_rank):
            want = ops.knn_search(queries, means, k, candidates=candidates, exclude=exclude)
            got = results[r]["knn"][name]
            assert isinstance(got[0], torch.Tensor), (name, r, got)
            assert got[1].shape == (queries.shape[0], k) and got[0].dtype == torch.float32
            assert torch.equal(got[1], want[1]), (name, r)
            assert torch.equal(got[0], want[0]), (name, r)
    # duplicate rows: ties go to the lower global index, within a shard and across shards
    assert results[0]["knn"]["ties"][1][:, :2].tolist() == [[3, 20], [10, 11], [3, 20], [10, 11]]
    # a shard holding none of rank 1's candidates still lets it find its k
    assert int(results[1]["knn"]["candidates"][1].max()) < 10


def test_sharded_knn_errors_reach_every_rank(run):
    world, results = run
    last = world - 1
    for r, res in enumerate(results):
        kind, message = res["knn"]["mixed_candidates!"]
        assert kind == "ValueError" and message.startswith("candidates: given on some ranks")
        if r == last:
            assert res["knn"]["k_too_big!"] == ("ValueError", "k: row 0 can search only 36 keys "
                                                 "(37 minus its excluded index), got k=37")
        else:
            _assert_peer_error(res["knn"]["k_too_big!"], [last], "knn")
        if r == 0:
            assert res["knn"]["duplicate_candidates!"] == (
                "ValueError", "candidates: expected unique indices, got duplicates")
        else:
            _assert_peer_error(res["knn"]["duplicate_candidates!"], [0], "knn")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sharded_update_equals_one_update_in_rank_order(run, dtype):
    world, results = run
    want = _initial_cache(dtype)
    first, second = _update_calls(world)
    want.update_(torch.cat([i for i, _ in first]), torch.cat([v for _, v in first]))
    want.advance(1)
    want.update_(torch.cat([i for i, _ in second]), torch.cat([v for _, v in second]))
    for r, res in enumerate(results):
        got = res["update"][str(dtype)]
        _assert_state(got["full"], want)  # also: the failed calls wrote nothing
        start, stop = got["range"]
        assert (start, stop) == shard_range(N, world, r)
        assert torch.equal(got["staleness"], want.staleness()[start:stop])
        assert got["mean_staleness"] == want.mean_staleness()
        assert got["complete"] is False
        assert got["check"] == ("ValueError", "ShardedLatentCache: 6 of 37 rows were never written; "
                                "fill it first (ExemplarPrior.refresh(encoder), or the cache's refresh_)")


def test_sharded_update_rejects_bad_arguments_on_every_rank(run):
    world, results = run
    last = world - 1
    for r, res in enumerate(results):
        errors = res["update"]["torch.float32"]["errors"]
        if r == last:
            assert errors["indices"][0] == "ValueError"
            assert errors["indices"][1].startswith("indices: indices must lie in [0, 37)")
            assert errors["dtype"][0] == "TypeError"
            assert errors["dtype"][1].startswith("indices: expected dtype int64")
        else:
            _assert_peer_error(errors["indices"], [last], "update_")
            _assert_peer_error(errors["dtype"], [last], "update_")
        if r == 0:
            assert errors["values"] == ("NonFiniteError", "values contains NaN/Inf")  # a ValueError
        else:
            _assert_peer_error(errors["values"], [0], "update_", "NonFiniteError")  # diverged everywhere


def test_sharded_mixture_equals_mixture_over_all_means(run):
    world, results = run
    means = _means()
    for r, (z, log_var) in enumerate(_mixture_inputs(world)):
        got = results[r]["mixture"]
        want = ops.mixture_log_density(z, means, log_var)
        assert got["value"].shape == (z.shape[0],) and got["value"].dtype == torch.float32
        torch.testing.assert_close(got["value"], want)
        torch.testing.assert_close(got["again"], want)
        if r == 0:
            kind, message = got["error"]
            assert kind == "ValueError" and message.startswith("z: requires grad") and "no_grad" in message
        else:
            _assert_peer_error(got["error"], [0], "mixture_log_density")


def test_sharded_refresh_rows_completeness_and_round_trips(run):
    world, results = run
    reference = LatentCache(N, D)
    reference.refresh_(_encode, _refresh_data(), batch_size=4)
    after = copy.deepcopy(reference)
    after.advance(3)
    rows = [[2, 30], [36], [20, 21, 22]][:world]
    after.update_(torch.tensor(sum(rows, [])), torch.ones(sum(map(len, rows)), D))
    loaded, half = _full_cache(step=7), _full_cache(torch.bfloat16, step=1)
    for r, res in enumerate(results):
        got = res["refresh"]
        assert got["complete_before"] is False and got["complete_after"] is True
        assert got["complete_after_partial_load"] == [False, True, False]
        assert got["check_before"] == ("ValueError", "ShardedLatentCache: 37 of 37 rows were never "
                                       "written; fill it first (ExemplarPrior.refresh(encoder), or the "
                                       "cache's refresh_)")
        assert got["stale_before"] != got["stale_before"]  # nan: nothing written yet
        _assert_state(got["refreshed"], reference)
        assert got["mean_staleness"] == after.mean_staleness() and got["mean_staleness"] > 0
        idx = torch.tensor(ROWS[r], dtype=torch.int64)
        assert got["rows"].dtype == torch.float32 and torch.equal(got["rows"], after.means[idx])
        _assert_state(got["loaded"], loaded)
        _assert_state(got["half"], half)
        assert torch.equal(got["half_rows"], half.means[idx].float())


def test_sharded_prior_step_equals_single_process_prior(run):
    world, results = run
    batches = _prior_batches(world)
    base = _make_prior()
    # the first (collective) write of every training step: all ranks' batch means, rank order
    # (with the prior's backend: the norms of the "torch" and "cpp" updates may differ in the last bit)
    base.cache.update_(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]), "torch")
    final = copy.deepcopy(base.cache)
    for r, (idx, query, z, _) in enumerate(batches):
        prior = copy.deepcopy(base)
        prior.train()
        writes = []
        update = prior.cache.update_

        def recording(indices, values, backend="auto", update=update, writes=writes):
            writes.append((indices.clone(), values.clone()))
            update(indices, values, backend)

        prior.cache.update_ = recording
        torch.manual_seed(100 + r)  # the same pi as rank r drew
        want = prior.log_prob(z, encoder=_prior_encoder, query=query, indices=idx)
        assert torch.equal(results[r]["prior"]["log_prob"], want.detach()), r
        final.update_(*writes[1], "torch")  # the re-encoded neighbours, rank after rank
        assert len(writes) == 2
    evaluate = _make_prior()
    evaluate.cache.load_state_dict(final.state_dict())
    evaluate.eval()
    for r, (_, _, _, z_eval) in enumerate(batches):
        got = results[r]["prior"]
        assert got["is_sharded"] is True
        _assert_state(got["full"], final)
        with torch.no_grad():
            torch.testing.assert_close(got["log_prob_eval"], evaluate.log_prob(z_eval))
        kind, message = got["grad_error"]
        assert kind == "ValueError" and message.startswith("log_var: requires grad")
        torch.manual_seed(200 + r)
        assert torch.equal(got["samples"], evaluate.sample(3))
