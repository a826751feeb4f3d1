"""LatentCache: writes, refresh, kNN, staleness, checkpoints and device/dtype moves."""
from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from exvae_fast.cache import LatentCache
from exvae_fast.ops import knn_search


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_initial_state_and_buffers(dtype):
    cache = LatentCache(6, 3, dtype=dtype)
    assert cache.means.shape == (6, 3) and cache.means.dtype == dtype
    assert cache.sq_norms.dtype == torch.float32 and cache.stamps.dtype == torch.int64
    assert (cache.stamps == -1).all() and cache.step == 0
    assert not cache.is_complete
    assert math.isnan(cache.mean_staleness())
    assert cache.staleness().tolist() == [-1] * 6
    assert set(cache.state_dict()) == {"means", "sq_norms", "stamps", "_step"}
    assert "num_items=6, dim=3" in repr(cache)


def test_update_writes_norms_stamps_and_staleness():
    cache = LatentCache(5, 2, dtype=torch.bfloat16)
    cache.advance(3)
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.5, 0.25]], requires_grad=True)
    cache.update_(torch.tensor([4, 1, 4]), values)  # duplicate: the last write wins
    assert cache.means[4].tolist() == [0.5, 0.25] and cache.means[1].tolist() == [3.0, 4.0]
    assert cache.sq_norms.tolist() == [0.0, 25.0, 0.0, 0.0, 0.3125]
    assert cache.stamps.tolist() == [-1, 3, -1, -1, 3]
    assert not cache.means.requires_grad
    cache.advance()
    cache.advance(2)
    cache.update_(torch.tensor([0]), torch.ones(1, 2))
    assert cache.step == 6
    assert cache.staleness().tolist() == [0, 3, -1, -1, 3]
    assert cache.mean_staleness() == 2.0
    never = ("LatentCache: 2 of 5 rows were never written; fill it first (ExemplarPrior.refresh(encoder), "
             "or the cache's refresh_)")
    with pytest.raises(ValueError, match=re.escape(never)):
        cache.check_complete()


@pytest.mark.parametrize("change,error,match", [
    (dict(indices=torch.tensor([5])), ValueError, r"indices: indices must lie in \[0, 5\)"),
    (dict(values=torch.ones(1, 3)), ValueError, r"values: expected shape \[1, 2\]"),
    (dict(values=torch.tensor([[float("nan"), 0.0]])), ValueError, "values contains NaN/Inf"),
    (dict(values=[[1.0, 2.0]]), TypeError, "values: expected a torch.Tensor"),
    (dict(indices=torch.tensor([1.0])), TypeError, "indices: expected dtype int64"),
])
def test_update_rejects_bad_arguments(change, error, match):
    cache = LatentCache(5, 2)
    with pytest.raises(error, match=match):
        cache.update_(**{**dict(indices=torch.tensor([1]), values=torch.ones(1, 2)), **change})
    assert (cache.stamps == -1).all()


@pytest.mark.parametrize("args,error,match", [
    ((0, 3), ValueError, "num_items: expected an int >= 1"),
    ((4, 0), ValueError, "dim: expected an int >= 1"),
    ((4.0, 3), TypeError, "num_items: expected an int"),
    ((4, 3, torch.float64), ValueError, "dtype: expected one of"),
    ((4, 3, "float32"), TypeError, "dtype: expected a torch.dtype"),
])
def test_constructor_rejects_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        LatentCache(*args)


def test_advance_rejects_negative_steps():
    with pytest.raises(ValueError, match="steps: expected an int >= 0"):
        LatentCache(2, 2).advance(-1)


