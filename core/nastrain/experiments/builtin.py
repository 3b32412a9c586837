"""The experiments package's hook implementations: the core's search strategies, registered
through ``nastrain_register_strategies`` like any plugin's (``trylast``)."""

from __future__ import annotations

from collections.abc import Callable

from nastrain.experiments.strategies import (
    GridSearch,
    MedianStop,
    RandomSearch,
    RegularizedEvolution,
)
from nastrain.hookspecs import hookimpl


@hookimpl(trylast=True)
def nastrain_register_strategies(register: Callable[..., None]) -> None:
    """The core's strategies: ``random``, ``grid``, ``evolution`` and ``median_stop``."""
    for strategy in (RandomSearch, GridSearch, RegularizedEvolution, MedianStop):
        register(strategy)
