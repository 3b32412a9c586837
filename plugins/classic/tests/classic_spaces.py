"""A user's model space for scikit-learn's 8x8 digits, importable by experiment workers."""

from __future__ import annotations

import torch
from torch import nn

import nastrain


class DigitsSpace(nn.Module):
    """Six architectures: a linear or two-layer body, and one of three activations."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nastrain.LayerChoice(
            {
                "linear": nn.Linear(64, 32),
                "mlp": nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32)),
            },
            label="body",
        )
        self.act = nastrain.LayerChoice(
            {"relu": nn.ReLU(), "tanh": nn.Tanh(), "gelu": nn.GELU()}, label="act"
        )
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.body(x.flatten(1))))


def zero_head_space() -> DigitsSpace:
    """:class:`DigitsSpace` with a custom initialisation: its head starts at zero (so every
    class gets the same logit, a loss of ln 10, until it trains)."""
    space = DigitsSpace()
    nn.init.zeros_(space.head.weight)
    nn.init.zeros_(space.head.bias)
    return space
