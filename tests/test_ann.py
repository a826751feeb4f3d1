"""The optional FAISS index (exvae_fast.ann): equal to the exact `ops.knn_search` where the
answer is unambiguous, measured recall at realistic settings, updates, the exact fallback,
and its use by the latent cache, the exemplar prior, the configs and the trainer."""
from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

faiss = pytest.importorskip("faiss")  # CI installs faiss-cpu with the [test] extra

import exvae_fast.ann as ann  # noqa: E402
from exvae_fast import LatentCache  # noqa: E402
from exvae_fast.ann import FaissIndex  # noqa: E402
from exvae_fast.ops import cache_update_, knn_search  # noqa: E402
from exvae_fast.priors import ExemplarPrior  # noqa: E402
from exvae_fast.train import ConfigError, RunConfig, apply_overrides  # noqa: E402
from exvae_fast.train.builder import build_index  # noqa: E402
from exvae_fast.train.checkpoint import load_checkpoint  # noqa: E402
from exvae_fast.train.loop import Trainer  # noqa: E402
from test_train import model_parameters, tiny_config  # noqa: E402

# exhaustive IVF (every list probed) and a wide HNSW beam: on small, well-separated data both
# propose the exact shortlist, so the results must equal the exact search
EXHAUSTIVE = {"ivf": {"nlist": 8, "nprobe": 8}, "hnsw": {"ef_search": 256}}


def clusters(n_clusters: int = 8, per: int = 50, d: int = 6, seed: int = 0) -> torch.Tensor:
    """[n_clusters * per, d] float32: unit-variance blobs around centres ~100 apart, in a
    shuffled order (continuous values: no two distances tie)."""
    g = torch.Generator().manual_seed(seed)
    centres = 100 * torch.randn(n_clusters, d, generator=g)
    points = centres.repeat_interleave(per, 0) + torch.randn(n_clusters * per, d, generator=g)
    return points[torch.randperm(points.shape[0], generator=g)]


def built(kind: str, means: torch.Tensor, **settings) -> FaissIndex:
    index = FaissIndex(kind, **{**EXHAUSTIVE[kind], **settings})
    index.build(means)
    return index


def assert_same(got, expected):
    assert torch.equal(got[1], expected[1])
    assert torch.equal(got[0], expected[0])


# --- equal to the exact search --------------------------------------------------------

