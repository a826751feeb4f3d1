"""Audit of the likelihoods at extreme scales and low precision, and of the run tables'
ordering and rendering (exvae_fast.distributions, exvae_fast.run_table)."""
from __future__ import annotations

import math

import pytest
import torch

from exvae_fast.distributions import log_bernoulli, log_discretized_logistic, sample_discretized_logistic
from exvae_fast.run_table import find_runs, latex_report, long_records, markdown_report

from test_run_table import make_run, metrics_of


def bins_of(num_bits: int, dtype: torch.dtype) -> torch.Tensor:
    """Every value of a num_bits pixel, k / (K - 1): [K, 1]."""
    k = 2 ** num_bits
    return (torch.arange(k, dtype=dtype) / (k - 1)).view(k, 1)


@pytest.mark.parametrize("dtype, log_scale", [(torch.float32, -10.0), (torch.float32, -14.0),
                                              (torch.float64, -25.0), (torch.float64, -30.0)])
@pytest.mark.parametrize("num_bits", [5, 8])
def test_discretized_logistic_sums_to_one_with_a_tiny_scale_on_a_bin_edge(dtype, log_scale, num_bits):
    # The mean on the edge between two bins: each must get half the mass. Computing bin k's
    # upper edge as c_k + h and bin k+1's lower edge as c_{k+1} - h rounds them apart, and a
    # tiny scale turns that rounding into whole units of probability (given to both, or neither).
    k_max = 2 ** num_bits - 1
    bins = bins_of(num_bits, dtype)
    for k in (0, k_max // 3, k_max // 2, k_max - 1):
        mean = torch.full((k_max + 1, 1), (k + 0.5) / k_max, dtype=dtype)
        log_p = log_discretized_logistic(bins, mean, torch.full_like(mean, log_scale), num_bits)
        assert torch.logsumexp(log_p, 0).item() == pytest.approx(0.0, abs=1e-6), k
        assert log_p[k].item() == pytest.approx(math.log(0.5), abs=1e-5)
        assert log_p[k + 1].item() == pytest.approx(math.log(0.5), abs=1e-5)


def test_discretized_logistic_mixed_dtypes_compute_in_the_widest():
    # float32 pixels against a float64 model: the bin edges must be float64 too, not rounded
    # to float32 before the float64 mean is subtracted.
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 50), generator=gen).double() / 255
    mean = torch.rand(4, 50, generator=gen, dtype=torch.float64)
    log_scale = torch.full((4, 50), -4.5, dtype=torch.float64)
    want = log_discretized_logistic(x, mean, log_scale)
    got = log_discretized_logistic(x.float(), mean, log_scale)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_discretized_logistic_of_a_half_precision_image_is_summed_in_float32(dtype):
    # A CelebA image (3 x 64 x 64, 5 bits) from a model cast to half precision: summing
    # 12,288 log-probabilities of about -3 nats in bfloat16 (8 significant bits) loses whole nats.
    gen = torch.Generator().manual_seed(1)
    shape = (2, 3 * 64 * 64)
    x = (torch.randint(0, 32, shape, generator=gen).double() / 31).to(dtype)
    mean = torch.rand(shape, generator=gen, dtype=torch.float64).to(dtype)
    log_scale = torch.full(shape, -3.0, dtype=dtype)
    want = log_discretized_logistic(x.double(), mean.double(), log_scale.double(), 5)
    got = log_discretized_logistic(x, mean, log_scale, 5)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_log_bernoulli_half_precision_is_finite_and_matches_float32(dtype):
    # sigmoid saturates at 1 in half precision for logits above about 8; clamping to 1 - 1e-5
    # rounds back to 1, so log1p(-p) = -inf and a correct pixel (x = 1) gives 0 * -inf = NaN.
    probs = torch.tensor([[1.0, 0.0, 0.7, 0.999]], dtype=dtype)
    x = torch.tensor([[1.0, 0.0, 1.0, 0.0]], dtype=dtype)
    got = log_bernoulli(x, probs)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, log_bernoulli(x.float(), probs.float()), rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sample_discretized_logistic_half_precision_draws_like_float32(dtype):
    # Logistic noise drawn in half precision is cut off a few scales from the mean (float16
    # never reaches the edge bins here) and lands on a coarse grid (bfloat16 moves the mean by
    # about half a bin); the draw must be made in float32 and only its bin centre returned as
    # `dtype` (bfloat16 rounds the centres k / 255, but they still name their bin).
    n = 400_000
    mean = torch.full((n,), 0.5, dtype=dtype)
    log_scale = torch.full((n,), -3.0, dtype=dtype)
    torch.manual_seed(0)
    draws = sample_discretized_logistic(mean, log_scale, 8)
    torch.manual_seed(0)
    want = sample_discretized_logistic(mean.float(), log_scale.float(), 8)
    assert draws.dtype == dtype
    torch.testing.assert_close(torch.round(draws.float() * 255), torch.round(want * 255), rtol=0, atol=0)
    # Both edge bins carry sigmoid(-9.96) = 4.7e-5 of the mass: about 19 draws each.
    assert draws.min().item() == 0.0 and draws.max().item() == 1.0


