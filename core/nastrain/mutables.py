"""Model-space primitives: the choices a search space is made of.

A model space is an ordinary ``nn.Module`` that holds :class:`LayerChoice` and
:class:`InputChoice` modules. Such a model cannot run until every choice is
resolved: by :func:`nastrain.apply_arch` (a copy with the chosen candidates), by
:func:`fixed_arch` (build the model with the choices already made) or by a
one-shot trainer that replaces the choices with modules of its own.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "REDUCTIONS",
    "ChosenInputs",
    "InputChoice",
    "LayerChoice",
    "Mutable",
    "fixed_arch",
    "label_scope",
    "reduce_tensors",
]

#: Ways an :class:`InputChoice` combines the inputs it selects.
REDUCTIONS = ("sum", "mean", "concat", "none")

# Default of the first constructor argument: copy.deepcopy and pickle call __new__ without
# arguments, and must get a bare instance; a user passing None must get a clear error.
_NOARG: Any = object()

_LABEL_RE = re.compile(r"^[A-Za-z0-9_.:/\-]+$")


class _LabelScope:
    """Counts unlabeled choices so that derived labels are stable run to run."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def next_label(self, prefix: str) -> str:
        self.counts[prefix] = self.counts.get(prefix, 0) + 1
        return f"{prefix}_{self.counts[prefix]}"


_scope: contextvars.ContextVar[_LabelScope] = contextvars.ContextVar("nastrain_label_scope")
_default_scope = _LabelScope()


class _FixedArch:
    def __init__(self, arch: Mapping[str, Any]) -> None:
        self.arch = dict(arch)
        self.used: set[str] = set()
        self.shapes: dict[str, tuple[Any, ...]] = {}  # what each label's first choice offered

    def check_shared(self, label: str, shape: tuple[Any, ...]) -> None:
        first = self.shapes.setdefault(label, shape)
        if first != shape:
            raise ValueError(
                f"label {label!r} is shared by incompatible choices ({first} and {shape}); "
                "choices with one label are one decision and need the same candidates"
            )


_fixed: contextvars.ContextVar[_FixedArch | None] = contextvars.ContextVar(
    "nastrain_fixed_arch", default=None
)


@contextlib.contextmanager
def label_scope() -> Iterator[None]:
    """Count derived labels from 1 again inside this block.

    A choice built without ``label`` gets ``layerchoice_N`` / ``inputchoice_N``,
    numbered in construction order. Numbering starts at 1 in each process, in
    each :func:`fixed_arch` block and in each ``label_scope`` block, so a space
    built the same way gets the same labels every time it is built in a scope.
    """
    token = _scope.set(_LabelScope())
    try:
        yield
    finally:
        _scope.reset(token)


def _derive_label(label: str | None, prefix: str) -> str:
    if label is None:
        return _scope.get(_default_scope).next_label(prefix)
    if not isinstance(label, str) or not label or not _LABEL_RE.match(label):
        raise ValueError(
            f"label {label!r} is not valid: use a non-empty str of letters, digits and _ . : / -"
        )
    return label


