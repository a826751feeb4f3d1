"""The ops on inputs that used to reach a backend unchecked: cache update targets that
require grad or share memory, a variance below float64 range, a backend the op is never
written in."""
from __future__ import annotations

import pytest
import torch

from exvae_fast.ops import cache_update_, knn_search, mixture_log_density
from exvae_fast.ops.dispatch import registered_backends

UPDATE_BACKENDS = ["auto", *registered_backends("cache_update_")]


def _state(size: int = 4, dim: int = 2):
    return torch.zeros(size, dim), torch.zeros(size), torch.full((size,), -1, dtype=torch.int64)


@pytest.mark.parametrize("backend", UPDATE_BACKENDS)
@pytest.mark.parametrize("target", ["cache", "norms"])
def test_update_target_requiring_grad_is_refused_before_the_write(backend, target):
    # the write is not recorded by autograd: outside no_grad it would silently detach the
    # overwritten rows from the graph (torch's own in-place ops refuse such a leaf)
    cache, norms, stamps = _state()
    (cache if target == "cache" else norms).requires_grad_()
    before = cache.detach().clone(), norms.detach().clone()
    with pytest.raises(ValueError, match=f"^{target}: requires grad"):
        cache_update_(cache, torch.tensor([1]), torch.ones(1, 2), norms=norms, stamps=stamps,
                      step=3, backend=backend)
    assert torch.equal(cache.detach(), before[0]) and torch.equal(norms.detach(), before[1])
    assert (stamps == -1).all()


@pytest.mark.parametrize("backend", UPDATE_BACKENDS)
def test_update_target_requiring_grad_is_written_under_no_grad(backend):
    # as torch's in-place ops (an optimizer's step): no graph is built, so the write is fine
    cache = torch.zeros(3, 2, requires_grad=True)
    with torch.no_grad():
        cache_update_(cache, torch.tensor([2]), torch.ones(1, 2), backend=backend)
    assert torch.equal(cache.detach()[2], torch.ones(2))


@pytest.mark.parametrize("backend", UPDATE_BACKENDS)
@pytest.mark.parametrize("target", ["cache", "norms", "stamps"])
def test_update_target_with_rows_sharing_memory_is_refused(backend, target):
    # an expanded tensor: every row is one memory location, so the "torch" backend wrote
    # garbage (the last row written everywhere) and "cpp" failed with a raw RuntimeError
    cache, norms, stamps = _state()
    if target == "cache":
        cache = torch.zeros(1, 2).expand(4, 2)
    elif target == "norms":
        norms = torch.zeros(1).expand(4)
    else:
        stamps = torch.full((1,), -1, dtype=torch.int64).expand(4)
    with pytest.raises(ValueError, match=f"^{target}: .*share memory"):
        cache_update_(cache, torch.tensor([0, 1]), torch.randn(2, 2), norms=norms,
                      stamps=stamps, step=1, backend=backend)


def test_update_of_a_strided_but_not_overlapping_cache_still_works():
    cache = torch.zeros(2, 4).T  # [4, 2], non-contiguous, every element its own location
    values = torch.randn(2, 2)
    for backend in UPDATE_BACKENDS:
        cache_update_(cache, torch.tensor([3, 0]), values, backend=backend)
        assert torch.equal(cache[[3, 0]], values)


@pytest.mark.parametrize("call,op", [
    (lambda: knn_search(torch.randn(2, 3), torch.randn(4, 3), 1, backend="cpp"), "knn_search"),
    (lambda: mixture_log_density(torch.randn(2, 3), torch.randn(4, 3), torch.tensor(0.0),
                                 backend="cpp"), "mixture_log_density"),
])
def test_backend_the_op_never_has_is_not_blamed_on_the_build(call, op):
    # "cpp" exists for cache_update_ only: rebuilding the extension would not help here
    with pytest.raises(ValueError, match=f"^{op}: backend 'cpp' is not available") as info:
        call()
    message = str(info.value)
    assert "not built" not in message and "torch, triton" in message


def test_reference_mixture_at_a_mean_with_a_tiny_variance_is_finite():
    # exp(-log_var) overflows float64 below log_var ~ -709: 0 * inf made the logit of the
    # component z sits on NaN, and the output with it; the density there is finite (large)
    means = torch.randn(3, 2, dtype=torch.float64)
    z = means[:2].clone().requires_grad_()
    log_var = torch.tensor(-750.0, dtype=torch.float64, requires_grad=True)
    out = mixture_log_density(z, means, log_var, backend="torch")
    expected = -torch.log(torch.tensor(3.0, dtype=torch.float64)) - (torch.log(
        torch.tensor(2 * torch.pi, dtype=torch.float64)) + log_var.detach())
    torch.testing.assert_close(out.detach(), expected.expand(2))
    grad_z, grad_log_var = torch.autograd.grad(out.sum(), (z, log_var))
    assert torch.equal(grad_z, torch.zeros_like(grad_z))
    torch.testing.assert_close(grad_log_var, torch.tensor(-2.0, dtype=torch.float64))
