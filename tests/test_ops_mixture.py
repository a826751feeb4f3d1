"""mixture_log_density (torch backend) against an explicit float64 [B, N] formula, plus the
op registry that dispatches it."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from exvae_fast.ops import dispatch, mixture, mixture_log_density

NEG_INF = float("-inf")


def reference(z, means, log_var, exclude=None, log_weights=None):
    """float64 log sum_j w_bj N(z_b | mu_j, exp(log_var) I) from the whole [B, N] matrix."""
    z, means, log_var = z.double(), means.double(), log_var.double()
    batch, dim = z.shape
    size = means.shape[0]
    sq = ((z[:, None, :] - means[None, :, :]) ** 2).sum(-1)
    log_normal = -0.5 * dim * (math.log(2 * math.pi) + log_var) - sq / (2 * torch.exp(log_var))
    lw = torch.zeros(size, dtype=torch.float64) if log_weights is None else log_weights.double()
    logw = lw.expand(batch, size)
    if exclude is not None:
        left_out = torch.zeros(batch, size, dtype=torch.bool)
        for b, j in enumerate(exclude.tolist()):
            if j >= 0:
                left_out[b, j] = True
        logw = torch.where(left_out, torch.full_like(logw, NEG_INF), logw)
    logw = logw - torch.logsumexp(logw, dim=1, keepdim=True)
    return torch.logsumexp(logw + log_normal, dim=1)


def make_inputs(batch, size, dim, *, means_dtype=None, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, dim, generator=gen, dtype=dtype)
    means = (z[torch.randint(batch, (size,), generator=gen)]
             + 0.7 * torch.randn(size, dim, generator=gen, dtype=dtype)).to(means_dtype or dtype)
    log_var = torch.tensor(-0.3 + 0.1 * math.log(dim), dtype=dtype)
    return z, means, log_var


def grads_of(fn, tensors):
    """Value of fn(*tensors) and the gradients of (value * fixed weights).sum() wrt tensors."""
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*leaves)
    weights = 0.5 + 0.25 * torch.arange(out.shape[0], dtype=out.dtype, device=out.device)  # exact
    (out * weights).sum().backward()
    return out.detach(), [leaf.grad for leaf in leaves]


def assert_matches_reference(z, means, log_var, exclude=None, log_weights=None, *, rtol=1e-5,
                             atol=1e-5, grad_rtol=1e-4, grad_atol=1e-5):
    """The op's value and its gradients for z, means, log_var (and log_weights) equal the
    float64 [B, N] formula's (autograd), within the given tolerances; dtypes are kept."""
    tensors = [z, means, log_var] + ([log_weights] if log_weights is not None else [])

    def op(z, means, log_var, lw=None):
        return mixture_log_density(z, means, log_var, exclude=exclude, log_weights=lw)

    def ref(z, means, log_var, lw=None):
        return reference(z, means, log_var, exclude, lw)

    out, grads = grads_of(op, tensors)
    ref_out, ref_grads = grads_of(ref, [t.double() for t in tensors])
    assert out.dtype == z.dtype and out.shape == (z.shape[0],)
    torch.testing.assert_close(out.double(), ref_out, rtol=rtol, atol=atol)
    for name, tensor, got, want in zip(["z", "means", "log_var", "log_weights"], tensors, grads,
                                       ref_grads):
        assert got.dtype == tensor.dtype, name
        torch.testing.assert_close(got.double(), want, rtol=grad_rtol, atol=grad_atol, msg=name)


@pytest.fixture
def small_blocks(monkeypatch):
    """Shrink the block budget so small N spans several (uneven) blocks."""
    def set_budget(elements):
        monkeypatch.setattr(mixture, "ELEMENT_BUDGET", elements)
    return set_budget


SHAPES = [  # (B, N, d, block budget B*c): N=1, N not a multiple of the block, d=1, d=128
    (1, 1, 1, 2**24), (3, 1, 5, 3), (5, 7, 1, 10), (4, 37, 3, 4 * 5), (6, 50, 128, 6 * 8),
]
MODES = ["uniform", "exclude", "weights", "weights+exclude"]


