"""Reporting results from a trainer to whoever is listening.

Inside an experiment, results go to the experiment's :class:`Reporter`
(installed with :func:`use_reporter`), which hands them to the strategy and
the store. Outside one they stay on the trainer (``trainer.intermediate_results``
and ``trainer.final_result``) and are logged. In both cases every plugin
hears them through the ``nastrain_on_report`` hook.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import numbers
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from nastrain import plugins

if TYPE_CHECKING:
    from nastrain.trainer import BaseTrainer

__all__ = [
    "Metric",
    "Reporter",
    "check_metric",
    "current_trainer",
    "current_trial",
    "report_final_result",
    "report_intermediate_result",
    "use_reporter",
]

#: A reported result: a number, or a dict of numbers with a ``"default"`` key.
Metric = float | dict[str, float]


class Reporter(Protocol):
    """Where reported results go while a trial runs (an experiment supplies one)."""

    def report(self, trainer: BaseTrainer | None, metric: Metric, final: bool) -> None: ...


_reporter: contextvars.ContextVar[Reporter | None] = contextvars.ContextVar(
    "nastrain_reporter", default=None
)
_trainer: contextvars.ContextVar[BaseTrainer | None] = contextvars.ContextVar(
    "nastrain_trainer", default=None
)


_trial: contextvars.ContextVar[int | None] = contextvars.ContextVar("nastrain_trial", default=None)


def current_trial() -> int | None:
    """The index of the experiment's trial running in this context, or ``None`` outside one."""
    return _trial.get()


@contextlib.contextmanager
def running_trial(index: int) -> Iterator[None]:
    """Mark the block as the run of trial ``index`` (loggers hear it in ``nastrain_on_report``)."""
    token = _trial.set(index)
    try:
        yield
    finally:
        _trial.reset(token)


def current_trainer() -> BaseTrainer | None:
    """The trainer whose ``fit()`` or ``export()`` is running in this context, if any."""
    return _trainer.get()


@contextlib.contextmanager
def running(trainer: BaseTrainer) -> Iterator[None]:
    """Mark ``trainer`` as the one reports belong to while the block runs."""
    token = _trainer.set(trainer)
    try:
        yield
    finally:
        _trainer.reset(token)


@contextlib.contextmanager
def use_reporter(reporter: Reporter) -> Iterator[Reporter]:
    """Send every result reported in this block to ``reporter`` instead of the trainer."""
    token = _reporter.set(reporter)
    try:
        yield reporter
    finally:
        _reporter.reset(token)


def _number(value: Any, where: str) -> float:
    if hasattr(value, "numel") and hasattr(value, "item"):  # a torch tensor
        if value.numel() != 1:
            raise TypeError(
                f"{where} is a tensor with {value.numel()} elements; report a number "
                "(a one-element tensor is accepted)"
            )
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where} must be a number, got {type(value).__name__} {value!r}")
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"{where} is {result}; a reported metric must be finite")
    return result


def check_metric(metric: Any) -> Metric:
    """Validate a metric and return it as a float or a dict of floats.

    A number (``int``, ``float``, NumPy scalar, one-element tensor) or a dict
    of str -> number with a ``"default"`` key. NaN, infinities, ``bool``,
    ``str`` and multi-element tensors are errors.
    """
    if isinstance(metric, dict):
        if "default" not in metric:
            raise ValueError(
                f"a dict metric needs a 'default' key (the value strategies compare); "
                f"got keys {sorted(map(str, metric))}"
            )
        result: dict[str, float] = {}
        for key, value in metric.items():
            if not isinstance(key, str):
                raise TypeError(f"metric key {key!r} must be a str")
            result[key] = _number(value, f"metric[{key!r}]")
        return result
    return _number(metric, "metric")


def default_value(metric: Metric) -> float:
    """The number strategies compare: the metric itself, or its ``"default"``."""
    return metric["default"] if isinstance(metric, dict) else metric


def _report(metric: Any, final: bool) -> Metric:
    checked = check_metric(metric)
    trainer = _trainer.get()
    reporter = _reporter.get()
    trial = _trial.get()
    try:
        if reporter is not None:
            reporter.report(trainer, checked, final)
        elif trainer is not None:
            if final:
                trainer.final_result = checked
            else:
                trainer.intermediate_results.append(checked)
    except BaseException:
        # The reporter stopped the trial (an early stop) after storing the result: every
        # logger hears it too, and a logger's own error must not hide why the trial ends.
        try:
            plugins.call_on_report(trainer, checked, final, trial)
        except Exception as exc:
            warnings.warn(
                f"a nastrain_on_report implementation failed on the result that ended the "
                f"trial ({type(exc).__name__}: {exc}); the trial ends as its reporter decided",
                plugins.PluginWarning,
                stacklevel=3,
            )
        raise
    plugins.call_on_report(trainer, checked, final, trial)
    return checked


def report_intermediate_result(metric: Any) -> None:
    """Report a periodic result (e.g. validation accuracy after an epoch)."""
    _report(metric, final=False)


def report_final_result(metric: Any) -> None:
    """Report the trial's final result; strategies rank architectures by it."""
    _report(metric, final=True)
