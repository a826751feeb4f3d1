"""knn_search (torch backend) against a brute-force float64 sort with (distance, index) order."""
from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exvae_fast.ops import knn, knn_search
from test_ops_mixture import largest_tensor


def brute_force(queries, keys, k, candidates=None, exclude=None):
    """All distances in float64 (rounded to float32, as returned), sorted per row by
    (distance, index) over the allowed keys; the first k."""
    dists = ((queries.double()[:, None, :] - keys.double()[None, :, :]) ** 2).sum(-1).float()
    allowed = range(keys.shape[0]) if candidates is None else candidates.tolist()
    out_d, out_i = [], []
    for b in range(queries.shape[0]):
        left_out = -1 if exclude is None else int(exclude[b])
        ranked = sorted((float(dists[b, j]), j) for j in allowed if j != left_out)[:k]
        out_d.append([d for d, _ in ranked])
        out_i.append([j for _, j in ranked])
    return torch.tensor(out_d, dtype=torch.float32), torch.tensor(out_i, dtype=torch.int64)


def assert_same(got, want):
    (gd, gi), (wd, wi) = got, want
    assert gd.dtype == torch.float32 and gi.dtype == torch.int64
    torch.testing.assert_close(gd, wd, rtol=0, atol=0)
    assert torch.equal(gi, wi)


@pytest.fixture
def small_blocks(monkeypatch):
    """Shrink the block budget so small N spans several (uneven) blocks."""
    def set_budget(elements):
        monkeypatch.setattr(knn, "ELEMENT_BUDGET", elements)
    return set_budget


