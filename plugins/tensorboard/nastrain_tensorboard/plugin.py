"""The ``tensorboard`` entry point: a TensorBoard logger turned on by the environment.

Installed, the plugin does nothing until ``NASTRAIN_TENSORBOARD`` names a log directory;
then every process that loads the plugins (an experiment's worker processes too, which
inherit the environment) logs through one :class:`~nastrain_tensorboard.TensorBoardLogger`
for that folder. The variable is read at each call, so setting it later in a process takes
effect at the next call. A folder that cannot be written to is refused with one
:class:`~nastrain_tensorboard.TensorBoardWarning` naming it (when a fit starts), and the
search goes on without logging.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Generator, Mapping
from typing import Any

import nastrain
from nastrain_tensorboard.logger import LogDirError, TensorBoardLogger, TensorBoardWarning

__all__ = ["ENV_VAR", "env_logger"]

#: The environment variable naming the log directory (unset or empty: no logging).
ENV_VAR = "NASTRAIN_TENSORBOARD"

_lock = threading.Lock()
#: Log directory as given -> its logger, or None when it was refused.
_loggers: dict[str, TensorBoardLogger | None] = {}


def env_logger() -> TensorBoardLogger | None:
    """The logger for the folder ``NASTRAIN_TENSORBOARD`` names now, or ``None`` when it is
    unset, empty, or names a folder that was refused (warned about once)."""
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return None
    with _lock:
        if value not in _loggers:
            try:
                _loggers[value] = TensorBoardLogger(value)
            except LogDirError as exc:
                warnings.warn(
                    f"{exc} (from {ENV_VAR}); nothing is logged to TensorBoard",
                    TensorBoardWarning,
                    stacklevel=4,
                )
                _loggers[value] = None
        return _loggers[value]


@nastrain.hookimpl
def nastrain_on_report(metric: Any, final: bool, trial: int | None) -> None:
    """Log a trial's report (see :meth:`TensorBoardLogger.nastrain_on_report`)."""
    logger = env_logger()
    if logger is not None:
        logger.nastrain_on_report(metric, final, trial)


@nastrain.hookimpl
def nastrain_on_epoch(trainer: Any, record: Mapping[str, Any]) -> None:
    """Log a one-shot epoch record (see :meth:`TensorBoardLogger.nastrain_on_epoch`)."""
    logger = env_logger()
    if logger is not None:
        logger.nastrain_on_epoch(trainer, record)


@nastrain.hookimpl(wrapper=True)
def nastrain_fit(trainer: Any) -> Generator[None, Any, Any]:
    """Check the log directory before a fit (a refused one is warned about then, not after
    the first epoch) and close the fit's run after it."""
    logger = env_logger()
    if logger is None:
        return (yield)
    return (yield from logger.nastrain_fit(trainer))
