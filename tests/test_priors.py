"""Priors against float64 formulas written here, leave-one-out, sub-sampling, and
retrieval mode equal to the exact mixture over the retrieved set."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from exvae_fast.priors import ExemplarPrior, MoGPrior, StandardPrior, VampPrior

D, d = 12, 3
FLOAT32 = {"rtol": 1.3e-6, "atol": 1e-5}  # a float32 computation against its float64 formula


def log_gauss(z, mean, var):
    """float64 log N(z | mean, diag var), written out term by term."""
    z, mean, var = z.double(), mean.double(), var.double()
    return (-0.5 * math.log(2 * math.pi) - 0.5 * torch.log(var) - (z - mean) ** 2 / (2 * var)).sum(-1)


def lse(values, dim):
    m = values.max(dim, keepdim=True).values
    return (m + torch.log(torch.exp(values - m).sum(dim, keepdim=True))).squeeze(dim)


class LinearEncoder(nn.Module):
    """x [B, D] -> (W x, constant log-variance): a stand-in for a model's encoder that
    counts how many rows it encodes."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(D, d)
        self.rows_encoded = []

    def forward(self, x):
        self.rows_encoded.append(x.shape[0])
        mu = self.lin(x)
        return mu, torch.full_like(mu, -1.0)


def test_standard_prior_matches_formula():
    prior = StandardPrior(d)
    z = torch.randn(7, d)
    torch.testing.assert_close(prior.log_prob(z).double(), log_gauss(z, torch.zeros(d), torch.ones(d)), **FLOAT32)
    assert prior.sample(5).shape == (5, d)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_baseline_priors_sample_in_the_module_dtype(dtype):
    """After model.double() / .bfloat16() the samples match the decoder's dtype."""
    encoder = LinearEncoder().to(dtype)
    priors = [StandardPrior(d), MoGPrior(d, 4), VampPrior(d, D, 4)]
    for prior in priors:
        assert prior.to(dtype).sample(3, encoder=encoder).dtype == dtype, type(prior).__name__


def test_mog_prior_matches_formula_and_subsamples():
    prior = MoGPrior(d, num_components=6)
    with torch.no_grad():
        prior.logits.copy_(torch.randn(6))
        prior.log_vars.copy_(0.3 * torch.randn(6, d))
    z = torch.randn(5, d)
    w = torch.log_softmax(prior.logits.double(), 0)
    expected = lse(log_gauss(z[:, None], prior.means[None], prior.log_vars.exp()[None]) + w, 1)
    prior.eval()
    torch.testing.assert_close(prior.log_prob(z).double(), expected, **FLOAT32)
    sub = MoGPrior(d, num_components=6, components_per_step=2)
    sub.train()
    drawn = sub.subsampling.draw(True, torch.device("cpu"))
    assert drawn.shape == (2,) and drawn.unique().numel() == 2
    assert sub.subsampling.draw(False, torch.device("cpu")) is None
    assert MoGPrior(d, 6).sample(4).shape == (4, d)


def test_mog_prior_is_normalised_in_one_dimension():
    prior = MoGPrior(1, num_components=3).eval()
    grid = torch.linspace(-12, 12, 20001).unsqueeze(1)
    with torch.no_grad():
        mass = torch.exp(prior.log_prob(grid)).sum() * (grid[1, 0] - grid[0, 0])
    assert abs(float(mass) - 1.0) < 1e-3


def test_vamp_prior_is_mixture_of_pseudo_input_posteriors():
    encoder = LinearEncoder()
    prior = VampPrior(d, D, num_components=5).eval()
    z = torch.randn(4, d)
    mu, log_var = encoder(prior.pseudo_inputs)
    expected = lse(log_gauss(z[:, None], mu[None], log_var.exp()[None]), 1) - math.log(5)
    torch.testing.assert_close(prior.log_prob(z, encoder=encoder).double(), expected.detach(), **FLOAT32)
    assert prior.sample(3, encoder=encoder).shape == (3, d)
    with pytest.raises(ValueError, match="encoder"):
        prior.log_prob(z)


