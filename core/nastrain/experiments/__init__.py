"""Multi-trial experiments: an :class:`Experiment` asks a search strategy for architectures,
runs a classic trainer on each in worker processes, and records every result in a SQLite
store that resumes.

Built on the core (the spine, the model space and the trainers), which never imports this
package: :mod:`~nastrain.experiments.records` (the records, a leaf),
:mod:`~nastrain.experiments.strategies`, :mod:`~nastrain.experiments.store`,
:mod:`~nastrain.experiments.executor` and :mod:`~nastrain.experiments.experiment`.
"""

from __future__ import annotations

from nastrain.experiments.experiment import Experiment, ExperimentConfig, load_config
from nastrain.experiments.records import (
    ExperimentRecord,
    ExperimentResult,
    Mode,
    StrategySpec,
    Trial,
    TrialStatus,
)
from nastrain.experiments.strategies import Strategy

__all__ = [
    "Experiment",
    "ExperimentConfig",
    "ExperimentRecord",
    "ExperimentResult",
    "Mode",
    "Strategy",
    "StrategySpec",
    "Trial",
    "TrialStatus",
    "load_config",
]
