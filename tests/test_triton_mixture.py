"""Fused Triton mixture log-density against the torch reference and an independent float64
[B, N] formula (forward and every gradient). Without CUDA the kernels run in the Triton
interpreter on CPU (conftest sets TRITON_INTERPRET=1), so shapes stay small; `gpu` tests
run natively on CUDA."""
from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exvae_fast.kernels import mixture_log_density as fused
from test_ops_mixture import (LargestTensor, assert_underflowed_rows_carry_nothing,
                               draw_exclude_and_weights)
from exvae_fast.ops import dispatch, mixture_log_density

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
NEG_INF = float("-inf")
GRAD_NAMES = ("z", "means", "log_var", "log_weights")

@pytest.fixture(autouse=True)
def fixed_config(monkeypatch):
    """One block configuration per d (no autotuning: on CUDA every config is a separate
    compile); test_gpu_autotuned turns autotuning back on."""
    monkeypatch.setattr(fused, "AUTOTUNE", False)


def reference64(z, means, log_var, exclude=None, log_weights=None):
    """float64 log sum_j w_bj N(z_b | mu_j, sigma^2 I) from the explicit [B, N] matrix, by
    direct differences; its gradients come from autograd (independent of any backward)."""
    z, means, log_var = z.double(), means.double(), log_var.double()
    batch, dim = z.shape
    sq = ((z[:, None, :] - means[None, :, :]) ** 2).sum(-1)
    log_normal = -0.5 * dim * (math.log(2 * math.pi) + log_var) - sq / (2 * torch.exp(log_var))
    if log_weights is None:
        log_weights = torch.zeros(means.shape[0], dtype=torch.float64, device=z.device)
    logw = log_weights.double().expand(batch, -1)
    if exclude is not None:
        cols = torch.arange(means.shape[0], device=z.device)
        logw = logw.masked_fill(cols[None, :] == exclude[:, None], NEG_INF)
    logw = logw - torch.logsumexp(logw, dim=1, keepdim=True)
    return torch.logsumexp(logw + log_normal, dim=1)


def make_inputs(batch, size, dim, *, means_dtype=torch.float32, seed=0, spread=0.7):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, dim, generator=gen)
    means = (z[torch.randint(batch, (size,), generator=gen)]
             + spread * torch.randn(size, dim, generator=gen))
    log_var = torch.tensor(-0.3 + 0.1 * math.log(dim))
    return z.to(DEVICE), means.to(DEVICE, means_dtype), log_var.to(DEVICE)


def grads_of(fn, tensors):
    """fn(*tensors) and the gradients of (out * fixed weights).sum() wrt every tensor."""
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*leaves)
    weights = 0.5 + 0.25 * torch.arange(out.shape[0], dtype=out.dtype, device=out.device)
    (out * weights).sum().backward()
    return out.detach(), [leaf.grad for leaf in leaves]


def run_all(z, means, log_var, exclude=None, log_weights=None):
    """(out, grads) of the fused kernels, the torch reference and the float64 formula."""
    tensors = [z, means, log_var] + ([log_weights] if log_weights is not None else [])

    def call(impl):
        return lambda z, m, lv, lw=None: impl(z, m, lv, exclude, lw)

    torch_ref = lambda *a: mixture_log_density(*a, backend="torch")  # noqa: E731
    return (grads_of(call(fused.mixture_log_density), tensors),
            grads_of(call(torch_ref), tensors),
            grads_of(call(reference64), [t.double() for t in tensors]))


GRAD_SCALE_TOL = 5e-5
"""float32 tolerance of a gradient, on top of rtol 1e-4 / atol 1e-5 elementwise: this share
of the tensor's largest entry. Tiles the kernels do not refine carry logit errors up to
REFINE_TOLERANCE (4e-5 nats), i.e. responsibilities p off by up to that relative amount."""


ONE_BFLOAT16_ULP = 2.0**-7
"""Largest relative gap between neighbouring bfloat16 values (8 significant bits; float16
keeps 11): two float32 results a hair apart may round to neighbours, and a value rounded
once is within half of it of the exact one."""


