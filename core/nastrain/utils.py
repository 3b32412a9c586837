"""Utilities for one-shot trainers: replacing the choices of a model space.

These are the trainer guide's ``replace_layer_choice`` and
``replace_input_choice``; every replacement goes through the
``nastrain_replace_module`` hook, so a plugin can supply (or wrap) the module
that relaxes a kind of choice for a kind of trainer. :func:`recalibrate_bn` (from
:mod:`nastrain.calibration`) gives a sampled path its own BatchNorm statistics, and
:func:`allow_rewrite` lets plugins (``nastrain_prepare_model``) rewrite a module that is
not a candidate of a choice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from nastrain import plugins
from nastrain.calibration import recalibrate_bn
from nastrain.mutables import InputChoice, LayerChoice, Mutable
from nastrain.trainer import BaseTrainer, trainer_in_context

__all__ = [
    "REWRITE_MARK",
    "allow_rewrite",
    "recalibrate_bn",
    "replace_choices",
    "replace_input_choice",
    "replace_layer_choice",
    "resolve_device",
]

#: The attribute :func:`allow_rewrite` sets on a module.
REWRITE_MARK = "_nastrain_allow_rewrite"
_M = TypeVar("_M", bound=nn.Module)
_C = TypeVar("_C", bound=Mutable)


def allow_rewrite(module: _M) -> _M:
    """Let plugins that rewrite supernets (``nastrain_prepare_model``, e.g. the CPU kernels of
    ``nastrain-cpu``) rewrite ``module`` and its children although it is not a candidate of a
    choice; returns ``module``. A space's author marks the parts (a stem, a cell's
    preprocessing) whose rewrite they have checked; a user's own modules are never rewritten
    unless marked."""
    setattr(module, REWRITE_MARK, True)
    return module


Replaced = list[tuple[str, nn.Module]]


def _replace(
    model: nn.Module,
    kind: type[_C],
    init_fn: Callable[[_C], nn.Module | None] | None,
    modules: Replaced | None,
    trainer: BaseTrainer | None,
) -> Replaced:
    if modules is None:
        modules = []
    if trainer is None:
        trainer = trainer_in_context()
    if isinstance(model, kind):
        raise ValueError(
            f"the model itself is a {type(model).__name__} ({model.label!r}); wrap it in a "
            "module so that it can be replaced in place"
        )
    done: dict[int, nn.Module] = {}  # a module shared at several places is replaced once

    def visit(parent: nn.Module) -> None:
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            if not isinstance(child, kind):
                visit(child)
                continue
            if id(child) in done:
                parent._modules[name] = done[id(child)]
                continue
            new = plugins.call_replace_module(child, trainer, init_fn)
            if new is None:
                raise LookupError(
                    f"nothing replaces {type(child).__name__} {child.label!r} for trainer "
                    f"{type(trainer).__name__ if trainer is not None else None}: pass an init_fn, "
                    "or install a plugin whose nastrain_replace_module handles it"
                )
            if not isinstance(new, nn.Module) or isinstance(new, Mutable):
                raise TypeError(
                    f"the replacement of {type(child).__name__} {child.label!r} must be an "
                    f"nn.Module that is not itself a choice, got {type(new).__name__}"
                )
            parent._modules[name] = done[id(child)] = new
            modules.append((child.label, new))
            visit(new)  # choices nested in the candidates

    visit(model)
    return modules


def replace_layer_choice(
    model: nn.Module,
    init_fn: Callable[[LayerChoice], nn.Module] | None = None,
    modules: Replaced | None = None,
    *,
    trainer: BaseTrainer | None = None,
) -> Replaced:
    """Replace every ``LayerChoice`` in ``model``, in place, by ``init_fn(choice)``.

    Appends ``(label, new_module)`` to ``modules`` (a new list when ``None``)
    and returns it; choices that share a label each appear, under that label. Nested
    choices are replaced too. ``trainer`` defaults to the one-shot trainer
    whose ``__init__`` is running.
    """
    return _replace(model, LayerChoice, init_fn, modules, trainer)


def replace_input_choice(
    model: nn.Module,
    init_fn: Callable[[InputChoice], nn.Module] | None = None,
    modules: Replaced | None = None,
    *,
    trainer: BaseTrainer | None = None,
) -> Replaced:
    """Replace every ``InputChoice`` in ``model``, in place; see :func:`replace_layer_choice`."""
    return _replace(model, InputChoice, init_fn, modules, trainer)


def replace_choices(
    model: nn.Module,
    trainer: BaseTrainer | None = None,
    modules: Replaced | None = None,
    init_fn: Callable[[Mutable], nn.Module | None] | None = None,
) -> Replaced:
    """Replace every choice of any kind with what the plugins' ``nastrain_replace_module`` gives.

    This is how a first- or third-party one-shot trainer relaxes a space: it
    answers the hook for the choice types it knows, and another plugin can
    add a new choice type for it. ``init_fn``, the trainer's own replacement,
    is the fallback when no plugin answers (so a trainer imported directly
    works with its plugin left out by ``NASTRAIN_PLUGINS``); it may return
    ``None`` for a choice it does not know.
    """
    return _replace(model, Mutable, init_fn, modules, trainer)


def resolve_device(device: Any) -> torch.device:
    """``device`` as a ``torch.device`` (``None`` or ``"auto"``: CUDA when available, else
    Apple's MPS when available, else the CPU); a device this machine does not have is a
    ``ValueError`` naming it. Trainers call it when they are built, so that a wrong device is
    refused before any training."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(f"device {device!r} is not a device torch knows: {exc}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            built = "with" if torch.backends.cuda.is_built() else "without"
            raise ValueError(
                f"device {device!r} asks for CUDA, but CUDA is not available on this machine "
                f"(torch {torch.__version__}, built {built} CUDA); pass device='cpu' or leave "
                "device unset"
            )
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(
                f"device {device!r} does not exist: this machine has {count} CUDA device(s)"
            )
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} asks for MPS, which is not available on this machine")
    return resolved
