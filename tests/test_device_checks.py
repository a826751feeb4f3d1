"""The ops' data-dependent argument checks read the device once per call (DeviceChecks)."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch.overrides import TorchFunctionMode

from exvae_fast.ops.device_checks import DeviceChecks
from exvae_fast.ops.validation import validate_cache_update, validate_knn, validate_mixture

HOST_READS = {torch.Tensor.tolist, torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__int__,
              torch.Tensor.__index__, torch.Tensor.__float__}


class HostReads(TorchFunctionMode):
    """Counts the tensor-to-Python conversions (each a device synchronisation on a GPU)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def valid_calls(device="cpu"):
    """One valid call of each validator, with every optional data check switched on."""
    g = torch.Generator().manual_seed(0)
    queries, keys = torch.randn(6, 4, generator=g), torch.randn(50, 4, generator=g)
    candidates = torch.randperm(50, generator=g)[:20]
    exclude = torch.tensor([candidates[0].item(), -1, 3, 49, 0, candidates[5].item()])
    log_weights = torch.randn(50, generator=g)
    log_weights[7] = float("-inf")
    cache, values = torch.zeros(50, 4, dtype=torch.bfloat16), torch.randn(9, 4, generator=g)
    rows, log_var = torch.tensor([3, 1, 3, 49, 0, 7, 8, 9, 2]), torch.tensor(0.0)
    # on the device before any call, so the calls copy nothing from the host
    queries, keys, candidates, exclude, log_weights, cache, values, rows, log_var = (
        t.to(device) for t in (queries, keys, candidates, exclude, log_weights, cache, values,
                               rows, log_var))
    return {
        "knn": lambda: validate_knn(queries, keys, 5, candidates, exclude),
        "mixture": lambda: validate_mixture(queries, keys, log_var, exclude, log_weights),
        "cache_update": lambda: validate_cache_update(cache, rows, values, None, None, None),
    }


@pytest.mark.parametrize("op", ["knn", "mixture", "cache_update"])
def test_each_validator_reads_the_data_once(op):
    call = valid_calls()[op]
    with HostReads() as reads:
        call()
    assert reads.count == 1


def test_the_first_failing_check_in_order_raises():
    checks = DeviceChecks()
    checks.finite(torch.ones(3), "a")
    checks.in_range(torch.tensor([0, 5]), "b", 5)
    checks.finite(torch.tensor([float("nan")]), "c")
    checks.unique(torch.tensor([2, 1, 2]), "d")
    with pytest.raises(ValueError, match=r"^b: indices must lie in \[0, 5\), got values in \[0, 5\]$"):
        checks.verify()
    later = DeviceChecks()
    later.unique(torch.tensor([2, 1, 3]), "d")
    later.first_row(torch.tensor([False, True, True]), lambda row, n: f"row {row} has {n}",
                    torch.tensor([7, 8, 9]))
    with pytest.raises(ValueError, match="^row 1 has 8$"):
        later.verify()
    empty = DeviceChecks()
    empty.in_range(torch.zeros(0, dtype=torch.int64), "e", 1)
    empty.unique(torch.tensor([4]), "f")
    empty.first_row(torch.zeros(0, dtype=torch.bool), lambda row, n: "never")
    empty.verify()  # nothing to read: passes


def test_out_of_range_exclude_is_reported_not_indexed():
    """The participation count reads `alive` at exclude: clamped, so the range check speaks."""
    z, means = torch.randn(2, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"exclude: indices must lie in \[0, 4\) or -1"):
        validate_mixture(z, means, torch.tensor(0.0), torch.tensor([9, -1]), torch.zeros(4))


def cuda_synchronisations(call) -> list[str]:
    """The synchronising operations `call()` performs on CUDA (torch's sync debug mode), after
    a warm-up call (lazy initialisation synchronises too)."""
    call()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return [str(w.message) for w in caught if "synchroniz" in str(w.message)]


@pytest.mark.gpu
@pytest.mark.parametrize("op", ["knn", "mixture", "cache_update"])
def test_each_validator_synchronises_cuda_once(op):
    syncs = cuda_synchronisations(valid_calls("cuda")[op])
    assert len(syncs) == 1, syncs


def test_non_finite_data_raises_the_non_finite_error():
    from exvae_fast.ops.errors import NonFiniteError

    checks = DeviceChecks()
    checks.finite(torch.tensor([1.0, float("inf")]), "means")
    with pytest.raises(NonFiniteError, match="means contains NaN/Inf") as err:
        checks.verify()
    assert isinstance(err.value, ValueError)  # callers catching ValueError still do
    assert err.value.argument == "means"  # callers may name what they passed (a cache, an encoder's output)
    from exvae_fast.ops.validation import check_finite

    with pytest.raises(NonFiniteError) as err:
        check_finite(torch.tensor([float("nan")]), "keys")
    assert err.value.argument == "keys"


@pytest.mark.parametrize("mode, most", [("retrieval", 5), ("exact", 4)])
def test_a_training_forward_reads_the_device_a_few_times(mode, most):
    """Host reads (each a synchronisation on a GPU) of one exemplar-prior training forward once
    the cache is known complete: the batch's index range, then one per validated op call
    (retrieval: write-back of the batch, kNN search, write-back of the neighbours, mixture)."""
    import exvae_fast as ex

    torch.manual_seed(0)
    train = torch.rand(300, 784)
    prior = ex.priors.ExemplarPrior(train, latent_dim=8, mode=mode, k=5, num_exemplars=100)
    model = ex.models.VAE(prior, latent_dim=8)
    prior.refresh(model.encode)
    idx = torch.arange(50)
    model(torch.bernoulli(train[idx]), indices=idx)  # the first step learns that the cache is complete
    with HostReads() as reads:
        model(torch.bernoulli(train[idx + 50]), indices=idx + 50)
    assert reads.count <= most
