"""knn_search backend "triton" (kernels/knn_search.py) against the torch reference and an
independent float64 brute force. Without CUDA the kernels run in the Triton interpreter
(conftest sets TRITON_INTERPRET=1), so shapes stay small; the interpreter config is shrunk
so that small inputs still span several blocks and chunks. Tests marked gpu run natively."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from exvae_fast.kernels import knn_search as kmod  # noqa: E402
from exvae_fast.ops import dispatch, knn_search  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRET else "cpu"


@pytest.fixture(scope="module", autouse=True)
def triton_backend():
    """Register the backend for these tests (the package registers it on CUDA itself)."""
    before = dict(dispatch._REGISTRY.get("knn_search", {}))
    kmod.register_backend()
    yield
    dispatch._REGISTRY["knn_search"] = before


@pytest.fixture(scope="module", autouse=True)
def fast_interpreter_xor():
    """tl.sort / tl.topk find compare-and-swap partners with an xor reduction, which the
    interpreter evaluates element by element in Python (~20x the whole test time). Give it the
    exact numpy equivalent; the kernels and the compiled path are unchanged."""
    try:
        from triton.runtime import interpreter
        reduce_ops = interpreter.ReduceOps
        combine = tl.standard._xor_combine
    except (ImportError, AttributeError):
        yield
        return
    original = reduce_ops.apply_impl

    def apply_impl(self, inputs):
        if self.combine_fn is combine and self.axis is not None and len(inputs) == 1:
            data = inputs[0].handle.data
            out = np.bitwise_xor.reduce(data, axis=self.axis, keepdims=self.keep_dims)
            return self.to_tensor(out, inputs[0].dtype)
        return original(self, inputs)

    reduce_ops.apply_impl = apply_impl
    yield
    reduce_ops.apply_impl = original


@pytest.fixture
def select(request, monkeypatch):
    """Force the scan's per-block selection method (kmod.SELECT_TOPK / SELECT_EXTRACT)."""
    method = request.param
    monkeypatch.setitem(kmod.INTERPRETER_CONFIG, "SELECT", method)
    monkeypatch.setenv("EXVAE_KNN_AUTOTUNE", "0")
    default = kmod._default_config
    monkeypatch.setattr(kmod, "_default_config", lambda k_sel: {**default(k_sel), "SELECT": method})
    return method


@pytest.fixture
def no_launch(monkeypatch):
    """Fail the test if the kernels' operator is called."""
    def launch(*args, **kwargs):
        raise AssertionError("the kernels were launched")
    monkeypatch.setattr(kmod, "knn_search_op", launch)


METHODS = [kmod.SELECT_TOPK, kmod.SELECT_EXTRACT]


def brute_force(queries, keys, k, candidates=None, exclude=None):
    """Every distance in float64 (rounded to float32, as returned), each row sorted by
    (distance, index) over its allowed keys; the first k."""
    q, x = queries.double().cpu(), keys.double().cpu()
    dists = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1).float()
    allowed = range(x.shape[0]) if candidates is None else candidates.tolist()
    out_d, out_i = [], []
    for b in range(q.shape[0]):
        left_out = -1 if exclude is None else int(exclude[b])
        ranked = sorted((float(dists[b, j]), j) for j in allowed if j != left_out)[:k]
        out_d.append([d for d, _ in ranked])
        out_i.append([j for _, j in ranked])
    return (torch.tensor(out_d, dtype=torch.float32).reshape(-1, k),
            torch.tensor(out_i, dtype=torch.int64).reshape(-1, k))


def check(queries, keys, k, candidates=None, exclude=None, *, oracle=True):
    """Triton == torch reference (bit for bit), and == the brute force when `oracle`."""
    got = knn_search(queries, keys, k, candidates=candidates, exclude=exclude, backend="triton")
    want = knn_search(queries, keys, k, candidates=candidates, exclude=exclude, backend="torch")
    (gd, gi), (wd, wi) = got, want
    assert gd.dtype == torch.float32 and gi.dtype == torch.int64
    assert gd.shape == gi.shape == (queries.shape[0], k)
    torch.testing.assert_close(gd.cpu(), wd.cpu(), rtol=0, atol=0)
    assert torch.equal(gi.cpu(), wi.cpu())
    if oracle:
        bd, bi = brute_force(queries, keys, k, candidates, exclude)
        torch.testing.assert_close(gd.cpu(), bd, rtol=0, atol=0)
        assert torch.equal(gi.cpu(), bi)
    return got


