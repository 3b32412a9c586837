"""The core's default hook implementations, registered like any other plugin.

Each is ``trylast`` so that plugins run first (or wrap them). The search strategies of
multi-trial experiments are registered by :mod:`nastrain.experiments.builtin`, through the
same hook a plugin would use.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from torch import nn

from nastrain.hookspecs import hookimpl
from nastrain.reporting import Metric
from nastrain.trainer import RAN, BaseTrainer, run_own_method

logger = logging.getLogger("nastrain")


@hookimpl(trylast=True)
def nastrain_fit(trainer: BaseTrainer) -> Any:
    """Run the trainer's own ``fit``."""
    run_own_method(trainer, "fit")
    return RAN


@hookimpl(trylast=True)
def nastrain_export(trainer: BaseTrainer) -> Any:
    """Run the trainer's own ``export``."""
    return run_own_method(trainer, "export")


@hookimpl(trylast=True)
def nastrain_replace_module(
    module: nn.Module, init_fn: Callable[[Any], nn.Module | None] | None
) -> nn.Module | None:
    """Use the ``init_fn`` the caller of ``replace_layer_choice`` & co. passed, if any."""
    return init_fn(module) if init_fn is not None else None


@hookimpl(trylast=True)
def nastrain_on_report(trainer: BaseTrainer | None, metric: Metric, final: bool) -> None:
    """Log every reported result on the ``nastrain`` logger."""
    who = type(trainer).__name__ if trainer is not None else "no trainer"
    logger.info("%s result (%s): %s", "final" if final else "intermediate", who, metric)
