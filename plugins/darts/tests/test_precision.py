"""DARTS under mixed precision: its custom autograd functions under CPU bfloat16 autocast
match float32 within bfloat16's precision; a ``precision="bf16-mixed"`` search gives alpha
gradients close to float32's (and finds the planted op: test_planted.py); ``"16-mixed"``'s
loss scaler (run on the CPU here) scales, skips overflowing steps and is checkpointed."""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from nastrain import oneshot
from nastrain_darts import DartsTrainer
from nastrain_darts._fast import WeightedSum
from nastrain_darts.ops import FactorizedReduce
from nastrain_darts.spaces import DartsSpace

# bfloat16 keeps 8 mantissa bits (relative rounding ~4e-3 per value); sums of a few dozen
# rounded products stay within a few 1e-2 of the float32 result relative to its size.
RTOL = 3e-2


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool((a.float() - b.float()).norm() <= RTOL * b.float().norm())


def test_weighted_sum_under_bf16_autocast_matches_float32() -> None:
    torch.manual_seed(0)
    weights = torch.softmax(torch.randn(3), 0).requires_grad_()
    outputs = [torch.randn(2, 4, 5, 5, requires_grad=True) for _ in range(3)]
    out32 = WeightedSum.apply(weights, [0, 1, 2], *outputs)
    g32 = torch.autograd.grad(out32.square().sum(), [weights, *outputs])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = [o.to(torch.bfloat16) for o in outputs]
        out16 = WeightedSum.apply(weights, [0, 1, 2], *low)
    g16 = torch.autograd.grad(out16.float().square().sum(), [weights, *outputs])
    assert _close(out16, out32)
    for a, b in zip(g16, g32):
        assert a.dtype == b.dtype == torch.float32
        assert _close(a, b)


def test_factorized_reduce_under_bf16_autocast_matches_float32() -> None:
    torch.manual_seed(0)
    module = FactorizedReduce(4, 8)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    # A random projection as the loss: the sum of squares of batch-normalised outputs is
    # nearly constant, its gradient all cancellation, which no low precision keeps.
    r = torch.randn(2, 8, 4, 4)
    out32 = module(x)
    (gx32,) = torch.autograd.grad((out32 * r).sum(), [x])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out16 = module(x)
    (gx16,) = torch.autograd.grad((out16.float() * r).sum(), [x])
    assert out16.dtype == torch.bfloat16
    assert gx16.dtype == torch.float32
    assert _close(out16, out32)
    assert _close(gx16, gx32)


# --- the search under precision="bf16-mixed" (and the loss scaler of "16-mixed") ------------


def _shipped(precision: str, unrolled: bool, seed: int = 0) -> tuple[DartsTrainer, Any]:
    """A small shipped space (C=4, 2 cells) on 3x8x8 inputs, its weights and alpha the same for
    every precision (seeded); returns the trainer and one (train, valid) pair of batches."""
    torch.manual_seed(seed)
    model = DartsSpace(C=4, num_classes=3, layers=2)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 3, 8, 8, generator=g)
    y = torch.randint(0, 3, (32,), generator=g)
    trainer = DartsTrainer(
        model, nn.CrossEntropyLoss(), None, None, 1, TensorDataset(x, y), batch_size=16,
        unrolled=unrolled, seed=seed, progress=False, precision=precision,
    )  # fmt: skip
    batches = ((x[:16], y[:16]), (x[16:], y[16:]))
    return trainer, trainer.to_device(batches)


def _alpha_gradient(trainer: DartsTrainer, batches: Any) -> torch.Tensor:
    (trn_x, trn_y), (val_x, val_y) = batches
    trainer.model.train()
    for a in trainer.arch.parameters():
        a.grad = None
    if trainer.unrolled:
        trainer._unrolled_arch_gradient(trn_x, trn_y, val_x, val_y)
    else:
        trainer._alpha_grad(val_x, val_y, accumulate=True)
    return torch.cat([a.grad.flatten() for a in trainer.arch.parameters()])


