"""Multi-trial experiments: an :class:`Experiment` asks a search strategy for architectures,
runs a classic trainer on each in worker processes, and records every result in a SQLite
store that resumes.

Built on the core (the spine, the model space and the trainers), which never imports this
package: :mod:`~nastrain.experiments.records` (the records, a leaf),
:mod:`~nastrain.experiments.strategies`, :mod:`~nastrain.experiments.store`,
:mod:`~nastrain.experiments.executor` and :mod:`~nastrain.experiments.experiment`.

Its names load on first use (PEP 562), as the top-level package's do: loading the plugins
(whose built-ins register the strategies) imports the strategies and the records, not the
store, the executor or ``sqlite3``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nastrain._lazy import lazy_names

#: public name -> the module that defines it
_EXPORTS = {
    "Executor": "nastrain.experiments.executor",
    "ExecutorContext": "nastrain.experiments.executor",
    "ExecutorSpec": "nastrain.experiments.experiment",
    "TrialHandler": "nastrain.experiments.executor",
    "TrialJob": "nastrain.experiments.executor",
    "TrialStopped": "nastrain.experiments.executor",
    "WorkerSetup": "nastrain.experiments.executor",
    "check_options": "nastrain.experiments.executor",
    "describe_exception": "nastrain.experiments.executor",
    "prepare_worker": "nastrain.experiments.executor",
    "run_trial": "nastrain.experiments.executor",
    "trial_space": "nastrain.experiments.executor",
    "Experiment": "nastrain.experiments.experiment",
    "ExperimentConfig": "nastrain.experiments.experiment",
    "ExperimentRecord": "nastrain.experiments.records",
    "ExperimentResult": "nastrain.experiments.records",
    "Mode": "nastrain.experiments.records",
    "Strategy": "nastrain.experiments.strategies",
    "StrategySpec": "nastrain.experiments.records",
    "Trial": "nastrain.experiments.records",
    "TrialStatus": "nastrain.experiments.records",
    "load_config": "nastrain.experiments.experiment",
}

__all__ = [
    "Executor",
    "ExecutorContext",
    "ExecutorSpec",
    "Experiment",
    "ExperimentConfig",
    "ExperimentRecord",
    "ExperimentResult",
    "Mode",
    "Strategy",
    "StrategySpec",
    "Trial",
    "TrialHandler",
    "TrialJob",
    "TrialStatus",
    "TrialStopped",
    "WorkerSetup",
    "check_options",
    "describe_exception",
    "load_config",
    "prepare_worker",
    "run_trial",
    "trial_space",
]

if TYPE_CHECKING:
    from nastrain.experiments.executor import (
        Executor,
        ExecutorContext,
        TrialHandler,
        TrialJob,
        TrialStopped,
        WorkerSetup,
        check_options,
        describe_exception,
        prepare_worker,
        run_trial,
        trial_space,
    )
    from nastrain.experiments.experiment import (
        ExecutorSpec,
        Experiment,
        ExperimentConfig,
        load_config,
    )
    from nastrain.experiments.records import (
        ExperimentRecord,
        ExperimentResult,
        Mode,
        StrategySpec,
        Trial,
        TrialStatus,
    )
    from nastrain.experiments.strategies import Strategy

__getattr__, __dir__ = lazy_names(__name__, _EXPORTS, globals())
