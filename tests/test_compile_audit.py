"""torch.compile / torch.library integration of the fused ops and of a training step (CPU).

Covers: opcheck of every registered op with each optional argument on its own and with
non-contiguous inputs; torch.compile(fullgraph=True) of each backend's implementation
(forward and backward) against eager; no recompilation when the number of components,
keys or candidates changes from call to call (retrieval mode's union changes every step);
clear ValueErrors raised from compiled code; a compiled training step of the MLP VAE with
the exemplar prior in both modes against eager (values, gradients and cache writes).
Compiles use backend="aot_eager" (the graph capture and functionalization that inductor
sees, without its C++ compile time).
"""
from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo
from torch._dynamo.testing import CompileCounter

import exvae_fast as ex
from exvae_fast.ops import _extension, cache_update_, knn_search, mixture_log_density
from exvae_fast.ops.dispatch import _REGISTRY

triton = pytest.importorskip("triton")
from exvae_fast.kernels import mixture_log_density as fused  # noqa: E402

needs_extension = pytest.mark.skipif(_extension.LOAD_ERROR is not None,
                                     reason=f"exvae_fast._C not loaded: {_extension.LOAD_ERROR}")
MIXTURE_BACKENDS = ["torch", "triton"]
KNN_BACKENDS = ["torch", "triton"]
CACHE_BACKENDS = ["torch", pytest.param("cpp", marks=needs_extension)]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    dynamo.reset()
    yield
    dynamo.reset()


def impl(op: str, backend: str):
    """The backend's implementation, below the public op's (data-reading) validation."""
    return _REGISTRY[op][backend].fn


# --- opcheck ------------------------------------------------------------------------------------

@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "transposed"])
@pytest.mark.parametrize("extras", ["none", "exclude", "log_weights", "both"])
def test_opcheck_mixture_ops(extras, contiguous):
    gen = torch.Generator().manual_seed(0)
    batch, size, dim = 5, 18, 3
    if contiguous:
        z, means = torch.randn(batch, dim, generator=gen), torch.randn(size, dim, generator=gen)
    else:
        z, means = torch.randn(dim, batch, generator=gen).T, torch.randn(dim, size, generator=gen).T
    exclude = torch.tensor([0, -1, 3, 17, 5]) if extras in ("exclude", "both") else None
    lw = torch.randn(size, generator=gen).requires_grad_() if extras in ("log_weights", "both") else None
    args = [z.requires_grad_(), means.requires_grad_(), torch.tensor(0.2, requires_grad=True), exclude, lw]
    torch.library.opcheck(fused.mixture_forward_op, args)
    saved = [t.detach() for t in fused.mixture_forward_op(*args)[1:]]
    detached = [a if a is None else a.detach() for a in args]
    for needs in [(True, True, lw is not None), (True, False, False), (False, True, False)]:
        torch.library.opcheck(fused.mixture_backward_op,
                              (torch.randn(batch, generator=gen), *detached, *saved, *needs))


@pytest.mark.parametrize("candidates", [None, torch.tensor([30, 2, 1, 9, 17, 25, 33, 39])],
                         ids=["all", "candidates"])
@pytest.mark.parametrize("exclude", [None, torch.tensor([1, -1, 30])], ids=["-", "exclude"])
def test_opcheck_knn_op(candidates, exclude):
    gen = torch.Generator().manual_seed(1)
    queries, keys = torch.randn(3, 5, generator=gen), torch.randn(40, 5, generator=gen)
    torch.library.opcheck(torch.ops.exvae_fast.knn_search_triton.default,
                          (queries, keys, 3, candidates, exclude))


