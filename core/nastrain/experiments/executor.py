"""Where an experiment's trials run.

Every executor is an :class:`Executor`, built by a factory registered by name through the
``nastrain_register_executors`` hook (:func:`nastrain.plugins.get_executor`) from an
:class:`ExecutorContext`; the two below are the core's, registered as ``local`` and
``inline`` by :mod:`nastrain.experiments.builtin`, and a plugin adds others (nastrain-ray's
``ray``). A worker of any executor runs :func:`prepare_worker` once and :func:`run_trial` per
trial; jobs and the worker setup travel as JSON (:meth:`TrialJob.to_json`).

:class:`LocalExecutor` (the default) keeps ``concurrency`` persistent worker
processes: each imports torch once, loads the plugins and the user's modules
once, then runs one trial after another, streaming every reported result back
through a pipe. Workers are started through multiprocessing's ``forkserver``
(``spawn`` where there is none), so a worker costs a fork of a process that has
already imported torch, and torch's threads are divided between them. A trial
that raises is recorded as failed with its traceback, and a worker that dies (a
SIGKILL, an out-of-memory kill) or runs past the per-trial timeout fails its
trial; in all three cases the worker is replaced by a fresh one, since a failed
trial may leave threads, globals or device memory behind.

:class:`InlineExecutor` runs trials one at a time in the experiment's own
process: for debugging, notebooks, and spaces that cannot be sent to another
process.

What is pickled: every message nastrain sends between the experiment and its
workers (the worker setup, trial jobs, results, stop/go) is JSON. Two things
are pickled, in memory only and only to this process's own children: the model
space when it is given as an object (``pickle.dumps`` here, sent over the
worker's pipe, ``pickle.loads`` in the worker), because a ``nn.Module`` has no
other portable form; and, by multiprocessing itself when it starts a worker
through the fork server or ``spawn``, the process object (``worker_main`` by
reference, the two pipe ends, the setup's JSON string). Nothing pickled is ever
written to or read from disk. A space named as ``module:attr`` is imported by
each worker instead, not pickled; a function named so is called again for every
trial under the trial's seed (:class:`SeededSpace`).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import gc
import importlib
import json
import multiprocessing
import os
import pickle
import signal
import socket
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import attrs
import torch
from torch import nn

from nastrain import plugins
from nastrain.reporting import Metric, check_metric, running_trial, use_reporter
from nastrain.seeding import seed_everything
from nastrain.serialization import SCHEMA_VERSION, converter, dumps, loads, structure
from nastrain.space import Architecture, apply_arch
from nastrain.trainer import BaseTrainer, TrainerSpec

__all__ = [
    "Executor",
    "ExecutorContext",
    "ExecutorError",
    "ExecutorFactory",
    "InlineExecutor",
    "LocalExecutor",
    "SeededSpace",
    "TrialHandler",
    "TrialJob",
    "TrialStopped",
    "WorkerSetup",
    "available_cpus",
    "check_options",
    "describe_exception",
    "initialize_from_seed",
    "inline_executor",
    "load_space",
    "local_executor",
    "prepare_worker",
    "run_trial",
    "trial_space",
    "worker_name",
]

_REASON_LIMIT = 4000
#: The prefix of the environment variables that configure nastrain and its plugins.
ENV_PREFIX = "NASTRAIN_"


class ExecutorError(RuntimeError):
    """The workers could not be started (a setup error, not a failing trial)."""


class TrialStopped(BaseException):
    """Raised inside a trial's ``fit`` (from its report call) when the strategy stops it.

    A ``BaseException``, so that a trainer's ``except Exception`` does not swallow it.
    """


@attrs.frozen(kw_only=True)
class TrialJob:
    """One trial as a worker receives it: which trial (``index``, and ``attempt``, counted
    from 1 over the runs of the experiment), its architecture, its seed and its trainer's
    spec. All JSON (:meth:`to_json`), so any executor can send it to another process or
    machine."""

    index: int
    attempt: int
    arch: Architecture
    seed: int
    trainer: TrainerSpec

    def to_json(self) -> str:
        """This job as a JSON string (what an executor sends to its worker)."""
        return dumps(self)

    @classmethod
    def from_json(cls, text: str | bytes) -> TrialJob:
        """The job :meth:`to_json` wrote; a bad document names its bad key."""
        return loads(text, cls, what="trial job")


@attrs.frozen(kw_only=True)
class WorkerSetup:
    """What every worker does once, before its first trial."""

    #: ``module:attr`` of the model space, which the worker imports; ``None`` when the
    #: space object is sent instead.
    space_ref: str | None = None
    space_kwargs: dict[str, Any] = attrs.field(factory=dict)
    #: Modules the user named (or that define the user's space and trainer), imported
    #: first so that their ``@register_trainer`` classes are known.
    modules: tuple[str, ...] = ()
    threads: int = 1
    #: The ``NASTRAIN_*`` variables of the experiment's process (``NASTRAIN_PLUGINS``, a
    #: logger's ``NASTRAIN_TENSORBOARD``, ...) when it started the workers: a worker's own
    #: environment is the fork server's, from when that started (maybe an earlier experiment).
    environ: dict[str, str] = attrs.field(factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        """This setup as a JSON string (what an executor sends to each worker once)."""
        return dumps(self)

    @classmethod
    def from_json(cls, text: str | bytes) -> WorkerSetup:
        """The setup :meth:`to_json` wrote; a bad document names its bad key."""
        return loads(text, cls, what="worker setup")


def nastrain_environ() -> dict[str, str]:
    """The ``NASTRAIN_*`` variables of this process, which its workers get
    (:attr:`WorkerSetup.environ`)."""
    return {name: value for name, value in os.environ.items() if name.startswith(ENV_PREFIX)}


class TrialHandler(Protocol):
    """What an executor tells the experiment."""

    def on_start(self, index: int, worker: str) -> None:
        """Trial ``index`` starts on ``worker`` (a free-form name for reports: the local and
        inline executors give ``"<host>:<pid>"`` of the process that trains it)."""
        ...

    def on_result(self, index: int, metric: Metric, final: bool) -> bool:
        """A reported result of trial ``index``; returning ``True`` stops the trial."""
        ...

    def on_end(self, index: int, status: str, reason: str | None) -> None:
        """Trial ``index`` ended: ``succeeded``, ``failed`` or ``early_stopped``."""
        ...


@runtime_checkable
class Executor(Protocol):
    """Where an experiment's trials run: what every executor is (the built-in ``local`` and
    ``inline`` ones too), built by a registered factory from an :class:`ExecutorContext`.

    The experiment calls :meth:`start` once, after opening its store and before it records
    anything of the run; then, as long as there are trials, it calls :meth:`submit` as often as
    :meth:`free_slots` says, and :meth:`poll`; finally it calls :meth:`close`, also when
    :meth:`start` or anything else raised. Every event of a trial goes to the context's
    :class:`TrialHandler`, from the thread that calls :meth:`submit` or :meth:`poll`: the
    handler writes the store, and only it does."""

    def start(self) -> None:
        """Get ready to run trials (start workers, connect to a cluster). May raise an error
        saying what is wrong (an unreachable address, a missing resource): the experiment
        has recorded nothing of this run yet."""
        ...

    def free_slots(self) -> int:
        """How many more jobs :meth:`submit` takes now."""
        ...

    def running(self) -> int:
        """How many submitted jobs have not ended (``on_end`` not called yet)."""
        ...

    def submit(self, job: TrialJob) -> None:
        """Start ``job`` (``on_start`` is called when it starts, maybe before this returns)."""
        ...

    def poll(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` seconds (``None``: until something happens) for events of
        the running trials, and hand each to the handler: ``on_result`` (whose answer
        ``True`` stops the trial), ``on_end``."""
        ...

    def close(self) -> None:
        """Stop everything still running and free what :meth:`start` took; safe to call when
        :meth:`start` was not called or failed."""
        ...


