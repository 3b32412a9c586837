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


@pytest.mark.parametrize("value", ["false", "No", "off", ""])
def test_the_environment_variable_takes_the_usual_words_for_off(
    nastrain_plugin, monkeypatch, value: str
) -> None:
    recorder = Recorder()
    nastrain_plugin(recorder, "recorder")
    monkeypatch.setenv(REWRITE_ENV, value)
    FirstTrainer(space())
    assert recorder.calls == []
    monkeypatch.setenv(REWRITE_ENV, "maybe")
    with pytest.raises(ValueError, match=r"NASTRAIN_REWRITE='maybe': expected 0/false"):
        FirstTrainer(space())


def test_a_plugin_that_raises_halfway_leaves_nothing_of_its_rewrite(nastrain_plugin) -> None:
    class Halfway:
        @nastrain.hookimpl
        def nastrain_prepare_model(self, model, modules):
            conv = next(m for m in modules if isinstance(m, nn.Conv2d))
            for parent in model.modules():
                for key, child in list(parent._modules.items()):
                    if child is conv:
                        parent._modules[key] = nn.Identity()
            model.register_forward_hook(lambda *args: None)
            raise RuntimeError("half done")

    model = space()
    conv = model[1]["conv"]
    nastrain_plugin(Halfway(), "halfway")
    with pytest.warns(PluginWarning, match="plugin 'halfway' failed .*half done"):
        trainer = FirstTrainer(model)
    assert trainer.model[1].op is conv  # the candidate it replaced is back
    assert not trainer.model._forward_hooks  # and the hook it added is gone


def test_a_wrapper_or_a_bad_answer_is_named_in_a_warning(nastrain_plugin) -> None:
    class Wrapper:
        @nastrain.hookimpl(wrapper=True)
        def nastrain_prepare_model(self, model):
            result = yield
            return result

    class Odd:
        @nastrain.hookimpl
        def nastrain_prepare_model(self, model):
            return {"widgets": "many"}

    nastrain_plugin(Wrapper(), "wrapper")
    nastrain_plugin(Odd(), "odd")
    with pytest.warns(PluginWarning) as caught:
        FirstTrainer(space())
    messages = [str(w.message) for w in caught]
    assert any(
        "plugin 'wrapper' implements nastrain_prepare_model as a wrapper" in m for m in messages
    )
    assert any("plugin 'odd' returned {'widgets': 'many'}" in m for m in messages)


def strided_stem_space() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 1, stride=2),
        nastrain.LayerChoice(
            {"conv": nn.Conv2d(4, 4, 3, padding=1), "pool": nn.MaxPool2d(3, 1, 1)}, label="op"
        ),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)),
    )


def test_falling_back_to_the_contiguous_format_is_said_once_naming_the_convolutions(
    caplog,
) -> None:
    with caplog.at_level(logging.WARNING, logger="nastrain"):
        trainer = FirstTrainer(strided_stem_space())
    assert not trainer.channels_last
    warned = [
        r.getMessage() for r in caplog.records if "contiguous memory format" in r.getMessage()
    ]
    assert len(warned) == 1 and "['0']" in warned[0] and "allow_rewrite" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nastrain"):
        FirstTrainer(strided_stem_space(), channels_last=False)  # asked for: no message
    assert not [r for r in caplog.records if "contiguous memory format" in r.getMessage()]


def test_a_convolution_its_owner_marks_channels_last_safe_is_not_a_hazard() -> None:
    model = strided_stem_space()
    model[0].channels_last_safe = True  # e.g. a weight holder computed without the library
    trainer = FirstTrainer(model)
    assert trainer.channels_last


def test_a_scheduler_of_another_optimizer_is_refused_before_training() -> None:
    elsewhere = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    trainer = FirstTrainer(
        space(), lr_scheduler=torch.optim.lr_scheduler.StepLR(elsewhere, step_size=1)
    )
    with pytest.raises(ValueError, match=r"FirstTrainer: lr_scheduler schedules a SGD that"):
        trainer.fit()
    assert trainer.steps == 0


def test_a_numpy_integer_seed_is_taken() -> None:
    np = pytest.importorskip("numpy")
    assert FirstTrainer(space(), seed=np.int64(3)).seed == 3
    with pytest.raises(TypeError, match="seed must be an int or None, got 2.5"):
        FirstTrainer(space(), seed=2.5)