def data(batch, size, dim, seed=0, key_dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    queries = torch.randn(batch, dim, generator=gen)
    keys = torch.randn(size, dim, generator=gen).to(key_dtype)
    return queries.to(DEVICE), keys.to(DEVICE)


# --- equality on edge shapes ------------------------------------------------------------------

@pytest.mark.parametrize("batch,size,dim,k", [
    (1, 1, 1, 1),       # N = 1
    (5, 40, 3, 4),      # N not a multiple of the block (3 chunks, the last one partial)
    (3, 23, 1, 5),      # d = 1, k not a power of two
    (17, 100, 40, 10),  # two row tiles, several blocks per chunk
    (4, 37, 8, 37),     # k = N
    (2, 50, 128, 12),   # d = 128
    (2, 20, 256, 3),    # d = 256 (four D slices)
    (3, 70, 6, 60),     # k near MAX_K: K_SEL = 64 = BLOCK_N
])
@pytest.mark.parametrize("select", METHODS, indirect=True, ids=["topk", "extract"])
def test_matches_reference_and_brute_force(batch, size, dim, k, select):
    queries, keys = data(batch, size, dim, seed=size + dim)
    check(queries, keys, k)


@pytest.mark.parametrize("key_dtype", [torch.bfloat16, torch.float16])
def test_half_precision_keys(key_dtype):
    queries, keys = data(6, 45, 20, seed=1, key_dtype=key_dtype)
    check(queries, keys, 5)
    check(queries, keys, 3, candidates=torch.arange(44, 0, -3, device=DEVICE),
          exclude=torch.tensor([2, 5, -1, 8, 44, 41], device=DEVICE))


def test_float64_and_strided_inputs():
    queries, keys = data(4, 30, 10, seed=2)
    check(queries.double(), keys.double(), 6)
    wide = torch.randn(30, 20, device=DEVICE)
    check(queries, wide[:, ::2], 6)       # keys with a column stride of 2
    check(queries.t().contiguous().t(), keys, 6)  # column-major queries


@pytest.mark.parametrize("select", METHODS, indirect=True, ids=["topk", "extract"])
def test_duplicate_keys_ties_go_to_the_lower_index(select):
    # 100 keys drawn from 4 distinct vectors: every distance is an exact tie many times over,
    # across blocks and chunks; small integers keep even the scan's expansion exact
    gen = torch.Generator().manual_seed(5)
    keys = torch.tensor([[0.0, 1.0], [1.0, 1.0], [2.0, 0.0], [0.0, 0.0]])[
        torch.randint(0, 4, (100,), generator=gen)].to(DEVICE)
    queries = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]], device=DEVICE)
    _, indices = check(queries, keys, 20)
    check(queries, keys, 7, exclude=indices[:, 0].contiguous())


def test_excluded_self_index():
    queries, keys = data(0, 60, 5, seed=3)
    rows = torch.tensor([0, 7, 33, 59, 16, 16], device=DEVICE)
    dists, indices = check(keys[rows], keys, 4, exclude=rows)
    assert not (indices == rows[:, None]).any()
    assert (dists[:, 0] > 0).all()
    # without exclude the self index comes first at distance 0
    _, indices = check(keys[rows], keys, 4)
    assert torch.equal(indices[:, 0], rows)


@pytest.mark.parametrize("select", METHODS, indirect=True, ids=["topk", "extract"])
def test_candidates_with_and_without_exclude(select):
    queries, keys = data(5, 80, 4, seed=4)
    candidates = torch.tensor([79, 3, 17, 8, 0, 12, 21, 5, 44, 60, 61, 2, 70, 33, 34, 35, 36, 50,
                               51, 52], device=DEVICE)  # unsorted on purpose
    check(queries, keys, 6, candidates=candidates)
    exclude = torch.tensor([3, 17, 4, -1, 79], device=DEVICE)  # 4 is not a candidate
    _, indices = check(queries, keys, 6, candidates=candidates, exclude=exclude)
    assert torch.isin(indices, candidates).all()
    assert not (indices == exclude[:, None]).any()


