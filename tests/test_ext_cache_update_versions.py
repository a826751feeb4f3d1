"""The compiled cache_update_ (csrc/) and autograd: the version counters of the tensors it
writes, inference tensors, values of other float dtypes; on CPU and (gpu marker) CUDA."""
from __future__ import annotations

import pytest
import torch

from exvae_fast.ops import _extension, cache_update_

needs_extension = pytest.mark.skipif(
    _extension.LOAD_ERROR is not None, reason=f"exvae_fast._C not loaded: {_extension.LOAD_ERROR}")
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def state(device, size=6, dim=3):
    return (torch.zeros(size, dim, device=device), torch.zeros(size, device=device),
            torch.full((size,), -1, dtype=torch.int64, device=device))


@needs_extension
@pytest.mark.parametrize("device", DEVICES)
def test_written_tensors_get_their_versions_bumped_like_the_reference(device):
    """The op writes cache, norms and stamps in place: like torch's in-place ops (and the
    torch backend) it bumps their version counters, and only theirs."""
    bumped = {}
    for backend in ("torch", "cpp"):
        cache, norms, stamps = state(device)
        indices, values = torch.tensor([4, 1], device=device), torch.ones(2, 3, device=device)
        before = [t._version for t in (cache, norms, stamps, indices, values)]
        cache_update_(cache, indices, values, norms=norms, stamps=stamps, step=2, backend=backend)
        after = [t._version for t in (cache, norms, stamps, indices, values)]
        bumped[backend] = [a > b for a, b in zip(after, before)]
    assert bumped["cpp"] == bumped["torch"] == [True, True, True, False, False]

    cache, norms, _ = state(device)
    torch.ops.exvae_fast.cache_update_(cache, torch.tensor([0], device=device),
                                       torch.ones(1, 3, device=device), norms, None, 0)
    assert cache._version > 0 and norms._version > 0


@needs_extension
@pytest.mark.parametrize("device", DEVICES)
def test_autograd_refuses_a_saved_tensor_the_op_changed(device):
    """A gradient computed from a cache the op has since changed would be silently wrong:
    autograd must raise instead, as it does after the torch backend's write."""
    cache, norms, stamps = state(device)
    weight = torch.ones(6, 3, device=device, requires_grad=True)
    loss = (weight * cache).sum()  # saves cache for the gradient of weight
    torch.ops.exvae_fast.cache_update_(cache, torch.tensor([2], device=device),
                                       torch.ones(1, 3, device=device), norms, stamps, 1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@needs_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_float8_values_are_written_like_the_reference(device, dtype):
    """The public op accepts any floating-point values; the compiled op reads 32/16-bit ones,
    so the others are converted to the cache dtype first, as the reference converts them."""
    values = torch.tensor([[1.5, -2.0], [0.25, 3.0], [-6.0, 0.125]]).to(torch.float8_e5m2)
    indices = torch.tensor([1, 3, 1], device=device)
    results = []
    for backend in ("torch", "cpp"):
        cache, norms, stamps = (t[:, :2].contiguous().to(dtype) if t.dim() == 2 else t
                                for t in state(device, size=4))
        cache_update_(cache, indices, values.to(device), norms=norms, stamps=stamps, step=1,
                      backend=backend)
        results.append((cache, norms, stamps))
    for got, want in zip(*results):
        assert torch.equal(got, want)


@needs_extension
def test_inference_tensors_are_refused_outside_inference_mode_before_any_write():
    """They have no version counter to bump: refused, as torch's in-place ops refuse them,
    but before the op writes anything; inside inference mode they are written."""
    with torch.inference_mode():
        cache, norms, stamps = state("cpu")
    with pytest.raises(RuntimeError, match="norms: an inference tensor"):
        torch.ops.exvae_fast.cache_update_(state("cpu")[0], torch.tensor([1]), torch.ones(1, 3),
                                           norms, None, 0)
    assert torch.equal(norms, torch.zeros(6))
    with torch.inference_mode():
        torch.ops.exvae_fast.cache_update_(cache, torch.tensor([1]), torch.ones(1, 3), norms,
                                           stamps, 4)
    assert cache[1].tolist() == [1.0, 1.0, 1.0] and norms[1] == 3.0 and stamps[1] == 4
