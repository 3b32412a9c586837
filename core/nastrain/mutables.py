"""Model-space primitives: the choices a search space is made of.

A model space is an ordinary ``nn.Module`` that holds :class:`LayerChoice` and
:class:`InputChoice` modules. Such a model cannot run until every choice is
resolved: by :func:`nastrain.apply_arch` (a copy with the chosen candidates), by
:func:`fixed_arch` (build the model with the choices already made) or by a
one-shot trainer that replaces the choices with modules of its own.

The constructors take what NNI 2.x's ``nni.retiarii.nn.pytorch`` choices take
(``prior=``, ``InputChoice(3, 1, "sum")``, ``n_chosen=None``, the legacy ``key=``,
``return_mask=False``, ``choose_from=``), and :func:`fixed_arch` takes a JSON file's
path as NNI's does; ``docs/migration.md`` says where the two differ.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import math
import numbers
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "REDUCTIONS",
    "ChosenInputs",
    "InputChoice",
    "InputSwitches",
    "LayerChoice",
    "Mutable",
    "ZeroInput",
    "fixed_arch",
    "label_scope",
    "load_arch",
    "reduce_tensors",
]

logger = logging.getLogger("nastrain")

#: Ways an :class:`InputChoice` combines the inputs it selects.
REDUCTIONS = ("sum", "mean", "concat", "none")

# Default of the first constructor argument: copy.deepcopy and pickle call __new__ without
# arguments, and must get a bare instance; a user passing None must get a clear error.
_NOARG: Any = object()

_LABEL_RE = re.compile(r"^[A-Za-z0-9_.:/\-]+$")

# NNI's tolerance for a prior that should sum to 1 (nni.nas.nn.pytorch.choice).
_PRIOR_TOLERANCE = 1e-5


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


def _json_kind(data: Any) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", int: "a number"}
    return "null" if data is None else kinds.get(type(data), "a number")


def load_arch(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read an exported architecture from a JSON file (what ``json.dump(trainer.export(), f)``
    writes, as NNI's examples do).

    A missing file is a ``FileNotFoundError``, and a file that is not JSON or holds
    something other than an object a ``ValueError``, each naming the file.
    """
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"fixed_arch: there is no architecture file {name!r}; pass the path of the JSON "
            "file holding the exported architecture, or the architecture dict itself"
        ) from None
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"fixed_arch: {name!r} is not JSON text (not UTF-8: {exc.reason} at byte {exc.start})"
        ) from None
    except OSError as exc:
        raise OSError(
            f"fixed_arch: cannot read the architecture file {name!r}: {exc.strerror or exc}"
        ) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"fixed_arch: {name!r} is not JSON ({exc.msg} at line {exc.lineno}, "
            f"column {exc.colno}); it should hold the exported architecture, an object of "
            "label -> choice"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(
            f"fixed_arch: {name!r} holds {_json_kind(data)}, not a JSON object of "
            "label -> choice (an exported architecture)"
        )
    return data


@contextlib.contextmanager
def fixed_arch(
    arch: Mapping[str, Any] | str | os.PathLike[str], verbose: bool = True
) -> Iterator[dict[str, Any]]:
    """Build a model space with its choices already made.

    Inside the block, constructing a :class:`LayerChoice` returns the chosen
    candidate itself and an :class:`InputChoice` returns a :class:`ChosenInputs`.
    ``arch`` is an exported architecture (label -> candidate name, or label ->
    list of input indices; a single index stands for a one-element list, as NNI
    2.x's exports write it), or the path (``str`` or ``os.PathLike``) of a JSON
    file holding one, read by :func:`load_arch`. A choice whose label ``arch``
    lacks is a ``ValueError``; so is a label of ``arch`` that no choice built in
    the block used (checked when the block ends without another error). With
    ``verbose`` (the default, as in NNI) the architecture is logged on the
    ``nastrain`` logger at INFO level.
    """
    source = None
    if isinstance(arch, (str, os.PathLike)):
        source = os.fspath(arch)
        arch = load_arch(arch)
    elif not isinstance(arch, Mapping):
        raise TypeError(
            "fixed_arch expects a dict of label -> choice or the path of a JSON file holding "
            f"one, got {type(arch).__name__}"
        )
    if verbose:
        logger.info("fixed_arch%s: %s", f" ({source})" if source else "", dict(arch))
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