@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
@pytest.mark.parametrize("use_candidates", [False, True], ids=["all", "candidates"])
@pytest.mark.parametrize("use_exclude", [False, True], ids=["", "exclude"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_search_equals_exact_search(kind, use_candidates, use_exclude, dtype):
    keys = clusters()
    g = torch.Generator().manual_seed(1)
    own = torch.randperm(keys.shape[0], generator=g)[:40]
    queries = (keys[own] + 0.3 * torch.randn(40, keys.shape[1], generator=g)).to(dtype)
    candidates = torch.randperm(keys.shape[0], generator=g)[:150] if use_candidates else None
    exclude = own if use_exclude else None
    got = built(kind, keys).search(queries, 5, candidates=candidates, exclude=exclude)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.int64 and got[1].shape == (40, 5)
    assert_same(got, knn_search(queries, keys, 5, candidates=candidates, exclude=exclude))
    if use_exclude:
        assert not (got[1] == own[:, None]).any()


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_k_equal_to_every_searchable_key_and_the_same_errors(kind):
    keys = clusters(n_clusters=4, per=10)
    candidates = torch.tensor([3, 17, 5, 30, 22, 8, 1, 39, 12, 26, 9, 33])
    exclude = candidates[:6]  # each row leaves out one of the candidates: 11 searchable
    queries = keys[exclude] + 0.1
    index = built(kind, keys, nlist=4, nprobe=4)
    assert_same(index.search(queries, 11, candidates, exclude), knn_search(queries, keys, 11, candidates, exclude))
    assert_same(index.search(queries, 40), knn_search(queries, keys, 40))
    for args in [(queries, 12, candidates, exclude), (queries, 41, None, None),
                 (queries, 40, None, exclude), (queries, 2, torch.tensor([1, 1]), None),
                 (queries, 2, None, exclude + 100), (queries, 0, None, None), (queries.int(), 2, None, None)]:
        with pytest.raises((ValueError, TypeError)) as exact:
            knn_search(args[0], keys, *args[1:])
        with pytest.raises(type(exact.value)) as approximate:
            index.search(*args)
        assert str(approximate.value) == str(exact.value)
    with pytest.raises(ValueError, match=r"queries: expected shape \[B, 6\] \(d matching the index\)"):
        index.search(queries[:, :3], 2)
    with pytest.raises(ValueError, match="backend: expected one of"):
        index.search(queries, 2, backend="fast")


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_a_single_row(kind):
    keys = torch.tensor([[1.0, 2.0, 3.0]])
    index = built(kind, keys, nlist=1, nprobe=1)
    dists, found = index.search(torch.zeros(2, 3), 1)
    assert found.tolist() == [[0], [0]] and dists.tolist() == [[14.0], [14.0]]
    with pytest.raises(ValueError, match=r"k: row 0 can search only 0 keys"):
        index.search(torch.zeros(1, 3), 1, exclude=torch.tensor([0]))
    assert index.search(torch.zeros(1, 3), 1, exclude=torch.tensor([-1]))[1].tolist() == [[0]]


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_ties_go_to_the_lower_index_among_the_proposed_keys(kind):
    keys = clusters(n_clusters=4, per=10)
    copies = torch.tensor([31, 2, 17])  # three copies of one point
    keys[copies] = keys[2].clone()
    index = built(kind, keys, nlist=4, nprobe=4)
    query = keys[2:3] + 0.01
    for k in (2, 3):  # all tied keys fit the 2k shortlist: the exact answer
        assert_same(index.search(query, k), knn_search(query, keys, k))
    assert index.search(query, 2)[1].tolist() == [[2, 17]]
    # more copies than the shortlist holds: which of them come back is FAISS's choice, but they
    # are copies at the exact distance, in ascending order
    many = torch.arange(0, 40, 3)  # 14 copies > 2k = 4
    keys[many] = keys[0].clone()
    index.build(keys)
    dists, found = index.search(keys[0:1] + 0.01, 2)
    expected = knn_search(keys[0:1] + 0.01, keys, 2)
    assert torch.equal(dists, expected[0])
    assert set(found[0].tolist()) <= set(many.tolist()) and found[0, 0] < found[0, 1]


# --- recall at realistic settings -------------------------------------------------------

@pytest.fixture(scope="module")
def gaussian_means():
    """Algorithm 1's query on isotropic Gaussian means (the hardest case for IVF): N=20000,
    d=40, B=100 queries near their own rows, which are left out; half the rows as candidates."""
    g = torch.Generator().manual_seed(0)
    means = torch.randn(20000, 40, generator=g)
    own = torch.randperm(20000, generator=g)[:100]
    queries = means[own] + 0.1 * torch.randn(100, 40, generator=g)
    candidates = torch.randperm(20000, generator=g)[:10000]
    return means, queries, candidates, own


# measured (faiss-cpu 1.15.1): all keys / Algorithm 1 (candidates + exclude)
#   ivf nlist 128 nprobe 8: 0.494 / 0.417;  ivf nlist 128 nprobe 64: 0.962 / 0.934;
#   hnsw M 32 ef_search 64: 0.981 / 0.962
@pytest.mark.parametrize("kind, settings, bound", [
    ("ivf", {"nlist": 128, "nprobe": 8}, 0.35),
    ("ivf", {"nlist": 128, "nprobe": 64}, 0.9),
    ("hnsw", {"m": 32, "ef_search": 64}, 0.9),
], ids=["ivf-nprobe8", "ivf-nprobe64", "hnsw"])
def test_recall_at_10(gaussian_means, kind, settings, bound):
    means, queries, candidates, own = gaussian_means
    index = FaissIndex(kind, **settings)
    index.build(means)
    for options in ({}, {"candidates": candidates, "exclude": own}):
        dists, found = index.search(queries, 10, **options)
        exact = knn_search(queries, means, 10, **options)[1]
        recall = sum(len(set(a) & set(b)) for a, b in zip(found.tolist(), exact.tolist())) / found.numel()
        assert recall >= bound, (options.keys(), recall)
        # whatever was chosen: valid, at its true distance, ascending
        true = (queries.double()[:, None] - means[found].double()).square().sum(-1).float()
        assert torch.equal(dists, true) and (dists[:, 1:] >= dists[:, :-1]).all()
        if options:
            assert torch.isin(found, candidates).all() and not (found == own[:, None]).any()


# --- updates --------------------------------------------------------------------------

def scattered_update(keys: torch.Tensor):
    """Writes at scattered rows, with a duplicate (the last one wins), and the means after."""
    g = torch.Generator().manual_seed(5)
    indices = torch.tensor([7, 250, 7, 391, 12])
    values = 100 * torch.randn(5, keys.shape[1], generator=g)
    after = cache_update_(keys.clone(), indices, values)
    return indices, values, after


def test_ivf_update_moves_rows_and_last_duplicate_wins():
    keys = clusters()
    index = built("ivf", keys)
    indices, values, after = scattered_update(keys)
    index.update(indices, values)
    assert index._index.ntotal == keys.shape[0]
    queries = torch.cat([values, keys[:20] + 0.1])
    exclude = torch.cat([torch.full((5,), -1), torch.arange(20)])
    assert_same(index.search(queries, 5, exclude=exclude), knn_search(queries, after, 5, exclude=exclude))
    assert index.search(values[2:3], 1)[1].item() == 7  # row 7 holds the later write
    assert index.search(values[0:1], 1)[1].item() != 7


def test_hnsw_update_keeps_graph_positions_until_a_rebuild():
    keys = clusters()
    index = built("hnsw", keys)
    indices, values, after = scattered_update(keys)
    index.update(indices, values)
    assert index.stale_fraction == 4 / keys.shape[0]
    # row 391 now lies at values[3], far from every other row; the graph still has it at
    # its old place, so a search there does not find it, but every distance is the true one
    dists, found = index.search(values[3:4], 5)
    assert 391 not in found[0].tolist() and knn_search(values[3:4], after, 1)[1].item() == 391
    assert torch.equal(dists, (values[3:4].double() - after[found[0]].double()).square().sum(-1).float()[None])
    index.build(after)  # the documented rule: rebuilt by build (the cache's refresh and load)
    assert index.stale_fraction == 0.0
    assert_same(index.search(values, 5), knn_search(values, after, 5))


def test_hnsw_max_stale_rebuilds_before_the_next_search():
    keys = clusters()
    index = built("hnsw", keys, max_stale=0.01)  # 4 stale rows of 400 = 0.01: no rebuild yet
    indices, values, after = scattered_update(keys)
    index.update(indices, values)
    assert index.search(values[3:4], 1)[1].item() != 391
    index.update(torch.tensor([0]), after[0:1])  # 5 of 400 > 0.01: rebuilt before the search
    assert_same(index.search(values, 5), knn_search(values, after, 5))
    assert index.stale_fraction == 0.0


# --- the exact fallback -----------------------------------------------------------------

def test_rows_with_too_few_proposals_fall_back_to_the_exact_search(monkeypatch):
    keys = clusters(n_clusters=4, per=50)
    index = built("ivf", keys, nlist=4, nprobe=1)  # probes only the query's nearest list
    lists = torch.from_numpy(index._index.quantizer.search(keys.numpy(), 1)[1][:, 0])
    queries = keys[:1] + 0.01
    probed = int(index._index.quantizer.search(queries.numpy(), 1)[1][0, 0])
    inside, outside = (lists == probed).nonzero().squeeze(1), (lists != probed).nonzero().squeeze(1)
    candidates = torch.cat([inside[:2], outside])  # 2 in the probed list, the rest elsewhere
    queries = torch.cat([queries, keys[outside[:1]] + 0.01])  # row 2: in a list full of candidates
    calls, backends = [], []

    def spy(q, *args, **kwargs):
        calls.append(q.shape[0])
        backends.append(kwargs["backend"])
        return knn_search(q, *args, **kwargs)

    monkeypatch.setattr(ann, "knn_search", spy)
    got = index.search(queries, 5, candidates=candidates, backend="torch")
    assert calls == [1]  # only the first row lacked proposals (2); the second had its own
    exact = knn_search(queries, keys, 5, candidates=candidates)
    assert_same((got[0][:1], got[1][:1]), (exact[0][:1], exact[1][:1]))
    assert torch.isin(got[1][0], outside).sum() == 3  # found by the exact search only
    # a known backend that does not run on the CPU (a GPU run's "triton") becomes "auto"
    def unavailable(op, backend, *tensors):
        raise ValueError(f"backend: {backend!r} is not available")

    monkeypatch.setattr(ann, "resolve_backend", unavailable)
    assert_same(index.search(queries, 5, candidates=candidates, backend="triton"), got)
    assert backends == ["torch", "auto"]


# --- construction, build, state ------------------------------------------------------------

@pytest.mark.parametrize("args, kwargs, error, match", [
    (("flat",), {}, ValueError, "kind"),
    (("ivf",), {"nlist": 0}, ValueError, "nlist"),
    (("ivf",), {"nlist": 4, "nprobe": 5}, ValueError, "nprobe"),
    (("ivf",), {"nprobe": 0}, ValueError, "nprobe"),
    (("hnsw",), {"m": 1}, ValueError, "m: "),
    (("hnsw",), {"ef_search": 0}, ValueError, "ef_search"),
    (("hnsw",), {"ef_construction": 0}, ValueError, "ef_construction"),
    (("ivf",), {"seed": -1}, ValueError, "seed"),
    (("ivf",), {"threads": 0}, ValueError, "threads"),
    (("ivf",), {"nlist": 2.0}, TypeError, "nlist"),
    (("hnsw",), {"deterministic": 1}, TypeError, "deterministic"),
    (("hnsw",), {"max_stale": 0.0}, ValueError, "max_stale"),
    (("hnsw",), {"max_stale": "0.5"}, TypeError, "max_stale"),
    (("ivf",), {"max_stale": 0.5}, ValueError, "max_stale"),
])
def test_constructor_rejects_bad_settings(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        FaissIndex(*args, **kwargs)


def test_build_update_and_search_reject_bad_input():
    index = FaissIndex("ivf", nlist=8, nprobe=2)
    with pytest.raises(ValueError, match="not built"):
        index.search(torch.zeros(1, 3), 1)
    with pytest.raises(ValueError, match="not built"):
        index.update(torch.tensor([0]), torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"nlist: expected at most the N=5 rows"):
        index.build(torch.randn(5, 3))
    with pytest.raises(ValueError, match="means contains NaN"):
        index.build(torch.full((10, 3), float("nan")))
    with pytest.raises(TypeError, match="means"):
        index.build(torch.zeros(10, 3, dtype=torch.int64))
    index.build(torch.randn(10, 3))
    with pytest.raises(ValueError, match="indices: indices must lie in"):
        index.update(torch.tensor([10]), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="values: expected shape"):
        index.update(torch.tensor([1]), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="values contains NaN/Inf"):
        index.update(torch.tensor([1]), torch.full((1, 3), 1e300, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_builds_are_deterministic_and_copies_drop_the_structure(kind):
    keys = torch.randn(3000, 8, generator=torch.Generator().manual_seed(3))
    first, second = FaissIndex(kind, nlist=32, nprobe=4), FaissIndex(kind, nlist=32, nprobe=4)
    first.build(keys)
    second.build(keys)
    assert bytes(faiss.serialize_index(first._index)) == bytes(faiss.serialize_index(second._index))
    clone = copy.deepcopy(first)
    assert not clone.is_built and repr(clone) == repr(FaissIndex(kind, nlist=32, nprobe=4))
    clone.build(keys)
    assert_same(clone.search(keys[:10], 3), first.search(keys[:10], 3))


def test_without_faiss_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    with pytest.raises(ImportError, match=r"pip install faiss-cpu \(or faiss-gpu\)"):
        FaissIndex("hnsw")
    cfg = apply_overrides(RunConfig(), ["prior.index=hnsw"])
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        build_index(cfg)


def test_importing_the_library_does_not_import_faiss():
    code = ("import sys; sys.modules['faiss'] = None; import exvae_fast, exvae_fast.ann, "
            "exvae_fast.train.builder; cache = exvae_fast.LatentCache(3, 2); cache.attach_index(None); "
            "print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


# --- the latent cache ---------------------------------------------------------------------

class CountingIndex(FaissIndex):
    """A FaissIndex that counts its builds, updates and searches."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = {"build": 0, "update": 0, "search": 0}

    def build(self, means):
        self.calls["build"] += 1
        super().build(means)

    def update(self, indices, values):
        self.calls["update"] += 1
        super().update(indices, values)

    def search(self, *args, **kwargs):
        self.calls["search"] += 1
        return super().search(*args, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cache_with_an_index(dtype):
    keys = clusters()
    cache = LatentCache(keys.shape[0], keys.shape[1], dtype=dtype)
    index = CountingIndex("ivf", **EXHAUSTIVE["ivf"])
    cache.attach_index(index)
    assert cache.index is index and not index.is_built
    cache.refresh_(lambda x: x, keys, batch_size=64)
    assert index.calls == {"build": 1, "update": 0, "search": 0}  # one build, no per-batch writes
    assert torch.equal(index._means, cache.means.float())
    queries, exclude = keys[:30] + 0.2, torch.arange(30)
    assert_same(cache.knn(queries, 4, exclude=exclude), knn_search(queries, cache.means, 4, exclude=exclude))
    assert index.calls["search"] == 1
    indices, values, _ = scattered_update(keys)
    cache.update_(indices, values)  # forwarded: the index sees the stored (rounded) rows
    assert index.calls["update"] == 1 and torch.equal(index._means, cache.means.float())
    assert_same(cache.knn(queries, 4, exclude=exclude), knn_search(queries, cache.means, 4, exclude=exclude))
    assert "index" not in "".join(cache.state_dict())


def test_cache_builds_the_index_lazily_and_after_loading_a_state_dict():
    keys = clusters()
    cache = LatentCache(*keys.shape)
    cache.refresh_(lambda x: x, keys)
    index = CountingIndex("hnsw", **EXHAUSTIVE["hnsw"])
    cache.attach_index(index)
    assert index.calls == {"build": 0, "update": 0, "search": 0}
    cache.update_(torch.tensor([1]), keys[1:2] + 0.5)  # first use: built (before the write), then sent
    assert index.calls == {"build": 1, "update": 1, "search": 0}
    keys[1] += 0.5
    queries = keys[:10] + 0.2
    assert_same(cache.knn(queries, 3), knn_search(queries, keys, 3))
    assert index.calls["build"] == 1
    other = LatentCache(*keys.shape)
    other.refresh_(lambda x: x.flip(0), keys)
    cache.load_state_dict(other.state_dict())
    assert_same(cache.knn(queries, 3), knn_search(queries, keys.flip(0), 3))  # rebuilt, not stale
    assert index.calls["build"] == 2
    cache.attach_index(None)
    assert cache.index is None and index.calls["search"] == 2
    assert_same(cache.knn(queries, 3), knn_search(queries, keys.flip(0), 3))
    assert index.calls["search"] == 2
    with pytest.raises(TypeError, match="index: expected a FaissIndex or None"):
        cache.attach_index("hnsw")


def test_cache_refresh_that_fails_leaves_the_index_marked_for_a_rebuild():
    keys = clusters()
    cache = LatentCache(*keys.shape)
    index = CountingIndex("ivf", **EXHAUSTIVE["ivf"])
    cache.attach_index(index)
    cache.refresh_(lambda x: x, keys)

    def failing(x):
        if x[0, 0] != keys[0, 0]:
            raise RuntimeError("encoder failed")
        return 2 * x

    with pytest.raises(RuntimeError, match="encoder failed"):
        cache.refresh_(failing, keys, batch_size=100)
    assert index.calls == {"build": 1, "update": 0, "search": 0}
    queries = keys[:10] + 0.2
    assert_same(cache.knn(queries, 3), knn_search(queries, cache.means, 3))
    assert index.calls["build"] == 2


# --- the exemplar prior, configs and the trainer ----------------------------------------------

class LinearEncoder(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.lin = nn.Linear(d_in, d_out)

    def forward(self, x):
        mu = self.lin(x)
        return mu, torch.full_like(mu, -1.0)


def retrieval_steps(index: FaissIndex | None):
    """Two retrieval-mode steps from seed 0: log_prob, the encoder's gradient, the cache."""
    torch.manual_seed(0)
    exemplars = torch.rand(60, 12)
    encoder = LinearEncoder(12, 3)
    prior = ExemplarPrior(exemplars, 3, mode="retrieval", num_exemplars=30, k=4, backend="torch", index=index)
    prior.refresh(encoder)
    prior.train()
    out = []
    for idx in (torch.tensor([3, 17, 30, 8, 41]), torch.tensor([0, 59, 17, 22, 5])):
        query = encoder(exemplars[idx])[0]
        z = query + 0.1 * torch.randn_like(query)
        log_r = prior.log_prob(z, encoder=encoder, query=query.detach(), indices=idx)
        encoder.zero_grad()
        log_r.sum().backward()
        out.append((log_r.detach(), encoder.lin.weight.grad.clone()))
    return out, prior.cache.means.clone()


def test_prior_step_with_an_exhaustive_ivf_index_equals_the_exact_step():
    index = CountingIndex("ivf", nlist=6, nprobe=6)
    with_index, means_with = retrieval_steps(index)
    without, means_without = retrieval_steps(None)
    assert index.calls["search"] == 2 and index.calls["update"] == 4
    for (log_a, grad_a), (log_b, grad_b) in zip(with_index, without):
        assert torch.equal(log_a, log_b) and torch.equal(grad_a, grad_b)
    assert torch.equal(means_with, means_without)


def test_prior_rejects_an_index_it_cannot_use():
    with pytest.raises(ValueError, match="index: only used by retrieval mode"):
        ExemplarPrior(torch.rand(10, 4), 2, mode="exact", index=FaissIndex("hnsw"))
    prior = ExemplarPrior(torch.rand(10, 4), 2, k=2, index=FaissIndex("hnsw"))
    with pytest.raises(ValueError, match="index: an approximate .* sharded cache"):
        prior.shard_cache()  # raised before any process group is needed
    assert isinstance(prior.cache, LatentCache)


@pytest.mark.parametrize("overrides, match", [
    (["prior.index=flat"], "prior.index: expected one of"),
    (["prior.index=ivf", "prior.mode=exact"], "prior.index: an approximate index"),
    (["prior.index=hnsw", "prior.name=vamp"], "prior.index: an approximate index"),
    (["prior.index=ivf", "prior.index_nlist=8", "prior.index_nprobe=9"], "prior.index_nprobe: expected <= "),
    (["prior.index_nlist=0"], "prior.index_nlist: expected >= 1"),
    (["prior.index_nprobe=0"], "prior.index_nprobe: expected >= 1"),
    (["prior.index_hnsw_m=1"], "prior.index_hnsw_m: expected >= 2"),
    (["prior.index_ef_search=0"], "prior.index_ef_search: expected >= 1"),
    (["prior.index_ef_construction=0"], "prior.index_ef_construction: expected >= 1"),
    (["prior.index_threads=0"], "prior.index_threads: expected >= 1"),
    (["prior.index_nlist=many"], "prior.index_nlist: cannot parse"),
])
def test_config_rejects_bad_index_settings(overrides, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(RunConfig(), overrides)


def test_config_builds_the_index_it_names():
    assert RunConfig().prior.index == "exact" and build_index(RunConfig()) is None
    cfg = apply_overrides(RunConfig(), ["prior.index=ivf", "prior.index_nlist=64", "prior.index_nprobe=64",
                                        "train.seed=3", "prior.index_threads=none"])
    index = build_index(cfg)
    assert (index.kind, index.nlist, index.nprobe, index.seed, index.threads) == ("ivf", 64, 64, 3, None)
    cfg = apply_overrides(RunConfig(), ["prior.index=hnsw", "prior.index_hnsw_m=8", "prior.index_ef_search=20",
                                        "prior.index_ef_construction=30", "prior.index_nlist=4"])
    index = build_index(cfg)
    assert (index.kind, index.m, index.ef_search, index.ef_construction, index.threads) == ("hnsw", 8, 20, 30, 1)


def test_trainer_rejects_more_ivf_lists_than_training_examples(tmp_path):
    cfg = tiny_config(tmp_path, **{"prior.index": "ivf", "prior.index_nlist": 301, "prior.index_nprobe": 4})
    with pytest.raises(ConfigError, match="prior.index_nlist: expected at most the 300 training examples"):
        Trainer(cfg, progress=False)


def test_trainer_with_an_hnsw_index_resumes_exactly(tmp_path):
    overrides = {"prior.index": "hnsw"}
    straight = Trainer(tiny_config(tmp_path, "straight", **overrides), progress=False)
    straight.fit()
    index = straight.model.prior.cache.index
    assert isinstance(index, FaissIndex) and index.kind == "hnsw" and index.is_built
    first = Trainer(tiny_config(tmp_path, "resumed", **overrides, **{"train.epochs": 1}), progress=False)
    first.fit()
    ckpt = load_checkpoint(tmp_path / "resumed" / "checkpoint_last.pt")
    assert not [key for key in ckpt["model"] if "index" in key]
    second = Trainer(tiny_config(tmp_path, "resumed", **overrides), progress=False)
    second.fit(resume=True)  # no refresh on resume: the index is rebuilt from the loaded cache
    assert second.model.prior.cache.index.is_built
    expected, got = model_parameters(straight), model_parameters(second)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    logs = [[json.loads(line)["val_elbo"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
            for run in ("straight", "resumed")]
    assert logs[0] == logs[1] and len(logs[0]) == 2


@pytest.mark.gpu
def test_an_index_serves_a_cache_on_the_gpu():
    keys = clusters()
    cache = LatentCache(*keys.shape, device="cuda")
    cache.attach_index(FaissIndex("ivf", **EXHAUSTIVE["ivf"]))
    cache.refresh_(lambda x: x, keys.cuda())
    queries, exclude = keys[:30].cuda() + 0.2, torch.arange(30, device="cuda")
    candidates = torch.randperm(keys.shape[0], generator=torch.Generator().manual_seed(2))[:200].cuda()
    got = cache.knn(queries, 4, candidates=candidates, exclude=exclude)
    assert got[0].device == queries.device and got[1].device == queries.device
    assert_same(got, knn_search(queries, cache.means, 4, candidates=candidates, exclude=exclude))
    indices, values, _ = scattered_update(keys)
    cache.update_(indices.cuda(), values.cuda())
    assert_same(cache.knn(queries, 4, exclude=exclude), knn_search(queries, cache.means, 4, exclude=exclude))
