"""Search spaces as data: the decisions of a model space, and what is done with them.

:meth:`SearchSpace.from_model` reads the decisions (one per label) out of a model
space; strategies enumerate, count and sample them; exporters and
:func:`apply_arch` validate architectures against them.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import attrs
from cattrs.gen import make_dict_unstructure_fn, override
from torch import nn

from nastrain.mutables import (
    SWITCH_NAMES,
    ChosenInputs,
    InputChoice,
    InputSwitches,
    LayerChoice,
    Mutable,
    _check_indices,
    _check_prior,
    _check_subset,
    _layer_value_error,
)
from nastrain.serialization import SCHEMA_VERSION, converter, dumps, loads

__all__ = ["Architecture", "Choice", "SearchSpace", "apply_arch", "iter_mutables"]

#: An exported architecture: label -> candidate name, or label -> sorted input indices.
Architecture = dict[str, Any]


@attrs.frozen(kw_only=True)
class Choice:
    """One decision of a search space.

    ``kind`` is ``"layer"`` (pick one of ``names``) or ``"input"`` (pick
    ``n_chosen`` of ``n_candidates`` input indices). Every module that carries
    this ``label`` takes the same value. ``prior`` (one probability per candidate,
    from the choice's ``prior=``) weighs :meth:`sample`; ``None`` is uniform.
    """

    label: str
    kind: Literal["layer", "input"]
    names: tuple[str, ...] = ()
    n_candidates: int
    n_chosen: int = 1
    prior: tuple[float, ...] | None = None

    def __attrs_post_init__(self) -> None:
        if self.prior is not None:
            _check_prior(self.prior, self.n_candidates, self.label, "choice")

    @property
    def size(self) -> int:
        """How many values this decision can take."""
        if self.kind == "layer":
            return len(self.names)
        return math.comb(self.n_candidates, self.n_chosen)

    def values(self) -> Iterator[Any]:
        """Every value of this decision, in a stable order."""
        if self.kind == "layer":
            yield from self.names
        else:
            for combo in itertools.combinations(range(self.n_candidates), self.n_chosen):
                yield list(combo)

    def sample(self, rng: random.Random) -> Any:
        """A random value: uniform, or weighed by :attr:`prior` (an input choice then
        draws its ``n_chosen`` inputs one after another, without replacement)."""
        if self.prior is None:
            if self.kind == "layer":
                return rng.choice(self.names)
            return sorted(rng.sample(range(self.n_candidates), self.n_chosen))
        if self.kind == "layer":
            return rng.choices(self.names, weights=self.prior)[0]
        remaining, weights, chosen = list(range(self.n_candidates)), list(self.prior), []
        for _ in range(self.n_chosen):
            i = rng.choices(range(len(remaining)), weights=weights)[0]
            chosen.append(remaining.pop(i))
            weights.pop(i)
        return sorted(chosen)

    def validate(self, value: Any) -> Any:
        """Return ``value`` in canonical form, or raise ``ValueError`` naming the label."""
        if self.kind == "layer":
            if not isinstance(value, str) or value not in self.names:
                raise _layer_value_error("", self.label, value, self.names)
            return value
        return _check_indices(value, self.n_candidates, self.n_chosen, self.label)

    def compatible(self, other: Choice) -> bool:
        """Whether two modules with this label can be one decision."""
        return (self.kind, self.names, self.n_candidates, self.n_chosen, self.prior) == (
            other.kind,
            other.names,
            other.n_candidates,
            other.n_chosen,
            other.prior,
        )


# A choice without a prior is written without the key, as before priors existed, so that
# such documents (spaces in stores and checkpoints) stay readable by earlier releases.
converter.register_unstructure_hook(
    Choice,
    make_dict_unstructure_fn(Choice, converter, prior=override(omit_if_default=True)),
)


def describe(module: Mutable) -> Choice:
    """The :class:`Choice` a mutable module stands for."""
    if isinstance(module, LayerChoice):
        return Choice(
            label=module.label,
            kind="layer",
            names=tuple(module.names),
            n_candidates=len(module.names),
            prior=getattr(module, "prior", None),
        )
    if isinstance(module, InputChoice):
        return Choice(
            label=module.label,
            kind="input",
            n_candidates=module.n_candidates,
            n_chosen=module.n_chosen,
            prior=getattr(module, "prior", None),
        )
    describe_fn = getattr(module, "describe", None)
    if describe_fn is None:
        raise TypeError(
            f"{type(module).__qualname__} {getattr(module, 'label', '?')!r} is a Mutable without "
            "a describe() method returning a nastrain.Choice"
        )
    return describe_fn()


def resolve(module: Mutable, value: Any) -> nn.Module:
    """The fixed module a mutable module becomes for ``value`` (already validated)."""
    if isinstance(module, LayerChoice):
        return module[value]
    if isinstance(module, InputChoice):
        return ChosenInputs(value, reduction=module.reduction, n_candidates=module.n_candidates)
    resolve_fn = getattr(module, "resolve", None)
    if resolve_fn is None:
        raise TypeError(
            f"{type(module).__qualname__} {module.label!r} is a Mutable without a resolve(value) "
            "method, so apply_arch cannot fix it"
        )
    return resolve_fn(value)


def iter_mutables(model: nn.Module) -> Iterator[tuple[str, Mutable]]:
    """Every choice in ``model`` (nested ones included) as ``(path, module)``, in pre-order."""
    for path, module in model.named_modules():
        if isinstance(module, Mutable):
            yield path, module


@attrs.frozen(kw_only=True)
class SearchSpace:
    """The decisions of a model space, in the order they first appear in the model."""

    choices: tuple[Choice, ...]
    schema_version: int = SCHEMA_VERSION

    def __attrs_post_init__(self) -> None:
        if self.schema_version > SCHEMA_VERSION:
            raise ValueError(
                f"this search space has schema_version {self.schema_version}, newer than this "
                f"nastrain understands ({SCHEMA_VERSION}); upgrade nastrain"
            )

    @classmethod
    def from_model(cls, model: nn.Module) -> SearchSpace:
        """Read the decisions of ``model``; incompatible choices sharing a label are an error."""
        found: dict[str, tuple[str, Choice]] = {}
        for path, module in iter_mutables(model):
            choice = describe(module)
            if choice.label in found:
                first_path, first = found[choice.label]
                if not first.compatible(choice):
                    raise ValueError(
                        f"label {choice.label!r} is shared by incompatible choices: "
                        f"{first_path or '<root>'} ({_summary(first)}) and "
                        f"{path or '<root>'} ({_summary(choice)}); choices with one label are "
                        "one decision and need the same candidates"
                    )
            else:
                found[choice.label] = (path, choice)
        return cls(choices=tuple(choice for _, choice in found.values()))

    @property
    def labels(self) -> list[str]:
        """The labels, in order."""
        return [choice.label for choice in self.choices]

    def __getitem__(self, label: str) -> Choice:
        for choice in self.choices:
            if choice.label == label:
                return choice
        raise KeyError(label)

    def __len__(self) -> int:
        return len(self.choices)

    def __iter__(self) -> Iterator[Choice]:
        return iter(self.choices)

    @property
    def size(self) -> int:
        """How many distinct architecture dicts the space holds (every label has a value,
        also labels nested in a candidate that is not chosen)."""
        return math.prod(choice.size for choice in self.choices)

    def sample(self, seed: int | random.Random | None = None) -> Architecture:
        """A random architecture (uniform, or weighed by each choice's ``prior``); the same
        ``seed`` gives the same one."""
        rng = seed if isinstance(seed, random.Random) else random.Random(seed)
        return {choice.label: choice.sample(rng) for choice in self.choices}

    def enumerate(self) -> Iterator[Architecture]:
        """Every architecture, in a stable order (the last label varies fastest)."""
        labels = self.labels
        for values in itertools.product(*(list(choice.values()) for choice in self.choices)):
            yield dict(zip(labels, values))

    def validate(self, arch: Mapping[str, Any]) -> Architecture:
        """Return ``arch`` in canonical form (sorted input lists, space order).

        Raises ``ValueError`` naming the label for an unknown label, a missing
        label, an unknown candidate or a wrong number of inputs.
        """
        if not isinstance(arch, Mapping):
            raise TypeError(f"an architecture is a dict of label -> choice, got {type(arch)}")
        known = set(self.labels)
        unknown = [label for label in arch if label not in known]
        if unknown:
            raise ValueError(
                f"architecture has unknown label(s) {unknown}; the space's labels are {self.labels}"
            )
        missing = [label for label in self.labels if label not in arch]
        if missing:
            raise ValueError(f"architecture is missing label(s) {missing}")
        return {choice.label: choice.validate(arch[choice.label]) for choice in self.choices}

    def to_json(self) -> str:
        """This space as JSON (what a store records to recognise its space)."""
        return dumps(self)

    @classmethod
    def from_json(cls, text: str | bytes) -> SearchSpace:
        """Read a space written by :meth:`to_json`."""
        return loads(text, cls, what="search space")


def _summary(choice: Choice) -> str:
    prior = f", prior {list(choice.prior)}" if choice.prior is not None else ""
    if choice.kind == "layer":
        return f"candidates {list(choice.names)}{prior}"
    return f"n_candidates={choice.n_candidates}, n_chosen={choice.n_chosen}{prior}"


def apply_arch(model: nn.Module, arch: Mapping[str, Any]) -> nn.Module:
    """A copy of ``model`` with every choice fixed to ``arch``; ``model`` is left as it was.

    As in :func:`~nastrain.fixed_arch`, an ``InputChoice(n, n_chosen=None)`` also takes
    NNI's form, its label and the chosen indices (``{"skip": [0, 2]}``), for its switches
    ``skip/0``, ``skip/1``, ...
    """
    space = SearchSpace.from_model(model)
    if not space.choices:
        raise ValueError("apply_arch: the model has no LayerChoice or InputChoice to fix")
    fixed = space.validate(_expand_switches(model, space, arch))
    copied = copy.deepcopy(model)

    def fix(module: nn.Module) -> nn.Module:
        if isinstance(module, Mutable):
            return fix(resolve(module, fixed[module.label]))
        for name, child in list(module._modules.items()):
            if child is not None:
                module._modules[name] = fix(child)
        return module

    return fix(copied)


def _expand_switches(model: nn.Module, space: SearchSpace, arch: Any) -> Any:
    """``arch`` with NNI's value of an ``InputChoice(n, n_chosen=None)`` (its own label ->
    chosen indices) written as the values of its switches (``label/j`` -> on or off)."""
    if not isinstance(arch, Mapping):
        return arch  # validate says what is wrong
    switches = {m.label: m.n_candidates for m in model.modules() if isinstance(m, InputSwitches)}
    if not any(label in switches and label not in space.labels for label in arch):
        return arch
    expanded = {}
    for label, value in arch.items():
        if label not in switches or label in space.labels:
            expanded[label] = value
            continue
        n = switches[label]
        both = [f"{label}/{j}" for j in range(n) if f"{label}/{j}" in arch]
        if both:
            raise ValueError(
                f"architecture gives choice {label!r} (n_chosen=None) twice: as {label!r} "
                f"and as its switch(es) {both}; give one form"
            )
        chosen = _check_subset(value, n, label)
        off, on = SWITCH_NAMES
        for j in range(n):
            expanded[f"{label}/{j}"] = on if j in chosen else off
    return expanded