def test_refresh_encodes_every_row_in_batches_without_grad_or_mode_change(capsys):
    data = torch.randn(23, 7)
    encoder = nn.Linear(7, 3).train()
    seen = []

    def encode(batch):
        seen.append((batch.shape[0], torch.is_grad_enabled(), batch.device))
        return encoder(batch)

    cache = LatentCache(23, 3)
    cache.advance(2)
    cache.refresh_(encode, data, batch_size=10, progress=True)
    assert [s[0] for s in seen] == [10, 10, 3]
    assert not any(s[1] for s in seen)
    assert encoder.training
    with torch.no_grad():
        torch.testing.assert_close(cache.means, encoder(data))
    torch.testing.assert_close(cache.sq_norms, cache.means.square().sum(1))
    assert cache.is_complete and (cache.stamps == 2).all() and cache.mean_staleness() == 0.0
    cache.check_complete()
    assert "refreshing latent cache" in capsys.readouterr().err


def test_refresh_rejects_mismatched_data():
    cache = LatentCache(4, 2)
    with pytest.raises(ValueError, match=r"data: expected shape \[4, \.\.\.\] \(one row per cache item\)"):
        cache.refresh_(lambda x: x, torch.zeros(5, 2))
    with pytest.raises(ValueError, match=r"values: expected shape \[4, 2\]"):
        cache.refresh_(lambda x: x[:, :1], torch.zeros(4, 2))
    with pytest.raises(ValueError, match="batch_size: expected an int >= 1"):
        cache.refresh_(lambda x: x, torch.zeros(4, 2), batch_size=0)


def test_knn_searches_the_cached_means():
    cache = LatentCache(12, 4)
    data = torch.randn(12, 4, generator=torch.Generator().manual_seed(0))
    cache.refresh_(lambda x: x, data, batch_size=5)
    queries = cache.means[[2, 7]] + 0.01
    exclude = torch.tensor([2, -1])
    candidates = torch.tensor([0, 2, 3, 7, 9, 11])
    got = cache.knn(queries, 3, candidates=candidates, exclude=exclude, backend="torch")
    want = knn_search(queries, cache.means, 3, candidates=candidates, exclude=exclude)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert got[1][1, 0] == 7 and 2 not in got[1][0].tolist()


def test_state_dict_round_trip_keeps_step_and_rows():
    cache = LatentCache(6, 2, dtype=torch.bfloat16)
    cache.refresh_(lambda x: 2 * x, torch.randn(6, 2))
    cache.advance(5)
    cache.update_(torch.tensor([3]), torch.ones(1, 2))
    restored = LatentCache(6, 2, dtype=torch.bfloat16)
    restored.load_state_dict(cache.state_dict())
    assert restored.step == 5
    for name in ("means", "sq_norms", "stamps"):
        assert torch.equal(getattr(restored, name), getattr(cache, name)), name
    assert restored.staleness().tolist() == cache.staleness().tolist()
    restored.advance()
    assert restored.state_dict()["_step"].item() == 6


def test_moves_with_the_module_but_keeps_dtypes():
    cache = LatentCache(4, 2, dtype=torch.bfloat16)
    parent = nn.Sequential(nn.Linear(2, 2))
    parent.cache = cache
    parent.double()
    assert parent[0].weight.dtype == torch.float64
    assert cache.means.dtype == torch.bfloat16 and cache.sq_norms.dtype == torch.float32
    parent.to("meta", torch.float16)
    assert parent[0].weight.device.type == "meta" and parent[0].weight.dtype == torch.float16
    for name, dtype in [("means", torch.bfloat16), ("sq_norms", torch.float32),
                        ("stamps", torch.int64), ("_step", torch.int64)]:
        buf = getattr(cache, name)
        assert buf.device.type == "meta" and buf.dtype == dtype, name


def test_completeness_is_checked_again_after_loading_a_state_dict():
    full = LatentCache(6, 2)
    full.update_(torch.arange(6), torch.randn(6, 2))
    full.check_complete()
    assert full.is_complete
    partial = LatentCache(6, 2)
    partial.update_(torch.arange(3), torch.randn(3, 2))
    full.load_state_dict(partial.state_dict())  # loading forgets what was known
    assert not full.is_complete
    with pytest.raises(ValueError, match="3 of 6 rows were never written"):
        full.check_complete()
    full.update_(torch.arange(3, 6), torch.randn(3, 2))
    full.check_complete()