@attrs.frozen(kw_only=True)
class ExecutorContext:
    """What a registered executor factory is given: all it needs to know of the experiment."""

    #: What each worker does once before its first trial (:func:`prepare_worker`); JSON.
    setup: WorkerSetup
    #: The space object when it was not named as ``module:attr`` (``setup.space_ref`` is then
    #: ``None``); an executor that cannot send it to its workers refuses it in its factory.
    space: nn.Module | None
    #: How many trials may run at once: ``Experiment(concurrency=...)``, at most the trials
    #: still to run.
    concurrency: int
    #: Seconds a trial may run (``Experiment(trial_timeout=...)``), or ``None``.
    trial_timeout: float | None
    #: Where every event of a trial goes.
    handler: TrialHandler
    #: The executor's JSON options: ``Experiment(executor_options=...)``, or the keys of a
    #: config's ``[executor]`` table but ``name``. Check them with :func:`check_options`.
    options: Mapping[str, Any] = attrs.field(factory=dict)
    #: The experiment's SQLite store (only the experiment writes it; for names and logs).
    store_path: Path
    #: The name the executor was asked for by (``Experiment(executor=...)``).
    name: str = ""


#: What ``nastrain_register_executors`` registers: called with the context, returns the
#: executor (a class whose ``__init__`` takes the context works).
ExecutorFactory = Callable[[ExecutorContext], Executor]