@needs_extension
@pytest.mark.parametrize("values_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("check_range", [True, False])
def test_opcheck_cache_update_op(values_dtype, check_range):
    cache, norms, stamps = torch.zeros(10, 4, dtype=torch.float16), torch.zeros(10), torch.full((10,), -1)
    indices = torch.tensor([1, 3, 1, 9])
    values = torch.randn(4, 4).to(values_dtype)
    torch.library.opcheck(torch.ops.exvae_fast.cache_update_.default,
                          (cache, indices, values, norms, stamps, 3, check_range))
    torch.library.opcheck(torch.ops.exvae_fast.cache_update_.default,
                          (cache, indices, values, None, None, 0, check_range))


# --- compiled implementations against eager -------------------------------------------------

@pytest.mark.parametrize("backend", MIXTURE_BACKENDS)
@pytest.mark.parametrize("extras", [False, True], ids=["plain", "exclude+weights"])
def test_compiled_mixture_matches_eager_fullgraph(backend, extras):
    gen = torch.Generator().manual_seed(2)
    z, means = torch.randn(4, 3, generator=gen), torch.randn(20, 3, generator=gen)
    log_var, lw = torch.tensor(0.3), torch.randn(20, generator=gen)
    exclude = torch.tensor([0, -1, 5, 19]) if extras else None
    run = impl("mixture_log_density", backend)

    def loss(z, means, log_var, lw):
        return (run(z, means, log_var, exclude, lw if extras else None) ** 2).sum()

    tensors = [t.requires_grad_() for t in (z, means, log_var, lw)]
    explained = dynamo.explain(loss)(*tensors)
    assert explained.graph_break_count == 0, explained.break_reasons
    dynamo.reset()
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    want = loss(*tensors)
    got = compiled(*tensors)
    torch.testing.assert_close(got, want)
    used = tensors if extras else tensors[:3]
    for g, w in zip(torch.autograd.grad(got, used), torch.autograd.grad(want, used)):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("backend", KNN_BACKENDS)
@pytest.mark.parametrize("extras", [False, True], ids=["plain", "candidates+exclude"])
def test_compiled_knn_matches_eager_fullgraph(backend, extras):
    gen = torch.Generator().manual_seed(3)
    queries, keys = torch.randn(4, 3, generator=gen), torch.randn(20, 3, generator=gen)
    candidates = torch.tensor([0, 3, 5, 7, 9, 11, 19]) if extras else None
    exclude = torch.tensor([0, -1, 5, 19]) if extras else None
    run = impl("knn_search", backend)

    def search(queries, keys):
        return run(queries, keys, 3, candidates, exclude)

    assert dynamo.explain(search)(queries, keys).graph_break_count == 0
    dynamo.reset()
    got = torch.compile(search, backend="aot_eager", fullgraph=True)(queries, keys)
    want = search(queries, keys)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@needs_extension
def test_compiled_cache_update_keeps_every_write():
    """Functionalization must keep the op's writes to cache, norms and stamps (its schema
    marks all three as mutated), also through the non-contiguous copy of `_cache_update_cpp`."""
    run = impl("cache_update_", "cpp")

    def step(cache, indices, values, norms, stamps):
        run(cache, indices, values * 2, norms, stamps, 5)
        return cache.float().sum() + norms.sum()

    def state():
        return (torch.zeros(3, 10, dtype=torch.bfloat16).T, torch.tensor([1, 3, 1, 9]),
                torch.arange(12.0).reshape(4, 3), torch.zeros(10), torch.full((10,), -1))

    got, want = state(), state()
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(*got), step(*want))
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    assert got[4].tolist() == [-1, 5, -1, 5, -1, -1, -1, -1, -1, 5]


# --- dynamic shapes: no recompilation per size ------------------------------------------------

SIZES = [10, 11, 13, 17, 20, 25]


def frames_compiled(fn, argsets) -> int:
    counter = CompileCounter()
    compiled = torch.compile(fn, backend=counter)
    for args in argsets:
        compiled(*args)
    return counter.frame_count


@pytest.mark.parametrize("backend", MIXTURE_BACKENDS)
def test_mixture_does_not_recompile_for_every_component_count(backend):
    """One compile for the first N, one with N dynamic (automatic dynamic shapes), whose
    values and gradients (backward compiled with the symbolic N) match eager."""
    run = impl("mixture_log_density", backend)

    def loss(z, means, log_var, exclude):
        return run(z, means, log_var, exclude, None).square().sum()

    counter = CompileCounter()
    compiled = torch.compile(loss, backend=counter)
    for n in SIZES:
        args = (torch.randn(4, 3, requires_grad=True), torch.randn(n, 3, requires_grad=True),
                torch.tensor(0.0, requires_grad=True), torch.tensor([0, -1, 2, n - 1]))
        got, want = compiled(*args), loss(*args)
        torch.testing.assert_close(got, want)
        for g, w in zip(torch.autograd.grad(got, args[:3]), torch.autograd.grad(want, args[:3])):
            torch.testing.assert_close(g, w)
    assert counter.frame_count <= 2


@pytest.mark.parametrize("backend", KNN_BACKENDS)
def test_knn_does_not_recompile_for_every_key_or_candidate_count(backend):
    run = impl("knn_search", backend)
    keys = torch.randn(30, 3)
    by_candidates = [(torch.randn(4, 3), keys, torch.randperm(30)[:n]) for n in SIZES]
    assert frames_compiled(lambda q, x, c: run(q, x, 3, c, None), by_candidates) <= 2
    dynamo.reset()
    by_keys = [(torch.randn(4, 3), torch.randn(n, 3)) for n in SIZES]
    assert frames_compiled(lambda q, x: run(q, x, 3, None, None), by_keys) <= 2


@pytest.mark.parametrize("backend", MIXTURE_BACKENDS)
def test_public_ops_do_not_recompile_for_every_size(backend):
    """The public ops graph-break at their (data-reading) validation, but no frame of
    theirs specialises N: after the first two sizes (static, then dynamic), new sizes
    compile nothing."""
    counter = CompileCounter()
    mixture = torch.compile(lambda z, m, e: mixture_log_density(z, m, torch.tensor(0.0), e, backend=backend),
                            backend=counter)
    search = torch.compile(lambda q, x, c: knn_search(q, x, 3, candidates=c, exclude=torch.tensor([0, -1, 2, 4]),
                                                      backend=backend), backend=counter)
    frames = []
    for n in SIZES:
        mixture(torch.randn(4, 3), torch.randn(n, 3), torch.tensor([0, -1, 2, n - 1]))
        search(torch.randn(4, 3), torch.randn(30, 3), torch.randperm(30)[:n])
        frames.append(counter.frame_count)
    assert frames[2:] == [frames[1]] * (len(SIZES) - 2), frames


