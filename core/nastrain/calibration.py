"""BatchNorm statistics for one architecture of a supernet.

A supernet trained one sampled path at a time (SPOS, ENAS) pools every BatchNorm's
running statistics over all the paths it sampled. Scored in evaluation mode with
those pooled statistics, an architecture is ranked by how far its activations sit
from the pool, not by what it computes: a candidate whose outputs are ten times
smaller than the others' is normalised to nearly a constant. These helpers give
each architecture its own statistics before it is scored, and put the supernet's
back afterwards, so that training continues unaffected:

- :func:`recalibrate_bn`: reset every BatchNorm's running statistics and
  re-estimate them as a cumulative average over a few batches (SPOS, Guo et al.
  2020, recalibrates on training data before evaluating each architecture);
- :func:`preserved_bn_stats`: a context that saves every BatchNorm's statistics
  and momentum and restores them on exit;
- :func:`batch_statistics`: a context in which every BatchNorm normalises with the
  statistics of the batch it sees and leaves its running statistics untouched
  (what an architecture's statistics on its own batch cost: nothing).

A model without BatchNorm is fine: there is nothing to do and nothing is done.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["batch_statistics", "batchnorms", "preserved_bn_stats", "recalibrate_bn"]

_STATS = ("running_mean", "running_var", "num_batches_tracked")
_NONE = object()


def batchnorms(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm modules of ``model`` (any ``_BatchNorm``: 1d, 2d, 3d, sync, and the
    ``LeanBatchNorm2d`` of the ``nastrain-cpu`` plugin) that keep running statistics."""
    return [
        m
        for m in model.modules()
        if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None
    ]


def _inputs(batch: Any) -> Any:
    """The input of a batch: the first item of an (input, target) pair, else the batch."""
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0]
    return batch


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    batches: Iterable[Any],
    num_batches: int | None = None,
    *,
    forward: Callable[[Any], Any] | None = None,
) -> int:
    """Re-estimate every BatchNorm's running statistics of ``model`` on ``batches``.

    Each BatchNorm's running mean and variance are reset and re-estimated as the
    cumulative average (momentum ``None``) over the first ``num_batches`` batches
    (all of them when ``None``): forwards without gradients with the BatchNorms in
    training mode and every other module in evaluation mode, so that dropout is off
    and the statistics are those the model sees when it is evaluated. A batch is an
    (input, target) pair or an input; ``forward(input)`` runs the model (default:
    ``model(input)``). Modes and momenta are restored afterwards; the new statistics
    stay (wrap the call in :func:`preserved_bn_stats` to get the old ones back).

    Returns the number of batches used. A model without BatchNorm, or no batches,
    returns 0 and leaves the model unchanged (no batch is run).
    """
    if num_batches is not None and (
        isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 0
    ):
        raise ValueError(f"num_batches must be an int >= 0 or None, got {num_batches!r}")
    norms = batchnorms(model)
    if not norms or num_batches == 0:
        return 0
    batches = iter(batches)
    first = next(batches, _NONE)
    if first is _NONE:  # no batch: keep the statistics there are rather than reset them
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in norms]
    run = forward if forward is not None else model
    used = 0
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        for batch in itertools.chain([first], batches):
            if num_batches is not None and used >= num_batches:
                break
            run(_inputs(batch))
            used += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        for module, training in modes.items():
            module.training = training
    return used


@contextlib.contextmanager
def preserved_bn_stats(model: nn.Module) -> Iterator[None]:
    """Save every BatchNorm's running statistics, batch count and momentum of ``model``;
    restore them (in place: the same tensors) on exit, however the block ends."""
    norms = batchnorms(model)
    saved = [
        (
            m,
            m.momentum,
            {k: b.detach().clone() for k in _STATS if (b := getattr(m, k, None)) is not None},
        )
        for m in norms
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, momentum, buffers in saved:
                m.momentum = momentum
                for key, value in buffers.items():
                    getattr(m, key).copy_(value)


@contextlib.contextmanager
def batch_statistics(model: nn.Module, norms: Iterable[nn.Module] | None = None) -> Iterator[None]:
    """Inside, every BatchNorm of ``model`` normalises with the statistics of the batch it
    sees, in either mode, and its running statistics are neither used nor updated.

    The running buffers are set aside for the block (no copy is made, so it costs
    next to nothing) and put back on exit. ``norms``: the BatchNorms to treat so, when
    the caller has listed them already (default: :func:`batchnorms` of ``model``).
    """
    norms = batchnorms(model) if norms is None else list(norms)
    stashed = [(m, {k: m._buffers[k] for k in _STATS if k in m._buffers}) for m in norms]
    try:
        for m, buffers in stashed:
            for key in buffers:
                m._buffers[key] = None
        yield
    finally:
        for m, buffers in stashed:
            m._buffers.update(buffers)