def test_vamp_prior_takes_init_pseudo_inputs_and_names_a_bad_one():
    init = torch.rand(5, D)
    torch.testing.assert_close(VampPrior(d, D, num_components=5, init=init).pseudo_inputs, init)
    for bad, error, match in ((init.tolist(), TypeError, "init: expected a floating tensor .5, 12., got list"),
                              (init.long(), TypeError, "init: .* got torch.int64"),
                              (init[:4], ValueError, r"init: expected shape \[5, 12\]")):
        with pytest.raises(error, match=match):
            VampPrior(d, D, num_components=5, init=bad)


def test_vamp_prior_subsampling_encodes_only_the_drawn_components():
    encoder = LinearEncoder()
    prior = VampPrior(d, D, num_components=50, components_per_step=7).train()
    prior.log_prob(torch.randn(4, d), encoder=encoder)
    assert encoder.rows_encoded[-1] == 7
    prior.eval()
    prior.log_prob(torch.randn(4, d), encoder=encoder)
    assert encoder.rows_encoded[-1] == 50
    with pytest.raises(ValueError, match="components_per_step"):
        VampPrior(d, D, num_components=5, components_per_step=6)


def _exemplar_setup(n=20, **kwargs):
    torch.manual_seed(0)
    exemplars = torch.rand(n, D)
    encoder = LinearEncoder()
    prior = ExemplarPrior(exemplars, d, backend="torch", **kwargs)
    with torch.no_grad():
        prior.log_var.fill_(-0.5)
    prior.refresh(encoder)
    return exemplars, encoder, prior


def _record_subsets(prior, monkeypatch):
    drawn = []
    original = prior._draw_subset

    def recording():
        subset = original()
        drawn.append(subset)
        return subset

    monkeypatch.setattr(prior, "_draw_subset", recording)
    return drawn


def test_exemplar_exact_leave_one_out_excludes_exactly_self(monkeypatch):
    exemplars, encoder, prior = _exemplar_setup(mode="exact", num_exemplars=20)
    prior.train()
    idx = torch.tensor([0, 5, 19])
    z = torch.randn(3, d)
    log_r = prior.log_prob(z, encoder=encoder, indices=idx)
    means = encoder(exemplars)[0].detach()
    var = torch.full((d,), math.exp(-0.5))
    for b, i in enumerate(idx.tolist()):
        others = [j for j in range(20) if j != i]
        expected = lse(log_gauss(z[b], means[others], var), 0) - math.log(19)
        torch.testing.assert_close(log_r[b].double(), expected, rtol=1e-5, atol=1e-5)


def test_exemplar_exact_subsamples_m_exemplars_per_step(monkeypatch):
    exemplars, encoder, prior = _exemplar_setup(mode="exact", num_exemplars=8)
    drawn = _record_subsets(prior, monkeypatch)
    prior.train()
    idx = torch.tensor([1, 2])
    z = torch.randn(2, d)
    log_r = prior.log_prob(z, encoder=encoder, indices=idx)
    subset = drawn[0]
    assert subset.numel() == 8 and subset.unique().numel() == 8
    assert encoder.rows_encoded[-1] == 8
    means = encoder(exemplars[subset])[0].detach()
    var = torch.full((d,), math.exp(-0.5))
    for b, i in enumerate(idx.tolist()):
        keep = subset != i
        expected = lse(log_gauss(z[b], means[keep], var), 0) - math.log(int(keep.sum()))
        torch.testing.assert_close(log_r[b].double(), expected, rtol=1e-5, atol=1e-5)
    log_r2 = prior.log_prob(z, encoder=encoder, indices=idx)
    assert not torch.equal(drawn[0], drawn[1]) and log_r2.shape == (2,)


