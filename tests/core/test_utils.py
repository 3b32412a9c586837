"""Module replacement: the trainer guide's utilities and the nastrain_replace_module hook."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nastrain
from nastrain.utils import replace_choices, replace_input_choice, replace_layer_choice


class Picked(nn.Module):
    def __init__(self, choice: nastrain.LayerChoice) -> None:
        super().__init__()
        self.label = choice.label
        self.ops = nn.ModuleDict(choice.named_children())

    def forward(self, x):
        return sum(op(x) for op in self.ops.values())


class Space(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        inner = nastrain.LayerChoice([nn.Identity(), nn.ReLU()], label="inner")
        self.outer = nastrain.LayerChoice(
            {"nested": nn.Sequential(nn.Linear(3, 3), inner), "plain": nn.Linear(3, 3)},
            label="outer",
        )
        shared = nastrain.LayerChoice([nn.Tanh(), nn.Sigmoid()], label="act")
        self.blocks = nn.ModuleList(
            [shared, nastrain.LayerChoice([nn.Tanh(), nn.Sigmoid()], label="act")]
        )
        self.skip = nastrain.InputChoice(2, 1, label="skip")

    def forward(self, x):
        y = self.blocks[1](self.blocks[0](self.outer(x)))
        return self.skip([x, y])


def test_replace_layer_choice_replaces_every_choice_nested_ones_too() -> None:
    model = Space()
    modules = replace_layer_choice(model, Picked)
    assert [label for label, _ in modules] == ["outer", "inner", "act", "act"]
    assert not any(isinstance(m, nastrain.LayerChoice) for m in model.modules())
    assert isinstance(model.outer.ops["nested"][1], Picked)
    same = []
    assert replace_layer_choice(model, Picked, same) is same and same == []


def test_replace_input_choice_and_a_runnable_result() -> None:
    class Mean(nn.Module):
        def __init__(self, choice):
            super().__init__()
            self.label = choice.label

        def forward(self, inputs):
            return torch.stack(inputs).mean(0)

    model = Space()
    replace_layer_choice(model, Picked)
    replaced = replace_input_choice(model, Mean)
    assert [label for label, _ in replaced] == ["skip"]
    assert model(torch.randn(2, 3)).shape == (2, 3)


def test_a_shared_module_is_replaced_once() -> None:
    choice = nastrain.LayerChoice([nn.Identity(), nn.ReLU()], label="twice")
    model = nn.Sequential(choice, choice)
    modules = replace_layer_choice(model, Picked)
    assert len(modules) == 1 and model[0] is model[1]


class NewChoice(nastrain.Mutable):
    """A third-party kind of choice: a width picked from a list."""

    def __init__(self, widths, *, label):
        super().__init__()
        self.label = label
        self.widths = widths


class Relaxed(nn.Module):
    def __init__(self, choice):
        super().__init__()
        self.label = choice.label


class TeachesNewChoice:
    """A plugin teaching `MyOneShot` to relax `NewChoice`."""

    @nastrain.hookimpl
    def nastrain_replace_module(self, module, trainer):
        if isinstance(module, NewChoice) and isinstance(trainer, MyOneShot):
            return Relaxed(module)
        return None


class MyOneShot(nastrain.BaseOneShotTrainer):
    def __init__(self, model):
        self.model = model
        self.nas_modules = replace_choices(model)  # the trainer comes from the context

    def fit(self):
        pass

    def export(self):
        return {}


def test_a_plugin_teaches_a_one_shot_trainer_a_new_choice(nastrain_plugin) -> None:
    nastrain_plugin(TeachesNewChoice(), name="teacher")
    model = nn.Sequential(NewChoice([8, 16], label="width"))
    trainer = MyOneShot(model)
    assert [(label, type(m)) for label, m in trainer.nas_modules] == [("width", Relaxed)]


def test_a_choice_nobody_replaces_is_an_error_naming_it() -> None:
    model = nn.Sequential(NewChoice([8, 16], label="width"))
    with pytest.raises(LookupError, match=r"NewChoice 'width' for trainer MyOneShot"):
        MyOneShot(model)


def test_a_plugin_wrapper_sees_the_guides_init_fn_replacements(nastrain_plugin) -> None:
    seen = []

    class Spy:
        @nastrain.hookimpl(wrapper=True)
        def nastrain_replace_module(self, module, trainer):
            result = yield
            seen.append((module.label, type(result).__name__))
            return result

    nastrain_plugin(Spy(), name="spy")
    replace_layer_choice(Space(), Picked)
    assert seen == [("outer", "Picked"), ("inner", "Picked"), ("act", "Picked"), ("act", "Picked")]


def test_bad_replacements_are_errors() -> None:
    with pytest.raises(TypeError, match="LayerChoice 'outer'.*got str"):
        replace_layer_choice(Space(), lambda choice: "not a module")
    with pytest.raises(ValueError, match="model itself"):
        replace_layer_choice(nastrain.LayerChoice([nn.ReLU()], label="root"), Picked)
