"""ExemplarPrior and LatentCache as a drop-in component of a user's own model: argument
checks at the prior's boundary (query, indices, encoder output, cache_dtype), dtypes of
samples after module-wide casts, and state dicts loaded across cache dtypes."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from exvae_fast.cache import LatentCache
from exvae_fast.priors import ExemplarPrior

D, d = 12, 3


class Encoder(nn.Module):
    """x [B, D] -> (mu, log_var) [B, d]; mu is a non-contiguous view, as from chunk."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(D, 2 * d)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_var = self.lin(x).chunk(2, dim=1)
        return mu, log_var


def _setup(mode: str, **kwargs):
    torch.manual_seed(0)
    exemplars = torch.rand(20, D)
    encoder = Encoder()
    prior = ExemplarPrior(exemplars, d, mode=mode, num_exemplars=10, k=3, backend="torch", **kwargs)
    prior.refresh(encoder)
    prior.cache.advance(5)
    return exemplars, encoder, prior.train()


def _cache_state(prior):
    return {name: buf.clone() for name, buf in prior.cache.state_dict().items()}


@pytest.mark.parametrize("mode", ["exact", "retrieval"])
@pytest.mark.parametrize("query, error, match", [
    (torch.zeros(3, d + 1), ValueError, r"query: expected shape \[3, 3\]"),
    (torch.zeros(2, d), ValueError, r"query: expected shape \[3, 3\]"),
    (torch.zeros(3, d, dtype=torch.int64), TypeError, "query: expected a floating-point tensor"),
    ([[0.0] * d] * 3, TypeError, "query: expected a torch.Tensor"),
    (torch.full((3, d), float("nan")), ValueError, "query contains NaN/Inf"),
])
def test_bad_query_is_refused_naming_it_before_the_cache_changes(mode, query, error, match):
    """The query used to reach the cache write unchecked: the error named `values`, and in
    exact mode the sub-sample's rows and stamps were already written when it was raised."""
    exemplars, encoder, prior = _setup(mode)
    before = _cache_state(prior)
    idx = torch.tensor([0, 1, 2])
    z = encoder(exemplars[idx])[0].detach()
    with pytest.raises(error, match=match):
        prior.log_prob(z, encoder=encoder, query=query, indices=idx)
    for name, buf in prior.cache.state_dict().items():
        assert torch.equal(buf, before[name]), name


def test_exact_mode_query_overflowing_the_cache_dtype_leaves_the_cache_unchanged():
    """Exact mode writes the sub-sample's and the batch's means: both or neither."""
    exemplars, encoder, prior = _setup("exact", cache_dtype=torch.float16)
    before = _cache_state(prior)
    idx = torch.tensor([0, 1, 2])
    z = encoder(exemplars[idx])[0].detach()
    with pytest.raises(ValueError, match="values"):
        prior.log_prob(z, encoder=encoder, query=torch.full((3, d), 1e6), indices=idx)
    for name, buf in prior.cache.state_dict().items():
        assert torch.equal(buf, before[name]), name


@pytest.mark.parametrize("mode", ["exact", "retrieval"])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_integer_indices_of_any_width_work_like_int64(mode, dtype):
    """Indices from NumPy or a sampler are often int32: torch indexing takes them, so the
    prior does too (it used to raise)."""
    results = []
    for index_dtype in (torch.int64, dtype):
        exemplars, encoder, prior = _setup(mode)
        idx = torch.tensor([0, 5, 5, 19], dtype=index_dtype)
        mu = encoder(exemplars[idx.long()])[0]
        torch.manual_seed(1)
        log_r = prior.log_prob(mu + 0.1, encoder=encoder, query=mu, indices=idx)
        results.append((log_r.detach(), prior.cache.means.clone(), prior.cache.stamps.clone()))
    for want, got in zip(*results):
        assert torch.equal(got, want)


@pytest.mark.parametrize("indices, error, match", [
    ([0, 1, 2], TypeError, "indices: expected a torch.Tensor"),
    (torch.tensor([0.0, 1.0, 2.0]), TypeError, "indices: expected an integer tensor"),
    (torch.tensor([True, False, True]), TypeError, "indices: expected an integer tensor"),
    (torch.tensor([[0, 1, 2]]), ValueError, r"indices: expected shape \[3\]"),
    (torch.tensor([0, 1, 20]), ValueError, r"indices: .*\[0, 20\)"),
    (torch.tensor([0, -1, 2], dtype=torch.int32), ValueError, r"indices: .*\[0, 20\)"),
])
def test_bad_indices_raise_naming_them(indices, error, match):
    exemplars, encoder, prior = _setup("retrieval")
    mu = encoder(exemplars[:3])[0]
    with pytest.raises(error, match=match):
        prior.log_prob(mu, encoder=encoder, query=mu, indices=indices)


