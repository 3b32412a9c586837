"""nastrain: plugin-based neural architecture search trainers for PyTorch.

The public names (see the project's CONTRACT): model-space primitives
(:class:`LayerChoice`, :class:`InputChoice`, :func:`fixed_arch`,
:func:`apply_arch`, :class:`SearchSpace`), trainers (:class:`BaseTrainer`,
:class:`BaseOneShotTrainer`, :func:`register_trainer`, :class:`TrainerSpec`),
reporting, multi-trial experiments (:class:`Experiment`), and the plugin system
(:data:`hookimpl`, :func:`plugin_manager`, :func:`get_trainer`,
:func:`trainer_names`, and the strategy and dataset registries).
"""

from nastrain.experiment import Experiment, ExperimentResult, Trial
from nastrain.hookspecs import hookimpl
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
from nastrain.strategies import Strategy, StrategySpec
from nastrain.trainer import BaseOneShotTrainer, BaseTrainer, TrainerSpec, register_trainer

__version__ = "0.1.0"

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
    "report_final_result",
    "report_intermediate_result",
    "strategy_names",
    "trainer_names",
    "use_reporter",
]