# --- errors from compiled code --------------------------------------------------------------

@pytest.mark.parametrize("backend", MIXTURE_BACKENDS)
def test_compiled_public_ops_raise_clear_value_errors(backend):
    z = torch.randn(4, 3)
    z[1, 1] = float("nan")
    mixture = torch.compile(lambda z, m, e: mixture_log_density(z, m, torch.tensor(0.0), e, backend=backend),
                            backend="aot_eager")
    with pytest.raises(ex.ops.NonFiniteError, match="z contains NaN/Inf"):
        mixture(z, torch.randn(5, 3), None)
    with pytest.raises(ValueError, match="exclude: indices must lie in"):
        mixture(torch.randn(4, 3), torch.randn(5, 3), torch.tensor([0, 1, 9, -1]))
    search = torch.compile(lambda q, k, c: knn_search(q, k, 2, candidates=c, backend=backend),
                           backend="aot_eager")
    with pytest.raises(ValueError, match="candidates: expected unique indices"):
        search(torch.randn(4, 3), torch.randn(5, 3), torch.tensor([0, 0, 1]))


@pytest.mark.parametrize("backend", CACHE_BACKENDS)
def test_compiled_cache_update_raises_clear_value_errors(backend):
    update = torch.compile(lambda c, i, v: cache_update_(c, i, v, backend=backend), backend="aot_eager")
    cache = torch.zeros(5, 3)
    with pytest.raises(ValueError, match=r"indices: indices must lie in \[0, 5\)"):
        update(cache, torch.tensor([0, 7]), torch.randn(2, 3))
    with pytest.raises(ex.ops.NonFiniteError, match="values contains NaN/Inf"):
        update(cache, torch.tensor([0, 1]), torch.full((2, 3), float("inf")))
    assert not cache.any()


# --- a compiled training step -------------------------------------------------------------------

def make_model(mode: str, backend: str, train: torch.Tensor) -> ex.models.VAE:
    torch.manual_seed(0)
    prior = ex.priors.ExemplarPrior(train, latent_dim=4, mode=mode, k=3, num_exemplars=20, backend=backend)
    model = ex.models.VAE(prior, input_shape=(1, 4, 4), latent_dim=4)
    prior.refresh(model.encode)
    return model


def train_step(model: ex.models.VAE, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    terms = model(x, indices=indices)
    loss = -(terms.recon - terms.kl).mean()
    loss.backward()
    return loss


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["retrieval", "exact"])
def test_compiled_training_step_matches_eager(mode):
    """Two steps (the second with another retrieval union), compiled vs eager from the same
    seeds, backend "auto" (CPU: torch mixture and search, C++ cache update when built; the
    Triton ops under compile are covered above): loss, every parameter's gradient and the
    cache (means, norms, stamps) agree."""
    backend = "auto"
    train = torch.rand(40, 16, generator=torch.Generator().manual_seed(0))
    eager, compiled_model = make_model(mode, backend, train), make_model(mode, backend, train)
    compiled = torch.compile(train_step, backend="aot_eager")
    x, indices = torch.bernoulli(train[:8], generator=torch.Generator().manual_seed(1)), torch.arange(8)
    for step in range(2):
        torch.manual_seed(100 + step)
        got = compiled(compiled_model, x, indices)
        torch.manual_seed(100 + step)
        want = train_step(eager, x, indices)
        torch.testing.assert_close(got, want)
        for (name, p), q in zip(compiled_model.named_parameters(), eager.parameters()):
            torch.testing.assert_close(p.grad, q.grad, msg=name)
            p.grad, q.grad = None, None
        for name in ("means", "sq_norms", "stamps"):
            assert torch.equal(getattr(compiled_model.prior.cache, name), getattr(eager.prior.cache, name)), name



def test_training_steps_stop_compiling_as_the_step_counter_advances(caplog):
    """The trainer advances the cache's step counter (a host int stamped on every written
    row) after each step: the cache write runs eagerly, so steps 3..6 compile no new frame
    (before, each step recompiled the write until dynamo's recompile limit, then ran eager).
    The host reads run eagerly too: dynamo logs no graph-break warning (`exvae train
    --compile` printed one, a traceback-like block, from the cache's completeness check)."""
    dynamo.reset()  # warnings are logged once per process and site
    train = torch.rand(40, 16, generator=torch.Generator().manual_seed(0))
    model = make_model("retrieval", "auto", train)
    counter = CompileCounter()
    compiled = torch.compile(train_step, backend=counter)
    frames = []
    for step in range(6):
        indices = torch.arange(8) + 4 * step
        compiled(model, torch.bernoulli(train[indices]), indices)
        model.prior.cache.advance()
        frames.append(counter.frame_count)
    assert frames[2:] == [frames[2]] * 4, frames
    assert model.prior.cache.stamps[indices].tolist() == [5] * 8
    assert not [r.getMessage() for r in caplog.records if "Graph break" in r.getMessage()]