def assert_matches(result, ref, *, out_tol=1e-5, grad_tol=1e-4, grad_atol=1e-5, dtypes=None,
                   rounded=()):
    """Forward within out_tol; each gradient within rtol grad_tol, or ONE_BFLOAT16_ULP for
    those named in `rounded` (returned in a bfloat16/float16 input's dtype), and atol
    grad_atol + GRAD_SCALE_TOL x its largest entry."""
    (out, grads), (ref_out, ref_grads) = result, ref
    torch.testing.assert_close(out.double(), ref_out.double(), rtol=out_tol, atol=out_tol)
    for i, (got, want) in enumerate(zip(grads, ref_grads)):
        if dtypes is not None:
            assert got.dtype == dtypes[i], GRAD_NAMES[i]
        rtol = ONE_BFLOAT16_ULP if GRAD_NAMES[i] in rounded else grad_tol
        atol = grad_atol + GRAD_SCALE_TOL * float(want.abs().max())
        torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=atol,
                                   msg=lambda m, i=i: f"grad {GRAD_NAMES[i]}: {m}")


def mode_args(mode, batch, size):
    exclude = log_weights = None
    if "exclude" in mode:
        exclude = (torch.arange(batch) % (size + 1) - 1).to(DEVICE)  # -1 and several indices
    if "weights" in mode:
        log_weights = torch.linspace(-2.0, 1.0, size)
        if size > 2:
            log_weights[1] = NEG_INF  # a dropped component
        log_weights = log_weights.to(DEVICE)
    return exclude, log_weights


SHAPES = [  # (B, N, d): N=1, N not a multiple of the 16-block, several chunks, B > block
    (1, 1, 1), (3, 1, 5), (5, 7, 1), (4, 37, 3), (17, 40, 16)]
WIDE = [(6, 40, 128), (3, 16, 256)]  # d=128, d=256: one mode each (the interpreter is slow)
MODES = ["uniform", "exclude", "weights", "weights+exclude"]


@pytest.mark.parametrize("batch,size,dim,mode", [
    (*shape, mode) for shape in SHAPES for mode in MODES
    if shape[1] > 1 or "exclude" not in mode] + [(*shape, "weights+exclude") for shape in WIDE])
def test_matches_references_forward_and_backward(batch, size, dim, mode):
    z, means, log_var = make_inputs(batch, size, dim)
    exclude, log_weights = mode_args(mode, batch, size)
    ours, torch_ref, exact = run_all(z, means, log_var, exclude, log_weights)
    assert ours[0].dtype == torch.float32 and ours[0].shape == (batch,)
    assert_matches(ours, torch_ref, dtypes=[torch.float32] * 4)
    assert_matches(ours, exact)


