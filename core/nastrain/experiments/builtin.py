"""The experiments package's hook implementations: the core's search strategies and
executors, registered through ``nastrain_register_strategies`` and
``nastrain_register_executors`` like any plugin's (``trylast``).

Importing this module (the plugins load it first) must not import torch: the executors'
factories are imported when an experiment builds one, through :func:`_local` and
:func:`_inline`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from nastrain.experiments.strategies import (
    GridSearch,
    MedianStop,
    RandomSearch,
    RegularizedEvolution,
)
from nastrain.hookspecs import hookimpl

if TYPE_CHECKING:
    from nastrain.experiments.executor import ExecutorContext, InlineExecutor, LocalExecutor


@hookimpl(trylast=True)
def nastrain_register_strategies(register: Callable[..., None]) -> None:
    """The core's strategies: ``random``, ``grid``, ``evolution`` and ``median_stop``."""
    for strategy in (RandomSearch, GridSearch, RegularizedEvolution, MedianStop):
        register(strategy)


def _local(context: ExecutorContext) -> LocalExecutor:
    """``executor="local"``: :func:`nastrain.experiments.executor.local_executor`."""
    from nastrain.experiments.executor import local_executor  # imports torch: only when used

    return local_executor(context)


def _inline(context: ExecutorContext) -> InlineExecutor:
    """``executor="inline"``: :func:`nastrain.experiments.executor.inline_executor`."""
    from nastrain.experiments.executor import inline_executor  # imports torch: only when used

    return inline_executor(context)


@hookimpl(trylast=True)
def nastrain_register_executors(register: Callable[..., None]) -> None:
    """The core's executors: ``local`` (worker processes, the default) and ``inline``."""
    register(_local, name="local")
    register(_inline, name="inline")
