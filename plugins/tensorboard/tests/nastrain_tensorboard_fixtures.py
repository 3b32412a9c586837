"""A model space and a trainer for the logger's tests, in a module that an experiment's
worker processes can import (the tests put this folder on ``sys.path``; workers inherit it).

Every result is a known function of the architecture: the trainer reports
``points * (epoch + 1) / epochs`` after each epoch, then ``{"default": points, "epochs":
epochs}``, where ``points`` is the sum of the chosen candidates' values.
"""

from __future__ import annotations

import torch
from torch import nn

import nastrain


class Value(nn.Module):
    """A candidate worth ``value`` points."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.value


class Space(nn.Module):
    """6 architectures: ``a`` in x/y/z (0/1/2 points), ``b`` in p/q (0/10 points)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nastrain.LayerChoice({"x": Value(0), "y": Value(1), "z": Value(2)}, label="a")
        self.b = nastrain.LayerChoice({"p": Value(0), "q": Value(10)}, label="b")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def points(model: nn.Module) -> float:
    """The points of a fixed model: the sum of its Values."""
    return sum(m.value for m in model.modules() if isinstance(m, Value))


@nastrain.register_trainer(name="tensorboard-test-score")
class ScoreTrainer(nastrain.BaseTrainer):
    """Reports ``points * (e + 1) / epochs`` after each epoch, then the points."""

    def __init__(self, model: nn.Module, epochs: int = 3) -> None:
        self.model = model
        self.epochs = epochs

    def fit(self) -> None:
        total = points(self.model)
        for epoch in range(self.epochs):
            nastrain.report_intermediate_result(total * (epoch + 1) / self.epochs)
        nastrain.report_final_result({"default": total, "epochs": self.epochs})