def test_all_but_one_available():
    queries, keys = data(4, 21, 3, seed=6)
    exclude = torch.tensor([0, 20, 9, 9], device=DEVICE)
    check(queries, keys, 20, exclude=exclude)  # k = N - 1: every other key, in order
    candidates = torch.tensor([9, 1, 14, 20, 6], device=DEVICE)
    check(queries, keys, 4, candidates=candidates, exclude=torch.tensor([9, 20, 6, 1],
                                                                        device=DEVICE))


@pytest.mark.parametrize("offsets,nearest", [
    ([5e-3, 1e-3, 2e-3, 4e-3, 0.0, 3e-3], [1, 2, 5, 3]),
    ([0.0, 4e-3, 5e-3, 1e-3, 3e-3, 2e-3], [3, 5, 4, 1]),
    ([1e-3, 3e-3, 0.0, 2e-3, 5e-3, 4e-3], [0, 3, 1, 5]),
])
def test_exact_where_the_expansion_cancels(offsets, nearest):
    """||q||^2 - 2 q.k + ||k||^2 in float32 cannot order these: the scan ties the five keys
    left (the query's own is excluded), and the four of lowest index hold the farthest; a row
    that searches at most K_SEL keys is re-ranked exactly, whatever the scan's rounding."""
    base = torch.full((1, 16), 4096.0)
    keys = (base + torch.tensor(offsets)[:, None]).to(DEVICE)
    exclude = torch.tensor([offsets.index(0.0)], device=DEVICE)
    _, indices = check(base.to(DEVICE), keys, 4, exclude=exclude)
    assert indices.tolist() == [nearest]


def test_infinite_distances_and_empty_batch():
    keys = torch.tensor([[3e38], [-3e38], [-3e38]], device=DEVICE)
    queries = torch.tensor([[3e38], [3e38]], device=DEVICE)
    dists, indices = check(queries, keys, 2, exclude=torch.tensor([1, 2], device=DEVICE))
    assert indices.tolist() == [[0, 2], [0, 1]] and torch.isinf(dists[:, 1]).all()
    dists, indices = knn_search(torch.zeros(0, 2, device=DEVICE), keys[:, :1].expand(3, 2), 2,
                                backend="triton")
    assert dists.shape == (0, 2) and indices.shape == (0, 2)


def test_k_above_max_k_uses_the_reference(no_launch):
    """k > MAX_K never reaches the kernels, and equals the brute force (exclude passed on)."""
    queries, keys = data(2, 70, 3, seed=7)
    exclude = torch.tensor([5, -1], device=DEVICE)
    dists, indices = knn_search(queries, keys, kmod.MAX_K + 1, exclude=exclude, backend="triton")
    want_d, want_i = brute_force(queries, keys, kmod.MAX_K + 1, exclude=exclude)
    torch.testing.assert_close(dists.cpu(), want_d, rtol=0, atol=0)
    assert torch.equal(indices.cpu(), want_i)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), batch=st.integers(1, 5), size=st.integers(1, 40), dim=st.integers(1, 5),
       use_candidates=st.booleans(), use_exclude=st.booleans())
def test_property_matches_brute_force(data, batch, size, dim, use_candidates, use_exclude):
    # small integer coordinates: plenty of exact ties
    coords = st.lists(st.integers(-2, 2), min_size=dim, max_size=dim)
    keys = torch.tensor(data.draw(st.lists(coords, min_size=size, max_size=size)),
                        dtype=torch.float32, device=DEVICE)
    queries = torch.tensor(data.draw(st.lists(coords, min_size=batch, max_size=batch)),
                           dtype=torch.float32, device=DEVICE)
    candidates = exclude = None
    pool = size
    if use_candidates:
        candidates = torch.tensor(data.draw(st.lists(st.integers(0, size - 1), min_size=1,
                                                     max_size=size, unique=True)), device=DEVICE)
        pool = candidates.numel()
    if use_exclude:
        exclude = torch.tensor(data.draw(st.lists(st.integers(-1, size - 1), min_size=batch,
                                                  max_size=batch)), device=DEVICE)
    if pool == 1 and exclude is not None:  # keep one searchable key per row
        exclude = torch.where(exclude == (0 if candidates is None else candidates[0]), -1, exclude)
    k = data.draw(st.integers(1, min(kmod.MAX_K, pool - 1 if exclude is not None and pool > 1
                                     else pool)))
    method = data.draw(st.sampled_from(METHODS))
    old = kmod.INTERPRETER_CONFIG["SELECT"]
    kmod.INTERPRETER_CONFIG["SELECT"] = method
    try:
        check(queries, keys, k, candidates, exclude)
    finally:
        kmod.INTERPRETER_CONFIG["SELECT"] = old