def test_rows_with_numbers_are_ordered_by_value(tmp_path):
    # "VampPrior (50)", "(500)", "(1000)" and k=5, 10, 20 in increasing order, not as text
    # ("(1000)" < "(50)" and "k=10" < "k=5").
    for n in (1000, 50, 500):
        make_run(tmp_path, f"v{n}", ["prior.name=vamp", f"prior.num_components={n}"], metrics_of(-90.0 - n / 1000))
    for k in (20, 5, 10):
        make_run(tmp_path, f"k{k}", ["prior.name=exemplar", f"prior.k={k}"], metrics_of(-85.0 - k / 100))
    runs = find_runs([tmp_path])
    text = markdown_report(runs, ["log_likelihood"])
    order = [line.split(" | ")[0][2:] for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert order == ["VAE w/ VampPrior (50)", "VAE w/ VampPrior (500)", "VAE w/ VampPrior (1000)",
                     "Exemplar VAE (retrieval, k=5)", "Exemplar VAE (retrieval, k=10)",
                     "Exemplar VAE (retrieval, k=20)"]
    assert [r["label"] for r in long_records(runs, ["log_likelihood"])] == order
    latex_rows = [line.split(" & ")[0] for line in latex_report(runs, ["log_likelihood"]).splitlines()
                  if line.endswith(r"\\") and line.startswith(("VAE", "Exemplar"))]
    assert latex_rows == order


def test_latex_writes_non_finite_means_as_words_not_math_italics(tmp_path):
    # "$nan$" typesets as the product of the variables n, a, n.
    make_run(tmp_path, "a", ["prior.name=standard"], metrics_of(float("nan")))
    make_run(tmp_path, "b", ["prior.name=vamp"], metrics_of(float("-inf")))
    make_run(tmp_path, "c", ["prior.name=exemplar"], metrics_of(-90.0))
    text = latex_report(find_runs([tmp_path]), ["log_likelihood"])
    assert "$nan$" not in text and "$-inf$" not in text
    assert r"VAE w/ Gaussian prior & $\mathrm{NaN}$ \\" in text
    assert r"VAE w/ VampPrior (500) & $-\infty$ \\" in text
    assert r"Exemplar VAE (retrieval, k=10) & $-90.00$ \\" in text


def test_notes_say_what_a_single_run_cell_shows(tmp_path):
    # One seed has no standard deviation: the cell is the bare value, and the notes (which
    # otherwise promise "mean ± sample standard deviation") must say so.
    make_run(tmp_path, "a", ["prior.name=standard"], metrics_of(-90.0))
    runs = find_runs([tmp_path])
    assert "| VAE w/ Gaussian prior | -90.00 |" in markdown_report(runs, ["log_likelihood"])
    for text in (markdown_report(runs, ["log_likelihood"]), latex_report(runs, ["log_likelihood"])):
        assert "a cell without ± holds a single run" in text
