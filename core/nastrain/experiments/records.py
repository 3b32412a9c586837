"""The records of multi-trial experiments: what a store keeps and an experiment returns.

A leaf of :mod:`nastrain.experiments`: the other modules of the package import it, and it
imports none of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import attrs
from cattrs.gen import make_dict_structure_fn

from nastrain import plugins
from nastrain.reporting import Metric, default_value
from nastrain.serialization import SCHEMA_VERSION, check_json_value, converter, dumps, loads
from nastrain.space import Architecture, SearchSpace
from nastrain.trainer import TrainerSpec

if TYPE_CHECKING:
    from nastrain.experiments.strategies import Strategy

__all__ = [
    "UNFINISHED",
    "ExperimentRecord",
    "ExperimentResult",
    "Mode",
    "StrategySpec",
    "Trial",
    "TrialStatus",
]

#: Whether a larger (``"max"``) or a smaller (``"min"``) final result is better.
Mode = Literal["max", "min"]


#: ``running``, ``succeeded``, ``failed`` (``reason`` says why), ``early_stopped`` (by the
#: strategy) or ``interrupted``: its experiment stopped before it ended (Ctrl-C, an error, or
#: a process that died: a reader shows a trial still marked ``running`` in a store that no
#: live process writes as interrupted). A resumed run runs interrupted trials again.
#: Stores written before ``interrupted`` existed have only the other four; the column is
#: text, so they read as they are (nothing to migrate).
TrialStatus = Literal["running", "succeeded", "failed", "early_stopped", "interrupted"]

#: The statuses of a trial that has not ended: a resumed run runs it again.
UNFINISHED: tuple[TrialStatus, ...] = ("running", "interrupted")


@attrs.frozen(kw_only=True)
class StrategySpec:
    """A registered strategy's name and JSON keyword arguments: what an experiment's
    record stores, and what ``strategy = {name = ..., kwargs = {...}}`` in a config is."""

    name: str
    kwargs: dict[str, Any] = attrs.field(factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __attrs_post_init__(self) -> None:
        if not self.name:
            raise ValueError("StrategySpec.name must be a registered strategy name")
        for key, value in self.kwargs.items():
            check_json_value(value, f"argument {key!r} of strategy {self.name!r}")
        if self.schema_version > SCHEMA_VERSION:
            raise ValueError(
                f"this strategy spec has schema_version {self.schema_version}, newer than this "
                f"nastrain understands ({SCHEMA_VERSION}); upgrade nastrain"
            )

    def build(self) -> Strategy:
        """Construct the registered strategy with these arguments."""
        cls = plugins.get_strategy(self.name)
        try:
            return cls(**self.kwargs)
        except TypeError as exc:
            raise TypeError(f"strategy {self.name!r}: {exc}") from None

    def to_json(self) -> str:
        """This spec as a JSON string."""
        return dumps(self)

    @classmethod
    def from_json(cls, text: str | bytes) -> StrategySpec:
        """Read a spec written by :meth:`to_json`; a bad document names its bad key."""
        return loads(text, cls, what="strategy spec")


_structure_spec_table = make_dict_structure_fn(
    StrategySpec, converter, _cattrs_forbid_extra_keys=True
)


def _structure_spec(value: Any, _: type) -> StrategySpec:
    # In a config, ``strategy = "evolution"`` is short for ``strategy = {name = "evolution"}``.
    if isinstance(value, str):
        return StrategySpec(name=value)
    return _structure_spec_table(value, StrategySpec)


converter.register_structure_hook(StrategySpec, _structure_spec)


@attrs.frozen(kw_only=True)
class Trial:
    """One architecture an experiment tried, and what its trainer reported."""

    index: int
    arch: Architecture
    status: TrialStatus
    seed: int
    intermediate: tuple[Metric, ...] = ()
    final: Metric | None = None
    reason: str | None = None
    #: How many times the trial was started (more than 1 after a resumed interruption).
    attempts: int = 1
    started: float | None = None
    ended: float | None = None
    #: The order in which trials ended (0 for the first to end).
    end_order: int | None = None
    #: Where the trial's latest attempt ran, as its executor names it (the local and inline
    #: executors: ``"<host>:<pid>"`` of the process that trained it); ``None`` when not
    #: recorded (before it started, a result reused untrained, a store from before workers).
    worker: str | None = None

    @property
    def value(self) -> float | None:
        """The final result's number (its ``"default"`` for a dict), or ``None``."""
        return None if self.final is None else default_value(self.final)

    @property
    def seconds(self) -> float | None:
        """How long the trial's last attempt took, once it ended."""
        if self.started is None or self.ended is None:
            return None
        return self.ended - self.started


@attrs.frozen(kw_only=True)
class ExperimentRecord:
    """What a store records about its experiment, and what makes two experiments the same:
    the space, the trainer spec, the strategy spec, the seed and the mode."""

    space: SearchSpace
    trainer: TrainerSpec
    strategy: StrategySpec
    seed: int
    mode: Mode
    #: How the user named the space (``module:attr``), or the class of the space object;
    #: for people reading the store. It is never imported from the store.
    space_name: str | None = None
    schema_version: int = SCHEMA_VERSION


@attrs.frozen(kw_only=True)
class ExperimentResult:
    """The trials of an experiment (all of them, also those of earlier runs on its store)."""

    trials: tuple[Trial, ...]
    mode: Mode
    store: str
    #: Why the run ended before ``max_trials`` trials had ended (the strategy proposed no
    #: more architectures: e.g. ``"the search space has only 4 architectures (grid
    #: exhausted)"``), or ``None``: it ran them all (or the result was read from a store).
    stop_reason: str | None = None

    def ranked(self) -> list[Trial]:
        """The succeeded trials with a final result, best first (ties: the earlier trial)."""
        sign = -1.0 if self.mode == "max" else 1.0
        done = [t for t in self.trials if t.status == "succeeded" and t.value is not None]
        return sorted(done, key=lambda t: (sign * t.value, t.index))  # type: ignore[operator]

    def top(self, k: int = 1) -> list[Trial]:
        """The ``k`` best trials."""
        return self.ranked()[:k]

    @property
    def best_trial(self) -> Trial | None:
        """The best trial, or ``None`` when no trial succeeded."""
        ranked = self.ranked()
        return ranked[0] if ranked else None

    @property
    def best_arch(self) -> Architecture | None:
        """The best trial's architecture, or ``None`` when no trial succeeded."""
        best = self.best_trial
        return None if best is None else best.arch

    def counts(self) -> dict[str, int]:
        """How many trials have each status."""
        counts: dict[str, int] = {}
        for trial in self.trials:
            counts[trial.status] = counts.get(trial.status, 0) + 1
        return counts