# --- errors before launch ---------------------------------------------------------------------

@pytest.mark.parametrize("change,error,match", [
    (dict(k=7), ValueError, r"k: expected k <= 6 \(the number of keys\)"),
    (dict(k=6, exclude=torch.tensor([-1, 2, -1])), ValueError, "k: row 1 can search only 5"),
    (dict(k=2, candidates=torch.tensor([0, 4]), exclude=torch.tensor([1, -1, 4])), ValueError,
     "k: row 2 can search only 1 candidates"),
    (dict(candidates=torch.tensor([1, 3, 1])), ValueError, "candidates: expected unique"),
    (dict(candidates=torch.tensor([0, 6])), ValueError, "candidates: indices must lie in"),
    (dict(exclude=torch.tensor([0, 1, 6])), ValueError, "exclude: indices must lie in"),
    (dict(keys=torch.tensor([[0.0, 1.0], [float("nan"), 0.0]])), ValueError, "keys contains NaN"),
    (dict(keys=torch.randn(6, 3)), ValueError, r"keys: expected shape \[N, 2\]"),
    (dict(queries=torch.ones(3, 2, dtype=torch.int64)), TypeError, "queries: expected a floating"),
])
def test_bad_inputs_fail_before_launch(change, error, match, no_launch):
    args = dict(queries=torch.randn(3, 2), keys=torch.randn(6, 2), k=2)
    args = {name: value.to(DEVICE) if isinstance(value, torch.Tensor) else value
            for name, value in {**args, **change}.items()}
    with pytest.raises(error, match=match):
        knn_search(**args, backend="triton")


# --- registration and torch.library -----------------------------------------------------------

def test_registration():
    impl = dispatch._REGISTRY["knn_search"]["triton"]
    assert impl.fn is kmod.knn_search_triton and "cuda" in impl.devices
    if INTERPRET:  # CPU allowed, but "auto" keeps the reference there
        assert "cpu" in impl.devices
        assert dispatch.resolve_backend("knn_search", "auto", torch.zeros(1)) == "torch"
    else:
        assert impl.priority > dispatch._REGISTRY["knn_search"]["torch"].priority


def test_opcheck():
    queries, keys = data(3, 40, 5, seed=8)
    exclude = torch.tensor([1, -1, 30], device=DEVICE)
    candidates = torch.tensor([30, 2, 1, 9, 17, 25, 33, 39], device=DEVICE)
    for args in [(queries, keys, 3, None, None), (queries, keys.half(), 4, candidates, exclude)]:
        torch.library.opcheck(torch.ops.exvae_fast.knn_search_triton.default, args)


def test_torch_compile_traces_the_op():
    queries, keys = data(3, 40, 5, seed=9)
    exclude = torch.tensor([1, -1, 30], device=DEVICE)
    backend = "inductor" if DEVICE == "cuda" else "aot_eager"
    compiled = torch.compile(lambda q, x, e: kmod.knn_search_op(q, x, 5, None, e),
                             backend=backend, fullgraph=True)
    got = compiled(queries, keys, exclude)
    want = knn_search(queries, keys, 5, exclude=exclude, backend="torch")
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])


