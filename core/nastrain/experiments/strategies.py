"""Search strategies: which architecture a multi-trial experiment tries next, and whether a
running trial is worth finishing.

A strategy is a subclass of :class:`Strategy` made known by name through the
``nastrain_register_strategies`` hook; the core registers its own (``random``,
``grid``, ``evolution``, ``median_stop``) through that hook like any plugin.

A strategy keeps no state that the experiment's record cannot rebuild: every
call gets the whole history (every trial so far, running ones included, with
their intermediate and final results), and randomness comes from
:meth:`Strategy.rng`, seeded by the experiment's seed and the trial's index. So
an experiment resumed from its store builds a fresh strategy and goes on as if
it had never stopped.
"""

from __future__ import annotations

import abc
import json
import random
import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from nastrain import plugins
from nastrain.reporting import default_value
from nastrain.serialization import check_json_value
from nastrain.space import Architecture, Choice, SearchSpace

if TYPE_CHECKING:
    from nastrain.experiments.records import Trial

from nastrain.experiments.records import Mode, StrategySpec

__all__ = [
    "GridSearch",
    "MedianStop",
    "RandomSearch",
    "RegularizedEvolution",
    "Strategy",
    "arch_key",
]


def arch_key(arch: Architecture) -> str:
    """A hashable, canonical form of an architecture (for "seen before?" sets)."""
    return json.dumps(arch, sort_keys=True)


class Strategy(abc.ABC):
    """Base class of search strategies.

    Subclasses take JSON keyword arguments only (they are recorded in the
    experiment's store as :attr:`spec`), implement :meth:`propose`, and may
    implement :meth:`should_stop` to stop trials early. :meth:`setup` is called
    once before the first proposal of every run (a resumed run included).
    Register them with the ``nastrain_register_strategies`` hook.
    """

    space: SearchSpace
    seed: int
    mode: Mode
    _spec: StrategySpec  # set by __new__, read through spec

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if args:
            raise TypeError(
                f"{cls.__qualname__} takes keyword arguments only (they are recorded as JSON "
                f"in the experiment's store), got {len(args)} positional"
            )
        for key, value in kwargs.items():
            check_json_value(value, f"argument {key!r} of strategy {cls.__qualname__}")
        self = super().__new__(cls)
        self._spec = StrategySpec(
            name=plugins.default_name(cls), kwargs=json.loads(json.dumps(kwargs))
        )
        return self

    @property
    def spec(self) -> StrategySpec:
        """The name and arguments this strategy was built with."""
        return self._spec

    def setup(self, space: SearchSpace, *, seed: int, mode: Mode) -> None:
        """Learn the space, the experiment's seed and whether larger results are better."""
        self.space = space
        self.seed = seed
        self.mode = mode

    @abc.abstractmethod
    def propose(self, index: int, history: Sequence[Trial]) -> Architecture | None:
        """The architecture of trial ``index``, or ``None`` when there is nothing left to try.

        ``history`` holds every trial so far in index order (``history[i].index == i``),
        running ones included.
        """

    def should_stop(self, trial: Trial, history: Sequence[Trial]) -> bool:
        """Called after every intermediate result of a running ``trial``; ``True`` stops it.

        The default never stops a trial.
        """
        return False

    def reuse(self, arch: Architecture, history: Sequence[Trial]) -> Trial | None:
        """An earlier trial whose recorded results stand for the proposed ``arch``, which is
        then not trained: the experiment records a new trial with those results (its
        ``reason`` names the earlier trial). ``None`` (the default): train it."""
        return None

    # --- helpers for subclasses ---------------------------------------------------------

    def rng(self, index: int) -> random.Random:
        """A random generator for trial ``index``, the same in every run with this seed."""
        return random.Random(f"{self.seed}/{index}")

    def score(self, value: float) -> float:
        """``value`` turned so that larger is better (negated when the mode is ``"min"``)."""
        return value if self.mode == "max" else -value

    def trial_score(self, trial: Trial) -> float | None:
        """The trial's final result as a score (larger is better), ``None`` without one."""
        if trial.status != "succeeded" or trial.final is None:
            return None
        return self.score(default_value(trial.final))


plugins.declare_registry_base("strategy", Strategy, "nastrain.experiments.strategies.Strategy")


