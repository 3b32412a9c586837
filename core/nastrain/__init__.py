"""nastrain: plugin-based neural architecture search trainers for PyTorch.

The public names (see the project's CONTRACT): model-space primitives
(:class:`LayerChoice`, :class:`InputChoice`, :func:`fixed_arch`,
:func:`apply_arch`, :class:`SearchSpace`), trainers (:class:`BaseTrainer`,
:class:`BaseOneShotTrainer`, :func:`register_trainer`, :class:`TrainerSpec`),
reporting, multi-trial experiments (:class:`Experiment`), and the plugin system
(:data:`hookimpl`, :func:`plugin_manager`, :func:`get_trainer`,
:func:`trainer_names`, and the strategy and dataset registries).

The names are imported on first use (PEP 562), so ``import nastrain`` is cheap: the command
line's ``--help`` needs no torch, and importing the spine (:mod:`nastrain.hookspecs`,
:mod:`nastrain.plugins`) imports neither the experiments nor torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nastrain._lazy import lazy_names

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "Architecture": "nastrain.space",
    "BaseOneShotTrainer": "nastrain.trainer",
    "BaseTrainer": "nastrain.trainer",
    "Choice": "nastrain.space",
    "ChosenInputs": "nastrain.mutables",
    "Experiment": "nastrain.experiments.experiment",
    "ExperimentResult": "nastrain.experiments.records",
    "InputChoice": "nastrain.mutables",
    "LayerChoice": "nastrain.mutables",
    "Metric": "nastrain.reporting",
    "Mutable": "nastrain.mutables",
    "SearchSpace": "nastrain.space",
    "Strategy": "nastrain.experiments.strategies",
    "StrategySpec": "nastrain.experiments.records",
    "TrainerSpec": "nastrain.trainer",
    "Trial": "nastrain.experiments.records",
    "apply_arch": "nastrain.space",
    "dataset_names": "nastrain.plugins",
    "fixed_arch": "nastrain.mutables",
    "get_dataset": "nastrain.plugins",
    "get_strategy": "nastrain.plugins",
    "get_trainer": "nastrain.plugins",
    "hookimpl": "nastrain.hookspecs",
    "label_scope": "nastrain.mutables",
    "plugin_manager": "nastrain.plugins",
    "register_trainer": "nastrain.trainer",
    "reload_plugins": "nastrain.plugins",
    "report": "nastrain.htmlreport",
    "report_final_result": "nastrain.reporting",
    "report_intermediate_result": "nastrain.reporting",
    "strategy_names": "nastrain.plugins",
    "trainer_names": "nastrain.plugins",
    "use_reporter": "nastrain.reporting",
}

__all__ = [
    "Architecture",
    "BaseOneShotTrainer",
    "BaseTrainer",
    "Choice",
    "ChosenInputs",
    "Experiment",
    "ExperimentResult",
    "InputChoice",
    "LayerChoice",
    "Metric",
    "Mutable",
    "SearchSpace",
    "Strategy",
    "StrategySpec",
    "TrainerSpec",
    "Trial",
    "apply_arch",
    "dataset_names",
    "fixed_arch",
    "get_dataset",
    "get_strategy",
    "get_trainer",
    "hookimpl",
    "label_scope",
    "plugin_manager",
    "register_trainer",
    "reload_plugins",
    "report",
    "report_final_result",
    "report_intermediate_result",
    "strategy_names",
    "trainer_names",
    "use_reporter",
]

if TYPE_CHECKING:
    from nastrain.experiments.experiment import Experiment
    from nastrain.experiments.records import ExperimentResult, StrategySpec, Trial
    from nastrain.experiments.strategies import Strategy
    from nastrain.hookspecs import hookimpl
    from nastrain.htmlreport import report
    from nastrain.mutables import (
        ChosenInputs,
        InputChoice,
        LayerChoice,
        Mutable,
        fixed_arch,
        label_scope,
    )
    from nastrain.plugins import (
        dataset_names,
        get_dataset,
        get_strategy,
        get_trainer,
        plugin_manager,
        reload_plugins,
        strategy_names,
        trainer_names,
    )
    from nastrain.reporting import (
        Metric,
        report_final_result,
        report_intermediate_result,
        use_reporter,
    )
    from nastrain.space import Architecture, Choice, SearchSpace, apply_arch
    from nastrain.trainer import BaseOneShotTrainer, BaseTrainer, TrainerSpec, register_trainer

__getattr__, __dir__ = lazy_names(__name__, _EXPORTS, globals())
