"""Devices and precision of the one-shot loop: ``device="auto"`` and torch's own forms,
checkpoints that carry CUDA RNG states resumed on a machine with fewer GPUs (or none), an
optimizer that arrives with its state on another device (this machine has no GPU: the CUDA
side is simulated where torch allows, and said so); ``precision``'s names, its autocast
through the loop's helpers, and a warning for a trainer that never asks for it."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import nastrain
from nastrain import seeding
from nastrain.oneshot import CHECKPOINT_FILE, SupernetTrainer
from nastrain.utils import replace_layer_choice, resolve_device


class First(nn.Module):
    def __init__(self, choice: Any) -> None:
        super().__init__()
        self.op = choice[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Tiny(SupernetTrainer):
    name = "tiny"

    def __init__(self, optimizer: torch.optim.Optimizer | None = None, **kwargs: Any) -> None:
        torch.manual_seed(0)
        model = nn.Sequential(nastrain.LayerChoice([nn.Linear(3, 3), nn.Identity()], label="op"))
        x = torch.randn(16, 3, generator=torch.Generator().manual_seed(1))
        super().__init__(
            model, loss=nn.functional.mse_loss, metrics=None, num_epochs=2,
            dataset=TensorDataset(x, x), batch_size=4, progress=False, **kwargs,
        )  # fmt: skip
        replace_layer_choice(self.model, First)
        self.prepare_model()
        self.optimizer = optimizer or torch.optim.Adam(self.model.parameters(), lr=0.01)

    def search_step(self, train_batch: Any, valid_batch: Any) -> dict[str, float]:
        self.optimizer.zero_grad()
        loss = self.loss(self.model(train_batch[0]), train_batch[1])
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}

    def checkpointables(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer}

    def export(self) -> dict[str, Any]:
        return {"op": "0"}


def test_auto_is_cuda_then_mps_then_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert Tiny(device="auto").device == resolve_device(None)
    # Simulated machines (torch's own checks patched; no trainer is built under them).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == resolve_device(None) == torch.device("cuda")


def test_cuda_rng_states_go_to_the_gpus_there_are_in_index_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Simulated: a checkpoint of 11 GPUs read on a machine with 2.
    restored: list[tuple[int, int]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(
        torch.cuda, "set_rng_state", lambda state, i: restored.append((i, int(state[0])))
    )
    cpu, python, numpy_state = seeding.rng_state()
    states = {f"cuda{i}": torch.tensor([100 + i], dtype=torch.uint8) for i in (10, 2, 1, 0)}
    seeding.set_rng_state({**cpu, **states}, python, numpy_state)
    assert restored == [(0, 100), (1, 101)]


def test_a_checkpoint_with_cuda_rng_states_resumes_on_a_cpu(tmp_path: Any) -> None:
    straight = Tiny()
    straight.fit()
    first = Tiny(checkpoint_dir=tmp_path)
    first.num_epochs = 1
    first.fit()
    # What a GPU machine writes: CUDA generators' states beside the CPU's.
    path = tmp_path / CHECKPOINT_FILE
    state = torch.load(path, weights_only=True)
    state["rng"]["cuda0"] = torch.zeros(16, dtype=torch.uint8)
    torch.save(state, path)
    resumed = Tiny(checkpoint_dir=tmp_path)
    resumed.fit()
    assert resumed.epoch == 2
    for a, b in zip(resumed.model.parameters(), straight.model.parameters()):
        assert torch.equal(a, b)


def test_an_optimizer_handed_over_with_state_elsewhere_has_it_moved_to_its_parameters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trainer = Tiny()
    trainer.fit()  # Adam has moments now
    moved: list[str] = []
    real_to = torch.Tensor.to

    def to(t: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if t.device.type != "meta":
            return real_to(t, *args, **kwargs)
        moved.append(str(args[0]))  # a meta tensor has no data: stands in for a GPU's
        return torch.zeros(t.shape)

    for state in trainer.optimizer.state.values():  # as if they lived on another device
        for key, value in list(state.items()):
            if key != "step":
                state[key] = value.to("meta")
    monkeypatch.setattr(torch.Tensor, "to", to)
    trainer._optimizer_states_to_device()
    monkeypatch.undo()
    assert moved and set(moved) == {"cpu"}
    assert all(v.device == p.device for p, s in trainer.optimizer.state.items() for v in s.values())


class Mixed(Tiny):
    """Tiny's step through the loop's precision helpers."""

    name = "mixed"

    def search_step(self, train_batch: Any, valid_batch: Any) -> dict[str, float]:
        self.optimizer.zero_grad()
        with self.autocast():
            out = self.model(train_batch[0])
            loss = self.loss(out.float(), train_batch[1])
        self.dtypes.add(out.dtype)
        self.backward(loss)
        self.optimizer_step(self.optimizer)
        return {"loss": loss.item()}


def test_precision_names_are_lightnings_and_16_mixed_needs_a_gpu() -> None:
    with pytest.raises(ValueError, match=r"one of '32', '16-mixed', 'bf16-mixed'.*got '16'"):
        Tiny(precision="16")
    with pytest.raises(ValueError, match=r"16-mixed' on device 'cpu'.*use precision='bf16-mixed"):
        Tiny(precision="16-mixed")
    assert Tiny().autocast_dtype is None and Tiny().grad_scaler is None


def test_bf16_mixed_autocasts_the_helpers_passes_and_warns_a_trainer_that_ignores_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mixed = Mixed(precision="bf16-mixed")
    mixed.dtypes = set()
    with caplog.at_level("WARNING", logger="nastrain"):
        mixed.fit()
    assert mixed.dtypes == {torch.bfloat16}
    assert "has no effect" not in caplog.text
    with caplog.at_level("WARNING", logger="nastrain"):
        Tiny(precision="bf16-mixed").fit()  # plain loss.backward(), no autocast
    assert caplog.text.count("Tiny: precision='bf16-mixed' has no effect") == 1