@pytest.mark.parametrize("means_dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_means(means_dtype):
    z, means, log_var = make_inputs(5, 23, 6, means_dtype=means_dtype)
    exclude = torch.tensor([0, -1, 22, 3, 7], device=DEVICE)
    ours, torch_ref, exact = run_all(z, means, log_var, exclude)
    # both compute from the same rounded means: the z and log_var gradients keep float32
    # accuracy; the means' gradient is rounded to the means' dtype
    assert_matches(ours, torch_ref, rounded=("means",),
                   dtypes=[torch.float32, means_dtype, torch.float32])
    assert_matches(ours, exact, rounded=("means",))


@pytest.mark.parametrize("z_dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_z(z_dtype):
    """z in bfloat16/float16: the output and z's gradient come back in z's dtype (computed in
    float32 from the rounded z, then rounded once), the other gradients in float32."""
    z, means, log_var = make_inputs(5, 23, 6)
    z = z.to(z_dtype)
    exclude = torch.tensor([0, -1, 22, 3, 7], device=DEVICE)
    ours, torch_ref, exact = run_all(z, means, log_var, exclude)
    assert ours[0].dtype == z_dtype
    assert [g.dtype for g in ours[1]] == [z_dtype, torch.float32, torch.float32]
    for ref in (torch_ref, exact):
        assert_matches(ours, ref, out_tol=ONE_BFLOAT16_ULP, rounded=("z",))


def test_duplicates_and_all_but_one_left_out():
    z, means, log_var = make_inputs(4, 3, 5)
    twice = torch.cat([means, means, means[:1]])  # duplicated rows (N=7)
    ours, _, exact = run_all(z, twice, log_var, torch.tensor([0, 3, -1, 6], device=DEVICE))
    assert_matches(ours, exact)
    # N=2, every row leaves out component 0: a single Gaussian remains
    exclude = torch.zeros(4, dtype=torch.long, device=DEVICE)
    ours, _, exact = run_all(z, means[:2], log_var, exclude)
    assert_matches(ours, exact)
    single = fused.mixture_log_density(z, means[1:2], log_var)
    torch.testing.assert_close(ours[0], single, rtol=1e-6, atol=1e-5)
    # all components but two dropped by -inf weights, and one of those two excluded
    lw = torch.tensor([NEG_INF, 0.5, 2.0], device=DEVICE)
    ours, _, exact = run_all(z, means, log_var, torch.tensor([1, 2, -1, 1], device=DEVICE), lw)
    assert_matches(ours, exact)


def test_log_weights_with_neg_inf_entries():
    z, means, log_var = make_inputs(6, 45, 4, seed=3)
    lw = torch.randn(45, generator=torch.Generator().manual_seed(1)) * 2
    lw[::3] = NEG_INF
    lw = lw.to(DEVICE)
    exclude = torch.tensor([1, 0, -1, 44, 17, 2], device=DEVICE)
    ours, torch_ref, exact = run_all(z, means, log_var, exclude, lw)
    assert_matches(ours, torch_ref)
    assert_matches(ours, exact)
    assert torch.all(ours[1][3][::3] == 0)  # dropped components get no gradient


@pytest.mark.parametrize("offset", [1e6, -1e6])
def test_log_weights_far_from_zero_lose_nothing_beyond_their_own_rounding(offset):
    """Weights offset by a large constant (unnormalised log counts, say): the density
    normalises them, so the fused result and gradients equal the float64 reference of the
    same float32 weights (unshifted, the kernels lost ~offset * 2^-24 nats: 0.1 at 1e6)."""
    z, means, log_var = make_inputs(5, 37, 4, seed=4)
    lw = (torch.randn(37, generator=torch.Generator().manual_seed(2)) + offset).to(DEVICE)
    lw[5] = NEG_INF
    exclude = torch.tensor([0, -1, 5, 36, 3], device=DEVICE)
    ours, _, exact = run_all(z, means, log_var, exclude, lw)
    assert_matches(ours, exact)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_log_weights_far_from_their_largest(dtype):
    """bfloat16/float16 log_weights with a far-away component of weight 500: the shift by the
    largest runs in float32 (as the kernels), so w_j - 500 keeps its bits (in the weights'
    dtype it rounds to 2 nats at 500 in bfloat16) and the result matches the float64 formula
    of the same rounded weights."""
    z, means, log_var = make_inputs(5, 23, 6, seed=5)
    means[0] += 100.0  # negligible in every row's density, but it sets the normaliser
    lw = torch.rand(23, generator=torch.Generator().manual_seed(3)) * 6 - 3
    lw[0] = 500.0
    lw = lw.to(DEVICE, dtype)
    ours, _, exact = run_all(z, means, log_var, torch.tensor([1, -1, 22, 3, 0], device=DEVICE), lw)
    assert_matches(ours, exact, rounded=("log_weights",))
    assert ours[1][3].dtype == dtype


def loo_inputs(batch, size, dim, offset, log_var, seed=0):
    """z_b 1e-3 away from mu_b (the nearest neighbour), far from the origin."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(size, dim, generator=gen) + offset
    z = means[:batch] + 1e-3 * torch.randn(batch, dim, generator=gen)
    return z.to(DEVICE), means.to(DEVICE), torch.tensor(log_var, device=DEVICE)


@pytest.mark.parametrize("offset,log_var", [(0.0, 0.0), (0.0, -6.0), (100.0, -6.0)])
def test_near_neighbour_precision_against_float64(offset, log_var):
    """Documented bounds (kernels/mixture_log_density.py): |out - out64| <= 3e-5 + 5e-7 |out|
    and every gradient within 6e-6 of its largest entry when z is 1e-3 from a mean (included:
    the dot expansion would cancel, the tile is refined) or leaves it out (LOO), d=40,
    sigma^2 down to e^-6; measured in the interpreter: <= 1e-5 + 2.2e-7 |out|, gradients
    <= 1.3e-6. Without the refinement the gradients are off by 3e-5 to 5e-5."""
    z, means, lv = loo_inputs(16, 40, 40, offset, log_var)
    for exclude in (None, torch.arange(16, device=DEVICE)):
        (out, grads), _, (want, want_grads) = run_all(z, means, lv, exclude)
        err = (out.double() - want).abs()
        assert bool((err <= 3e-5 + 5e-7 * want.abs()).all()), err.max()
        for name, got, ref in zip(GRAD_NAMES, grads, want_grads):
            relative = float((got.double() - ref).abs().max() / ref.abs().max())
            assert relative <= 6e-6, (name, relative)


@pytest.mark.parametrize("log_var", [-80.0, -100.0])
def test_a_variance_below_float32_range_at_a_mean_matches_the_reference(log_var):
    """1 / sigma^2 = exp(-log_var) overflows float32 below log_var ~ -88.7: capped, a zero
    distance times it stays 0 (it was 0 x inf = NaN, a -inf output and NaN gradients)."""
    gen = torch.Generator().manual_seed(3)
    means = torch.randn(20, 5, generator=gen)
    inputs = [means[:3].to(DEVICE), means.to(DEVICE), torch.tensor(log_var, device=DEVICE)]
    (out, grads), (ref_out, ref_grads), _ = run_all(*inputs)
    torch.testing.assert_close(out, ref_out)
    for got, want in zip(grads, ref_grads):
        assert bool(torch.isfinite(got).all())
        torch.testing.assert_close(got, want)


def test_rows_whose_density_underflows_get_minus_inf_and_no_gradient():
    """float32 at sigma^2 = e^-100 (see `assert_underflowed_rows_carry_nothing`)."""
    assert_underflowed_rows_carry_nothing(fused.mixture_log_density, -100.0, torch.float32,
                                          DEVICE)


def test_refinement_is_what_makes_near_neighbours_exact(monkeypatch):
    z, means, lv = loo_inputs(16, 40, 40, 3.0, -6.0)
    want = reference64(z, means, lv)
    errors = {}
    for tol in (math.inf, fused.REFINE_TOLERANCE, 0.0):
        monkeypatch.setattr(fused, "REFINE_TOLERANCE", tol)
        errors[tol] = (fused.mixture_log_density(z, means, lv).double() - want).abs().max()
    assert errors[fused.REFINE_TOLERANCE] <= 3e-5 and errors[0.0] <= 3e-5
    assert errors[math.inf] > 10 * errors[0.0]  # the plain expansion: ~1e-3 here


@settings(max_examples=8, deadline=None)
@given(data=st.data(), batch=st.integers(1, 20), size=st.integers(1, 40),
       dim=st.integers(1, 20), use_weights=st.booleans())
def test_property_random_shapes(data, batch, size, dim, use_weights):
    seed = data.draw(st.integers(0, 2**16))
    z, means, log_var = make_inputs(batch, size, dim, seed=seed)
    exclude, log_weights = draw_exclude_and_weights(data, batch, size, use_weights)
    log_weights = None if log_weights is None else log_weights.to(DEVICE)
    ours, _, exact = run_all(z, means, log_var, exclude.to(DEVICE), log_weights)
    assert_matches(ours, exact)


# --- integration: dtypes, layouts, fallbacks, registry ---------------------------------------

def test_non_contiguous_inputs_and_partial_grads():
    z, means, log_var = make_inputs(6, 30, 8)
    zt = z.t().contiguous().t()  # same values, column-major
    mt = torch.cat([means, means], 1)[:, :8]  # strided view
    assert not zt.is_contiguous() and not mt.is_contiguous()
    torch.testing.assert_close(fused.mixture_log_density(zt, mt, log_var),
                               fused.mixture_log_density(z, means, log_var))
    # only z needs a gradient: the means pass is skipped, the z gradient is unchanged
    (_, (gz_all, _, _)) = grads_of(fused.mixture_log_density, [z, means, log_var])
    leaf = z.clone().requires_grad_(True)
    fused.mixture_log_density(leaf, means, log_var).mul(
        0.5 + 0.25 * torch.arange(6, device=DEVICE)).sum().backward()
    torch.testing.assert_close(leaf.grad, gz_all)
    with torch.no_grad():
        assert fused.mixture_log_density(z, means, log_var).shape == (6,)


def test_float64_goes_to_the_reference_and_passes_gradcheck():
    z, means, log_var = (t.double() for t in make_inputs(3, 5, 2, seed=1))
    exclude = torch.tensor([4, -1, 0], device=DEVICE)
    lw = torch.tensor([0.3, -1.0, NEG_INF, 2.0, 0.1], dtype=torch.float64, device=DEVICE)
    out = fused.mixture_log_density_triton(z, means, log_var, exclude, lw)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, reference64(z, means, log_var, exclude, lw), rtol=1e-12,
                               atol=1e-12)
    inputs = [t.clone().requires_grad_(True) for t in (z, means, log_var, lw)]
    assert torch.autograd.gradcheck(
        lambda z, m, lv, w: fused.mixture_log_density_triton(z, m, lv, exclude, w), inputs)


def test_wide_latents_go_to_the_reference():
    z, means, log_var = make_inputs(2, 3, fused.MAX_DIM + 1)
    torch.testing.assert_close(fused.mixture_log_density(z, means, log_var),
                               mixture_log_density(z, means, log_var, backend="torch"))


def test_empty_batch():
    z, means, log_var = make_inputs(1, 4, 3)
    leaf = z[:0].clone().requires_grad_(True)
    out = fused.mixture_log_density(leaf, means, log_var)
    assert out.shape == (0,)
    out.sum().backward()
    assert leaf.grad.shape == (0, 3)


def test_never_allocates_batch_by_components():
    """The launchers (called directly: a dispatch mode does not see inside the custom op)
    allocate nothing near B x N: partials are [chunks, B(, d)], gradients [N, d]."""
    batch, size, dim = 32, 200, 1
    z, means, log_var = make_inputs(batch, size, dim)
    grad_out = torch.ones(batch, device=DEVICE)
    with LargestTensor() as mode:
        saved = fused._forward_launch(z, means, log_var, None, None)[1:]
        fused._backward_launch(grad_out, z, means, log_var, None, None, *saved, True, True, False)
    assert size * dim <= mode.numel < batch * size / 4


def test_bad_inputs_raise_before_any_launch(monkeypatch):
    def no_launch(*args, **kwargs):
        raise AssertionError("launched")
    monkeypatch.setattr(fused, "_forward_launch", no_launch)
    z, means, log_var = make_inputs(4, 5, 3)
    bad = [
        (dict(z=z[:, :2]), ValueError, r"means: expected shape \[N, 2\]"),
        (dict(means=means.long()), TypeError, "means: expected a floating"),
        (dict(log_var=log_var[None]), ValueError, "log_var: expected a 0-dim"),
        (dict(exclude=torch.tensor([0, 1, 5, -1], device=DEVICE)), ValueError, "exclude: indices"),
        (dict(log_weights=torch.full((5,), NEG_INF, device=DEVICE)), ValueError,
         "log_weights: row 0"),
        (dict(z=torch.full((4, 3), float("nan"), device=DEVICE)), ValueError, "z contains NaN"),
    ]
    for change, error, match in bad:
        args = {**dict(z=z, means=means, log_var=log_var), **change}
        with pytest.raises(error, match=match):
            fused.mixture_log_density(**args)
        with pytest.raises(error, match=match):  # the public op, once the backend is registered
            with_backend(monkeypatch)
            mixture_log_density(**args, backend="triton")


def with_backend(monkeypatch):
    """Registers the triton backend in a copy of the registry (restored after the test)."""
    monkeypatch.setattr(dispatch, "_REGISTRY", {op: dict(impls) for op, impls
                                                in dispatch._REGISTRY.items()})
    fused.register_backend()


def test_registered_backend(monkeypatch):
    with_backend(monkeypatch)
    z, means, log_var = make_inputs(3, 9, 4)
    expected = "triton" if HAS_CUDA and not fused.INTERPRET else "torch"
    assert dispatch.resolve_backend("mixture_log_density", "auto", z) == expected
    got = mixture_log_density(z, means, log_var, backend="triton")
    torch.testing.assert_close(got, mixture_log_density(z, means, log_var, backend="torch"),
                               rtol=1e-5, atol=1e-5)


# --- torch.library: opcheck and torch.compile ------------------------------------------------

@pytest.mark.parametrize("with_extras", [False, True])
def test_opcheck(with_extras):
    z, means, log_var = make_inputs(5, 18, 3)
    exclude, lw = mode_args("weights+exclude" if with_extras else "uniform", 5, 18)
    args = [z.requires_grad_(True), means.requires_grad_(True), log_var.requires_grad_(True),
            exclude, lw if lw is None else lw.requires_grad_(True)]
    torch.library.opcheck(fused.mixture_forward_op, args)
    saved = [t.detach() for t in fused.mixture_forward_op(*args)[1:]]
    grad_out = torch.randn(5, device=DEVICE)
    detached = [a if a is None else a.detach() for a in args]
    torch.library.opcheck(fused.mixture_backward_op,
                          (grad_out, *detached, *saved, True, True, with_extras))


def test_torch_compile_traces_forward_and_backward():
    z, means, log_var = make_inputs(6, 21, 5)
    exclude, lw = mode_args("weights+exclude", 6, 21)

    def loss(z, means, log_var, lw):
        return (fused.mixture_log_density_triton(z, means, log_var, exclude, lw) ** 2).sum()

    backend = "inductor" if HAS_CUDA and not fused.INTERPRET else "aot_eager"
    compiled = torch.compile(loss, backend=backend, fullgraph=True)
    tensors = [z, means, log_var, lw]
    want, want_grads = grads_of(lambda *a: loss(*a)[None], tensors)
    got, got_grads = grads_of(lambda *a: compiled(*a)[None], tensors)
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)


# --- native CUDA ------------------------------------------------------------------------------

# every distinct set of flags, dtypes and d is a separate compile (seconds each): few variants
@pytest.mark.gpu
@pytest.mark.parametrize("means_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["uniform", "weights+exclude"])
def test_gpu_large_shape_against_reference(means_dtype, mode):
    batch, size, dim = 100, 25_000, 40
    z, means, log_var = make_inputs(batch, size, dim, means_dtype=means_dtype)
    exclude, lw = mode_args(mode, batch, size)
    ours, torch_ref, _ = run_all(z, means, log_var, exclude, lw)
    tol = 1e-4 if means_dtype == torch.float32 else 2e-2
    assert_matches(ours, torch_ref, grad_tol=tol, grad_atol=tol,
                   dtypes=[torch.float32, means_dtype, torch.float32, torch.float32])


@pytest.mark.gpu
@pytest.mark.parametrize("dim", [40, 256])
def test_gpu_near_neighbour_precision(dim):
    z, means, lv = loo_inputs(100, 5000, dim, 3.0, -6.0)
    for exclude in (None, torch.arange(100, device=DEVICE)):
        out = fused.mixture_log_density(z, means, lv, exclude).double()
        want = reference64(z, means, lv, exclude)
        assert bool(((out - want).abs() <= 3e-5 + 5e-7 * want.abs()).all())


@pytest.mark.gpu
@pytest.mark.parametrize("dim", [40, 128])
def test_gpu_tf32x3_is_as_accurate_as_ieee(monkeypatch, dim):
    """DOT_PRECISION "tf32x3" (three TF32 tensor-core passes) keeps the same tolerances as
    "ieee": the refinement threshold scales with DOT_ERROR, so near tiles are recomputed by
    direct differences either way (the issue's "tf32x3 where measured accurate")."""
    monkeypatch.setattr(fused, "DOT_PRECISION", "tf32x3")
    z, means, log_var = make_inputs(100, 20_000, dim)
    exclude, lw = mode_args("weights+exclude", 100, 20_000)
    ours, torch_ref, _ = run_all(z, means, log_var, exclude, lw)
    assert_matches(ours, torch_ref)
    z, means, lv = loo_inputs(100, 5000, dim, 3.0, -6.0)
    out = fused.mixture_log_density(z, means, lv, torch.arange(100, device=DEVICE)).double()
    want = reference64(z, means, lv, torch.arange(100, device=DEVICE))
    assert bool(((out - want).abs() <= 3e-5 + 5e-7 * want.abs()).all())


@pytest.mark.gpu
def test_gpu_autotuned(monkeypatch):
    monkeypatch.setattr(fused, "AUTOTUNE", True)
    z, means, log_var = make_inputs(100, 10_000, 40)
    exclude, lw = mode_args("weights+exclude", 100, 10_000)
    ours, torch_ref, _ = run_all(z, means, log_var, exclude, lw)
    assert_matches(ours, torch_ref)


@pytest.mark.gpu
def test_gpu_auto_picks_triton(monkeypatch):
    with_backend(monkeypatch)
    z = torch.randn(2, 3, device="cuda")
    if not fused.INTERPRET:
        assert dispatch.resolve_backend("mixture_log_density", "auto", z) == "triton"


# --- compiled (not interpreted) kernels, without a GPU ---------------------------------------

@pytest.mark.skipif(HAS_CUDA, reason="CUDA runs compile the kernels natively")
def test_kernels_compile_for_sm90_without_a_gpu(tmp_path):
    """The interpreter accepts code that the compiler rejects (non-constexpr globals, type
    changes in loops, ...): compile every kernel down to an sm_90 cubin (ptxas ships with
    Triton), with small tiles so it stays quick."""
    done = compile_for_sm90(tmp_path)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.skipif(HAS_CUDA, reason="CUDA runs compile the kernels natively")
def test_autotuned_tiles_for_d40_compile_without_spilling(tmp_path):
    """Every tile autotuning may pick for d = 40 (D_PAD 64), forward and means gradient,
    compiles for sm_90 within SPILL_BUDGET stack bytes per thread (cuobjdump's STACK)."""
    done = compile_for_sm90(tmp_path, "--configs", "--check", "--d-pad", "64")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    lines = [line for line in done.stdout.splitlines() if "B stack" in line]
    assert len(lines) == len(fused.FORWARD_TILES[64]) + len(fused.BACKWARD_TILES[64])
    assert all(int(line.split(" registers")[0].rsplit(" ", 1)[1]) > 0 for line in lines)


def compile_for_sm90(cache_dir, *args: str):
    """Runs exvae_fast.kernels._mixture_aot (compiles without a GPU) outside the interpreter."""
    import subprocess
    import sys

    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(cache_dir)
    return subprocess.run([sys.executable, "-m", "exvae_fast.kernels._mixture_aot", *args],
                          env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("batch,size", [(100, 10**6), (10**7, 10**7), (2**30, 10**5), (1, 1)])
def test_chunks_times_batch_fits_int32(monkeypatch, batch, size):
    """The forward kernels index the [C, B] partials with int32 c * B + b: the CUDA
    chunking (about two chunks per SM) keeps C * B < 2^31 for every batch."""
    monkeypatch.setattr(fused, "INTERPRET", False)
    monkeypatch.setattr(fused, "_sm_count", lambda device: 132)
    chunk, chunks = fused._chunking(size, batch, torch.device("cuda", 0))
    assert chunk % fused.CHUNK_ALIGN == 0 and chunks * chunk >= size > (chunks - 1) * chunk
    assert chunks * batch < 2**31
    if batch == 100:
        assert 132 < chunks <= 2 * 132  # the usual shapes keep about two chunks per SM


@pytest.mark.gpu
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available()
                    or torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_inputs_on_a_device_that_is_not_current():
    """Triton launches on the current device: inputs on cuda:1 while cuda:0 is current."""
    from exvae_fast.ops import mixture_log_density
    gen = torch.Generator().manual_seed(0)
    z, means = torch.randn(7, 5, generator=gen), torch.randn(300, 5, generator=gen)
    log_var = torch.tensor(-0.2)
    exclude = torch.arange(7) - 1
    want = mixture_log_density(z, means, log_var, exclude, backend="torch")
    leaves = [t.to("cuda:1").requires_grad_(True) for t in (z, means, log_var)]
    with torch.cuda.device(0):
        got = fused.mixture_log_density(*leaves, exclude.to("cuda:1"))
        got.sum().backward()
    torch.testing.assert_close(got.detach().cpu(), want)
    assert all(leaf.grad is not None and leaf.grad.device == leaf.device for leaf in leaves)
