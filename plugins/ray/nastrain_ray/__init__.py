"""A Ray executor for nastrain, as a plugin (entry point ``ray``).

Installed, it adds ``executor="ray"``: each trial of a multi-trial experiment runs as a Ray
task (Ray core, not Tune) on an existing Ray cluster, its results streamed back to the
experiment, which alone writes the store. ``Experiment(..., executor="ray",
executor_options={"address": "head:6379", "num_cpus": 2})``, or an ``[executor]`` table in
a config for ``nastrain run``. See the package's README and ``docs/ray.md``.

Importing this package does not import Ray; :class:`RayExecutor` (imported on first use)
does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nastrain_ray.plugin import ray_executor

if TYPE_CHECKING:
    from nastrain_ray.executor import RayExecutor

__all__ = ["RayExecutor", "ray_executor"]


def __getattr__(name: str) -> Any:
    if name == "RayExecutor":
        # Ray is imported only when the executor is asked for (see the module docstring).
        from nastrain_ray.executor import RayExecutor

        return RayExecutor
    raise AttributeError(f"module 'nastrain_ray' has no attribute {name!r}")