def _legacy_options(kind: str, label: str | None, options: dict[str, Any]) -> str | None:
    """Check the keyword arguments NNI's choices take beyond ``prior`` and ``label`` (its
    legacy ``nni.nas.pytorch.mutables`` names); return the label they give."""
    accepted = {
        "LayerChoice": ("key", "return_mask", "reduction"),
        "InputChoice": ("key", "return_mask", "choose_from"),
    }[kind]
    for name in options:
        if name not in accepted:
            raise TypeError(
                f"{kind}() got an unexpected keyword argument {name!r}; it takes prior=, "
                f"label= and NNI's legacy {', '.join(a + '=' for a in accepted)}"
            )
    if "key" in options:
        key = options["key"]
        if label is not None and key != label:
            raise ValueError(
                f"{kind}: key={key!r} and label={label!r} disagree; key is NNI's old name "
                "of label, give only label="
            )
        label = key
    if options.get("return_mask"):
        raise ValueError(
            f"{kind} {label!r}: return_mask={options['return_mask']!r} is not supported: "
            "nastrain's choices (like NNI 2.x's) return their output only, never a mask; "
            "remove return_mask and read the choice's value from the exported architecture"
        )
    if kind == "LayerChoice" and "reduction" in options:
        warnings.warn(
            f"LayerChoice {label!r}: reduction={options['reduction']!r} is ignored: a "
            "LayerChoice applies exactly one candidate (NNI 2.x ignores it too); remove it",
            UserWarning,
            stacklevel=3,
        )
    return label


def _check_prior(prior: Any, n_candidates: int, label: str, kind: str) -> tuple[float, ...] | None:
    """``prior`` as a tuple of floats, or a clear error: one probability per candidate,
    each finite and positive, summing to 1.

    NNI also takes zeros; here every candidate must stay reachable, or the samplers that
    draw distinct architectures (the ``random`` strategy, random one-shot's ``export``)
    could look forever for ones the prior never gives."""
    if prior is None:
        return None
    if isinstance(prior, (str, bytes, Mapping)) or not isinstance(prior, Iterable):
        raise TypeError(
            f"{kind} {label!r}: prior must be a list of probabilities, one per candidate, "
            f"got {type(prior).__name__}"
        )
    values = []
    for i, p in enumerate(prior):
        if isinstance(p, bool) or not isinstance(p, numbers.Real):
            raise TypeError(
                f"{kind} {label!r}: prior[{i}] is a {type(p).__name__} ({p!r}), not a number"
            )
        if not math.isfinite(p) or p <= 0:
            raise ValueError(
                f"{kind} {label!r}: prior[{i}] is {p!r}; each candidate needs a finite "
                "probability > 0 (leave out a candidate that should never be picked)"
            )
        values.append(float(p))
    if len(values) != n_candidates:
        raise ValueError(
            f"{kind} {label!r}: prior has {len(values)} probabilities for {n_candidates} "
            "candidates; give one per candidate"
        )
    total = math.fsum(values)
    if abs(total - 1.0) > _PRIOR_TOLERANCE:
        raise ValueError(f"{kind} {label!r}: prior sums to {total:g}, not 1")
    return tuple(values)