# --- native GPU -------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("key_dtype", [torch.float32, torch.bfloat16])
def test_gpu_large(key_dtype):
    gen = torch.Generator(device="cuda").manual_seed(0)
    queries = torch.randn(100, 40, device="cuda", generator=gen)
    keys = torch.randn(200_003, 40, device="cuda", generator=gen).to(key_dtype)
    check(queries, keys, 10, oracle=False)
    rows = torch.randint(0, keys.shape[0], (100,), device="cuda", generator=gen)
    candidates = torch.randperm(keys.shape[0], device="cuda", generator=gen)[:50_000]
    candidates[:100] = rows
    check(keys[rows[:100]].float(), keys, 10, candidates=candidates.unique(), exclude=rows,
          oracle=False)
    check(queries, keys, 64, oracle=False)


@pytest.mark.gpu
@pytest.mark.parametrize("batch,size,dim,k", [(1, 1, 1, 1), (7, 1000, 3, 17), (130, 5000, 256, 5),
                                              (100, 25_000, 40, 10)])
def test_gpu_shapes(batch, size, dim, k):
    queries, keys = data(batch, size, dim, seed=size)
    check(queries, keys, k, oracle=size <= 1000)


# --- compiles for Hopper (the interpreter does not lower kernels) -------------------------------

COMPILE_SM90 = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from exvae_fast.kernels import knn_search as m
from exvae_fast.kernels._mixture_aot import resources
from exvae_fast.kernels.mixture_log_density import SPILL_BUDGET

def build(fn, types, consts, warps):
    sig = {name: "constexpr" if name in consts else types.get(name, "i32") for name in fn.arg_names}
    src = ASTSource(fn, sig, consts)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})

ptrs = dict(q_ptr="*fp32", k_ptr="*fp32", cand_ptr="*i64", excl_ptr="*i64", part_ptr="*i64")
for block_b, block_n, warps, selects in m._TILES:  # every autotuned config, d = 40, k = 10
    for select in selects:
        kernel = build(m._scan_kernel, ptrs, dict(HAS_CAND=True, HAS_EXCL=True, K_SEL=16, D_PAD=48,
                       BLOCK_D=16, BLOCK_B=block_b, BLOCK_N=block_n, SELECT=select), warps)
        regs, stack = resources(kernel.asm["cubin"])
        assert 0 < regs and 0 <= stack <= SPILL_BUDGET, (block_b, block_n, warps, select, regs, stack)
build(m._merge_kernel, dict(part_ptr="*i64", q_ptr="*fp32", k_ptr="*bf16", dist_ptr="*fp32",
                            index_ptr="*i64"),
      dict(K_SEL=16, D_PAD=64, BLOCK_D=64, BLOCK_C=4, BLOCK_R=1), 4)
