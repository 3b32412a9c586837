"""The ``ray`` entry point: registers the executor ``"ray"``.

This module does not import Ray: the plugin loads (and ``nastrain plugins`` lists it) where
Ray is missing, and only an experiment that asks for ``executor="ray"`` needs it, which it
then says.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import nastrain

if TYPE_CHECKING:
    from nastrain.experiments.executor import ExecutorContext
    from nastrain_ray.executor import RayExecutor

__all__ = ["ray_executor"]


def ray_executor(context: ExecutorContext) -> RayExecutor:
    """``executor="ray"``: a :class:`nastrain_ray.RayExecutor` for the experiment (see its
    options); an ``ExecutorError`` saying what to install where Ray cannot be imported."""
    # Here, not at the top: loading the plugins must not load the executors (torch, sqlite).
    from nastrain.experiments.executor import ExecutorError

    try:
        # Here, not at the top: the plugin must load without Ray, and say so only when used.
        from nastrain_ray.executor import RayExecutor
    except ImportError as exc:
        raise ExecutorError(
            f"executor='ray' needs Ray, which cannot be imported here ({exc}); nastrain-ray is "
            'installed, Ray is not (or is broken): pip install "ray>=2.40"'
        ) from None
    return RayExecutor(context)


@nastrain.hookimpl
def nastrain_register_executors(register: Callable[..., Any]) -> None:
    """Register :func:`ray_executor` as ``"ray"``."""
    register(ray_executor, name="ray")
