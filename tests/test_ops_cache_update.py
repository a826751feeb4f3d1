"""cache_update_, torch and cpp backends, against a sequential Python loop (so the last write
wins)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exvae_fast.ops import _extension, cache_update_

STORAGE = [torch.float32, torch.bfloat16, torch.float16]
BACKENDS = ["torch", pytest.param("cpp", marks=pytest.mark.skipif(
    not _extension.has_kernel("cache_update_", "cpu"),
    reason=str(_extension.fallback_reason("cache_update_", "cpu"))))]


def sequential(cache, indices, values, norms, stamps, step):
    """Expected (cache, norms, stamps) after writing row by row, in order."""
    cache, norms, stamps = cache.clone(), norms.clone(), stamps.clone()
    for i, row in enumerate(indices.tolist()):
        cache[row] = values[i].to(cache.dtype)
        norms[row] = sum(float(x) ** 2 for x in cache[row].tolist())
        stamps[row] = step
    return cache, norms, stamps


def state(size, dim, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    cache = torch.randn(size, dim, generator=gen).to(dtype)
    return cache, torch.full((size,), -7.0), torch.full((size,), -1, dtype=torch.int64)


def check_update(backend, dtype, indices, values_dtype=torch.float64, size=9, dim=5, step=4, seed=0):
    cache, norms, stamps = state(size, dim, dtype, seed)
    values = torch.randn(indices.numel(), dim, generator=torch.Generator().manual_seed(seed + 1),
                         dtype=values_dtype)
    want = sequential(cache, indices, values, norms, stamps, step)
    out = cache_update_(cache, indices, values, norms=norms, stamps=stamps, step=step, backend=backend)
    assert out is cache
    assert torch.equal(cache, want[0])
    torch.testing.assert_close(norms, want[1], rtol=1e-6, atol=0)
    assert torch.equal(stamps, want[2])


@pytest.mark.parametrize("dtype", STORAGE)
@pytest.mark.parametrize("indices", [
    [3, 1, 3, 0, 8, 1, 3],  # random duplicates
    [5] * 6,  # all duplicates
    [4, 0, 8, 2],  # none
    list(range(8, -1, -1)),  # K = N, permuted
    [],  # K = 0
], ids=["some-duplicates", "all-duplicates", "unique", "all-rows", "empty"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_sequential_writes(backend, dtype, indices):
    check_update(backend, dtype, torch.tensor(indices, dtype=torch.int64))


@pytest.mark.parametrize("values_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_values_converted_on_write(backend, values_dtype):
    check_update(backend, torch.bfloat16, torch.tensor([2, 0, 2]), values_dtype=values_dtype)
    check_update(backend, torch.float32, torch.tensor([2, 0, 2]), values_dtype=values_dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_norms_are_of_the_stored_rounded_row(backend):
    cache = torch.zeros(2, 1, dtype=torch.bfloat16)
    norms = torch.zeros(2)
    cache_update_(cache, torch.tensor([1]), torch.tensor([[1.00390625 + 1e-4]]), norms=norms,
                  backend=backend)
    assert cache[1, 0].item() == 1.0078125  # bfloat16 keeps 8 bits: rounded up
    assert norms.tolist() == [0.0, 1.0078125**2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_duplicates_last_occurrence_wins_deterministically(backend):
    size, count = 50, 5000
    gen = torch.Generator().manual_seed(0)
    indices = torch.randint(size, (count,), generator=gen)
    values = torch.arange(count, dtype=torch.float32)[:, None].expand(count, 3).contiguous()
    cache = torch.full((size, 3), -1.0)
    cache_update_(cache, indices, values, backend=backend)
    last = {row: pos for pos, row in enumerate(indices.tolist())}
    want = torch.tensor([last.get(row, -1.0) for row in range(size)], dtype=torch.float32)
    assert torch.equal(cache[:, 0], want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_norms_alone_and_plain_writes(backend):
    cache, norms, stamps = state(6, 2, torch.float32)
    values = torch.randn(2, 2)
    cache_update_(cache, torch.tensor([1, 4]), values, norms=norms, backend=backend)
    torch.testing.assert_close(norms[[1, 4]], values.square().sum(1))
    assert (norms[[0, 2, 3, 5]] == -7.0).all()
    before = norms.clone()
    cache_update_(cache, torch.tensor([0]), values[:1], backend=backend)
    assert torch.equal(cache[0], values[0]) and torch.equal(norms, before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_values_requiring_grad_leave_the_cache_out_of_autograd(backend):
    cache = torch.zeros(3, 2)
    values = torch.randn(1, 2, requires_grad=True)
    cache_update_(cache, torch.tensor([2]), values, backend=backend)
    assert not cache.requires_grad and cache.grad_fn is None


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=40, deadline=None)
@given(data=st.data(), size=st.integers(1, 10), dim=st.integers(1, 4),
       dtype=st.sampled_from(STORAGE))
def test_property_matches_sequential(backend, data, size, dim, dtype):
    indices = torch.tensor(data.draw(st.lists(st.integers(0, size - 1), max_size=3 * size)),
                           dtype=torch.int64)
    check_update(backend, dtype, indices, size=size, dim=dim, seed=data.draw(st.integers(0, 100)))


# --- errors -------------------------------------------------------------------------------

def good_args():
    return dict(cache=torch.zeros(5, 3), indices=torch.tensor([0, 4]), values=torch.ones(2, 3))


@pytest.mark.parametrize("change,error,match", [
    (dict(cache=torch.zeros(5, 3, dtype=torch.float64)), TypeError,
     "cache: expected dtype float32, bfloat16, float16, got torch.float64"),
    (dict(cache=[[0.0] * 3] * 5), TypeError, "cache: expected a torch.Tensor"),
    (dict(cache=torch.zeros(15)), ValueError, r"cache: expected shape \[N, d\], got \[15\]"),
    (dict(indices=torch.tensor([0.0, 4.0])), TypeError, "indices: expected dtype int64"),
    (dict(indices=torch.tensor([[0, 4]])), ValueError, r"indices: expected shape \[K\]"),
    (dict(indices=torch.tensor([0, 5])), ValueError,
     r"indices: indices must lie in \[0, 5\), got values in \[0, 5\]"),
    (dict(indices=torch.tensor([-1, 2])), ValueError, r"indices: indices must lie in \[0, 5\)"),
    (dict(values=torch.ones(2, 3, dtype=torch.int64)), TypeError, "values: expected a floating"),
    (dict(values=torch.ones(3, 3)), ValueError,
     r"values: expected shape \[2, 3\] \(K matching indices, d matching cache\), got \[3, 3\]"),
    (dict(values=torch.ones(2, 4)), ValueError, r"values: expected shape \[2, 3\]"),
    (dict(values=torch.tensor([[1.0, float("nan"), 0.0], [0.0] * 3])), ValueError, "values contains NaN"),
    (dict(values=torch.tensor([[1.0, -float("inf"), 0.0], [0.0] * 3])), ValueError, "values contains NaN"),
    (dict(cache=torch.zeros(5, 3, dtype=torch.float16), values=torch.full((2, 3), 1e5)), ValueError,
     "values: overflow the cache's torch.float16 storage"),
    (dict(norms=torch.zeros(5, dtype=torch.float64)), TypeError, "norms: expected dtype float32"),
    (dict(norms=torch.zeros(4)), ValueError, r"norms: expected shape \[5\] \(one per cache row\)"),
    (dict(norms=torch.zeros(5), stamps=torch.zeros(5, dtype=torch.int64)), ValueError,
     "stamps: given without step"),
    (dict(stamps=torch.zeros(5, dtype=torch.int64), step=1), ValueError, "stamps: given without norms"),
    (dict(norms=torch.zeros(5), step=1), ValueError, "step: given without stamps"),
    (dict(norms=torch.zeros(5), stamps=torch.zeros(5), step=1), TypeError,
     "stamps: expected dtype int64"),
    (dict(norms=torch.zeros(5), stamps=torch.zeros(5, dtype=torch.int64), step=-1), ValueError,
     "step: expected an int >= 0"),
    (dict(norms=torch.zeros(5), stamps=torch.zeros(5, dtype=torch.int64), step=1.0), TypeError,
     "step: expected an int"),
    (dict(values=torch.ones(2, 3, device="meta")), ValueError, "expected all tensors on one device"),
    (dict(backend="triton"), ValueError, "cache_update_: backend 'triton' is not available"),
    (dict(backend=None), ValueError, "backend: expected one of auto, torch"),
])
def test_bad_inputs(change, error, match):
    args = {**good_args(), **change}
    with pytest.raises(error, match=match):
        cache_update_(**args)
    if isinstance(args["cache"], torch.Tensor):
        assert (args["cache"] == 0).all()  # rejected before any write