def _layer_value_error(prefix: str, label: str, value: Any, names: Sequence[str]) -> ValueError:
    hint = ""
    if isinstance(value, int) and not isinstance(value, bool) and str(value) in names:
        hint = f" (candidate names are strings: write {str(value)!r})"
    return ValueError(
        f"{prefix}choice {label!r} has no candidate {value!r}; "
        f"its candidates are {list(names)}{hint}"
    )


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
    decision. Exported architectures name the chosen candidate. ``prior`` (one
    probability per candidate, summing to 1) weighs :meth:`SearchSpace.sample
    <nastrain.SearchSpace.sample>`; without it sampling is uniform. NNI's legacy
    keywords: ``key`` is ``label``; ``reduction`` is ignored with a warning;
    ``return_mask=True`` is refused (no mask is ever returned).
    """

    names: list[str]
    prior: tuple[float, ...] | None

    def __new__(
        cls,
        candidates: Any = _NOARG,
        *args: Any,
        prior: Any = None,
        label: str | None = None,
        **legacy: Any,
    ) -> Any:
        if candidates is _NOARG and not args and not legacy and prior is None and label is None:
            return super().__new__(cls)
        if args:
            raise TypeError(
                f"LayerChoice takes one positional argument, the candidates, got {1 + len(args)}; "
                "pass label= (and NNI's legacy reduction=, return_mask=, key=) by keyword"
            )
        if candidates is _NOARG:
            raise TypeError("LayerChoice needs its candidates: a list or dict of nn.Module")
        label = _legacy_options("LayerChoice", label, legacy)
        resolved = _derive_label(label, "layerchoice")
        named = _named_candidates(candidates, resolved)
        checked_prior = _check_prior(prior, len(named), resolved, "LayerChoice")
        found, value = _fixed_value(
            resolved, lambda: ("candidates", tuple(named), "prior", checked_prior)
        )
        if found:
            if not isinstance(value, str) or value not in named:
                raise _layer_value_error("fixed_arch: ", resolved, value, list(named))
            return named[value]
        self = super().__new__(cls)
        object.__setattr__(self, "_pending", (resolved, named, checked_prior))
        return self

    def __init__(
        self,
        candidates: Sequence[nn.Module] | Mapping[str, nn.Module],
        *,
        prior: Sequence[float] | None = None,
        label: str | None = None,
        **legacy: Any,
    ) -> None:
        # __new__ checked the arguments and left what they make; a LayerChoice that
        # fixed_arch handed back as a candidate is already built.
        pending = self.__dict__.pop("_pending", None)
        if pending is None:
            return
        super().__init__()
        self.label, named, self.prior = pending
        self.names = list(named)
        # nn.Module assigns these itself (model.train() sets "training"); a child module
        # of that name would break it. "label", "names" and "prior" are only set here.
        taken = sorted(set(named) & (set(self.__dict__) - {"label", "names", "prior"}))
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
        prior = f", prior={list(self.prior)}" if self.prior is not None else ""
        return f"label={self.label!r}{prior}"


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
    architectures give the sorted list of chosen indices. ``reduction`` may be
    given by position, as in NNI: ``InputChoice(3, 1, "sum")``. ``prior`` (one
    probability per input, summing to 1) weighs :meth:`SearchSpace.sample
    <nastrain.SearchSpace.sample>`, which draws the inputs one after another without
    replacement. ``n_chosen=None`` (NNI: any number of the inputs) builds an
    :class:`InputSwitches` instead, one on/off decision per input.

    NNI's legacy keywords: ``key`` is ``label``; ``choose_from`` (a list of source
    keys) gives ``n_candidates`` as its length; ``return_mask=True`` is refused.
    """

    #: NNI's legacy placeholder in ``choose_from`` for an input with no source key.
    NO_KEY = ""

    n_candidates: int
    n_chosen: int
    reduction: str
    prior: tuple[float, ...] | None

    def __new__(
        cls,
        n_candidates: Any = _NOARG,
        n_chosen: Any = 1,
        reduction: Any = "sum",
        *,
        prior: Any = None,
        label: str | None = None,
        **legacy: Any,
    ) -> Any:
        if n_candidates is _NOARG and not legacy and prior is None and label is None:
            return super().__new__(cls)
        label = _legacy_options("InputChoice", label, legacy)
        if "choose_from" in legacy:
            n_candidates = _from_choose_from(legacy["choose_from"], n_candidates, label)
        if n_candidates is _NOARG:
            raise TypeError("InputChoice needs n_candidates, the number of inputs to choose from")
        resolved = _derive_label(label, "inputchoice")
        if n_chosen is None:
            return _input_switches(n_candidates, reduction, prior, resolved)
        _check_input_choice(n_candidates, n_chosen, reduction, resolved)
        checked_prior = _check_prior(prior, n_candidates, resolved, "InputChoice")
        found, value = _fixed_value(
            resolved,
            lambda: ("n_candidates", n_candidates, "n_chosen", n_chosen, "prior", checked_prior),
        )
        if found:
            chosen = _check_indices(value, n_candidates, n_chosen, resolved)
            return ChosenInputs(chosen, reduction=reduction, n_candidates=n_candidates)
        self = super().__new__(cls)
        object.__setattr__(
            self, "_pending", (resolved, n_candidates, n_chosen, reduction, checked_prior)
        )
        return self

    def __init__(
        self,
        n_candidates: int | None = None,
        n_chosen: int | None = 1,
        reduction: str = "sum",
        *,
        prior: Sequence[float] | None = None,
        label: str | None = None,
        **legacy: Any,
    ) -> None:
        # __new__ checked the arguments and left what they make.
        pending = self.__dict__.pop("_pending", None)
        if pending is None:
            if "_modules" in self.__dict__:  # already built (a module fixed_arch handed back)
                return
            raise TypeError("InputChoice needs n_candidates, the number of inputs to choose from")
        super().__init__()
        self.label, self.n_candidates, self.n_chosen, self.reduction, self.prior = pending

    def forward(self, inputs: list[torch.Tensor]) -> Any:
        raise self._unresolved()

    def extra_repr(self) -> str:
        prior = f", prior={list(self.prior)}" if self.prior is not None else ""
        return (
            f"label={self.label!r}, n_candidates={self.n_candidates}, n_chosen={self.n_chosen}, "
            f"reduction={self.reduction!r}{prior}"
        )