@pytest.mark.parametrize("mode", ["exact", "retrieval"])
def test_encoder_returning_only_the_means_is_refused_naming_it(mode):
    """`encoder(x)[0]` of a bare [B, d] tensor is its first row: the error named `values`
    or `means` (an internal tensor) instead of the encoder."""
    exemplars, encoder, prior = _setup(mode)
    only_mu = lambda x: encoder(x)[0]  # noqa: E731
    with pytest.raises(ValueError, match=r"encoder: .*\(mu, log_var\)"):
        prior.refresh(only_mu)
    idx = torch.tensor([0, 1, 2])
    mu = encoder(exemplars[idx])[0]
    with pytest.raises(ValueError, match=r"encoder: .*\(mu, log_var\)"):
        prior.log_prob(mu, encoder=only_mu, query=mu, indices=idx)
    wide = lambda x: (torch.cat([encoder(x)[0]] * 2, 1), None)  # noqa: E731
    with pytest.raises(ValueError, match=r"encoder: .*\[4, 3\].*latent_dim"):
        prior.refresh(wide, batch_size=4)


def test_refresh_takes_non_contiguous_and_other_dtype_means():
    exemplars, encoder, prior = _setup("retrieval", cache_dtype=torch.bfloat16)
    prior.refresh(lambda x: (encoder(x)[0].double(), None), batch_size=7)
    want = encoder(exemplars)[0].detach().double().to(torch.bfloat16)
    torch.testing.assert_close(prior.cache.means, want, rtol=0.01, atol=0.01)
    torch.testing.assert_close(prior.cache.sq_norms, prior.cache.means.float().square().sum(1))
    assert (prior.cache.stamps == 5).all()


@pytest.mark.parametrize("cast, dtype", [("double", torch.float64), ("half", torch.float16),
                                         ("bfloat16", torch.bfloat16), ("float", torch.float32)])
def test_samples_follow_the_module_dtype(cast, dtype):
    """After `model.double()` the decoder takes float64: samples were float32 whatever the
    module's dtype (the cache keeps its storage dtype)."""
    _, encoder, prior = _setup("retrieval", cache_dtype=torch.bfloat16)
    model = nn.ModuleDict({"encoder": encoder, "prior": prior})
    getattr(model, cast)()
    assert prior.cache.means.dtype == torch.bfloat16
    draws = prior.sample(5)
    assert draws.shape == (5, d) and draws.dtype == dtype
    assert prior.eval().log_prob(draws).dtype == dtype


@pytest.mark.parametrize("bad, error", [(torch.float64, ValueError), ("bfloat16", TypeError)])
def test_bad_cache_dtype_is_named(bad, error):
    with pytest.raises(error, match="cache_dtype"):
        ExemplarPrior(torch.rand(10, D), d, k=2, cache_dtype=bad)


@pytest.mark.parametrize("saved, loaded", [(torch.float32, torch.bfloat16),
                                           (torch.float32, torch.float16),
                                           (torch.bfloat16, torch.float16)])
def test_loading_another_cache_dtype_keeps_the_norms_of_the_stored_rows(saved, loaded):
    """A state dict is converted to the cache's storage dtype on loading; sq_norms must be
    the squared norms of the rows as stored, as after any write."""
    torch.manual_seed(0)
    source = LatentCache(8, 3, dtype=saved)
    source.update_(torch.arange(6), torch.randn(6, 3) * 3 + 0.1)
    source.advance(2)
    target = LatentCache(8, 3, dtype=loaded)
    target.load_state_dict(source.state_dict())
    assert target.means.dtype == loaded and target.step == 2
    assert torch.equal(target.means, source.means.to(loaded))
    assert torch.equal(target.stamps, source.stamps)
    torch.testing.assert_close(target.sq_norms, target.means.float().square().sum(1), rtol=0, atol=0)


def test_loading_means_that_overflow_the_cache_dtype_is_refused():
    source = LatentCache(4, 2)
    source.update_(torch.arange(4), torch.full((4, 2), 1e6))
    target = LatentCache(4, 2, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"means: .*float16"):
        target.load_state_dict(source.state_dict())
    assert (target.stamps == -1).all() and (target.means == 0).all()


def test_same_dtype_round_trip_is_bit_exact_into_a_fresh_prior():
    exemplars, encoder, prior = _setup("retrieval", cache_dtype=torch.bfloat16)
    idx = torch.tensor([3, 4])
    mu = encoder(exemplars[idx])[0]
    prior.log_prob(mu, encoder=encoder, query=mu, indices=idx)
    state = prior.state_dict()
    fresh = ExemplarPrior(exemplars, d, mode="retrieval", num_exemplars=10, k=3,
                          backend="torch", cache_dtype=torch.bfloat16)
    fresh.load_state_dict(state, strict=True)
    for name, buf in fresh.state_dict().items():
        assert torch.equal(buf, state[name]), name
    assert fresh.cache.step == 5 and fresh.cache.is_complete


@pytest.mark.parametrize("bad, error", [(float("nan"), ValueError), (float("inf"), ValueError),
                                        ("0.5", TypeError), (torch.ones(2), TypeError)])
def test_bad_init_log_var_is_named_at_construction(bad, error):
    """A NaN starting log-variance used to be accepted and to fail in the first training
    step, naming the mixture op's `log_var`."""
    with pytest.raises(error, match="init_log_var"):
        ExemplarPrior(torch.rand(10, D), d, k=2, init_log_var=bad)
    for good in (-1, -1.0, torch.tensor(-1.0)):
        assert ExemplarPrior(torch.rand(10, D), d, k=2, init_log_var=good).log_var.item() == -1.0
