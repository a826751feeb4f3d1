"""Generation and augmentation: shapes, sample ordering, batching, mode restoration, npz files."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from exvae_fast.generation import (augment_dataset, exemplar_conditioned_samples, iterative_generation,
                                   load_augmented, sample_images, save_augmented)
from exvae_fast.models.base import LatentVariableModel
from exvae_fast.priors.standard import StandardPrior

D, LATENT = 12, 3


class LadderPrior(StandardPrior):
    """sample_near without noise: draw k of anchor e is mu[e] + STEP * k, so the layout
    [E, n, d] of every generated batch can be checked exactly."""

    STEP = 0.25

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        self.sample_encoders: list = []

    def sample(self, n: int, *, encoder=None) -> Tensor:
        self.sample_encoders.append(encoder)
        return super().sample(n, encoder=encoder)

    def sample_near(self, mu: Tensor, log_var: Tensor, n: int) -> Tensor:
        steps = self.STEP * torch.arange(n, dtype=mu.dtype).view(1, n, 1)
        return mu.unsqueeze(1) + steps


class Toy(LatentVariableModel):
    """Linear encoder, sigmoid-linear decoder (images in [0, 1]), a dropout submodule to
    have train/eval behaviour; records the flags and row count of every decoder call."""

    def __init__(self, prior: StandardPrior) -> None:
        super().__init__(prior)
        self.input_shape, self.latent_dim, self.likelihood = (1, 3, 4), LATENT, "bernoulli"
        gen = torch.Generator().manual_seed(0)
        self.enc = nn.Linear(D, LATENT)
        self.dec = nn.Linear(LATENT, D)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
        self.dropout = nn.Dropout(0.5)
        self.decoder_calls: list[tuple[int, bool, bool]] = []

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu = self.enc(x)
        return mu, torch.zeros_like(mu)

    def decode(self, z: Tensor) -> Tensor:
        self.decoder_calls.append((z.shape[0], self.training, torch.is_grad_enabled()))
        return torch.sigmoid(self.dec(self.dropout(z)))


def expected_near(model: Toy, x: Tensor, n: int) -> Tensor:
    """What exemplar-conditioned generation must give with the LadderPrior: [E, n, D]."""
    with torch.no_grad():
        mu = model.enc(x)
        z = mu.unsqueeze(1) + LadderPrior.STEP * torch.arange(n, dtype=mu.dtype).view(1, n, 1)
        return torch.sigmoid(model.dec(z))


def images(n: int, seed: int = 5) -> Tensor:
    return torch.rand(n, D, generator=torch.Generator().manual_seed(seed))


def test_sample_images_shape_batching_and_encoder():
    model = Toy(LadderPrior(LATENT))
    out = sample_images(model, 11, batch_size=4)
    assert out.shape == (11, D) and out.device.type == "cpu" and not out.requires_grad
    assert ((out >= 0) & (out <= 1)).all()
    assert [rows for rows, _, _ in model.decoder_calls] == [4, 4, 3]
    assert model.prior.sample_encoders == [model.encode] * 3


def test_exemplar_conditioned_samples_layout_and_batching():
    model = Toy(LadderPrior(LATENT))
    x = images(7)
    out = exemplar_conditioned_samples(model, x, 3, batch_size=5)
    assert out.shape == (7, 3, D)
    torch.testing.assert_close(out, expected_near(model, x, 3))
    rows = [r for r, _, _ in model.decoder_calls]
    assert sum(rows) == 21 and max(rows) <= 5


def test_exemplar_conditioned_samples_use_the_priors_default_kernel():
    model = Toy(StandardPrior(LATENT))  # default sample_near: N(mu, exp(log_var)) = N(mu, I)
    torch.manual_seed(0)
    out = exemplar_conditioned_samples(model, images(2), 4)
    assert out.shape == (2, 4, D)
    assert (out[:, 1:] - out[:, :1]).abs().max() > 1e-3  # draws around one exemplar differ


def test_iterative_generation_chains_from_the_start():
    model = Toy(LadderPrior(LATENT))
    start = images(5)
    out = iterative_generation(model, start, steps=3, batch_size=2)
    assert out.shape == (4, 5, D)
    assert torch.equal(out[0], start)
    x = start
    for t in range(1, 4):
        x = expected_near(model, x, 1)[:, 0]
        torch.testing.assert_close(out[t], x)
    assert max(r for r, _, _ in model.decoder_calls) <= 2


def test_augment_dataset_labels_and_order():
    model = Toy(LadderPrior(LATENT))
    x, labels = images(6), torch.tensor([3, 1, 4, 1, 5, 9], dtype=torch.int32)
    aug, aug_labels = augment_dataset(model, x, labels, per_example=4, batch_size=8, progress=False)
    assert aug.shape == (24, D)
    torch.testing.assert_close(aug, expected_near(model, x, 4).reshape(24, D))
    assert aug_labels.dtype == torch.int64
    assert aug_labels.tolist() == [v for v in labels.tolist() for _ in range(4)]
    aug2, none = augment_dataset(model, x, None, per_example=2, progress=False)
    assert aug2.shape == (12, D) and none is None
    with pytest.raises(ValueError, match=r"labels: expected a tensor of shape \[6\]"):
        augment_dataset(model, x, labels[:5], per_example=2, progress=False)
    with pytest.raises(TypeError, match="integer"):
        augment_dataset(model, x, labels.float(), per_example=2, progress=False)


def _run_all(model: Toy) -> None:
    x = images(3)
    sample_images(model, 2)
    exemplar_conditioned_samples(model, x, 2)
    iterative_generation(model, x, 2)
    augment_dataset(model, x, None, 2, progress=False)


@pytest.mark.parametrize("setup", ["train", "eval", "mixed"])
def test_generation_runs_in_eval_without_grad_and_restores_mode(setup):
    model = Toy(LadderPrior(LATENT))
    model.train(setup != "eval")
    if setup == "mixed":
        model.dropout.eval()
    before = [m.training for m in model.modules()]
    _run_all(model)
    assert [m.training for m in model.modules()] == before
    assert model.decoder_calls and all(not train and not grad for _, train, grad in model.decoder_calls)
    assert torch.is_grad_enabled()


def test_generation_validates_arguments():
    model = Toy(LadderPrior(LATENT))
    x = images(3)
    with pytest.raises(ValueError, match="n: expected an int >= 1"):
        sample_images(model, 0)
    with pytest.raises(ValueError, match="per_exemplar"):
        exemplar_conditioned_samples(model, x, 0)
    with pytest.raises(ValueError, match=r"exemplars: expected shape \[N, 12\]"):
        exemplar_conditioned_samples(model, x[:, :5], 2)
    with pytest.raises(ValueError, match="steps"):
        iterative_generation(model, x, 0)
    with pytest.raises(ValueError, match="batch_size"):
        augment_dataset(model, x, None, 2, batch_size=0, progress=False)
    with pytest.raises(TypeError, match="LatentVariableModel"):
        sample_images(nn.Linear(2, 2), 3)


def test_save_augmented_round_trip(tmp_path):
    x = images(10)
    labels = torch.arange(10) % 3
    path = tmp_path / "sub" / "aug.npz"
    save_augmented(path, x, labels, (1, 3, 4))
    assert sorted(p.name for p in path.parent.iterdir()) == ["aug.npz"]  # no temporary left
    with np.load(path) as archive:  # the `array` reader's keys and grey layout [M, H, W]
        assert archive["train"].dtype == np.uint8 and archive["train"].shape == (10, 3, 4)
        assert archive["train_labels"].dtype == np.int64
        np.testing.assert_array_equal(archive["train"].reshape(10, D), np.round(x.double().numpy() * 255))
    back, back_labels = load_augmented(path)
    assert (back - x).abs().max() <= 0.5 / 255 + 1e-6
    assert torch.equal(back_labels, labels)
    save_augmented(path, torch.tensor([[0.0] * D, [1.0] * D]), None, (1, 3, 4))  # overwrites in place
    back, back_labels = load_augmented(path)
    assert back_labels is None and back[0].eq(0).all() and back[1].eq(1).all()


def test_save_augmented_rejects_bad_input_without_writing(tmp_path):
    path = tmp_path / "aug.npz"
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        save_augmented(path, images(2) * 2, None, (1, 3, 4))
    with pytest.raises(ValueError, match="labels"):
        save_augmented(path, images(2), torch.zeros(3, dtype=torch.long), (1, 3, 4))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="aug.npz"):
        load_augmented(path)


@pytest.mark.parametrize("prior_name", ["standard", "exemplar"])
def test_real_vae_generation_smoke(prior_name):
    from exvae_fast.models import VAE
    from exvae_fast.priors import ExemplarPrior

    torch.manual_seed(0)
    x = torch.rand(3, 784)
    prior = StandardPrior(8) if prior_name == "standard" else ExemplarPrior(x, 8, mode="exact")
    model = VAE(prior, input_shape=(1, 28, 28), latent_dim=8, likelihood="bernoulli").train()
    if prior_name == "exemplar":
        prior.refresh(model.encode)  # the exemplar prior samples from its cache
    assert sample_images(model, 5, batch_size=2).shape == (5, 784)
    assert exemplar_conditioned_samples(model, x, 2).shape == (3, 2, 784)
    chain = iterative_generation(model, x, 2)
    assert chain.shape == (3, 3, 784) and ((chain >= 0) & (chain <= 1)).all()
    assert not math.isnan(float(chain.sum()))
    aug, labels = augment_dataset(model, x, torch.arange(3), 2, progress=False)
    assert aug.shape == (6, 784) and labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert all(m.training for m in model.modules())