def check_options(
    executor: str, options: Mapping[str, Any], known: Sequence[str] = ()
) -> dict[str, Any]:
    """``options`` as a dict, or a ``ValueError`` naming an option ``executor`` does not take
    (with a close match, if any) and the ones it does; for executor factories."""
    unknown = [key for key in options if key not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        takes = f"its options: {', '.join(known)}" if known else "it takes no options"
        raise ValueError(f"executor {executor!r} has no option {unknown[0]!r}{hint}; {takes}")
    return dict(options)


def worker_name(pid: int) -> str:
    """``"<host>:<pid>"``: how the local and inline executors name the process of a trial."""
    return f"{socket.gethostname()}:{pid}"


def available_cpus() -> int:
    """How many CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _resolve_space(ref: str) -> Any:
    """The object ``module:attr`` names (imported), or an error saying what is wrong."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(
            f"space {ref!r} must be given as 'module:attr', e.g. 'myproject.spaces:Net' "
            "(a module of your code and a model or a function/class returning one)"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"cannot import module {module_name!r} of space {ref!r}: {exc} (is it on sys.path? "
            "`nastrain run` adds the current directory, or pass --app-dir)"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"space {ref!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _checked_space(ref: str, kwargs: dict[str, Any] | None) -> Any:
    """What ``module:attr`` names: a ``nn.Module`` (taking no ``kwargs``) or a callable."""
    obj = _resolve_space(ref)
    if isinstance(obj, nn.Module):
        if kwargs:
            raise ValueError(
                f"space {ref!r} is a model, not a function: it takes no space_kwargs "
                f"(got {sorted(kwargs)})"
            )
    elif not callable(obj):
        raise TypeError(f"space {ref!r} is a {type(obj).__name__}, not a model or a function")
    return obj


def load_space(ref: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Import the model space the user named as ``module:attr``.

    ``attr`` (dotted for nested attributes) is a ``nn.Module`` or a callable
    returning one, called with ``kwargs``.
    """
    obj = _checked_space(ref, kwargs)
    if isinstance(obj, nn.Module):
        return obj
    model = obj(**(kwargs or {}))
    if not isinstance(model, nn.Module):
        raise TypeError(f"space {ref!r} returned a {type(model).__name__}, not a torch nn.Module")
    return model


class _CallbackReporter:
    """A :class:`nastrain.reporting.Reporter` that hands results to a function."""

    def __init__(self, report: Callable[[Metric, bool], bool]) -> None:
        self._report = report

    def report(self, trainer: BaseTrainer | None, metric: Metric, final: bool) -> None:
        if self._report(metric, final):
            raise TrialStopped


def _children_first(model: nn.Module) -> list[nn.Module]:
    """Every module of ``model`` once (a shared one at its first place), each after all of
    its descendants: ``model`` last."""
    order: list[nn.Module] = []
    seen: set[int] = set()
    # (module, whether its children were pushed already)
    stack: list[tuple[nn.Module, bool]] = [(model, False)]
    while stack:
        module, expanded = stack.pop()
        if expanded:
            order.append(module)
            continue
        if id(module) in seen:
            continue
        seen.add(id(module))
        stack.append((module, True))
        stack.extend((child, False) for child in reversed(list(module.children())))
    return order


def initialize_from_seed(model: nn.Module, seed: int) -> nn.Module:
    """Draw ``model``'s initial weights again from ``seed``, so that a trial's weights depend
    on its seed and not on the space object it was copied from.

    ``torch.manual_seed(seed)``, then ``reset_parameters()`` (or torch's private
    ``_reset_parameters()``, e.g. of ``nn.MultiheadAttention``) of every module that has
    one, children before their parent (each in :meth:`~torch.nn.Module.children` order),
    so that what a parent's own reset does to its children's parameters is what stays
    (``nn.MultiheadAttention`` zeroes ``out_proj.bias``); BatchNorm's running statistics
    are reset with it. This replaces a custom initialisation done in the space's constructor by
    each layer's default: name the space's function as ``module:attr`` to keep yours (it is
    then built again for every trial, :class:`SeededSpace`). Parameters of a module
    without either method keep the values of the space. Returns ``model``.
    """
    torch.manual_seed(seed)
    for module in _children_first(model):
        reset = getattr(module, "reset_parameters", None) or getattr(
            module, "_reset_parameters", None
        )
        if callable(reset):
            reset()
    return model


def trial_space(ref: str, kwargs: dict[str, Any] | None = None) -> nn.Module | SeededSpace:
    """What the trials of a space named as ``module:attr`` are built from, the same for
    every executor: a function (or class) becomes a :class:`SeededSpace`, called again for
    every trial under the trial's seed; a model object in the user's module is that object,
    which every trial copies and re-initialises (:func:`initialize_from_seed`). Only
    imports: a function is checked to be callable, not called."""
    obj = _checked_space(ref, kwargs)
    if isinstance(obj, nn.Module):
        return obj
    return SeededSpace(ref, kwargs)


class SeededSpace:
    """A space named as ``module:attr`` where ``attr`` is a function (or class): built again
    for every trial under ``torch.manual_seed(trial seed)``, so a trial's weights are the
    ones the user's own code draws (custom initialisation included) from that seed."""

    def __init__(self, ref: str, kwargs: dict[str, Any] | None = None) -> None:
        self.ref = ref
        self.kwargs = dict(kwargs or {})

    def build(self, seed: int) -> nn.Module:
        """The space as the user's function builds it after ``torch.manual_seed(seed)``."""
        torch.manual_seed(seed)
        return load_space(self.ref, self.kwargs)


def run_trial(
    space: nn.Module | SeededSpace, job: TrialJob, report: Callable[[Metric, bool], bool]
) -> None:
    """Fix ``space`` to the job's architecture with its weights drawn from the job's seed,
    build its trainer and fit it. A :class:`SeededSpace` is built under that seed; a space
    object is copied and re-initialised (:func:`initialize_from_seed`).

    Every result the trainer reports goes to ``report(metric, final)``; when
    that returns ``True`` the trial stops (:class:`TrialStopped` is raised).

    What every executor's worker calls for every trial, in a process prepared by
    :func:`prepare_worker`: returning is ``succeeded``, :class:`TrialStopped`
    ``early_stopped``, any other exception ``failed`` (:func:`describe_exception`).
    """
    seed_everything(job.seed)
    if isinstance(space, SeededSpace):
        model = apply_arch(space.build(job.seed), job.arch)
    else:
        model = initialize_from_seed(apply_arch(space, job.arch), job.seed)
    trainer = job.trainer.build(model)
    with use_reporter(_CallbackReporter(report)), running_trial(job.index):
        trainer.fit()


def describe_exception(exc: BaseException) -> str:
    """How a failed trial's ``reason`` reads: ``Type: message`` on the first line, then the
    traceback (its last 4000 characters). An executor's worker calls it on what
    :func:`run_trial` raised (anything but :class:`TrialStopped`, which is an early stop)
    and passes it to ``on_end(index, "failed", reason)``."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
    if len(text) > _REASON_LIMIT:
        text = "...\n" + text[-_REASON_LIMIT:]
    summary = " ".join(f"{type(exc).__name__}: {exc}".split())
    return f"{summary}\n{text}"


def _outcome(action: Callable[[], None]) -> tuple[str, str | None]:
    try:
        action()
    except TrialStopped:
        return "early_stopped", None
    except Exception as exc:
        return "failed", describe_exception(exc)
    return "succeeded", None


class InlineExecutor:
    """Runs each trial in the experiment's process, one at a time (no timeout).

    ``space`` is what the trials are built from: a space object, or what
    :func:`trial_space` makes of a space named as ``module:attr`` (as the local
    executor's workers do)."""

    def __init__(self, space: nn.Module | SeededSpace, handler: TrialHandler) -> None:
        self.space = space
        self.handler = handler

    def start(self) -> None:
        """Nothing to start."""

    def free_slots(self) -> int:
        return 1

    def running(self) -> int:
        return 0

    def submit(self, job: TrialJob) -> None:
        """Run the trial to its end."""
        self.handler.on_start(job.index, worker_name(os.getpid()))
        status, reason = _outcome(
            lambda: run_trial(self.space, job, lambda m, f: self.handler.on_result(job.index, m, f))
        )
        self.handler.on_end(job.index, status, reason)

    def poll(self, timeout: float | None) -> None:
        """Nothing runs in the background."""

    def close(self) -> None:
        """Nothing to stop."""


# --- the worker process --------------------------------------------------------------------


def _send(conn: Connection, message: dict[str, Any]) -> None:
    conn.send_bytes(json.dumps(message, allow_nan=False).encode())


def _receive(conn: Connection) -> dict[str, Any]:
    return json.loads(conn.recv_bytes())


def _watch_lifeline(lifeline: Connection) -> None:
    # Nothing is ever written to the lifeline: it becomes readable (EOF) when the experiment
    # process is gone, however it died. A worker must not outlive it.
    try:
        lifeline.poll(None)
    finally:
        os._exit(3)


def prepare_worker(setup: WorkerSetup) -> nn.Module | SeededSpace:
    """Prepare this process to run trials, once, as every worker of every executor does, and
    return what its trials are built from (pass it to :func:`run_trial`).

    Takes the experiment's ``NASTRAIN_*`` variables (and drops others), loads the plugins
    again, sets torch's threads, imports the user's modules and then the space named as
    ``setup.space_ref`` (:func:`trial_space`), under a fixed seed that leaves torch's
    generator as it was. Last, it moves what the process holds then out of the garbage
    collector's sight (``gc.freeze()``: it lives as long as the worker, and a full
    collection then scans only what trials make; call it in a process that exists to run
    trials). A setup without a ``space_ref`` (a space object, which only the local executor
    sends, in memory) is a ``ValueError``.
    """
    if setup.space_ref is None:
        raise ValueError(
            "this worker setup has no space_ref: the model space must be named as "
            "'module:attr' (importable where the worker runs) for this executor"
        )
    return _prepare_worker(setup, None)


def _prepare_worker(setup: WorkerSetup, space_bytes: bytes | None) -> nn.Module | SeededSpace:
    space = _prepare(setup, space_bytes)
    # What the worker holds now (its imports: torch, a Ray worker's Ray, the user's modules,
    # the space) lives as long as it does: out of the collector's sight, a full collection
    # scans only what trials made. Measured in a Ray worker: 219k objects, a full
    # collection 100 ms, one to three in twelve trials of 0.16 s (benchmarks/README.md).
    gc.collect()
    gc.freeze()
    return space


def _prepare(setup: WorkerSetup, space_bytes: bytes | None) -> nn.Module | SeededSpace:
    for name in [name for name in os.environ if name.startswith(ENV_PREFIX)]:
        if name not in setup.environ:
            del os.environ[name]
    os.environ.update(setup.environ)
    with warnings.catch_warnings():
        # The experiment's process has shown these already.
        warnings.simplefilter("ignore", plugins.PluginWarning)
        plugins.reload_plugins()
    torch.set_num_threads(setup.threads)
    # The user's modules are imported under a fixed seed, without touching the generator of
    # what runs next: a model object built at import (copied and re-initialised for every
    # trial) is then the same in every worker, also in the parameters reset_parameters()
    # does not redraw. A function is only checked here, and built for every trial under its
    # seed (trial_space).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for module in setup.modules:
            importlib.import_module(module)
        if space_bytes is not None:
            # The user's model object, pickled by the experiment process that started us.
            return pickle.loads(space_bytes)
        assert setup.space_ref is not None
        return trial_space(setup.space_ref, setup.space_kwargs)


def worker_main(conn: Connection, lifeline: Connection, setup_json: str) -> None:
    """A worker process: set up once, then run the trials the experiment sends."""
    # Ctrl-C reaches the whole process group; the experiment decides, and stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_lifeline, args=(lifeline,), daemon=True).start()
    try:
        setup = WorkerSetup.from_json(setup_json)
        space_bytes = conn.recv_bytes() if setup.space_ref is None else None
        space = _prepare_worker(setup, space_bytes)
    except BaseException as exc:
        _send(conn, {"type": "setup_failed", "reason": describe_exception(exc)})
        return
    _send(conn, {"type": "ready", "pid": os.getpid()})
    while True:
        try:
            message = _receive(conn)
        except (EOFError, OSError):
            return
        if message["type"] == "exit":
            return
        job = structure(message["job"], TrialJob, what="trial job")

        def report(metric: Metric, final: bool, index: int = job.index) -> bool:
            _send(conn, {"type": "result", "index": index, "metric": metric, "final": final})
            # Anything but "go" (a "stop", or the experiment shutting down) ends the trial.
            return not final and _receive(conn)["type"] != "go"

        status, reason = _outcome(functools.partial(run_trial, space, job, report))
        _send(conn, {"type": "end", "index": job.index, "status": status, "reason": reason})


# --- the experiment's side -----------------------------------------------------------------


def _context() -> multiprocessing.context.ForkServerContext | multiprocessing.context.SpawnContext:
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        # Imported once, in the fork server, before it forks any worker (ignored once the
        # server runs: it is one per process).
        context.set_forkserver_preload(["nastrain.experiments.executor"])
        return context
    return multiprocessing.get_context("spawn")


def _death(process: multiprocessing.process.BaseProcess) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class _Worker:
    def __init__(
        self, process: multiprocessing.process.BaseProcess, conn: Connection, lifeline: Connection
    ) -> None:
        self.process = process
        self.conn = conn
        self.lifeline = lifeline
        self.ready = False
        #: The worker's pid, as it says when ready (its process's pid until then).
        self.pid = process.pid
        self.job: TrialJob | None = None
        self.deadline: float | None = None

    def close(self) -> None:
        self.conn.close()
        self.lifeline.close()


class LocalExecutor:
    """``concurrency`` persistent worker processes on this machine; more than twice the
    CPUs this process may use (:func:`available_cpus`) is capped to twice the CPUs, with
    a warning."""

    def __init__(
        self,
        *,
        setup: WorkerSetup,
        space: nn.Module | None,
        concurrency: int,
        trial_timeout: float | None,
        handler: TrialHandler,
    ) -> None:
        self.setup_json = setup.to_json()
        self.space_bytes = None
        if space is not None:
            try:
                self.space_bytes = pickle.dumps(space, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                raise ExecutorError(
                    f"the model space {type(space).__qualname__} cannot be sent to worker "
                    f"processes ({type(exc).__name__}: {exc}); define its classes at module "
                    "level, name it as 'module:attr', or use executor='inline'"
                ) from None
        cpus = available_cpus()
        if concurrency > 2 * cpus:
            warnings.warn(
                f"concurrency {concurrency} is far above the {cpus} CPUs this process may use "
                f"(each worker is a process with at least one thread): capped to {2 * cpus} "
                "worker processes (twice the CPUs)",
                stacklevel=2,
            )
            concurrency = 2 * cpus
        self.concurrency = concurrency
        self.trial_timeout = trial_timeout
        self.handler = handler
        self.workers: list[_Worker] = []
        #: Workers replaced after a trial that raised (a count, for tests and reports).
        self.recycled = 0
        self._context = _context()

    def start(self) -> None:
        """Start the workers (they become free as they finish setting up)."""
        for _ in range(self.concurrency):
            self._spawn()

    def _spawn(self) -> None:
        conn, child_conn = self._context.Pipe()
        lifeline_r, lifeline_w = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=worker_main,
            args=(child_conn, lifeline_r, self.setup_json),
            name="nastrain-worker",
        )
        try:
            process.start()
        finally:
            child_conn.close()
            lifeline_r.close()
        worker = _Worker(process, conn, lifeline_w)
        self.workers.append(worker)
        if self.space_bytes is not None:
            # If it died already, poll() finds out and says so.
            with contextlib.suppress(OSError):
                conn.send_bytes(self.space_bytes)

    def free_slots(self) -> int:
        """Workers that are set up and idle."""
        return sum(1 for w in self.workers if w.ready and w.job is None)

    def running(self) -> int:
        """Trials running now."""
        return sum(1 for w in self.workers if w.job is not None)

    def submit(self, job: TrialJob) -> None:
        """Send ``job`` to an idle worker."""
        worker = next(w for w in self.workers if w.ready and w.job is None)
        worker.job = job
        self.handler.on_start(job.index, worker_name(worker.pid or 0))
        if self.trial_timeout is not None:
            worker.deadline = time.monotonic() + self.trial_timeout
        # If it died since it said it was ready, poll() fails the trial and replaces it.
        with contextlib.suppress(OSError):
            _send(worker.conn, {"type": "trial", "job": converter.unstructure(job)})

    def poll(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` seconds for workers; handle what they say and who died."""
        deadlines = [w.deadline for w in self.workers if w.deadline is not None]
        if deadlines:
            until = max(0.0, min(deadlines) - time.monotonic())
            timeout = until if timeout is None else min(timeout, until)
        waitables: dict[Any, _Worker] = {}
        for worker in self.workers:
            waitables[worker.conn] = worker
            waitables[worker.process.sentinel] = worker
        for ready in wait(list(waitables), timeout):
            worker = waitables[ready]
            if worker in self.workers:
                self._service(worker)
        self._enforce_deadlines()

    def _service(self, worker: _Worker) -> None:
        while worker in self.workers:
            try:
                if not worker.conn.poll():
                    break
                message = _receive(worker.conn)
            except (EOFError, OSError):
                break
            self._handle(worker, message)
        if worker in self.workers and not worker.process.is_alive():
            self._dead(worker)

    def _handle(self, worker: _Worker, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "ready":
            worker.ready = True
            worker.pid = int(message.get("pid") or worker.pid or 0)
        elif kind == "setup_failed":
            raise ExecutorError(f"a worker process could not set up: {message['reason']}")
        elif kind == "result":
            final = bool(message["final"])
            stop = self.handler.on_result(message["index"], check_metric(message["metric"]), final)
            if not final:
                # If it died meanwhile, the death is handled next.
                with contextlib.suppress(OSError):
                    _send(worker.conn, {"type": "stop" if stop else "go"})
        elif kind == "end":
            worker.job = None
            worker.deadline = None
            self.handler.on_end(message["index"], message["status"], message["reason"])
            if message["status"] == "failed":
                self._recycle(worker)

    def _recycle(self, worker: _Worker) -> None:
        """Stop an idle worker (politely, then by force after 2 s) and start a new one."""
        with contextlib.suppress(OSError):
            _send(worker.conn, {"type": "exit"})
        worker.process.join(2.0)
        if worker.process.is_alive():
            worker.process.kill()
        self._retire(worker)
        self._spawn()
        self.recycled += 1

    def _retire(self, worker: _Worker) -> None:
        self.workers.remove(worker)
        worker.process.join()
        worker.close()

    def _dead(self, worker: _Worker) -> None:
        self._retire(worker)
        why = _death(worker.process)
        if not worker.ready:
            raise ExecutorError(
                f"a worker process died while setting up ({why}); its error is above"
            )
        if worker.job is not None:
            self.handler.on_end(
                worker.job.index,
                "failed",
                f"the worker process (pid {worker.process.pid}) died: {why}; it was replaced",
            )
        self._spawn()

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for worker in list(self.workers):
            if worker.deadline is not None and now >= worker.deadline and worker.job is not None:
                worker.process.kill()
                self._retire(worker)
                self.handler.on_end(
                    worker.job.index,
                    "failed",
                    f"timed out after {self.trial_timeout:g} s (trial_timeout); the worker "
                    "process was killed and replaced",
                )
                self._spawn()

    def close(self) -> None:
        """Stop every worker: ask politely, then kill what is still running after 2 s."""
        for worker in self.workers:
            with contextlib.suppress(OSError):
                _send(worker.conn, {"type": "exit"})
        end = time.monotonic() + 2.0
        for worker in self.workers:
            worker.process.join(max(0.0, end - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.close()
        self.workers = []


# --- the built-in executors' factories (registered by nastrain.experiments.builtin) ---------


def local_executor(context: ExecutorContext) -> LocalExecutor:
    """``executor="local"``, the default: :class:`LocalExecutor` with the experiment's
    concurrency and ``trial_timeout``; it takes no options."""
    check_options(context.name or "local", context.options)
    return LocalExecutor(
        setup=context.setup,
        space=context.space,
        concurrency=context.concurrency,
        trial_timeout=context.trial_timeout,
        handler=context.handler,
    )


def inline_executor(context: ExecutorContext) -> InlineExecutor:
    """``executor="inline"``: :class:`InlineExecutor`, trials one at a time in this process
    (a space named as ``module:attr`` is what :func:`trial_space` makes of it, as in each
    local worker); it takes no options, and no ``trial_timeout``."""
    check_options(context.name or "inline", context.options)
    if context.trial_timeout is not None:
        raise ValueError("executor 'inline' runs trials in this process: it takes no trial_timeout")
    space: nn.Module | SeededSpace
    if context.space is not None:
        space = context.space
    else:
        assert context.setup.space_ref is not None
        space = trial_space(context.setup.space_ref, context.setup.space_kwargs)
    return InlineExecutor(space, context.handler)