class RandomSearch(Strategy):
    """Architectures drawn uniformly at random, reproducible from the experiment's seed.

    With ``dedup`` (the default) an architecture is not proposed twice; the
    search ends when a finite space is used up.
    """

    name = "random"

    def __init__(self, *, dedup: bool = True) -> None:
        self.dedup = dedup

    def propose(self, index: int, history: Sequence[Trial]) -> Architecture | None:
        rng = self.rng(index)
        if not self.dedup:
            return self.space.sample(rng)
        return sample_unseen(self.space, rng, {arch_key(t.arch) for t in history})


def sample_unseen(space: SearchSpace, rng: random.Random, seen: set[str]) -> Architecture | None:
    """A uniformly random architecture not in ``seen``; ``None`` when every one was seen."""
    size = space.size
    if len(seen) >= size:
        return None
    for _ in range(64):
        arch = space.sample(rng)
        if arch_key(arch) not in seen:
            return arch
    # Nearly used up: draw among the rest directly.
    rest = [arch for arch in space.enumerate() if arch_key(arch) not in seen]
    return rng.choice(rest) if rest else None


class GridSearch(Strategy):
    """Every architecture of the space once, in :meth:`SearchSpace.enumerate` order."""

    name = "grid"

    def __init__(self) -> None:
        self._order: Any = None

    def setup(self, space: SearchSpace, *, seed: int, mode: Mode) -> None:
        super().setup(space, seed=seed, mode=mode)
        self._order = space.enumerate()

    def propose(self, index: int, history: Sequence[Trial]) -> Architecture | None:
        seen = {arch_key(t.arch) for t in history}
        for arch in self._order:
            if arch_key(arch) not in seen:
                return arch
        return None


class RegularizedEvolution(Strategy):
    """Regularized (aging) evolution: Real et al., "Regularized Evolution for Image
    Classifier Architecture Search", AAAI 2019, Algorithm 1, in its asynchronous form.

    Until ``population_size`` trials have finished, architectures are drawn at
    random (none twice). After that the population is the ``population_size``
    most recently finished trials: the oldest die ("aging"), whatever their
    results. Each proposal samples ``sample_size`` members of the population
    uniformly *with replacement* (as the paper's ``random S elements`` of a
    population it may draw again from), takes the best of the sample as the parent
    (ties: the earlier trial) and mutates one of its choices to a different value.
    Failed and early-stopped trials never join the population.

    ``duplicates`` says what happens when a child is an architecture already tried
    (finished or running): ``"mutate"`` (the default) mutates again, up to
    ``retries`` times with a fresh tournament each time, then falls back to a random
    architecture not tried yet, so no architecture is trained twice. The paper's
    Algorithm 1 does not check: a repeated child joins the population like any
    other. ``"reuse"`` does that without training it again: a child equal to a
    succeeded trial becomes a new trial (a new, young member of the population)
    with that trial's recorded results (children equal to a running, failed or
    stopped trial are mutated again). ``"retrain"`` trains the repeated child again.
    The search ends when every architecture of a (small) space has been tried.
    """

    name = "evolution"

    #: The values of ``duplicates``.
    DUPLICATES = ("mutate", "reuse", "retrain")

    def __init__(
        self,
        *,
        population_size: int = 10,
        sample_size: int = 3,
        duplicates: str = "mutate",
        retries: int = 100,
    ) -> None:
        for key, value in (
            ("population_size", population_size),
            ("sample_size", sample_size),
            ("retries", retries),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"evolution: {key} must be an integer >= 1, got {value!r}")
        if sample_size > population_size:
            raise ValueError(
                f"evolution: sample_size ({sample_size}) cannot exceed population_size "
                f"({population_size})"
            )
        if duplicates not in self.DUPLICATES:
            raise ValueError(
                f"evolution: duplicates must be one of {list(self.DUPLICATES)}, got {duplicates!r}"
            )
        self.population_size = population_size
        self.sample_size = sample_size
        self.duplicates = duplicates
        self.retries = retries

    def population(self, history: Sequence[Trial]) -> list[Trial]:
        """The living population: the ``population_size`` trials that finished last (with a
        final result), oldest first; fewer while the search is still young."""
        finished = sorted(
            (t for t in history if self.trial_score(t) is not None),
            key=lambda t: t.end_order if t.end_order is not None else t.index,
        )
        return finished[-self.population_size :]

    def tournament(self, population: Sequence[Trial], rng: random.Random) -> Trial:
        """The parent: the best of ``sample_size`` members drawn with replacement."""
        sample = [rng.choice(population) for _ in range(self.sample_size)]
        return max(sample, key=lambda t: (self.trial_score(t), -t.index))

    def propose(self, index: int, history: Sequence[Trial]) -> Architecture | None:
        rng = self.rng(index)
        seen = {arch_key(t.arch) for t in history}
        if len(seen) >= self.space.size:
            return None  # a small space, all of it tried: nothing is left to learn
        finished = sum(1 for t in history if self.trial_score(t) is not None)
        if finished < self.population_size:
            return sample_unseen(self.space, rng, seen)
        population = self.population(history)
        if self.duplicates == "retrain":
            return self.mutate(self.tournament(population, rng).arch, rng)
        # Architectures a child must not be: all tried ones, or with "reuse" those without
        # a result to reuse.
        avoid = seen
        if self.duplicates == "reuse":
            avoid = seen - {arch_key(t.arch) for t in history if self.trial_score(t) is not None}
        for _ in range(self.retries):
            child = self.mutate(self.tournament(population, rng).arch, rng)
            if arch_key(child) not in avoid:
                return child
        # The parents' neighbourhoods are used up: an architecture not tried yet instead.
        return sample_unseen(self.space, rng, seen)

    def reuse(self, arch: Architecture, history: Sequence[Trial]) -> Trial | None:
        """With ``duplicates="reuse"``, the last succeeded trial of ``arch``, if any."""
        if self.duplicates != "reuse":
            return None
        key = arch_key(arch)
        done = [t for t in history if self.trial_score(t) is not None and arch_key(t.arch) == key]
        return done[-1] if done else None

    def mutate(self, arch: Architecture, rng: random.Random) -> Architecture:
        """``arch`` with one choice (drawn uniformly among those with a choice) changed."""
        mutable = [choice for choice in self.space.choices if choice.size > 1]
        if not mutable:
            return dict(arch)
        choice = rng.choice(mutable)
        child = dict(arch)
        child[choice.label] = _other_value(choice, arch[choice.label], rng)
        return child