def _from_choose_from(choose_from: Any, n_candidates: Any, label: str | None) -> int:
    """``n_candidates`` from NNI's legacy ``choose_from`` (a list of source keys)."""
    if isinstance(choose_from, (str, bytes)) or not isinstance(choose_from, Sequence):
        raise TypeError(
            f"InputChoice {label!r}: choose_from must be a list of source keys (str), got "
            f"{type(choose_from).__name__}"
        )
    if n_candidates not in (_NOARG, None) and n_candidates != len(choose_from):
        raise ValueError(
            f"InputChoice {label!r}: n_candidates is {n_candidates!r} but choose_from has "
            f"{len(choose_from)} keys; give one of them"
        )
    return len(choose_from)


def _check_indices(value: Any, n_candidates: int, n_chosen: int, label: str) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool) and n_chosen == 1:
        value = [value]  # NNI 2.x exports a one-input choice as its index
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

    def __init__(
        self, chosen: Sequence[int] | int, *, reduction: str = "sum", n_candidates: int
    ) -> None:
        super().__init__()
        indices = [chosen] if isinstance(chosen, int) else list(chosen)  # NNI's single index
        _check_input_choice(n_candidates, max(len(indices), 1), reduction, "ChosenInputs")
        self.chosen = _check_indices(indices, n_candidates, len(indices), "ChosenInputs")
        self.reduction = reduction
        self.n_candidates = n_candidates

    def forward(self, inputs: list[torch.Tensor]) -> Any:
        if len(inputs) != self.n_candidates:
            raise ValueError(f"ChosenInputs expected {self.n_candidates} inputs, got {len(inputs)}")
        return reduce_tensors([inputs[i] for i in self.chosen], self.reduction)

    def extra_repr(self) -> str:
        return f"chosen={self.chosen}, reduction={self.reduction!r}"


