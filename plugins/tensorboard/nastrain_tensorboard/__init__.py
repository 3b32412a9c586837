"""A TensorBoard logger for nastrain, as a plugin.

Installed, it logs nothing until asked: set ``NASTRAIN_TENSORBOARD=<log dir>`` in the
environment (every process of an experiment, its workers included, then logs there), or
register a :class:`TensorBoardLogger` in one process. Each trial of a multi-trial
experiment becomes a TensorBoard run of its reported results; each one-shot search a run
of its per-epoch metrics, choice entropies and architecture probabilities. See the
package's README and ``docs/loggers.md``.
"""

from nastrain_tensorboard.logger import (
    LogDirError,
    TensorBoardLogger,
    TensorBoardWarning,
    check_log_dir,
)
from nastrain_tensorboard.plugin import ENV_VAR, env_logger

__all__ = [
    "ENV_VAR",
    "LogDirError",
    "TensorBoardLogger",
    "TensorBoardWarning",
    "check_log_dir",
    "env_logger",
]