@pytest.mark.parametrize("batch,size,dim,budget,mode", [
    (*shape, mode) for shape in SHAPES for mode in MODES
    if shape[1] > 1 or "exclude" not in mode  # excluding the only component: error, tested below
])
def test_matches_reference_forward_and_backward(batch, size, dim, budget, mode, small_blocks):
    small_blocks(budget)
    z, means, log_var = make_inputs(batch, size, dim)
    exclude = log_weights = None
    if "exclude" in mode:
        exclude = torch.arange(batch) % (size + 1) - 1  # -1 (none) and several components
    if "weights" in mode:
        log_weights = torch.linspace(-2.0, 1.0, size)
        if size > 2:
            log_weights[1] = NEG_INF  # a dropped component
    assert_matches_reference(z, means, log_var, exclude, log_weights)


@pytest.mark.parametrize("means_dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_reduced_and_wide_precision_means(means_dtype, small_blocks):
    small_blocks(4 * 4)
    z, means, log_var = make_inputs(4, 9, 3, means_dtype=means_dtype)
    exclude = torch.tensor([0, -1, 8, 3])
    out, (gz, gm, gl) = grads_of(lambda z, m, lv: mixture_log_density(z, m, lv, exclude=exclude),
                                 [z, means, log_var])
    ref_out, (rz, rm, rl) = grads_of(lambda z, m, lv: reference(z, m, lv, exclude),
                                     [z.double(), means.double(), log_var.double()])
    assert out.dtype == torch.float32 and gm.dtype == means_dtype and gz.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gz.double(), rz, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gl.double(), rl, rtol=1e-4, atol=1e-5)
    # reduced precision: the gradient is rounded to the means' dtype (within one bfloat16 ulp,
    # 2^-7 relative, of the float64 one); float64 means make the whole computation float64
    grad_tol = 2.0**-7 if means_dtype in (torch.bfloat16, torch.float16) else 1e-10
    torch.testing.assert_close(gm.double(), rm, rtol=grad_tol, atol=1e-6)


def test_float64_inputs_compute_in_float64(small_blocks):
    small_blocks(3 * 2)
    z, means, log_var = make_inputs(3, 5, 2, dtype=torch.float64)
    out = mixture_log_density(z, means, log_var)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, reference(z, means, log_var), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("with_weights", [False, True])
def test_gradcheck_float64(with_weights, small_blocks):
    small_blocks(3 * 2)  # blocks of 2 components over N=5
    z, means, log_var = make_inputs(3, 5, 2, dtype=torch.float64, seed=1)
    exclude = torch.tensor([4, -1, 0])
    inputs = [z, means, log_var]
    if with_weights:
        inputs.append(torch.tensor([0.3, -1.0, NEG_INF, 2.0, 0.1], dtype=torch.float64))
    inputs = [t.clone().requires_grad_(True) for t in inputs]

    def fn(z, means, log_var, lw=None):
        return mixture_log_density(z, means, log_var, exclude=exclude, log_weights=lw)

    assert torch.autograd.gradcheck(fn, inputs)


def test_single_component_is_a_gaussian():
    z = torch.tensor([[0.5, -1.0], [2.0, 0.0]], dtype=torch.float64)
    mu = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    log_var = torch.tensor(0.4, dtype=torch.float64)
    var = math.exp(0.4)
    want = [sum(-0.5 * math.log(2 * math.pi * var) - (a - m) ** 2 / (2 * var)
                for a, m in zip(row, mu[0].tolist())) for row in z.tolist()]
    torch.testing.assert_close(mixture_log_density(z, mu, log_var),
                               torch.tensor(want, dtype=torch.float64))


def test_duplicated_means_and_all_but_one_left_out():
    """Each case is the single Gaussian of `means` (forward), and its gradients (every
    duplicate gets its share, left-out and zero-weight components none) are the formula's."""
    z, means, log_var = make_inputs(3, 1, 4, dtype=torch.float64)
    single = mixture_log_density(z, means, log_var)
    twice = means.repeat(2, 1)
    torch.testing.assert_close(mixture_log_density(z, twice, log_var), single)
    assert_matches_reference(z, twice, log_var, rtol=1e-12, atol=1e-12, grad_rtol=1e-10,
                             grad_atol=1e-12)
    other = torch.cat([torch.randn(1, 4, dtype=torch.float64), means])
    left_out = torch.zeros(3, dtype=torch.long)  # N=2, each row leaves out 0: `means` remains
    torch.testing.assert_close(mixture_log_density(z, other, log_var, exclude=left_out), single)
    assert_matches_reference(z, other, log_var, left_out, rtol=1e-12, atol=1e-12,
                             grad_rtol=1e-10, grad_atol=1e-12)
    weights = torch.tensor([NEG_INF, 5.0, NEG_INF], dtype=torch.float64)
    three = torch.cat([torch.randn(1, 4, dtype=torch.float64), means, means + 1])
    torch.testing.assert_close(mixture_log_density(z, three, log_var, log_weights=weights), single)
    assert_matches_reference(z, three, log_var, None, weights, rtol=1e-12, atol=1e-12,
                             grad_rtol=1e-10, grad_atol=1e-12)


