"""The nastrain-cpu plugin: rewrites one-shot supernets on a CPU with the faster kernels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

import nastrain
from nastrain_cpu.kernels import optimize_for_cpu


@nastrain.hookimpl
def nastrain_prepare_model(
    trainer: Any, model: nn.Module, device: torch.device, modules: Sequence[nn.Module]
) -> dict[str, int] | None:
    """Rewrite ``modules`` (the candidates, and the modules marked rewritable) of a supernet
    about to train on a CPU with :func:`~nastrain_cpu.kernels.optimize_for_cpu`; returns what
    was rewritten. Nothing on another device, nor when the trainer was asked for the
    contiguous memory format (``channels_last=False``: the kernels are tuned for
    channels-last). Alike separable convolutions reading one input are computed together
    (``group_separables``) only for a trainer whose ``runs_every_candidate`` is true (DARTS:
    every candidate runs in every pass)."""
    if torch.device(device).type != "cpu":
        return None
    if getattr(trainer, "channels_last_requested", None) is False:
        return None
    if not modules:
        return None
    every = bool(getattr(trainer, "runs_every_candidate", False))
    return optimize_for_cpu(model, modules, group_separables=every)