@pytest.mark.parametrize("unrolled", [False, True], ids=["first-order", "second-order"])
def test_bf16_alpha_gradients_agree_with_float32(unrolled: bool) -> None:
    # One architecture gradient of the shipped space, float32 and bf16-mixed, from the same
    # weights, alpha and batches. bfloat16 rounds each value to 8 significant bits (~0.4%),
    # and alpha's gradient is made of differences between the candidates' contributions
    # (softmax's Jacobian subtracts their weighted mean: near-uniform alphas make them nearly
    # cancel), so its relative error is far larger than a value's: measured 15-17%, first
    # and second order, with or without nastrain-cpu's kernels, at a cosine of 0.986-0.990
    # with float32's. Allowed: 25% and a cosine of 0.97 (the direction Adam follows);
    # a gradient that autocast broke (a wrong sign, a dropped term) is far outside both.
    # The second order's finite difference runs in float32: its error is the other passes'.
    reference = _alpha_gradient(*_shipped("32", unrolled))
    trainer, batches = _shipped("bf16-mixed", unrolled)
    assert trainer.autocast_dtype is torch.bfloat16 and trainer.grad_scaler is None
    mixed = _alpha_gradient(trainer, batches)
    assert mixed.dtype == torch.float32  # alpha and its gradient stay float32
    error = ((mixed - reference).norm() / reference.norm()).item()
    cosine = nn.functional.cosine_similarity(mixed, reference, dim=0).item()
    assert error < 0.25 and cosine > 0.97, (error, cosine)
    assert not torch.equal(mixed, reference)  # autocast did change the arithmetic


def test_bf16_search_of_the_shipped_space_runs_and_keeps_float32_state() -> None:
    trainer, _ = _shipped("bf16-mixed", unrolled=True)
    trainer.fit()
    assert all(math.isfinite(v) for v in trainer.history[-1]["metrics"].values())
    params = [*trainer.weights, *trainer.arch.parameters()]
    assert all(p.dtype == torch.float32 for p in params)


@pytest.fixture
def float16_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let "16-mixed" run on the CPU (refused there for users: float16 autocast is for GPUs),
    so that the loss scaler's path is tested where CI runs."""
    monkeypatch.setattr(oneshot, "FLOAT16_DEVICE_TYPES", ("cuda", "cpu"))


@pytest.mark.parametrize("unrolled", [False, True], ids=["first-order", "second-order"])
def test_16_mixed_scales_the_losses_and_agrees_with_float32(
    float16_on_cpu: None, unrolled: bool
) -> None:
    reference = _alpha_gradient(*_shipped("32", unrolled))
    trainer, batches = _shipped("16-mixed", unrolled)
    assert isinstance(trainer.grad_scaler, torch.amp.GradScaler)
    scale = trainer.loss_scale
    assert scale == 2.0**16  # torch's initial scale
    # alpha's gradient is left scaled, as a backward under the scaler leaves it.
    mixed = _alpha_gradient(trainer, batches) / scale
    # float16 keeps 11 significant bits (bfloat16: 8), so it is closer to float32 than the
    # bf16 test's bounds: those bounds hold with room.
    error = ((mixed - reference).norm() / reference.norm()).item()
    cosine = nn.functional.cosine_similarity(mixed, reference, dim=0).item()
    assert error < 0.25 and cosine > 0.97, (error, cosine)


@pytest.mark.parametrize("unrolled", [False, True], ids=["first-order", "second-order"])
def test_16_mixed_skips_a_step_whose_gradients_overflow_and_lowers_the_scale(
    float16_on_cpu: None, unrolled: bool
) -> None:
    trainer, batches = _shipped("16-mixed", unrolled)
    trainer.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**120)  # float16 overflows
    before = [p.detach().clone() for p in [*trainer.weights, *trainer.arch.parameters()]]
    trainer.model.train()
    trainer.search_step(*batches)
    trainer._update_scaler()
    after = [*trainer.weights, *trainer.arch.parameters()]
    assert all(torch.equal(b, a) for b, a in zip(before, after))  # both steps skipped
    assert trainer.loss_scale == 2.0**119  # halved by the update
    trainer.grad_scaler = torch.amp.GradScaler("cpu")  # a scale that fits: the steps run
    trainer.search_step(*batches)
    trainer._update_scaler()
    assert not all(torch.equal(b, a) for b, a in zip(before, after))


def test_16_mixed_search_checkpoints_its_loss_scale_and_resumes(
    float16_on_cpu: None, tmp_path: Any
) -> None:
    trainer, _ = _shipped("16-mixed", unrolled=False)
    trainer.options = attrs.evolve(trainer.options, checkpoint_dir=tmp_path)
    trainer.fit()
    saved = trainer.grad_scaler.state_dict()
    resumed, _ = _shipped("16-mixed", unrolled=False)
    resumed.load_checkpoint(tmp_path)
    assert resumed.grad_scaler.state_dict() == saved


def test_precision_names_and_devices_are_checked() -> None:
    with pytest.raises(ValueError, match="'32', '16-mixed', 'bf16-mixed'.*got 'bf16'"):
        _shipped("bf16", unrolled=False)
    with pytest.raises(ValueError, match="float16 autocast with a loss scaler is for GPUs"):
        _shipped("16-mixed", unrolled=False)
