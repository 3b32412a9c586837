"""The ``nastrain_prepare_model`` hook: what plugins are given, when they are asked, and a
plugin that raises (the search runs without its rewrite, a warning names it).

The plugins here are test doubles registered with ``nastrain_plugin``; with nastrain-cpu
installed, its own answer runs beside them and changes nothing these tests check.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import nastrain
from nastrain.oneshot import REWRITE_ENV, SupernetTrainer
from nastrain.plugins import PluginWarning
from nastrain.utils import allow_rewrite, replace_layer_choice


class First(nn.Module):
    """The first candidate of a choice."""

    def __init__(self, choice: nastrain.LayerChoice) -> None:
        super().__init__()
        self.op = choice[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class FirstTrainer(SupernetTrainer):
    """Trains the first candidate of every choice with SGD."""

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        x = torch.randn(8, 3, 6, 6)
        super().__init__(
            model,
            loss=nn.functional.mse_loss,
            metrics=None,
            num_epochs=1,
            dataset=TensorDataset(x, torch.zeros(8, 2)),
            batch_size=4,
            progress=False,
            device="cpu",
            **kwargs,
        )
        replace_layer_choice(self.model, First)
        self.prepare_model()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.steps = 0

    def search_step(self, train_batch: Any, valid_batch: Any) -> dict[str, float]:
        x, y = train_batch
        self.optimizer.zero_grad()
        loss = self.loss(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        return {"loss": loss.item()}

    def checkpointables(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer}

    def export(self) -> dict[str, Any]:
        return {"op": "conv"}


def space(mark_head: bool = False) -> nn.Sequential:
    """A stem, one choice of two candidates and a head."""
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    return nn.Sequential(
        nn.Conv2d(3, 4, 1),
        nastrain.LayerChoice(
            {"conv": nn.Conv2d(4, 4, 3, padding=1), "pool": nn.MaxPool2d(3, 1, 1)}, label="op"
        ),
        allow_rewrite(head) if mark_head else head,
    )


class Recorder:
    """A plugin recording each ``nastrain_prepare_model`` call; it rewrites nothing."""

    def __init__(self, answer: dict[str, int] | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.answer = answer

    @nastrain.hookimpl
    def nastrain_prepare_model(self, trainer, model, device, modules):
        call = {"trainer": trainer, "model": model, "device": device, "modules": modules}
        self.calls.append(call)
        return self.answer


def test_plugins_get_the_moved_model_and_only_the_candidates_and_marked_modules(
    nastrain_plugin,
) -> None:
    recorder = Recorder()
    nastrain_plugin(recorder, "recorder")
    model = space()
    candidates = list(model[1].candidates)
    trainer = FirstTrainer(model)
    (call,) = recorder.calls
    assert call["trainer"] is trainer and call["model"] is trainer.model
    assert call["device"] == torch.device("cpu")
    assert [id(m) for m in call["modules"]] == [id(m) for m in candidates]
    assert all(m is not model[0] and m is not model[2] for m in call["modules"])

    marked = space(mark_head=True)
    FirstTrainer(marked)
    assert any(m is marked[2] for m in recorder.calls[1]["modules"])


def test_what_a_plugin_rewrote_is_logged_once_without_the_zero_counts(
    nastrain_plugin, caplog
) -> None:
    nastrain_plugin(Recorder({"widgets": 2, "gadgets": 0}), "recorder")
    with caplog.at_level(logging.INFO, logger="nastrain"):
        trainer = FirstTrainer(space())
        trainer.fit()
    lines = [r.getMessage() for r in caplog.records if "rewrote the supernet" in r.getMessage()]
    assert [line for line in lines if line.startswith("recorder")] == [
        "recorder rewrote the supernet: {'widgets': 2}"
    ]


def test_a_plugin_that_raises_is_named_in_a_warning_and_the_search_runs(nastrain_plugin) -> None:
    class Broken:
        @nastrain.hookimpl
        def nastrain_prepare_model(self, model):
            raise RuntimeError("kernel on fire")

    after = Recorder()
    nastrain_plugin(after, "after")  # registered first: called after the broken one
    nastrain_plugin(Broken(), "broken")
    with pytest.warns(PluginWarning, match=r"plugin 'broken' failed .*kernel on fire.* without"):
        trainer = FirstTrainer(space())
    assert len(after.calls) == 1  # the other plugin still ran
    trainer.fit()
    assert trainer.steps == 1 and trainer.epoch == 1  # 4 weight-half samples, batches of 4


def test_rewrite_model_false_and_the_environment_variable_skip_the_hook(
    nastrain_plugin, monkeypatch
) -> None:
    recorder = Recorder()
    nastrain_plugin(recorder, "recorder")
    FirstTrainer(space(), rewrite_model=False)
    monkeypatch.setenv(REWRITE_ENV, "0")
    FirstTrainer(space())
    assert recorder.calls == []
    monkeypatch.setenv(REWRITE_ENV, "1")
    FirstTrainer(space())
    assert len(recorder.calls) == 1
