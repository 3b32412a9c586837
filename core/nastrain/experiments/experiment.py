"""Multi-trial experiments: a strategy proposes architectures, a classic trainer trains each
one in a worker process, and every result goes back to the strategy and into a store.

::

    experiment = nastrain.Experiment(Net(), ClassificationTrainer(Net(), dataset="digits"),
                                     "evolution", max_trials=20, concurrency=2)
    result = experiment.run()
    result.best_arch

Each trial: the strategy proposes an architecture; a worker fixes the model
space to it (:func:`nastrain.apply_arch`), builds the trainer from its spec
(``spec.build(model)``) and runs ``fit()``; every result the trainer reports
streams back to the strategy (which may stop the trial early) and into the
store (:mod:`nastrain.experiments.store`), committed as it arrives. Running an experiment
again on its store resumes it: finished trials are kept (also one whose final
result was stored just before the experiment died), interrupted ones run again,
and the strategy goes on from the record. One process at a time runs an
experiment on a store: a second one is refused
(:class:`nastrain.experiments.store.StoreLockedError`) while the first is alive.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import inspect
import json
import os
import sqlite3
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
from torch import nn

from nastrain import plugins
from nastrain.experiments.executor import (
    Executor,
    ExecutorContext,
    TrialJob,
    WorkerSetup,
    available_cpus,
    load_space,
    nastrain_environ,
)
from nastrain.experiments.records import (
    UNFINISHED,
    ExperimentRecord,
    ExperimentResult,
    Mode,
    StrategySpec,
    Trial,
)
from nastrain.experiments.store import Store, StoreError
from nastrain.experiments.strategies import Strategy
from nastrain.reporting import Metric
from nastrain.serialization import (
    SCHEMA_VERSION,
    check_json_value,
    converter,
    dumps,
    structure,
)
from nastrain.space import Architecture, SearchSpace, apply_arch
from nastrain.terminal import printable
from nastrain.trainer import BaseOneShotTrainer, BaseTrainer, TrainerSpec

__all__ = [
    "ExecutorSpec",
    "Experiment",
    "ExperimentConfig",
    "load_config",
]

#: Where experiments without an explicit store keep theirs, under the working directory.
DEFAULT_STORE_FOLDER = "nastrain-runs"


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def trial_seed(seed: int, index: int) -> int:
    """The seed of trial ``index``: the same in every run and on every worker."""
    digest = hashlib.sha256(f"{seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class Experiment:
    """A multi-trial architecture search.

    Args:
        space: the model space, a ``nn.Module`` with choices, or ``"module:attr"``
            naming one (or a function returning one, called with ``space_kwargs``)
            in the user's code; named spaces are imported by each worker.
        trainer: a classic trainer built with a placeholder model (its ``spec``
            is what travels to the workers), or a :class:`nastrain.TrainerSpec`.
        strategy: a registered strategy name, a :class:`StrategySpec`, or a
            :class:`nastrain.experiments.strategies.Strategy`.
        max_trials: how many trials in all (resumed runs count the stored ones).
        concurrency: how many trials run at once, each in its own worker process.
        store: the SQLite file of the experiment; by default
            ``nastrain-runs/<space>-<hash>.sqlite`` under the working
            directory, named after what makes the experiment, so running the same
            experiment again resumes it.
        seed: seeds the strategy and every trial (``torch``, ``random``, NumPy).
        mode: ``"max"`` when a larger final result is better, ``"min"`` otherwise.
        trial_timeout: seconds a trial may run before its worker is killed and
            the trial recorded as failed.
        executor: the registered name of where the trials run: ``"local"`` (worker
            processes on this machine, the default), ``"inline"`` (trials in this
            process, one at a time: for debugging and notebooks), or a plugin's
            (``"ray"`` with nastrain-ray); ``nastrain.plugins.executor_names()`` lists them.
        executor_options: the executor's JSON options (``local`` and ``inline`` take
            none; a plugin's executor documents its own, e.g. ``{"address": "auto"}``);
            an option it does not take is refused, naming it.
        modules: modules of the user's code to import first, in this process and
            in every worker (for example, where a trainer is registered).
        progress: ``True`` for a progress bar on stderr, ``"lines"`` for a line
            per finished trial, ``False`` for nothing; ``None``: a bar when stderr
            is a terminal.
    """

    def __init__(
        self,
        space: nn.Module | str,
        trainer: BaseTrainer | TrainerSpec,
        strategy: str | StrategySpec | Strategy = "random",
        *,
        max_trials: int,
        concurrency: int = 1,
        store: str | os.PathLike[str] | None = None,
        seed: int = 0,
        mode: Mode = "max",
        trial_timeout: float | None = None,
        executor: str = "local",
        space_kwargs: Mapping[str, Any] | None = None,
        modules: Sequence[str] = (),
        progress: bool | Literal["lines"] | None = None,
        executor_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.max_trials = _positive_int("max_trials", max_trials)
        self.concurrency = _positive_int("concurrency", concurrency)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if trial_timeout is not None and (
            isinstance(trial_timeout, bool)
            or not isinstance(trial_timeout, (int, float))
            or not trial_timeout > 0
        ):
            raise ValueError(
                f"trial_timeout must be a number of seconds > 0, got {trial_timeout!r}"
            )
        if not isinstance(executor, str) or not executor:
            raise TypeError(f"executor must be a registered executor's name, got {executor!r}")
        plugins.get_executor(executor)  # an unknown name fails now, listing the known ones
        self.executor_options = dict(executor_options or {})
        for key, value in self.executor_options.items():
            if not isinstance(key, str):
                raise TypeError(f"executor_options keys must be strings, got {key!r}")
            check_json_value(value, f"option {key!r} of executor {executor!r}")
        if executor == "inline" and (concurrency != 1 or trial_timeout is not None):
            raise ValueError(
                "executor='inline' runs one trial at a time in this process: it takes "
                "concurrency=1 and no trial_timeout"
            )
        self.seed = seed
        self.mode: Mode = mode
        self.trial_timeout = None if trial_timeout is None else float(trial_timeout)
        self.executor = executor
        self.progress = progress
        self.modules = tuple(modules)
        for module in self.modules:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise ValueError(f"cannot import module {module!r} (from modules): {exc}") from None

        self.space_kwargs = dict(space_kwargs or {})
        if isinstance(space, str):
            self.space_ref: str | None = space
            self.space = load_space(space, self.space_kwargs)
            space_name = space
        elif isinstance(space, nn.Module):
            if self.space_kwargs:
                raise ValueError("space_kwargs go with a space named as 'module:attr'")
            self.space_ref = None
            self.space = space
            space_name = f"{type(space).__module__}.{type(space).__qualname__}"
        else:
            raise TypeError(
                f"space must be a torch nn.Module with choices or 'module:attr', got "
                f"{type(space).__name__}"
            )
        self.search_space = SearchSpace.from_model(self.space)
        if not self.search_space.choices:
            raise ValueError(
                f"space {space_name} has no LayerChoice or InputChoice: there is nothing to search"
            )

        self.trainer_spec, trainer_cls = _trainer_spec(trainer)
        if isinstance(trainer, TrainerSpec):
            # A misspelt keyword is named with the trainer and its arguments; then the spec
            # is built once, for a sample architecture, so that a bad value (an unknown
            # dataset) fails now, not in every trial.
            _check_trainer_arguments(self.trainer_spec, trainer_cls)
            self.trainer_spec.build(apply_arch(self.space, self.search_space.sample(seed)))
        self.strategy = _strategy(strategy)
        self.record = ExperimentRecord(
            space=self.search_space,
            trainer=self.trainer_spec,
            strategy=self.strategy.spec,
            seed=seed,
            mode=mode,
            space_name=space_name,
        )
        self.store_path = Path(store) if store is not None else self._default_store()
        self.worker_modules = self._worker_modules(trainer_cls)
        self._result: ExperimentResult | None = None

    def _default_store(self) -> Path:
        identity = attrs.evolve(self.record, space_name=None)
        digest = hashlib.sha256(dumps(identity).encode()).hexdigest()[:12]
        stem = (self.space_ref or type(self.space).__name__).rpartition(":")[2].rpartition(".")[2]
        return Path.cwd() / DEFAULT_STORE_FOLDER / f"{stem}-{digest}.sqlite"

    def _worker_modules(self, trainer_cls: type) -> tuple[str, ...]:
        """What each worker imports: the user's modules, and the trainer's (which registers it)."""
        modules = list(self.modules)
        for cls in (trainer_cls, type(self.space)):
            if cls.__module__ in ("__main__", "__mp_main__"):
                main = sys.modules.get("__main__")
                if self.executor != "inline" and getattr(main, "__file__", None) is None:
                    raise ValueError(
                        f"{cls.__qualname__} is defined in an interactive session (a __main__ "
                        "without a file), which worker processes cannot import: move it into a "
                        "module, or pass executor='inline'"
                    )
                if cls is trainer_cls and self.executor not in ("inline", "local"):
                    # The local executor's processes import the script as __mp_main__; a
                    # remote executor's workers run another __main__, where it is not.
                    raise ValueError(
                        f"executor={self.executor!r} needs the trainer importable on its "
                        f"workers; a trainer defined in __main__ ({cls.__qualname__!r}) is not: "
                        "move it into a module of your project (importable there, or shipped "
                        "to the workers), or pass executor='local' or 'inline'"
                    )
            elif cls is trainer_cls:
                modules.append(cls.__module__)
        return tuple(dict.fromkeys(modules))

    # --- running ----------------------------------------------------------------------------

    def run(self) -> ExperimentResult:
        """Run (or resume) the experiment until ``max_trials`` trials have ended, or the
        strategy has nothing more to propose; returns every trial of the store.

        The run holds the store's lease while it runs: on a store that another live
        process is running, it raises :class:`nastrain.experiments.store.StoreLockedError` (naming
        that process) at once and changes nothing; a store that cannot be written is a
        :class:`nastrain.experiments.store.StoreError` naming its folder, before any training.

        A run stopped by Ctrl-C (``KeyboardInterrupt``) or an error records the trials it
        leaves unfinished as ``interrupted`` before the exception goes on; running again
        resumes them. A run that ends before ``max_trials`` says why in the result's
        :attr:`~nastrain.experiments.records.ExperimentResult.stop_reason`."""
        with Store.open(self.store_path, self.record) as store:
            if store.took_over is not None:
                owner, dead = store.took_over
                warnings.warn(
                    f"nastrain: took over the experiment store {self.store_path} from its "
                    f"last writer ({owner.describe()}): {dead}; the trials it left running "
                    "run again",
                    stacklevel=2,
                )
            self._result = _Run(self, store).execute()
        return self._result

    def result(self) -> ExperimentResult:
        """The trials recorded so far (read from the store when this process did not run it)."""
        if self._result is not None:
            return self._result
        if not self.store_path.exists():
            raise FileNotFoundError(
                f"this experiment has no store yet at {self.store_path}: call run() first"
            )
        with Store.read(self.store_path) as store:
            store.check_experiment(self.record)
            return ExperimentResult(
                trials=tuple(store.observed_trials()), mode=self.mode, store=str(self.store_path)
            )

    def export_top_models(self, k: int = 1) -> list[Architecture]:
        """The architectures of the ``k`` best trials, best first."""
        _positive_int("k", k)
        return [trial.arch for trial in self.result().top(k)]


def _trainer_spec(trainer: BaseTrainer | TrainerSpec) -> tuple[TrainerSpec, type[BaseTrainer]]:
    if isinstance(trainer, TrainerSpec):
        spec = trainer
        cls = plugins.get_trainer(spec.name)
    elif isinstance(trainer, BaseTrainer):
        cls = type(trainer)
        if isinstance(trainer, BaseOneShotTrainer):
            spec = None
        else:
            try:
                spec = trainer.spec
            except AttributeError as exc:
                raise TypeError(
                    f"{exc}; an experiment rebuilds its trainer in worker processes from the "
                    "spec (or pass a nastrain.TrainerSpec)"
                ) from None
    else:
        raise TypeError(
            "trainer must be a classic trainer (built with a placeholder model) or a "
            f"nastrain.TrainerSpec, got {type(trainer).__name__}"
        )
    if issubclass(cls, BaseOneShotTrainer) or spec is None:
        raise TypeError(
            f"{cls.__qualname__} is a one-shot trainer: it searches on its own (call its fit() "
            "and export()); an experiment runs a classic trainer once per architecture"
        )
    return spec, cls


def _check_trainer_arguments(spec: TrainerSpec, cls: type[BaseTrainer]) -> None:
    """Refuse, before any trial runs, a spec with a keyword the trainer's ``__init__`` does
    not take (a misspelt key in a config's ``[trainer] kwargs``) or without one it needs,
    naming the trainer, the key and the arguments the trainer takes."""
    try:
        signature = inspect.signature(cls.__init__)  # @register_trainer keeps __wrapped__
    except (TypeError, ValueError):
        return  # no signature to read: building the spec checks what it can
    # Past self and the model, which the experiment passes.
    params = list(signature.parameters.values())[2:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return  # it takes any keyword
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = [p.name for p in params if p.kind in named]
    who = f"trainer {spec.name!r} ({cls.__module__}.{cls.__qualname__})"
    takes = f"it takes: {', '.join(names)}" if names else "it takes no arguments but the model"
    unknown = [key for key in spec.kwargs if key not in names]
    if unknown:
        described = []
        for key in unknown:
            close = difflib.get_close_matches(key, names, n=1)
            described.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        several = (
            "unexpected keyword arguments"
            if len(unknown) > 1
            else ("an unexpected keyword argument")
        )
        raise TypeError(f"{who} got {several} {', '.join(described)}; {takes}")
    missing = [
        p.name
        for p in params
        if p.kind in named and p.default is inspect.Parameter.empty and p.name not in spec.kwargs
    ]
    if missing:
        raise TypeError(
            f"{who} needs the argument{'s' if len(missing) > 1 else ''} "
            f"{', '.join(map(repr, missing))} in its kwargs; {takes}"
        )


def _strategy(strategy: str | StrategySpec | Strategy) -> Strategy:
    if isinstance(strategy, Strategy):
        return strategy
    if isinstance(strategy, str):
        return StrategySpec(name=strategy).build()
    if isinstance(strategy, StrategySpec):
        return strategy.build()
    raise TypeError(
        "strategy must be a registered name, a StrategySpec or a "
        "nastrain.experiments.strategies.Strategy, "
        f"got {type(strategy).__name__}"
    )


def recorded_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` as the store records them (the last run's settings, shown in reports):
    the values of every ``env_vars`` table in them, at any depth (Ray's
    ``runtime_env.env_vars``), which may hold secrets, as ``"***"``; its names kept."""

    def masked(value: Any, under_env_vars: bool) -> Any:
        if under_env_vars:
            return {str(k): "***" for k in value} if isinstance(value, Mapping) else "***"
        if isinstance(value, Mapping):
            return {str(k): masked(v, k == "env_vars") for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [masked(v, False) for v in value]
        return value

    return {str(k): masked(v, k == "env_vars") for k, v in options.items()}


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


class _Run:
    """One run of an experiment on its open store: the loop, and the executor's handler."""

    def __init__(self, experiment: Experiment, store: Store) -> None:
        self.experiment = experiment
        self.store = store
        self.strategy = experiment.strategy
        self.trials: list[Trial] = store.trials()
        # Trials that were running when the last run died: they run again, unless their
        # final result was stored (the process died after it): those have succeeded.
        for trial in self.trials:
            if trial.status in UNFINISHED and trial.final is not None:
                self.trials[trial.index] = store.end_reported_trial(trial)
        self.interrupted = [t.index for t in self.trials if t.status in UNFINISHED]
        self.exhausted = False
        #: The strategy's proposal asked for before the executor starts (see :meth:`will_submit`).
        self.proposal: Architecture | None = None
        self.trainer_json = experiment.trainer_spec.to_json()
        self.progress = _Progress(experiment, self.trials)

    def has_more(self) -> bool:
        return bool(self.interrupted) or (
            not self.exhausted and len(self.trials) < self.experiment.max_trials
        )

    def will_submit(self) -> bool:
        """Whether this run has a trial to submit: one to resume, or the strategy's next
        proposal (asked for here and kept for :meth:`next_job`). A used-up strategy (a
        finished grid run again) has none, and so needs no executor."""
        if self.interrupted or self.proposal is not None:
            return True
        if not self.has_more():
            return False
        self.proposal = self.strategy.propose(len(self.trials), self.trials)
        if self.proposal is None:
            self.exhausted = True
            return False
        return True

    def next_job(self) -> TrialJob | None:
        if self.interrupted:
            trial = self.store.restart_trial(self.trials[self.interrupted.pop(0)])
            self.trials[trial.index] = trial
        else:
            new = self._new_trial()
            if new is None:
                return None
            trial = new
        self.progress.started(trial)
        return TrialJob(
            index=trial.index,
            attempt=trial.attempts,
            arch=trial.arch,
            seed=trial.seed,
            trainer=self.experiment.trainer_spec,
        )

    def _new_trial(self) -> Trial | None:
        """The strategy's next proposal, recorded as running; ``None`` when it has none. A
        proposal whose results the strategy reuses (:meth:`Strategy.reuse`) is recorded
        as succeeded at once, untrained, and the next one is asked for."""
        while self.has_more():
            index = len(self.trials)
            arch, self.proposal = self.proposal, None
            if arch is None:
                arch = self.strategy.propose(index, self.trials)
            if arch is None:
                self.exhausted = True
                return None
            try:
                arch = self.experiment.search_space.validate(arch)
            except (TypeError, ValueError) as exc:
                raise ValueError(
                    f"strategy {self.strategy.spec.name!r} proposed an invalid architecture "
                    f"for trial {index}: {exc}"
                ) from None
            earlier = self.strategy.reuse(arch, self.trials)
            seed = trial_seed(self.experiment.seed, index)
            trial = self.store.add_trial(index, arch, seed, self.trainer_json)
            self.trials.append(trial)
            if earlier is None or earlier.final is None:
                return trial
            self.progress.started(trial)
            for metric in earlier.intermediate:
                self.store.add_result(trial, metric, False)
            self.store.add_result(trial, earlier.final, True)
            self.trials[index] = attrs.evolve(
                trial, intermediate=earlier.intermediate, final=earlier.final
            )
            self.on_end(
                index,
                "succeeded",
                f"not trained: the results of trial {earlier.index}, the same architecture, "
                "reused (the strategy's choice)",
            )
        return None

    def _executor(self) -> Executor:
        """The experiment's executor, built by its registered factory (not started)."""
        experiment = self.experiment
        setup = WorkerSetup(
            space_ref=experiment.space_ref,
            space_kwargs=experiment.space_kwargs,
            modules=experiment.worker_modules,
            threads=max(1, available_cpus() // experiment.concurrency),
            environ=nastrain_environ(),
        )
        context = ExecutorContext(
            setup=setup,
            space=None if experiment.space_ref is not None else experiment.space,
            concurrency=max(1, min(experiment.concurrency, self.pending())),
            trial_timeout=experiment.trial_timeout,
            handler=self,
            options=dict(experiment.executor_options),
            store_path=experiment.store_path,
            name=experiment.executor,
        )
        factory = plugins.get_executor(experiment.executor)
        executor = factory(context)
        for method in ("start", "free_slots", "running", "submit", "poll", "close"):
            if not callable(getattr(executor, method, None)):
                raise TypeError(
                    f"executor {experiment.executor!r} (factory {_qualname(factory)}) returned "
                    f"{type(executor).__qualname__}, which has no {method}() method "
                    "(see nastrain.experiments.executor.Executor)"
                )
        return executor

    def pending(self) -> int:
        """An upper bound on the trials still to start."""
        return len(self.interrupted) + max(0, self.experiment.max_trials - len(self.trials))

    def execute(self) -> ExperimentResult:
        experiment = self.experiment
        self.strategy.setup(experiment.search_space, seed=experiment.seed, mode=experiment.mode)
        # The executor starts before this run records anything, so that one that cannot
        # (an unreachable cluster, a bad option) leaves the store as it was; and only when a
        # trial will be submitted (connecting to a cluster for nothing is slow).
        executor = self._executor() if self.will_submit() else None
        if executor is not None:
            try:
                executor.start()
            except BaseException:
                executor.close()
                raise
        try:
            try:
                self.store.record_run(  # for reports: what the store's record does not say
                    {
                        "max_trials": experiment.max_trials,
                        "concurrency": experiment.concurrency,
                        "executor": experiment.executor,
                        "executor_options": recorded_options(experiment.executor_options),
                    }
                )
                if executor is not None:
                    self._loop(executor)
            finally:
                if executor is not None:
                    executor.close()
        except BaseException as exc:
            self._interrupted(exc)
            raise
        return ExperimentResult(
            trials=tuple(self.trials),
            mode=self.experiment.mode,
            store=str(self.experiment.store_path),
            stop_reason=self._stop_reason(),
        )

    def _loop(self, executor: Executor) -> None:
        job: TrialJob | None = None
        self.progress.start()
        try:
            while True:
                while executor.free_slots() > 0:
                    if job is None and self.has_more():
                        job = self.next_job()
                    if job is None:
                        break
                    executor.submit(job)
                    job = None
                if executor.running() == 0 and job is None and not self.has_more():
                    break
                executor.poll(None)
        finally:
            self.progress.stop()

    def _interrupted(self, exc: BaseException) -> None:
        """Record the trials this run leaves unfinished as interrupted (the run is stopping
        with ``exc``: Ctrl-C, or an error); a store this process can no longer write is
        left alone (a reader shows its running trials as interrupted anyway)."""
        running = [t for t in self.trials if t.status == "running"]
        if not running:
            return
        if isinstance(exc, KeyboardInterrupt):
            what = "KeyboardInterrupt: Ctrl-C"
        else:
            lines = str(exc).splitlines()
            what = type(exc).__name__ + (f": {lines[0]}" if lines else "")
        reason = (
            f"interrupted: the experiment stopped ({what}) before this trial ended; a resumed "
            "run runs it again"
        )
        try:
            for trial in self.store.interrupt_trials(running, reason):
                self.trials[trial.index] = trial
        except (StoreError, sqlite3.Error) as error:
            warnings.warn(
                f"nastrain: could not record {len(running)} unfinished trials as interrupted "
                f"in {self.experiment.store_path} ({error}); a resumed run runs them again",
                stacklevel=3,
            )

    def _stop_reason(self) -> str | None:
        """Why this run ended before ``max_trials`` trials, or ``None`` if it did not."""
        if not self.exhausted or len(self.trials) >= self.experiment.max_trials:
            return None
        space = self.experiment.search_space
        name = self.strategy.spec.name
        tried = len({json.dumps(t.arch, sort_keys=True) for t in self.trials})
        if tried >= space.size:
            noun = "architecture" if space.size == 1 else "architectures"
            return f"the search space has only {space.size} {noun} ({name} exhausted)"
        return (
            f"strategy {name!r} proposed no more architectures ({tried} of the space's "
            f"{space.size} tried)"
        )

    # --- the executor's handler ---------------------------------------------------------------

    def on_start(self, index: int, worker: str) -> None:
        self.trials[index] = self.store.set_worker(self.trials[index], worker)

    def on_result(self, index: int, metric: Metric, final: bool) -> bool:
        trial = self.trials[index]
        self.store.add_result(trial, metric, final)
        if final:
            self.trials[index] = attrs.evolve(trial, final=metric)
            return False
        trial = attrs.evolve(trial, intermediate=(*trial.intermediate, metric))
        self.trials[index] = trial
        return bool(self.strategy.should_stop(trial, self.trials))

    def on_end(self, index: int, status: str, reason: str | None) -> None:
        trial = self.trials[index]
        if status == "succeeded" and trial.final is None:
            status = "failed"
            reason = (
                "fit() returned without reporting a final result (nastrain.report_final_result)"
            )
        trial = self.store.end_trial(trial, status, reason)  # type: ignore[arg-type]
        self.trials[index] = trial
        self.progress.ended(trial, self.trials)


class _Progress:
    """Progress on stderr while trials run: a bar on a terminal, or a line per trial."""

    def __init__(self, experiment: Experiment, trials: list[Trial]) -> None:
        style = experiment.progress
        if style is None:
            style = sys.stderr.isatty()
        self.style = style
        self.total = max(experiment.max_trials, len(trials))
        self.done = sum(1 for t in trials if t.status not in UNFINISHED)
        self.mode = experiment.mode
        self.store = experiment.store_path
        self.bar: Any = None
        self.task: Any = None
        self.running = 0

    def start(self) -> None:
        if self.style is True:
            # rich is imported only for a progress bar (a terminal), not for lines or none.
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(
                TextColumn("trials"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[status]}"),
                console=Console(stderr=True),
            )
            self.bar.start()
            self.task = self.bar.add_task("trials", total=self.total, status="")
            self.bar.update(self.task, completed=self.done)
        elif self.style == "lines":
            print(f"nastrain: experiment store {self.store}", file=sys.stderr, flush=True)

    def started(self, trial: Trial) -> None:
        self.running += 1
        self._refresh(None)

    def ended(self, trial: Trial, trials: Sequence[Trial]) -> None:
        self.running -= 1
        self.done += 1
        self._refresh(trials)
        if self.style == "lines":
            value = "" if trial.value is None else f" {trial.value:.6g}"
            reason = f" ({trial.reason.splitlines()[0]})" if trial.reason else ""
            print(
                printable(
                    f"nastrain: trial {trial.index} {trial.status}{value}{reason} "
                    f"[{self.done}/{self.total}] {json.dumps(trial.arch)}"
                ),
                file=sys.stderr,
                flush=True,
            )

    def _refresh(self, trials: Sequence[Trial] | None) -> None:
        if self.bar is None:
            return
        status = f"running {self.running}"
        if trials:
            best = ExperimentResult(trials=tuple(trials), mode=self.mode, store="").best_trial
            if best is not None:
                status += f" · best {best.value:.4g} (trial {best.index})"
        self.bar.update(self.task, completed=self.done, status=status)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# --- experiments described in files (``nastrain run``) ----------------------------------------


@attrs.frozen(kw_only=True)
class ExecutorSpec:
    """A registered executor's name and its JSON options: what ``executor = "inline"``, or an
    ``[executor]`` table (``name`` and, as its other keys, the options), in a config is."""

    name: str = "local"
    options: dict[str, Any] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"an executor's name must be a registered name, got {self.name!r}")
        for key, value in self.options.items():
            check_json_value(value, f"option {key!r} of executor {self.name!r}")


def _structure_executor(value: Any, _: type) -> ExecutorSpec:
    # ``executor = "ray"``, or ``[executor]`` with ``name = "ray"`` and the options beside it.
    if isinstance(value, str):
        return ExecutorSpec(name=value)
    if not isinstance(value, dict):
        raise ValueError(  # a ValueError, so that the config's error keeps this message
            f"expected an executor's name or a table with 'name' and its options, got "
            f"{type(value).__name__} {value!r}"
        )
    options = dict(value)
    name = options.pop("name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"the executor table needs a 'name' (a registered executor, such as 'local'), got "
            f"{name!r}; its other keys ({', '.join(sorted(options)) or 'none'}) are the "
            "executor's options"
        )
    return ExecutorSpec(name=name, options=options)


converter.register_structure_hook(ExecutorSpec, _structure_executor)


@attrs.frozen(kw_only=True)
class ExperimentConfig:
    """An experiment as a TOML or JSON document, for ``nastrain run``.

    ``space`` is ``"module:attr"`` in the user's code; ``trainer`` a table with
    the registered ``name`` and its ``kwargs``; ``strategy`` a registered name
    or a table with ``name`` and ``kwargs``; ``executor`` a registered name or a
    table with ``name`` and, beside it, the executor's options. A relative ``store``
    is relative to the config file; without one, the store is the config's path with
    the suffix ``.sqlite``.
    """

    space: str
    trainer: TrainerSpec
    max_trials: int
    strategy: StrategySpec = attrs.field(factory=lambda: StrategySpec(name="random"))
    concurrency: int = 1
    store: str | None = None
    seed: int = 0
    mode: Mode = "max"
    trial_timeout: float | None = None
    executor: ExecutorSpec = attrs.field(factory=lambda: ExecutorSpec(name="local"))
    space_kwargs: dict[str, Any] = attrs.field(factory=dict)
    modules: list[str] = attrs.field(factory=list)
    schema_version: int = SCHEMA_VERSION

    def __attrs_post_init__(self) -> None:
        if self.schema_version > SCHEMA_VERSION:
            raise ValueError(
                f"this config has schema_version {self.schema_version}, newer than this "
                f"nastrain understands ({SCHEMA_VERSION}); upgrade nastrain"
            )

    def experiment(self, base: Path, **overrides: Any) -> Experiment:
        """The experiment this config describes; ``base`` is the config file's folder."""
        store = Path(self.store) if self.store else None
        if store is not None and not store.is_absolute():
            store = base / store
        options: dict[str, Any] = {
            "max_trials": self.max_trials,
            "concurrency": self.concurrency,
            "store": store,
            "seed": self.seed,
            "mode": self.mode,
            "trial_timeout": self.trial_timeout,
            "executor": self.executor.name,
            "executor_options": self.executor.options,
            "space_kwargs": self.space_kwargs,
            "modules": self.modules,
        }
        options.update({k: v for k, v in overrides.items() if v is not None})
        return Experiment(self.space, self.trainer, self.strategy, **options)


def load_config(path: str | os.PathLike[str]) -> ExperimentConfig:
    """Read an experiment config (``.toml`` or ``.json``); a bad key is named in the error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file at {path}")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        # The TOML reader only for TOML configs, and tomli where Python is 3.10.
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # Python 3.10: tomli, a dependency of nastrain there
            try:
                import tomli as tomllib
            except ModuleNotFoundError:
                raise ValueError(
                    f"reading {path} needs Python 3.11 or the tomli package "
                    "(pip install tomli), or write the config as JSON"
                ) from None
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path} is not valid TOML: {exc}") from None
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from None
    else:
        raise ValueError(f"config {path} must be a .toml or .json file")
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a table of settings, not {type(data).__name__}")
    return structure(data, ExperimentConfig, what=f"experiment config {path}")