class ZeroInput(nn.Module):
    """An input switched off: zeros shaped like it (the ``"off"`` candidate of an
    :class:`InputSwitches` switch)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


#: The candidates of each switch of an :class:`InputSwitches`, in this order.
SWITCH_NAMES = ("off", "on")


class InputSwitches(nn.Module):
    """What ``InputChoice(n_candidates, n_chosen=None)`` builds: any number of the inputs.

    NNI's ``n_chosen=None`` lets a search pick any subset of the inputs, the empty
    one included (ENAS' macro skip connections). Here each input ``j`` passes through
    its own switch, ``LayerChoice({"off": ZeroInput(), "on": nn.Identity()},
    label=f"{label}/{j}")``, and the switches' outputs are summed: an ordinary space
    of ``2 ** n_candidates`` architectures that every trainer and strategy searches
    as it searches any LayerChoice (NNI's ENAS also decides each input on its own).
    Exported architectures say ``{"skip/0": "on", "skip/1": "off", ...}``; an empty
    selection gives zeros (NNI's gives ``None``). ``chosen`` builds the switches
    already fixed (what :func:`fixed_arch` does with NNI's ``{"skip": [0, 2]}``).
    """

    def __init__(self, n_candidates: int, *, label: str, chosen: Sequence[int] | None = None):
        super().__init__()
        _check_input_choice(n_candidates, 1, "sum", label)
        self.label = label
        self.n_candidates = n_candidates
        switches: list[nn.Module]
        if chosen is None:
            switches = [
                LayerChoice(
                    dict(zip(SWITCH_NAMES, (ZeroInput(), nn.Identity()))), label=f"{label}/{j}"
                )
                for j in range(n_candidates)
            ]
        else:
            switches = [nn.Identity() if j in chosen else ZeroInput() for j in range(n_candidates)]
        self.switches = nn.ModuleList(switches)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        if len(inputs) != self.n_candidates:
            raise ValueError(
                f"InputChoice {self.label!r} expects {self.n_candidates} inputs, got {len(inputs)}"
            )
        out = self.switches[0](inputs[0])
        for switch, x in zip(self.switches[1:], inputs[1:]):
            out = out + switch(x)
        return out

    def extra_repr(self) -> str:
        return f"label={self.label!r}, n_candidates={self.n_candidates}, n_chosen=None"


def _input_switches(n_candidates: Any, reduction: Any, prior: Any, label: str) -> InputSwitches:
    """``InputChoice(n_candidates, n_chosen=None, ...)``: checked, and fixed under
    :func:`fixed_arch` when the architecture gives ``label`` itself (NNI's form)."""
    _check_input_choice(n_candidates, 1, reduction, label)
    if reduction != "sum":
        raise ValueError(
            f"InputChoice {label!r}: n_chosen=None (any number of the inputs) sums the inputs "
            f"it picks; reduction {reduction!r} needs a fixed number: give n_chosen=k, or "
            "reduction='sum'"
        )
    if prior is not None:
        raise ValueError(
            f"InputChoice {label!r}: prior= is for a fixed n_chosen; with n_chosen=None each "
            f"input is its own on/off choice ({label + '/0'!r}, ...), sampled uniformly: "
            "remove prior, or give n_chosen=k"
        )
    state = _fixed.get()
    if state is None or label not in state.arch:
        return InputSwitches(n_candidates, label=label)
    state.check_shared(label, ("switches", n_candidates))
    chosen = _check_subset(state.arch[label], n_candidates, label, "fixed_arch: ")
    state.used.add(label)
    return InputSwitches(n_candidates, label=label, chosen=chosen)


def _check_subset(value: Any, n_candidates: int, label: str, prefix: str = "") -> list[int]:
    """NNI's value of an ``n_chosen=None`` choice (any distinct input indices, or one
    index) as a sorted list, or a ``ValueError`` naming the label."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if (
        not isinstance(value, (list, tuple))
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in value)
        or len(set(value)) != len(value)
        or any(not 0 <= i < n_candidates for i in value)
    ):
        raise ValueError(
            f"{prefix}choice {label!r} (n_chosen=None) takes a list of distinct input "
            f"indices in 0..{n_candidates - 1}, got {value!r}"
        )
    return sorted(value)
