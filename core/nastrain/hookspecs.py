"""Hook specifications: what a nastrain plugin can implement.

A plugin is a module (or object) named by an entry point in the group
``nastrain``; its functions marked with :data:`hookimpl` and named like the
specs below are its hook implementations. An implementation may take any
subset of a spec's arguments, so specs grow by adding arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import torch
    from torch import nn

    from nastrain.reporting import Metric
    from nastrain.trainer import BaseOneShotTrainer, BaseTrainer

__all__ = ["hookimpl", "hookspec"]

hookspec = pluggy.HookspecMarker("nastrain")
#: Marker for hook implementations: ``@nastrain.hookimpl`` above a ``nastrain_*`` function.
hookimpl = pluggy.HookimplMarker("nastrain")


@hookspec
def nastrain_register_trainers(register: Callable[..., None]) -> None:
    """Make trainer classes known by name.

    Called once per plugin when the plugin manager loads. Call
    ``register(TrainerClass)`` for each trainer; the name defaults to the class
    attribute ``name``, else the class name; ``register(cls, name="alias")``
    adds an alias. One-shot trainers registered here take any Python
    arguments. Two plugins registering one name is an error naming both.
    """


@hookspec(firstresult=True)
def nastrain_fit(trainer: BaseTrainer) -> Any:
    """Run ``trainer.fit()``; every call of a trainer's ``fit`` comes through here.

    The core's default implementation (``trylast``) calls the trainer's own
    ``fit`` and returns a non-``None`` marker, so plugins usually implement
    this as a wrapper, ``@hookimpl(wrapper=True)`` with ``result = yield``, to
    run code around every fit (timing, logging, device placement). A plain
    implementation that returns a non-``None`` value replaces the fit
    (first result wins).
    """


@hookspec(firstresult=True)
def nastrain_export(trainer: BaseTrainer) -> dict[str, Any] | None:
    """Return the architecture ``trainer`` found; every ``export()`` comes through here.

    First result wins. The core's default implementation (``trylast``) calls
    the trainer's own ``export``. A wrapper sees (and may check) the result.
    """


@hookspec(firstresult=True)
def nastrain_replace_module(
    module: nn.Module,
    trainer: BaseTrainer | None,
    init_fn: Callable[[Any], nn.Module | None] | None,
) -> nn.Module | None:
    """Return the module that replaces the choice ``module`` for ``trainer``, or ``None``.

    Called by :func:`nastrain.utils.replace_layer_choice`,
    :func:`~nastrain.utils.replace_input_choice` and
    :func:`~nastrain.utils.replace_choices` for every choice in a model.
    First result wins; ``None`` means "not mine". ``trainer`` is the one-shot
    trainer doing the replacement (``None`` outside one). ``init_fn`` is the
    function the caller passed, if any; the core's default implementation
    (``trylast``) returns ``init_fn(module)``. A plugin teaches a one-shot
    algorithm a new kind of choice by answering for that choice type and
    that trainer type.
    """


@hookspec
def nastrain_prepare_model(
    trainer: BaseOneShotTrainer,
    model: nn.Module,
    device: torch.device,
    modules: Sequence[nn.Module],
) -> Mapping[str, int] | None:
    """Rewrite a one-shot trainer's supernet in place before it trains (broadcast).

    Called once by :meth:`nastrain.oneshot.SupernetTrainer.prepare_model`, after
    the trainer replaced its choices and moved ``model`` to ``device``, before
    the memory format is applied and any step runs. ``modules`` are the only
    modules a plugin may rewrite, children included: the candidates of the
    choices the trainer relaxed, plus modules their owner marked with
    :func:`nastrain.utils.allow_rewrite`; the user's stem, head and other modules
    are not among them. Parameters must keep their identity (optimizers are
    already built on them). Return what was rewritten (a name -> count mapping,
    logged once by the trainer) or ``None``. A plugin whose implementation raises
    is skipped with a warning naming it, what it changed in the model's structure is
    undone, and the search runs without its rewrite. Each implementation is called on
    its own, so wrappers are not supported here (one is skipped with a warning).
    ``rewrite_model=False`` on the trainer, or ``NASTRAIN_REWRITE=0`` (``false``,
    ``no``, ``off``) in the environment, skips this hook altogether.
    """


@hookspec
def nastrain_on_report(
    trainer: BaseTrainer | None, metric: Metric, final: bool, trial: int | None
) -> None:
    """Called for every reported result (broadcast to every plugin).

    ``metric`` is already validated: a float or a dict of floats with a
    ``"default"`` key. ``final`` tells ``report_final_result`` from
    ``report_intermediate_result``. ``trainer`` is the trainer whose ``fit`` is
    running, or ``None`` when reporting from outside any fit. ``trial`` is the
    index of the experiment's trial the report belongs to (in the process that
    runs the trial), or ``None`` outside a multi-trial experiment. Loggers (see
    ``docs/loggers.md``) implement this hook; an exception raised here reaches
    the code that reported, and so stops the trial.
    """


@hookspec
def nastrain_on_epoch(trainer: BaseOneShotTrainer, record: Mapping[str, Any]) -> None:
    """Called after every epoch of a one-shot search (broadcast to every plugin).

    ``record`` is the epoch's entry of the run record, as written to ``run.jsonl``
    in the trainer's checkpoint or log directory (a JSON object: ``epoch``, ``time``,
    ``metrics``, each label's architecture ``probabilities`` and ``entropy``, the
    ``architecture`` that would be exported now; see ``docs/loggers.md``). It is
    called after the epoch's checkpoint and record are written, so an exception
    raised here stops the search at a point it resumes from. Loggers implement it.
    """


@hookspec
def nastrain_register_strategies(register: Callable[..., None]) -> None:
    """Make search strategies known by name.

    Called once per plugin when the plugin manager loads. Call
    ``register(StrategyClass)`` for each subclass of
    :class:`nastrain.experiments.strategies.Strategy`; the name defaults to the class
    attribute ``name``, else the class name; ``register(cls, name="alias")``
    adds an alias. An experiment (``Experiment(strategy="name")``, or
    ``strategy = "name"`` in a config file) builds the strategy by that name
    with JSON keyword arguments. The core's own strategies (``random``,
    ``grid``, ``evolution``, ``median_stop``) are registered through this hook
    too. Two plugins registering one name is an error naming both.
    """


@hookspec
def nastrain_register_datasets(register: Callable[..., None]) -> None:
    """Make datasets known by name, so trainers can take a name instead of an object.

    Called once per plugin when the plugin manager loads. Call
    ``register(factory)`` or ``register(factory, name="...")`` (the name
    defaults to the factory's attribute ``name``, else its ``__name__``). A
    factory takes keyword arguments only (JSON values: a trainer's
    ``dataset_kwargs``) and returns ``(train, valid)``, two
    ``torch.utils.data.Dataset`` objects whose items are ``(input, target)``
    pairs, or ``(train, valid, test)`` with a test split that is never used for
    selection (the classic trainers report it under ``test_*`` keys); it should
    raise an error saying what is missing and how to get it when its files are
    not there. ``nastrain.get_dataset(name)`` returns the
    factory. Two plugins registering one name is an error naming both.
    """


@hookspec
def nastrain_register_executors(register: Callable[..., None]) -> None:
    """Make executors (where an experiment's trials run) known by name.

    Called once per plugin when the plugin manager loads. Call ``register(factory)`` or
    ``register(factory, name="...")`` (the name defaults to the factory's attribute
    ``name``, else its ``__name__``). A factory is called with a
    :class:`nastrain.experiments.executor.ExecutorContext` and returns a
    :class:`nastrain.experiments.executor.Executor` (a class whose ``__init__`` takes the
    context works); it refuses options it does not know
    (:func:`nastrain.experiments.executor.check_options`). An experiment
    (``Experiment(executor="name", executor_options={...})``, or an ``[executor]`` table
    with ``name`` in a config file) builds its executor by that name. The core's ``local``
    and ``inline`` are registered through this hook too. Two plugins registering one name
    is an error naming both.
    """
