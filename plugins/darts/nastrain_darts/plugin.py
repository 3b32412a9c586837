"""The nastrain-darts plugin: registers ``darts`` and relaxes choices for DARTS trainers."""

from __future__ import annotations

from typing import Any

from torch import nn

import nastrain
from nastrain_darts.trainer import DartsTrainer, replace_for_darts


@nastrain.hookimpl
def nastrain_register_trainers(register: Any) -> None:
    register(DartsTrainer)


@nastrain.hookimpl
def nastrain_replace_module(module: nn.Module, trainer: Any) -> nn.Module | None:
    return replace_for_darts(module, trainer)