@pytest.mark.parametrize("retrieval_mixture", ["union", "own"])
def test_exemplar_retrieval_equals_exact_mixture_over_retrieved_set(monkeypatch, retrieval_mixture):
    """Row b's mixture: the union of every row's neighbours less b's own exemplar ("union"), or
    b's own k neighbours ("own"); divided by M (M - 1 when b's exemplar is in pi)."""
    n, m, k = 40, 25, 4
    exemplars, encoder, prior = _exemplar_setup(n=n, mode="retrieval", num_exemplars=m, k=k,
                                                retrieval_mixture=retrieval_mixture)
    drawn = _record_subsets(prior, monkeypatch)
    prior.train()
    idx = torch.tensor([3, 17, 30, 8])
    x = exemplars[idx]
    query = encoder(x)[0].detach()
    z = query + 0.1 * torch.randn_like(query)
    encoder.rows_encoded.clear()
    log_r = prior.log_prob(z, encoder=encoder, query=query, indices=idx)
    subset = drawn[0]
    # Brute-force kNN among the subset, self excluded, against the cache as it was
    # searched (the batch's own means were written first).
    cache = encoder(exemplars)[0].detach().double()
    cache[idx] = query.double()
    own = []
    for b, i in enumerate(idx.tolist()):
        cands = [j for j in subset.tolist() if j != i]
        dist = sorted(((cache[j] - query[b].double()).pow(2).sum().item(), j) for j in cands)
        own.append([j for _, j in dist[:k]])
    union = sorted(set().union(*own))
    assert encoder.rows_encoded[0] == len(union)  # only the neighbours were re-encoded
    means = encoder(exemplars[union])[0].detach()
    var = torch.full((d,), math.exp(-0.5))
    for b, i in enumerate(idx.tolist()):
        keep = [p for p, j in enumerate(union) if (j != i if retrieval_mixture == "union" else j in own[b])]
        assert len(keep) == (k if retrieval_mixture == "own" else len(union) - int(i in union))
        total = m - int(i in subset.tolist())
        expected = lse(log_gauss(z[b], means[keep], var), 0) - math.log(total)
        torch.testing.assert_close(log_r[b].double(), expected, rtol=1e-5, atol=1e-5)
    # Fresh means were written back.
    torch.testing.assert_close(prior.cache.means[union], means)
    torch.testing.assert_close(prior.cache.means[idx], query)


