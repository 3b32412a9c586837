"""Faster CPU kernels for nastrain's one-shot supernets, as a plugin.

Installed, the plugin (entry point ``cpu``) answers ``nastrain_prepare_model``: on
a CPU it rewrites the candidates of a one-shot trainer's choices (and the modules a
space's author marked with :func:`nastrain.utils.allow_rewrite`) with the layers of
:mod:`nastrain_cpu.kernels`, which compute the same results faster in the
channels-last memory format. :func:`optimize_for_cpu` applies them to any model.
"""

from nastrain_cpu.kernels import (
    DepthwiseConv,
    LeanBatchNorm2d,
    PointwiseConv,
    SeparableGroup,
    SharedPoolNorm,
    SharedReLU,
    StridedPointwiseConv,
    optimize_for_cpu,
)

__all__ = [
    "DepthwiseConv",
    "LeanBatchNorm2d",
    "PointwiseConv",
    "SeparableGroup",
    "SharedPoolNorm",
    "SharedReLU",
    "StridedPointwiseConv",
    "optimize_for_cpu",
]