@contextlib.contextmanager
def fixed_arch(arch: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Build a model space with its choices already made.

    Inside the block, constructing a :class:`LayerChoice` returns the chosen
    candidate itself and an :class:`InputChoice` returns a :class:`ChosenInputs`.
    ``arch`` is an exported architecture (label -> candidate name, or label ->
    list of input indices). A choice whose label ``arch`` lacks is a
    ``ValueError``; so is a label of ``arch`` that no choice built in the block
    used (checked when the block ends without another error).
    """
    if not isinstance(arch, Mapping):
        raise TypeError(f"fixed_arch expects a dict of label -> choice, got {type(arch).__name__}")
    state = _FixedArch(arch)
    token = _fixed.set(state)
    scope_token = _scope.set(_LabelScope())
    try:
        yield state.arch
    finally:
        _scope.reset(scope_token)
        _fixed.reset(token)
    unused = sorted(set(state.arch) - state.used)
    if unused:
        raise ValueError(
            f"fixed_arch: the architecture has label(s) {unused} that no choice built in the "
            "block uses; check the labels against the model space"
        )


def _fixed_value(label: str, shape: Any) -> tuple[bool, Any]:
    """The value ``fixed_arch`` gives ``label``; ``shape`` (a callable describing the choice)
    is only evaluated inside a fixed_arch block."""
    state = _fixed.get()
    if state is None:
        return False, None
    state.check_shared(label, shape())
    if label not in state.arch:
        raise ValueError(
            f"fixed_arch: the architecture has no value for choice {label!r}; "
            f"it has {sorted(state.arch)}"
        )
    state.used.add(label)
    return True, state.arch[label]


class Mutable(nn.Module):
    """Base class of every choice in a model space.

    A plugin that adds a new kind of choice subclasses this; one-shot trainers
    find every ``Mutable`` and ask the ``nastrain_replace_module`` hook for a
    module to put in its place.
    """

    label: str

    @property
    def key(self) -> str:
        """Alias of :attr:`label`, as NNI's trainer guide uses it."""
        return self.label

    def _unresolved(self) -> RuntimeError:
        return RuntimeError(
            f"{type(self).__name__} {self.label!r} cannot run by itself: resolve it with "
            "nastrain.apply_arch(model, arch) or nastrain.fixed_arch(arch), or hand the model "
            "to a one-shot trainer that replaces its choices"
        )

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise self._unresolved()


class LayerChoice(Mutable):
    """Pick one module out of several candidates.

    ``candidates`` is a list of modules (named ``"0"``, ``"1"``, ...) or a dict
    of name -> module (its order is kept). Choices that share ``label`` are one
    decision. Exported architectures name the chosen candidate.
    """

    names: list[str]

    def __new__(cls, candidates: Any = _NOARG, *, label: str | None = None) -> Any:
        if candidates is _NOARG:
            return super().__new__(cls)
        resolved = _derive_label(label, "layerchoice")
        found, value = _fixed_value(
            resolved, lambda: ("candidates", tuple(_named_candidates(candidates, resolved)))
        )
        if found:
            named = _named_candidates(candidates, resolved)
            if not isinstance(value, str) or value not in named:
                raise ValueError(
                    f"fixed_arch: choice {resolved!r} has no candidate {value!r}; "
                    f"its candidates are {list(named)}"
                )
            return named[value]
        self = super().__new__(cls)
        object.__setattr__(self, "_pending_label", resolved)
        return self

    def __init__(
        self,
        candidates: Sequence[nn.Module] | Mapping[str, nn.Module],
        *,
        label: str | None = None,
    ) -> None:
        super().__init__()
        self.label = self.__dict__.pop("_pending_label")
        named = _named_candidates(candidates, self.label)
        self.names = list(named)
        # nn.Module assigns these itself (model.train() sets "training"); a child module
        # of that name would break it. "label" and "names" are only set here, first.
        taken = sorted(set(named) & (set(self.__dict__) - {"label", "names"}))
        if taken:
            raise ValueError(
                f"LayerChoice {self.label!r}: candidate name(s) {taken} are attributes "
                "nn.Module uses itself; rename the candidates"
            )
        for name, module in named.items():
            # Not add_module: a candidate may be called "double", "train" or "float", which
            # are nn.Module methods; candidates are reached by index or name, not attribute.
            self._modules[name] = module

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, key: int | str) -> nn.Module:
        if isinstance(key, int):
            key = self.names[key]
        return self._modules[key]  # type: ignore[return-value]

    def __iter__(self) -> Iterator[nn.Module]:
        return (self._modules[name] for name in self.names)  # type: ignore[misc]

    @property
    def candidates(self) -> list[nn.Module]:
        """The candidate modules, in order."""
        return list(self)

    def extra_repr(self) -> str:
        return f"label={self.label!r}"


def _named_candidates(candidates: Any, label: str) -> dict[str, nn.Module]:
    if isinstance(candidates, Mapping):
        items = [(str(name), module) for name, module in candidates.items()]
        keys: dict[str, Any] = {}
        for key in candidates:
            if str(key) in keys:
                raise ValueError(
                    f"LayerChoice {label!r}: candidate names {keys[str(key)]!r} and {key!r} "
                    f"are both {str(key)!r} as strings; give distinct names"
                )
            keys[str(key)] = key
        for name, _ in items:
            if not name or "." in name:
                raise ValueError(
                    f"LayerChoice {label!r}: candidate name {name!r} must be non-empty "
                    "and contain no '.'"
                )
    elif isinstance(candidates, (list, tuple, nn.ModuleList)):
        items = [(str(i), module) for i, module in enumerate(candidates)]
    else:
        raise TypeError(
            f"LayerChoice {label!r}: candidates must be a list or dict of nn.Module, "
            f"got {type(candidates).__name__}"
        )
    if not items:
        raise ValueError(f"LayerChoice {label!r}: candidates are empty; give at least one module")
    for name, module in items:
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"LayerChoice {label!r}: candidate {name!r} is a {type(module).__name__}, "
                "not an nn.Module"
            )
    return dict(items)


