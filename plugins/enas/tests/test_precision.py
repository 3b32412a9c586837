"""The single-path trainers under mixed precision: the weight step's loss scaler of
``"16-mixed"`` (run on the CPU here, where users are refused it) skips an overflowing step and
lowers the scale; under ``"bf16-mixed"`` the shared model runs in bfloat16 while the weights
and ENAS's controller stay float32 (the planted tests at both precisions: test_planted_bn.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import nastrain
from nastrain import oneshot
from nastrain_enas import EnasTrainer, RandomOneShotTrainer


class Space(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.op = nastrain.LayerChoice({"a": nn.Linear(8, 8), "b": nn.Linear(8, 8)}, label="op")
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.op(x))


def data() -> TensorDataset:
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    return TensorDataset(x, (x[:, 0] > 0).long())


def test_16_mixed_weight_step_skips_an_overflow_and_lowers_the_scale(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(oneshot, "FLOAT16_DEVICE_TYPES", ("cuda", "cpu"))
    torch.manual_seed(0)
    trainer = RandomOneShotTrainer(
        Space(), nn.CrossEntropyLoss(), None, None, 1, data(), batch_size=16, seed=0,
        progress=False, precision="16-mixed",
    )  # fmt: skip
    batch = trainer.to_device(data()[:16])
    trainer.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**120)  # float16 overflows
    before = [w.detach().clone() for w in trainer.weights]
    trainer.search_step(batch, None)
    trainer._update_scaler()
    assert all(torch.equal(b, w) for b, w in zip(before, trainer.weights))
    assert trainer.loss_scale == 2.0**119
    trainer.grad_scaler = torch.amp.GradScaler("cpu")
    trainer.search_step(batch, None)
    trainer._update_scaler()
    assert not all(torch.equal(b, w) for b, w in zip(before, trainer.weights))


def test_bf16_enas_runs_the_model_in_bfloat16_and_keeps_float32_state() -> None:
    seen: list[torch.dtype] = []
    model = Space()
    model.head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    trainer = EnasTrainer(
        model, nn.CrossEntropyLoss(), None, lambda logits, y: 1.0, None, 1, data(),
        batch_size=16, seed=0, progress=False, precision="bf16-mixed",
    )  # fmt: skip
    trainer.fit()
    assert seen and set(seen) == {torch.bfloat16}  # weight steps and rewards alike
    params = [*trainer.weights, *trainer.controller.parameters()]
    assert all(p.dtype == torch.float32 for p in params)
    assert trainer.export() in ({"op": "a"}, {"op": "b"})
