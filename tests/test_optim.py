"""NormalizedAdam: Adam on per-tensor unit-norm gradients (Yu et al. 2017)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from exvae_fast.train import GRAD_NORM_EPS, NormalizedAdam, load_checkpoint, save_checkpoint


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def batches(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)) for _ in range(n)]


def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    return scale * ((model(x) - y) ** 2).mean()


def run(model: nn.Module, opt: torch.optim.Optimizer, data, scales: list[float] | None = None) -> None:
    """One step per batch; the loss of step i is multiplied by scales[i]."""
    for i, (x, y) in enumerate(data):
        opt.zero_grad()
        loss_fn(model, x, y, 1.0 if scales is None else scales[i]).backward()
        opt.step()


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_matches_adam_fed_with_normalised_gradients(weight_decay):
    ours, ref = make_model(), make_model()
    opt = NormalizedAdam(ours.parameters(), lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=weight_decay)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=weight_decay)
    for x, y in batches(10):
        opt.zero_grad()
        ref_opt.zero_grad()
        loss_fn(ours, x, y).backward()
        loss_fn(ref, x, y).backward()
        for p in ref.parameters():
            p.grad /= p.grad.norm() + GRAD_NORM_EPS
        opt.step()
        ref_opt.step()
        for a, b in zip(ours.parameters(), ref.parameters()):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert opt.state[next(ours.parameters())]["step"] == 10


# Loss multipliers that change from step to step (>= 1, so GRAD_NORM_EPS stays negligible).
SCALES = [1000.0, 3.0, 50.0, 1.0, 1e4]


def test_step_is_invariant_to_the_gradient_scale():
    plain, scaled = make_model(), make_model()
    run(plain, NormalizedAdam(plain.parameters(), lr=1e-2), batches(5))
    run(scaled, NormalizedAdam(scaled.parameters(), lr=1e-2), batches(5), scales=[1000.0] * 5)
    for a, b in zip(plain.parameters(), scaled.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    varying = make_model()
    run(varying, NormalizedAdam(varying.parameters(), lr=1e-2), batches(5), scales=SCALES)
    for a, b in zip(plain.parameters(), varying.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_plain_adam_is_not_invariant_to_varying_scales():
    """Guards the test above: without the normalisation the same run ends elsewhere."""
    plain, varying = make_model(), make_model()
    run(plain, torch.optim.Adam(plain.parameters(), lr=1e-2), batches(5))
    run(varying, torch.optim.Adam(varying.parameters(), lr=1e-2), batches(5), scales=SCALES)
    diff = max((a - b).abs().max().item() for a, b in zip(plain.parameters(), varying.parameters()))
    assert diff > 1e-3


def test_zero_and_missing_gradients():
    w = nn.Parameter(torch.ones(3))
    frozen = nn.Parameter(torch.ones(2))
    opt = NormalizedAdam([w, frozen], lr=0.1)
    w.grad = torch.zeros(3)
    opt.step()
    assert torch.equal(w.detach(), torch.ones(3)) and frozen not in opt.state


def test_closure_loss_is_returned():
    model = make_model()
    opt = NormalizedAdam(model.parameters())
    x, y = batches(1)[0]

    def closure():
        opt.zero_grad()
        loss = loss_fn(model, x, y)
        loss.backward()
        return loss

    assert torch.is_tensor(opt.step(closure))


def test_state_dict_round_trip_continues_identically(tmp_path):
    data = batches(8)
    model = make_model()
    opt = NormalizedAdam(model.parameters(), lr=1e-2)
    run(model, opt, data[:4])
    save_checkpoint(tmp_path / "ck.pt", {"model": model.state_dict(), "optimizer": opt.state_dict()})
    saved_opt = copy.deepcopy(opt.state_dict())
    run(model, opt, data[4:])

    resumed = make_model(seed=123)
    state = load_checkpoint(tmp_path / "ck.pt")
    resumed.load_state_dict(state["model"])
    resumed_opt = NormalizedAdam(resumed.parameters(), lr=1e-2)
    resumed_opt.load_state_dict(state["optimizer"])
    assert resumed_opt.state_dict()["state"][0]["step"] == saved_opt["state"][0]["step"] == 4
    run(resumed, resumed_opt, data[4:])
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"lr": 0.0}, "lr"),
        ({"lr": -1e-3}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"betas": (1.0, 0.999)}, r"betas\[0\]"),
        ({"betas": (0.9, -0.1)}, r"betas\[1\]"),
        ({"betas": (0.9,)}, "betas"),
        ({"eps": -1e-8}, "eps"),
        ({"weight_decay": -0.1}, "weight_decay"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}: expected"):
        NormalizedAdam(make_model().parameters(), **kwargs)


def test_sparse_gradients_are_refused():
    emb = nn.Embedding(4, 2, sparse=True)
    opt = NormalizedAdam(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