def reduce_tensors(tensors: list[torch.Tensor], reduction: str) -> Any:
    """Combine selected inputs: ``sum``, ``mean``, ``concat`` (on dim 1) or ``none`` (the list)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {list(REDUCTIONS)}")
    if reduction == "none":
        return tensors
    if len(tensors) == 1:
        return tensors[0]
    if reduction == "sum":
        return torch.stack(tensors).sum(0) if len(tensors) > 2 else tensors[0] + tensors[1]
    if reduction == "mean":
        return torch.stack(tensors).mean(0)
    return torch.cat(tensors, dim=1)


def _check_input_choice(n_candidates: Any, n_chosen: Any, reduction: Any, label: str) -> None:
    for name, value in (("n_candidates", n_candidates), ("n_chosen", n_chosen)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(
                f"InputChoice {label!r}: {name} must be an int, got {type(value).__name__}"
            )
    if n_candidates < 1:
        raise ValueError(f"InputChoice {label!r}: n_candidates is {n_candidates}; it must be >= 1")
    if not 1 <= n_chosen <= n_candidates:
        raise ValueError(
            f"InputChoice {label!r}: n_chosen is {n_chosen}; it must be between 1 and "
            f"n_candidates ({n_candidates})"
        )
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"InputChoice {label!r}: unknown reduction {reduction!r}; "
            f"choose one of {list(REDUCTIONS)}"
        )


class InputChoice(Mutable):
    """Pick ``n_chosen`` of ``n_candidates`` input tensors and reduce them.

    ``forward(inputs)`` takes the list of candidate tensors. Exported
    architectures give the sorted list of chosen indices.
    """

    def __new__(
        cls,
        n_candidates: Any = _NOARG,
        n_chosen: Any = 1,
        *,
        reduction: str = "sum",
        label: str | None = None,
    ) -> Any:
        if n_candidates is _NOARG:
            return super().__new__(cls)
        resolved = _derive_label(label, "inputchoice")
        found, value = _fixed_value(
            resolved, lambda: ("n_candidates", n_candidates, "n_chosen", n_chosen)
        )
        if found:
            _check_input_choice(n_candidates, n_chosen, reduction, resolved)
            chosen = _check_indices(value, n_candidates, n_chosen, resolved)
            return ChosenInputs(chosen, reduction=reduction, n_candidates=n_candidates)
        self = super().__new__(cls)
        object.__setattr__(self, "_pending_label", resolved)
        return self

    def __init__(
        self,
        n_candidates: int,
        n_chosen: int = 1,
        *,
        reduction: str = "sum",
        label: str | None = None,
    ) -> None:
        super().__init__()
        self.label = self.__dict__.pop("_pending_label")
        _check_input_choice(n_candidates, n_chosen, reduction, self.label)
        self.n_candidates = n_candidates
        self.n_chosen = n_chosen
        self.reduction = reduction

    def forward(self, inputs: list[torch.Tensor]) -> Any:
        raise self._unresolved()

    def extra_repr(self) -> str:
        return (
            f"label={self.label!r}, n_candidates={self.n_candidates}, n_chosen={self.n_chosen}, "
            f"reduction={self.reduction!r}"
        )


def _check_indices(value: Any, n_candidates: int, n_chosen: int, label: str) -> list[int]:
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in value
    ):
        raise ValueError(
            f"choice {label!r}: expected a list of {n_chosen} input indices, got {value!r}"
        )
    chosen = sorted(value)
    if len(chosen) != n_chosen or len(set(chosen)) != n_chosen:
        raise ValueError(
            f"choice {label!r}: expected {n_chosen} distinct input indices, got {list(value)}"
        )
    if chosen[0] < 0 or chosen[-1] >= n_candidates:
        raise ValueError(
            f"choice {label!r}: input indices {list(value)} out of range 0..{n_candidates - 1}"
        )
    return chosen


class ChosenInputs(nn.Module):
    """What an :class:`InputChoice` becomes once resolved: fixed indices plus a reduction."""

    def __init__(self, chosen: list[int], *, reduction: str = "sum", n_candidates: int) -> None:
        super().__init__()
        _check_input_choice(n_candidates, max(len(chosen), 1), reduction, "ChosenInputs")
        self.chosen = _check_indices(list(chosen), n_candidates, len(chosen), "ChosenInputs")
        self.reduction = reduction
        self.n_candidates = n_candidates

    def forward(self, inputs: list[torch.Tensor]) -> Any:
        if len(inputs) != self.n_candidates:
            raise ValueError(f"ChosenInputs expected {self.n_candidates} inputs, got {len(inputs)}")
        return reduce_tensors([inputs[i] for i in self.chosen], self.reduction)

    def extra_repr(self) -> str:
        return f"chosen={self.chosen}, reduction={self.reduction!r}"
