"""The nastrain-enas plugin: registers ``enas``, ``random`` (alias ``spos``) and replaces
choices with sampling modules for those trainers."""

from __future__ import annotations

from typing import Any

from torch import nn

import nastrain
from nastrain_enas.enas import EnasTrainer
from nastrain_enas.sampling import replace_for_sampling
from nastrain_enas.spos import RandomOneShotTrainer


@nastrain.hookimpl
def nastrain_register_trainers(register: Any) -> None:
    register(EnasTrainer)
    register(RandomOneShotTrainer)
    register(RandomOneShotTrainer, name="spos")


@nastrain.hookimpl
def nastrain_replace_module(module: nn.Module, trainer: Any) -> nn.Module | None:
    return replace_for_sampling(module, trainer)