print("compiled")
"""


@pytest.mark.slow
def test_kernels_compile_for_sm90():
    """Lower both scan variants (every autotuned tile, within the spill budget: cuobjdump's
    STACK) and the merge to a cubin for sm_90 (no GPU needed)."""
    import subprocess
    import sys
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        pytest.skip("this triton build has no bundled ptxas")
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", COMPILE_SM90], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-3000:]


CUDA_GRID_LIMITS = (2**31 - 1, 65535, 65535)


def test_strided_candidates_and_exclude_match_the_reference():
    """The kernels read candidates and exclude with unit stride: views with a stride of 2
    (a column of an [M, 2] index tensor) used to search every other wrong entry."""
    gen = torch.Generator().manual_seed(0)
    queries, keys = torch.randn(5, 4, generator=gen), torch.randn(60, 4, generator=gen)
    candidates = torch.randperm(60, generator=gen)[:40].reshape(20, 2)[:, 1]
    exclude = torch.stack([torch.tensor([int(candidates[0]), int(candidates[1]), -1,
                                         int(candidates[3]), 5]), torch.zeros(5, dtype=torch.long)], 1)[:, 0]
    assert not candidates.is_contiguous() and not exclude.is_contiguous()
    queries, keys = queries.to(DEVICE), keys.to(DEVICE)
    candidates, exclude = candidates.to(DEVICE), exclude.to(DEVICE)
    for cand, excl in ((candidates, None), (None, exclude), (candidates, exclude)):
        got = knn_search(queries, keys, 4, candidates=cand, exclude=excl, backend="triton")
        want = knn_search(queries, keys, 4, candidates=cand, exclude=excl, backend="torch")
        assert torch.equal(got[1].cpu(), want[1].cpu())
        torch.testing.assert_close(got[0].cpu(), want[0].cpu(), rtol=0, atol=0)


class _Recorder:
    """Stands in for a launched kernel: records the grid of each launch, runs nothing."""

    def __init__(self, grids, meta):
        self.grids, self.meta = grids, meta

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.grids.append(grid({**self.meta, **kwargs}) if callable(grid) else grid)
        return launch


def test_grid_fits_cuda_limits_for_a_million_queries(monkeypatch):
    """The GPU launch path's grids stay within CUDA's limits (axes 1 and 2 stop at 65535):
    the scan's row blocks are on axis 1, so B > 65535 * BLOCK_B failed to launch; now such a
    batch is searched in slices of MAX_GRID_ROWS rows."""
    assert min(tile[0] for tile in kmod._TILES) * 65535 >= kmod.MAX_GRID_ROWS
    grids = []
    meta = {"BLOCK_B": 16, "BLOCK_N": 64, "num_warps": 4, "SELECT": kmod.SELECT_EXTRACT}
    monkeypatch.setattr(kmod, "_interpreting", lambda: False)
    monkeypatch.setattr(kmod, "_autotuning", lambda: False)
    monkeypatch.setattr(kmod, "_default_config", lambda k_sel: dict(meta))
    monkeypatch.setattr(kmod, "_sm_count", lambda device: 132)
    monkeypatch.setattr(kmod, "_launchable", lambda kernel: _Recorder(grids, meta))
    batch = 65535 * 16 + 1  # nothing is launched: the buffers are allocated, never touched
    queries = torch.empty(batch, 1).expand(batch, 2)
    dists, indices = kmod._launch(queries, torch.zeros(1000, 2), 4, None, None)
    assert dists.shape == indices.shape == (batch, 4)
    assert len(grids) == 4  # scan and merge for each of the two slices
    for grid in grids:
        assert all(0 < size <= limit for size, limit in zip(grid, CUDA_GRID_LIMITS)), grid


def test_autotuning_key_does_not_hold_exact_sizes():
    """Each new key re-benchmarks every config; the pool size varies per step with the
    sharded cache (each shard's share of the candidates), so it is bucketed."""
    tuner = kmod._tuned_scan(16, 16)
    assert "n_pool" not in tuner.keys and "n_queries" not in tuner.keys
    assert "pool_key" in tuner.keys and "pool_key" in kmod._scan_kernel.arg_names


def test_offsets_past_int32_are_copied_or_split_not_wrapped(monkeypatch):
    """The kernels address query rows and dimensions in int32: operands whose offsets pass
    MAX_OFFSET are made contiguous (strided keys and queries) or searched in row slices
    (queries too large even when contiguous). A small MAX_OFFSET stands in for 2^31 - 1."""
    monkeypatch.setattr(kmod, "MAX_OFFSET", 5 * 16 - 1)  # 16 contiguous rows of d = 5
    gen = torch.Generator().manual_seed(1)
    queries = torch.randn(37, 5, generator=gen)
    keys_t = torch.randn(5, 40, generator=gen)  # keys = keys_t.T: column stride 40
    exclude = torch.randint(-1, 40, (37,), generator=gen)
    launched = []
    real = kmod._launch_rows
    monkeypatch.setattr(kmod, "_launch_rows", lambda q, x, *a: launched.append((q.shape[0], x.stride()))
                        or real(q, x, *a))
    strided_queries = torch.randn(37, 10, generator=gen)[:, ::2]  # row stride 10: offset 364
    for q in (queries, strided_queries):
        launched.clear()
        got = kmod._launch(q.to(DEVICE), keys_t.T.to(DEVICE), 3, None, exclude.to(DEVICE))
        want = knn_search(q, keys_t.T, 3, exclude=exclude, backend="torch")
        assert [rows for rows, _ in launched] == [16, 16, 5]
        assert all(stride == (5, 1) for _, stride in launched)  # keys made contiguous
        assert torch.equal(got[1].cpu(), want[1])
        torch.testing.assert_close(got[0].cpu(), want[0], rtol=0, atol=0)