def test_no_cancellation_when_z_is_near_a_far_mean():
    # ||z||^2 - 2 z.mu + ||mu||^2 in float32 loses everything here; the centred float64
    # expansion does not
    means = torch.full((3, 8), 1000.0) + torch.arange(3.0)[:, None]
    z = means[:2] + 1e-3
    log_var = torch.tensor(-12.0)
    want = reference(z, means, log_var)
    got = mixture_log_density(z, means, log_var).double()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-3)


def test_float64_inputs_far_from_the_origin_stay_exact(small_blocks):
    # uncentred, the float64 expansion would cancel ~1e13 against distances ~1e-5 here; about
    # the batch's centre every shift is exact (Sterbenz) and the sums are of unit scale
    small_blocks(4 * 7)
    gen = torch.Generator().manual_seed(5)
    means = 1e6 + torch.randn(20, 8, generator=gen, dtype=torch.float64)
    z = means[[3, 11, 12, 19]] + 1e-3 * torch.randn(4, 8, generator=gen, dtype=torch.float64)
    log_var = torch.tensor(-9.0, dtype=torch.float64)
    exclude = torch.tensor([-1, 11, 3, -1])
    out, grads = grads_of(lambda z, m, lv: mixture_log_density(z, m, lv, exclude=exclude),
                          [z, means, log_var])
    ref_out, ref_grads = grads_of(lambda z, m, lv: reference(z, m, lv, exclude),
                                  [z, means, log_var])
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-9)
    for name, got, want in zip(["z", "means", "log_var"], grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-6, msg=name)


def assert_underflowed_rows_carry_nothing(op, log_var: float, dtype: torch.dtype,
                                          device: str = "cpu") -> None:
    """Rows 0-1 of z lie 2 away from every mean at sigma^2 = e^log_var, so far below the
    dtype's range that their log-density is -inf: they carry no responsibilities (p = 0),
    so zero z and means gradients and -d/2 each for log_var, never NaN. Row 2 sits on a
    mean: log N(0 | 0, sigma^2 I) - log N exactly, and zero gradients for z and the means."""
    gen = torch.Generator().manual_seed(3)
    means = torch.randn(20, 5, generator=gen, dtype=dtype)
    z = torch.cat([means[:2] + 2.0, means[2:3]])
    tensors = [t.to(device) for t in (z, means, torch.tensor(log_var, dtype=dtype))]
    out, (grad_z, grad_means, grad_lv) = grads_of(op, tensors)
    at_mean = -0.5 * 5 * (math.log(2 * math.pi) + log_var) - math.log(20)
    assert out[:2].tolist() == [NEG_INF, NEG_INF]
    assert float(out[2]) == pytest.approx(at_mean, rel=1e-6)
    assert bool((grad_z == 0).all()) and bool((grad_means == 0).all())
    row_weights = 0.5 + 0.25 * torch.arange(3.0)  # grads_of's
    assert float(grad_lv) == pytest.approx(-0.5 * 5 * float(row_weights.sum()), rel=1e-6)


def test_rows_whose_density_underflows_get_minus_inf_and_no_gradient():
    """float64 at sigma^2 = e^-800 (e^800 overflows float64 too)."""
    assert_underflowed_rows_carry_nothing(mixture_log_density, -800.0, torch.float64)


def test_empty_batch():
    out = mixture_log_density(torch.zeros(0, 3), torch.randn(4, 3), torch.tensor(0.0))
    assert out.shape == (0,)