def test_own_neighbours_equal_the_union_for_a_single_row():
    results = []
    for retrieval_mixture in ("union", "own"):
        exemplars, encoder, prior = _exemplar_setup(n=30, mode="retrieval", num_exemplars=15, k=3,
                                                    retrieval_mixture=retrieval_mixture)
        torch.manual_seed(1)  # the same subset pi for both
        mu = encoder(exemplars[[4]])[0]
        log_r = prior.train().log_prob(mu + 0.1, encoder=encoder, query=mu, indices=torch.tensor([4]))
        log_r.sum().backward()
        results.append((log_r.detach(), prior.log_var.grad, encoder.lin.weight.grad))
    for union, own in zip(*results):
        torch.testing.assert_close(own, union, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("retrieval_mixture", ["union", "own"])
def test_exemplar_retrieval_gradients_reach_encoder_and_log_var(retrieval_mixture):
    exemplars, encoder, prior = _exemplar_setup(n=30, mode="retrieval", num_exemplars=15, k=3,
                                                retrieval_mixture=retrieval_mixture)
    prior.train()
    idx = torch.tensor([0, 1, 2])
    mu = encoder(exemplars[idx])[0]
    z = mu + 0.1 * torch.randn_like(mu)
    prior.log_prob(z, encoder=encoder, query=mu, indices=idx).sum().backward()
    assert prior.log_var.grad is not None and torch.isfinite(prior.log_var.grad)
    assert encoder.lin.weight.grad is not None and encoder.lin.weight.grad.abs().sum() > 0


def test_exemplar_eval_uses_whole_training_set_without_leave_one_out():
    exemplars, encoder, prior = _exemplar_setup(n=15, mode="retrieval", num_exemplars=10, k=3)
    prior.eval()
    z = torch.randn(4, d)
    means = encoder(exemplars)[0].detach()
    expected = lse(log_gauss(z[:, None], means[None], torch.full((d,), math.exp(-0.5))), 1) - math.log(15)
    torch.testing.assert_close(prior.log_prob(z).double(), expected, rtol=1e-5, atol=1e-5)
    assert prior.sample(6).shape == (6, d)
    near = prior.sample_near(torch.zeros(2, d), torch.zeros(2, d), 5)
    assert near.shape == (2, 5, d)


def test_exemplar_prior_needs_a_filled_cache():
    prior = ExemplarPrior(torch.rand(10, D), d, num_exemplars=6, k=2).eval()
    with pytest.raises(ValueError, match="refresh"):
        prior.log_prob(torch.randn(2, d))


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "approximate"}, "mode"),
    ({"k": 10, "num_exemplars": 10}, "k: expected at most 9"),
    ({"num_exemplars": 11}, "num_exemplars"),
    ({"k": 0}, "k"),
    ({"retrieval_mixture": "all"}, r"retrieval_mixture: expected one of \('union', 'own'\)"),
    ({"retrieval_mixture": "own", "mode": "exact"}, "retrieval_mixture: 'own' needs mode='retrieval'"),
])
def test_exemplar_prior_rejects_bad_settings(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ExemplarPrior(torch.rand(10, D), d, **kwargs)


def test_exemplar_prior_rejects_bad_indices_and_exemplars():
    exemplars, encoder, prior = _exemplar_setup(n=10, mode="retrieval", num_exemplars=8, k=2)
    prior.train()
    z = torch.randn(2, d)
    with pytest.raises(ValueError, match="indices"):
        prior.log_prob(z, encoder=encoder, query=z)
    with pytest.raises(ValueError, match="indices"):
        prior.log_prob(z, encoder=encoder, query=z, indices=torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="query"):
        prior.log_prob(z, encoder=encoder, indices=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="NaN"):
        ExemplarPrior(torch.full((4, D), float("nan")), d)


@pytest.mark.parametrize("name", ["standard", "mog", "vamp", "exemplar-exact", "exemplar-retrieval"])
def test_every_prior_names_z_when_its_width_is_wrong(name):
    """The prior's own check, before any op: the message names z and the expected width
    (an op would name its own tensors, e.g. "means")."""
    encoder = LinearEncoder()
    priors = {"standard": lambda: StandardPrior(d), "mog": lambda: MoGPrior(d, 4),
              "vamp": lambda: VampPrior(d, D, num_components=5)}
    if name.startswith("exemplar"):
        prior = _exemplar_setup(n=10, mode=name.split("-")[1], num_exemplars=8, k=2)[2]
    else:
        prior = priors[name]()
    prior.train()
    rows = torch.tensor([0, 1])
    query = torch.randn(2, d)
    with pytest.raises(ValueError, match=rf"^z: expected shape \[B, {d}\], got \[2, {d + 1}\]$"):
        prior.log_prob(torch.randn(2, d + 1), encoder=encoder, query=query, indices=rows)


def test_exact_mode_writes_the_batch_means_over_the_subset_means():
    """An exact step re-encodes the subset and writes its means to the cache, and writes the
    batch's posterior means (`query`) at the batch's rows: where a batch row is also in the
    subset, the batch's mean is the one kept."""
    exemplars, encoder, prior = _exemplar_setup(n=10, mode="exact", num_exemplars=10)
    prior.train()
    rows = torch.tensor([3, 7])  # the subset is all 10 rows: both are in it
    query = torch.randn(2, d)
    prior.log_prob(torch.randn(2, d), encoder=encoder, query=query, indices=rows)
    torch.testing.assert_close(prior.cache.means[rows].float(), query)
    others = [i for i in range(10) if i not in rows.tolist()]
    torch.testing.assert_close(prior.cache.means[others].float(),
                               encoder(exemplars[others])[0].detach())


def test_run_wide_backend_maps_to_each_op():
    from exvae_fast.ops.dispatch import backend_for

    assert backend_for("mixture_log_density", "triton") == "triton"
    assert backend_for("cache_update_", "triton") == "auto"
    assert backend_for("knn_search", "cpp") == "auto" and backend_for("cache_update_", "cpp") == "cpp"
    assert {backend_for(op, "torch") for op in ("mixture_log_density", "knn_search", "cache_update_")} == {"torch"}
    with pytest.raises(ValueError, match="backend"):
        ExemplarPrior(torch.rand(10, D), d, k=2, backend="cuda")


def test_backend_may_change_between_steps_and_cache_dtype_is_read_only(monkeypatch):
    from exvae_fast import ops

    exemplars, encoder, prior = _exemplar_setup(n=10, mode="exact", num_exemplars=6)
    used = []

    def recording(*args, backend, **kwargs):
        used.append(backend)
        return original(*args, backend="torch", **kwargs)

    original = ops.mixture_log_density
    monkeypatch.setattr(ops, "mixture_log_density", recording)
    z, idx = torch.randn(2, d), torch.tensor([0, 1])
    for backend in ("torch", "triton", "cpp"):  # cpp has no mixture kernel: "auto"
        prior.backend = backend
        prior.train().log_prob(z, encoder=encoder, indices=idx)
    assert used == ["torch", "triton", "auto"] and "backend='cpp'" in repr(prior)
    with pytest.raises(ValueError, match="backend: expected one of"):
        prior.backend = "bogus"
    assert prior.backend == "cpp"  # a refused setting changes nothing
    assert prior.cache_dtype == torch.float32
    with pytest.raises(AttributeError):
        prior.cache_dtype = torch.bfloat16


@pytest.mark.parametrize("mode", ["exact", "retrieval"])
def test_eval_after_training_steps_without_a_refresh_warns(mode):
    import warnings

    exemplars, encoder, prior = _exemplar_setup(n=10, mode=mode, num_exemplars=8, k=2)
    z, idx = torch.randn(2, d), torch.tensor([0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prior.eval().log_prob(z)  # refreshed: silent
        assert prior.cache.is_fresh
    prior.train().log_prob(z, encoder=encoder, query=encoder(exemplars[idx])[0], indices=idx)
    assert not prior.cache.is_fresh
    with pytest.warns(UserWarning, match=r"since its last refresh .* call prior.refresh\(encoder\)"):
        prior.eval().log_prob(z)
    clone = ExemplarPrior(exemplars, d, mode=mode, num_exemplars=8, k=2)
    clone.load_state_dict(prior.state_dict())  # a loaded cache is taken as saved
    assert clone.cache.is_fresh
    prior.refresh(encoder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prior.eval().log_prob(z)


def test_non_finite_values_name_the_cache_or_the_encoder():
    from exvae_fast.ops import NonFiniteError

    def nan_encoder(x):
        mu = encoder(x)[0]
        return mu * float("nan"), mu

    for mode in ("exact", "retrieval"):
        exemplars, encoder, prior = _exemplar_setup(n=10, mode=mode, num_exemplars=8, k=2)
        z, idx = torch.randn(2, d), torch.tensor([0, 1])
        with pytest.raises(NonFiniteError, match="^encoder: returned NaN/Inf means"):
            prior.train().log_prob(z, encoder=nan_encoder, query=z, indices=idx)
        with pytest.raises(NonFiniteError, match="^encoder: returned NaN/Inf means"):
            prior.refresh(nan_encoder)
        prior.refresh(encoder)
        with torch.no_grad():
            prior.cache.means[5] = float("nan")  # changed behind update_'s back
        with pytest.raises(NonFiniteError, match="^cache: the cached means contain NaN/Inf"):
            prior.eval().log_prob(z)
        with pytest.raises(NonFiniteError, match="^cache: the cached means contain NaN/Inf"):
            prior.sample(200)  # draws row 5 but with probability 0.9^200
        if mode == "retrieval":
            with pytest.raises(NonFiniteError, match="^cache: the cached means contain NaN/Inf"):
                prior.train().log_prob(z, encoder=encoder, query=z, indices=idx)


@pytest.mark.parametrize("mode", ["exact", "retrieval"])
def test_exemplar_prior_triton_backend_matches_torch(mode):
    pytest.importorskip("triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the interpreter (conftest)
    results = []
    for backend in ("torch", "triton"):
        torch.manual_seed(0)
        exemplars = torch.rand(40, D, device=device)
        encoder = LinearEncoder().to(device)
        prior = ExemplarPrior(exemplars, d, mode=mode, num_exemplars=20, k=3, backend=backend)
        prior.refresh(encoder)
        idx = torch.tensor([1, 7, 30], device=device)
        mu = encoder(exemplars[idx])[0]
        z = mu + 0.1 * torch.randn_like(mu)
        log_r = prior.train().log_prob(z, encoder=encoder, query=mu, indices=idx)
        log_r.sum().backward()
        results.append((log_r.detach(), prior.log_var.grad.clone(), encoder.lin.weight.grad.clone()))
    for expected, got in zip(*results):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_exact_mode_refuses_a_single_exemplar_with_leave_one_out():
    """With M = 1 and leave-one-out, a row whose own exemplar is drawn has an empty prior;
    it used to be accepted and to fail mid-training in the mixture op."""
    with pytest.raises(ValueError, match="num_exemplars"):
        ExemplarPrior(torch.rand(10, 5), 3, mode="exact", num_exemplars=1)
    ExemplarPrior(torch.rand(10, 5), 3, mode="exact", num_exemplars=1, leave_one_out=False)