@pytest.mark.parametrize("batch,size,dim,k,block", [
    (1, 1, 1, 1, 1), (4, 10, 3, 10, 3), (5, 23, 1, 4, 7), (3, 40, 128, 5, 6), (6, 33, 4, 1, 33),
])
@pytest.mark.parametrize("key_dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_matches_brute_force(batch, size, dim, k, block, key_dtype, small_blocks):
    small_blocks(batch * block)
    gen = torch.Generator().manual_seed(size)
    queries = torch.randn(batch, dim, generator=gen)
    keys = torch.randn(size, dim, generator=gen).to(key_dtype)
    assert_same(knn_search(queries, keys, k), brute_force(queries, keys, k))


def test_candidates_and_excluded_self(small_blocks):
    small_blocks(4 * 2)
    gen = torch.Generator().manual_seed(3)
    keys = torch.randn(30, 3, generator=gen)
    candidates = torch.tensor([29, 3, 17, 8, 0, 12, 21, 5])  # unsorted on purpose
    rows = torch.tensor([3, 17, 5, 9])  # the last query's own key is not a candidate
    queries = keys[rows]
    got = knn_search(queries, keys, 4, candidates=candidates, exclude=rows)
    assert_same(got, brute_force(queries, keys, 4, candidates, rows))
    assert not (got[1] == rows[:, None]).any()  # a query never finds itself
    assert torch.isin(got[1], candidates).all()
    # k = every candidate, when the excluded key is not among them (row 3) or for no row
    assert_same(knn_search(queries[3:], keys, 8, candidates=candidates, exclude=rows[3:]),
                brute_force(queries[3:], keys, 8, candidates, rows[3:]))
    assert_same(knn_search(queries, keys, 7, candidates=candidates, exclude=rows),
                brute_force(queries, keys, 7, candidates, rows))


def test_ties_go_to_the_lower_index(small_blocks):
    small_blocks(2 * 3)  # blocks of 3 keys: ties span blocks
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0],
                         [1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    queries = torch.zeros(2, 2)
    dists, indices = knn_search(queries, keys, 7, exclude=torch.tensor([-1, 3]))
    assert indices.tolist() == [[0, 1, 2, 3, 4, 5, 7], [0, 1, 2, 4, 5, 7, 6]]
    assert dists.tolist() == [[1.0] * 7, [1.0] * 6 + [4.0]]
    cand = torch.tensor([7, 5, 3, 1])
    assert knn_search(queries, keys, 4, candidates=cand)[1].tolist() == [[1, 3, 5, 7]] * 2


def test_excluded_key_never_returned_even_at_infinite_distance():
    # squared distances overflow float32 (to inf) for every key: ties at inf, by index
    keys = torch.tensor([[3e38], [-3e38], [-3e38]])
    queries = torch.tensor([[3e38], [3e38]])
    dists, indices = knn_search(queries, keys, 2, exclude=torch.tensor([1, 2]))
    assert indices.tolist() == [[0, 2], [0, 1]]
    assert dists[:, 0].tolist() == [0.0, 0.0] and torch.isinf(dists[:, 1]).all()


def test_exact_when_queries_sit_next_to_far_keys():
    # 1e3 from the origin, distances of ~1e-12 drown in the uncentred float64 expansion's error
    # (~1e-8), which would fill the shortlist of 2k = 4 with farther keys of lower index; centred
    # on the query they do not. The two nearest keys come last, behind six farther ones
    gen = torch.Generator().manual_seed(0)
    queries = 1e3 * torch.randn(1, 16, generator=gen, dtype=torch.float64)
    offsets = torch.arange(8, 0, -1, dtype=torch.float64)[:, None] * 1e-7
    keys = queries + offsets * torch.ones(1, 16, dtype=torch.float64)
    got = knn_search(queries, keys, 2)
    assert_same(got, brute_force(queries, keys, 2))
    assert got[1].tolist() == [[7, 6]]


def test_duplicate_keys_and_empty_batch():
    keys = torch.tensor([[0.5, 0.5]] * 3 + [[0.0, 0.0]])
    dists, indices = knn_search(torch.tensor([[0.5, 0.5]]), keys, 3, exclude=torch.tensor([1]))
    assert indices.tolist() == [[0, 2, 3]] and dists.tolist() == [[0.0, 0.0, 0.5]]
    dists, indices = knn_search(torch.zeros(0, 2), keys, 2)
    assert dists.shape == (0, 2) and indices.shape == (0, 2)


def test_duplicate_keys_across_blocks_get_equal_distances_and_index_order(small_blocks):
    small_blocks(5 * 4)  # blocks of 4 keys
    gen = torch.Generator().manual_seed(7)
    keys = 10.0 + torch.randn(30, 6, generator=gen)
    keys[[9, 14, 22, 29]] = keys[2].clone()  # copies in other blocks, at other matmul columns
    queries = torch.cat([keys[[2]] + 0.1 * torch.randn(4, 6, generator=gen), keys[[5]]])
    dists, indices = knn_search(queries, keys, 30)
    assert_same((dists, indices), brute_force(queries, keys, 30))
    copies = (indices[:, :, None] == torch.tensor([2, 9, 14, 22, 29])).any(-1)
    assert (dists[copies].view(5, 5) == dists[copies].view(5, 5)[:, :1]).all()
    assert indices[copies].view(5, 5).tolist() == [[2, 9, 14, 22, 29]] * 5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_expansion_error_within_documented_bound(dtype, offset):
    # two clusters 10 apart (so centring cannot make all norms small), far from the origin
    dim = 40
    gen = torch.Generator().manual_seed(11)
    centres = offset + 10.0 * torch.randn(2, dim, generator=gen, dtype=torch.float64)

    def around_centres(n):
        return centres[torch.arange(n) % 2] + torch.randn(n, dim, generator=gen, dtype=torch.float64)

    x = around_centres(12).to(dtype)
    close = x[:6] + 1e-4 * torch.randn(6, dim, generator=gen, dtype=dtype)
    y = torch.cat([close, around_centres(10).to(dtype)])
    centre = knn.centre_of(x)
    cx, cy = knn.Centred.of(x, centre), knn.Centred.of(y, centre)
    got = knn.sq_dists(cx, cy)
    exact = torch.tensor([[float(sum((Fraction(a) - Fraction(b)) ** 2 for a, b in zip(u, v)))
                           for v in y.double().tolist()] for u in x.double().tolist()],
                         dtype=torch.float64)  # correctly rounded
    bound = (dim + 4) * 2.0**-52 * (cx.norms[:, None] + cy.norms[None, :])
    assert ((got - exact).abs() <= bound).all()
    assert (got >= 0).all()


def test_exact_rerank_absorbs_the_expansion_error(small_blocks):
    # 8 keys at squared distance 1 + 2^-24 +- 1e-10 from query 0: exact distances round to 1
    # (odd keys) or 1 + 2^-23 (even keys) in float32, while the expansion about the centre of
    # a far-spread batch errs by ~1e-8 and rounds them at random
    small_blocks(2 * 3)
    gen = torch.Generator().manual_seed(0)
    eps = torch.tensor([1e-10, -1e-10] * 4, dtype=torch.float64)
    directions = torch.randn(8, 4, generator=gen, dtype=torch.float64)
    directions = directions / directions.norm(dim=1, keepdim=True)
    keys = torch.cat([torch.sqrt(1 + 2.0**-24 + eps)[:, None] * directions,
                      torch.full((4, 4), 3.0, dtype=torch.float64)])
    queries = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1e4, 0.0, 0.0, 0.0]], dtype=torch.float64)
    want = brute_force(queries, keys, 4)
    assert want[1][0].tolist() == [1, 3, 5, 7]
    centre = knn.centre_of(queries)
    approx = knn.sq_dists(knn.Centred.of(queries, centre), knn.Centred.of(keys, centre)).float()
    by_expansion = sorted(range(12), key=lambda j: (float(approx[0, j]), j))[:4]
    assert by_expansion != [1, 3, 5, 7]  # the expansion alone would choose other keys
    assert_same(knn_search(queries, keys, 4), want)