def _other_value(choice: Choice, current: Any, rng: random.Random) -> Any:
    if choice.kind == "layer":
        return rng.choice([name for name in choice.names if name != current])
    while True:
        value = choice.sample(rng)
        if value != current:
            return value


class MedianStop(Strategy):
    """The median stopping rule (Golovin et al., "Google Vizier", KDD 2017, section 3.2.2)
    on top of another strategy, which proposes the architectures.

    A running trial is stopped at step ``s`` when its best intermediate result
    up to ``s`` is strictly worse than the median, over the trials that
    finished, of their running averages up to ``s``. It waits for
    ``min_trials`` finished trials and ``min_steps`` intermediate results.
    """

    name = "median_stop"

    def __init__(
        self,
        *,
        base: str = "random",
        base_kwargs: dict[str, Any] | None = None,
        min_trials: int = 3,
        min_steps: int = 1,
    ) -> None:
        for key, value in (("min_trials", min_trials), ("min_steps", min_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"median_stop: {key} must be an integer >= 1, got {value!r}")
        if base == self.name:
            raise ValueError("median_stop: base must be another strategy")
        self.base = StrategySpec(name=base, kwargs=base_kwargs or {}).build()
        self.min_trials = min_trials
        self.min_steps = min_steps

    def setup(self, space: SearchSpace, *, seed: int, mode: Mode) -> None:
        super().setup(space, seed=seed, mode=mode)
        self.base.setup(space, seed=seed, mode=mode)

    def propose(self, index: int, history: Sequence[Trial]) -> Architecture | None:
        return self.base.propose(index, history)

    def reuse(self, arch: Architecture, history: Sequence[Trial]) -> Trial | None:
        return self.base.reuse(arch, history)

    def should_stop(self, trial: Trial, history: Sequence[Trial]) -> bool:
        if self.base.should_stop(trial, history):
            return True
        step = len(trial.intermediate)
        if step < self.min_steps:
            return False
        averages = [
            statistics.fmean(self.score(default_value(m)) for m in t.intermediate[:step])
            for t in history
            if t.status == "succeeded" and t.index != trial.index and t.intermediate
        ]
        if len(averages) < self.min_trials:
            return False
        best = max(self.score(default_value(m)) for m in trial.intermediate)
        return best < statistics.median(averages)