def draw_exclude_and_weights(data: st.DataObject, batch: int, size: int, use_weights: bool,
                             dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Hypothesis draws of exclude (int64 [batch], -1 or a component) and, with use_weights,
    log_weights ([size], finite or -inf) such that every row keeps a component: one weight
    is finite and the largest, and no row excludes it (nor the only component)."""
    exclude = torch.tensor(data.draw(st.lists(st.integers(-1, size - 1), min_size=batch,
                                              max_size=batch)))
    log_weights = None
    if use_weights:
        finite = st.floats(-3, 3, allow_nan=False)
        log_weights = torch.tensor(data.draw(st.lists(st.one_of(finite, st.just(NEG_INF)),
                                                      min_size=size, max_size=size)), dtype=dtype)
        log_weights[data.draw(st.integers(0, size - 1))] = 3.5
    if size == 1 or use_weights:
        keep = 0 if size == 1 else int(log_weights.argmax())
        exclude = torch.where(exclude == keep, -1, exclude)
    return exclude, log_weights


@settings(max_examples=40, deadline=None)
@given(data=st.data(), batch=st.integers(1, 4), size=st.integers(1, 9), dim=st.integers(1, 5),
       block=st.integers(1, 10), use_weights=st.booleans())
def test_property_matches_reference(data, batch, size, dim, block, use_weights):
    seed = data.draw(st.integers(0, 2**16))
    z, means, log_var = make_inputs(batch, size, dim, dtype=torch.float64, seed=seed)
    exclude, log_weights = draw_exclude_and_weights(data, batch, size, use_weights, torch.float64)
    old = mixture.ELEMENT_BUDGET
    mixture.ELEMENT_BUDGET = block * batch
    try:
        assert_matches_reference(z, means, log_var, exclude, log_weights, rtol=1e-10, atol=1e-10,
                                 grad_rtol=1e-9, grad_atol=1e-10)
    finally:
        mixture.ELEMENT_BUDGET = old


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an aten op returns."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        sizes = [t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        self.numel = max([self.numel, *sizes])
        return out


def largest_tensor(fn) -> int:
    with LargestTensor() as mode:
        fn()
    return mode.numel


@pytest.mark.parametrize("dim", [1, 16])
def test_forward_and_backward_never_hold_batch_by_components(dim, small_blocks):
    batch, size, budget = 32, 20_000, 32 * 1024
    small_blocks(budget)  # blocks of 1024 components: [B, c] = budget, [B, c, d] = d * budget
    z, means, log_var = make_inputs(batch, size, dim)
    leaves = [t.requires_grad_(True) for t in (z, means, log_var)]
    # the op: no tensor beyond one block's [B, c] budget, apart from [N, d] ones (the inputs'
    # validation, the means' gradient); a [B, c, d] difference tensor would exceed both
    assert budget < batch * size / 4
    assert dim == 1 or budget * dim > max(budget, size * dim)  # [B, c, d] would break the bound
    out = mixture_log_density(*leaves)
    assert largest_tensor(lambda: mixture_log_density(*leaves)) <= max(budget, size * dim)
    backward = largest_tensor(lambda: out.sum().backward())
    assert size * dim <= backward <= max(budget, size * dim)  # >=: it sees the backward pass
    # the detector's control: the plain formula holds [B, N] (here even [B, N, d])
    assert largest_tensor(lambda: ((z[:, None] - means[None]) ** 2).sum(-1).logsumexp(1)) >= batch * size
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        mixture_log_density(*leaves)
    assert max(saved) == size * dim  # means itself; nothing [B, N] or per block is kept


# --- errors -------------------------------------------------------------------------------

def good_args():
    return dict(z=torch.randn(4, 3), means=torch.randn(5, 3), log_var=torch.tensor(0.0))


@pytest.mark.parametrize("change,error,match", [
    (dict(z=[[1.0, 2.0, 3.0]]), TypeError, "z: expected a torch.Tensor"),
    (dict(z=torch.ones(4, 3, dtype=torch.long)), TypeError, "z: expected a floating-point tensor"),
    (dict(z=torch.randn(3)), ValueError, r"z: expected shape \[B, d\], got \[3\]"),
    (dict(z=torch.randn(4, 0)), ValueError, "z: expected shape .* d >= 1"),
    (dict(means=torch.randn(5, 2)), ValueError,
     r"means: expected shape \[N, 3\] \(d matching z\), got \[5, 2\]"),
    (dict(means=torch.randn(0, 3)), ValueError, r"means: expected at least one row"),
    (dict(means=torch.ones(5, 3, dtype=torch.int32)), TypeError, "means: expected a floating"),
    (dict(log_var=torch.zeros(1)), ValueError, r"log_var: expected a 0-dim tensor, got shape \[1\]"),
    (dict(log_var=0.0), TypeError, "log_var: expected a torch.Tensor"),
    (dict(log_var=torch.tensor(float("nan"))), ValueError, "log_var contains NaN/Inf"),
    (dict(z=torch.tensor([[0.0, float("nan"), 0.0]])), ValueError, "z contains NaN/Inf"),
    (dict(means=torch.tensor([[0.0, float("inf"), 0.0]])), ValueError, "means contains NaN/Inf"),
    (dict(exclude=torch.tensor([0.0, 1.0, 2.0, 3.0])), TypeError, "exclude: expected dtype int64"),
    (dict(exclude=torch.tensor([0, 1, 2])), ValueError,
     r"exclude: expected shape \[4\] \(one entry per row of z\), got \[3\]"),
    (dict(exclude=torch.tensor([0, 1, 5, -1])), ValueError, r"exclude: indices must lie in \[0, 5\)"),
    (dict(exclude=torch.tensor([0, -2, 1, -1])), ValueError, "exclude: indices must lie in"),
    (dict(log_weights=torch.zeros(4)), ValueError, r"log_weights: expected shape \[5\]"),
    (dict(log_weights=torch.tensor([0.0, float("nan"), 0, 0, 0])), ValueError,
     "log_weights contains NaN"),
    (dict(log_weights=torch.tensor([0.0, float("inf"), 0, 0, 0])), ValueError, "log_weights contains"),
    (dict(log_weights=torch.full((5,), NEG_INF)), ValueError, "log_weights: row 0 has weight -inf"),
    (dict(log_weights=torch.tensor([NEG_INF, NEG_INF, 1.0, NEG_INF, NEG_INF]),
          exclude=torch.tensor([-1, 0, 2, 2])), ValueError, "log_weights: row 2 has weight -inf"),
    (dict(means=torch.randn(1, 3), exclude=torch.tensor([-1, -1, 0, -1])), ValueError,
     r"exclude: row 2 leaves out the only component \(N=1\)"),
    (dict(means=torch.randn(5, 3, device="meta")), ValueError, "expected all tensors on one device"),
    (dict(backend="cuda"), ValueError, "backend: expected one of auto, torch, triton, cpp, got 'cuda'"),
    (dict(backend="cpp"), ValueError, "backend 'cpp' is not available"),
])
def test_bad_inputs(change, error, match):
    with pytest.raises(error, match=match):
        mixture_log_density(**{**good_args(), **change})


# --- dispatch -----------------------------------------------------------------------------

def test_auto_resolves_to_the_torch_reference():
    z = torch.randn(2, 3)
    assert dispatch.resolve_backend("mixture_log_density", "auto", z) == "torch"
    args = good_args()
    torch.testing.assert_close(mixture_log_density(**args, backend="torch"), mixture_log_density(**args))


def test_registry_priority_devices_and_errors(monkeypatch):
    monkeypatch.setattr(dispatch, "_REGISTRY", {})
    dispatch.register("op", "torch", lambda: "torch")
    dispatch.register("op", "triton", lambda: "triton", devices=["cuda"], priority=2)
    dispatch.register("op", "cpp", lambda: "cpp", devices=["cpu", "cuda"], priority=1)
    cpu, meta = torch.zeros(1), torch.zeros(1, device="meta")
    assert dispatch.resolve_backend("op", "auto", None, cpu) == "cpp"
    assert dispatch.resolve_backend("op", "auto", meta) == "torch"
    assert dispatch.implementation("op", "torch", cpu)() == "torch"
    with pytest.raises(ValueError, match=r"backend 'triton' does not support device type 'cpu' \(Triton "
                       r"kernels run on CUDA; on a CPU only in Triton's interpreter, for tests: TRITON_INTERPRET=1"):
        dispatch.resolve_backend("op", "triton", cpu)
    with pytest.raises(ValueError, match="backend: expected one of auto, torch, triton, cpp"):
        dispatch.resolve_backend("op", "numba", cpu)
    with pytest.raises(ValueError, match="backend: expected one of torch, triton, cpp"):
        dispatch.register("op", "auto", lambda: None)
    with pytest.raises(ValueError, match="unknown op 'nope'"):
        dispatch.resolve_backend("nope", "auto", cpu)