def test_never_holds_batch_by_keys(small_blocks):
    batch, size, dim, k, budget = 32, 20_000, 16, 10, 32 * 1024
    small_blocks(budget)  # blocks of 1024 keys
    gen = torch.Generator().manual_seed(2)
    queries = torch.randn(batch, dim, generator=gen)
    keys = torch.randn(size, dim, generator=gen)
    candidates = torch.randperm(size, generator=gen)[: size // 2]
    exclude = torch.arange(batch)
    # one block's [B, c] distances, with the running top-k beside them, or the [N, d] keys
    # (validation); [B, N] or a [B, c, d] difference tensor would exceed this
    limit = max(batch * (budget // batch + k), size * dim)
    assert limit < min(batch * size, budget * dim)
    assert largest_tensor(lambda: knn_search(queries, keys, k, exclude=exclude)) <= limit
    assert largest_tensor(lambda: knn_search(queries, keys, k, candidates, exclude)) <= limit
    assert largest_tensor(lambda: torch.cdist(queries, keys).topk(k, largest=False)) >= batch * size


@settings(max_examples=50, deadline=None)
@given(data=st.data(), batch=st.integers(1, 4), size=st.integers(1, 12), dim=st.integers(1, 4),
       block=st.integers(1, 6), use_candidates=st.booleans(), use_exclude=st.booleans())
def test_property_matches_brute_force(data, batch, size, dim, block, use_candidates, use_exclude):
    # small integer coordinates: plenty of exact ties
    coords = st.lists(st.integers(-2, 2), min_size=dim, max_size=dim)
    keys = torch.tensor(data.draw(st.lists(coords, min_size=size, max_size=size)), dtype=torch.float32)
    queries = torch.tensor(data.draw(st.lists(coords, min_size=batch, max_size=batch)),
                           dtype=torch.float32)
    candidates = exclude = None
    pool = size
    if use_candidates:
        candidates = torch.tensor(data.draw(st.lists(st.integers(0, size - 1), min_size=1,
                                                     max_size=size, unique=True)))
        pool = candidates.numel()
    if use_exclude:
        exclude = torch.tensor(data.draw(st.lists(st.integers(-1, size - 1), min_size=batch,
                                                  max_size=batch)))
    if pool == 1 and exclude is not None:  # keep one searchable key per row
        exclude = torch.where(exclude == (0 if candidates is None else candidates[0]), -1, exclude)
    k = data.draw(st.integers(1, pool - 1 if exclude is not None and pool > 1 else pool))
    old = knn.ELEMENT_BUDGET
    knn.ELEMENT_BUDGET = batch * block
    try:
        got = knn_search(queries, keys, k, candidates=candidates, exclude=exclude)
    finally:
        knn.ELEMENT_BUDGET = old
    assert_same(got, brute_force(queries, keys, k, candidates, exclude))


# --- errors -------------------------------------------------------------------------------

def good_args():
    return dict(queries=torch.randn(3, 2), keys=torch.randn(6, 2), k=2)


@pytest.mark.parametrize("change,error,match", [
    (dict(queries=[[0.0, 1.0]]), TypeError, "queries: expected a torch.Tensor"),
    (dict(queries=torch.ones(3, 2, dtype=torch.int64)), TypeError, "queries: expected a floating"),
    (dict(queries=torch.randn(3, 2, 1)), ValueError,
     r"queries: expected shape \[B, d\], got \[3, 2, 1\]"),
    (dict(keys=torch.randn(6, 3)), ValueError, r"keys: expected shape \[N, 2\] \(d matching queries\)"),
    (dict(keys=torch.randn(0, 2)), ValueError, "keys: expected at least one row"),
    (dict(keys=torch.tensor([[0.0, 1.0], [float("nan"), 0.0]])), ValueError, "keys contains NaN/Inf"),
    (dict(keys=torch.tensor([[0.0, float("inf")]]), k=1), ValueError, "keys contains NaN/Inf"),
    (dict(queries=torch.tensor([[float("nan"), 0.0]])), ValueError, "queries contains NaN/Inf"),
    (dict(k=0), ValueError, "k: expected an int >= 1, got 0"),
    (dict(k=2.0), TypeError, "k: expected an int, got float"),
    (dict(k=torch.tensor(2)), TypeError, "k: expected an int, got Tensor"),
    (dict(k=7), ValueError, r"k: expected k <= 6 \(the number of keys\), got k=7"),
    (dict(k=6, exclude=torch.tensor([-1, 2, -1])), ValueError,
     r"k: row 1 can search only 5 keys \(6 minus its excluded index\), got k=6"),
    (dict(k=3, candidates=torch.tensor([0, 4])), ValueError,
     r"k: expected k <= 2 \(the number of candidates\), got k=3"),
    (dict(k=2, candidates=torch.tensor([0, 4]), exclude=torch.tensor([1, -1, 4])), ValueError,
     "k: row 2 can search only 1 candidates"),
    (dict(candidates=torch.zeros(0, dtype=torch.int64)), ValueError, "candidates: expected at least one key index"),
    (dict(candidates=torch.tensor([0.0, 1.0])), TypeError, "candidates: expected dtype int64"),
    (dict(candidates=torch.tensor([[0, 1]])), ValueError, r"candidates: expected shape \[M\]"),
    (dict(candidates=torch.tensor([0, 6])), ValueError, r"candidates: indices must lie in \[0, 6\)"),
    (dict(candidates=torch.tensor([-1, 2])), ValueError, "candidates: indices must lie in"),
    (dict(candidates=torch.tensor([1, 3, 1])), ValueError, "candidates: expected unique indices"),
    (dict(exclude=torch.tensor([0, 1])), ValueError, r"exclude: expected shape \[3\]"),
    (dict(exclude=torch.tensor([0, 1, 6])), ValueError, r"exclude: indices must lie in \[0, 6\) or -1"),
    (dict(exclude=torch.tensor([0, 1, 2], dtype=torch.int32)), TypeError,
     "exclude: expected dtype int64"),
    (dict(keys=torch.randn(6, 2, device="meta")), ValueError, "expected all tensors on one device"),
    (dict(backend="fast"), ValueError, "backend: expected one of auto, torch, triton, cpp"),
    (dict(backend="cpp"), ValueError, "knn_search: backend 'cpp' is not available"),
])
def test_bad_inputs(change, error, match):
    with pytest.raises(error, match=match):
        knn_search(**{**good_args(), **change})
