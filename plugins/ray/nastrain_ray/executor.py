"""The driver side of the Ray executor: :class:`RayExecutor`.

Built on Ray core, not Ray Tune: every trial is one remote generator task
(:func:`nastrain_ray.worker.trial_task`) submitted with the trial's resources; its arguments
are JSON strings only (the worker setup and the trial job, the space by reference as
``module:attr``), and it yields every result as a JSON message while the trial trains. The
driver waits on all running tasks at once (``ray.wait``), hands each result to the
experiment (which writes it to the store and then asks the strategy) and ends each trial.
Only the driver, the experiment's process, writes the store.

- Where a trial ended, the next one runs: a trial submitted after another's task ended
  asks for that node first (a soft node affinity), so the freed node takes the next trial
  at once; placed by Ray alone, short trials waited (by our reading, for the driver's
  raylet's lagging view of the other nodes) or all ran on one node: 0.80x the local
  executor's throughput against 0.92x with it (benchmarks/README.md). Soft: if that node
  is gone, Ray places the trial as it would without.
- A trial that raises is ``failed`` with its traceback, and is not retried.
- A trial whose worker or node is lost (a system failure: :data:`SYSTEM_FAILURES`) is run
  again by the driver, as a new task (a rerun), up to ``max_retries`` times, on any node
  that has the resources (Ray's own task retries are off: Ray would replay the lost run's
  stream by position, dropping the new run's first items unseen). Each report is keyed by
  (trial, attempt, rerun, step): the rerun reports its steps again from the first, and a
  step already stored (by an earlier run) is ignored, so each result is stored once, as it
  was first reported. With ``max_retries`` used up the trial ends ``failed``, naming Ray's
  error and the runs. (``attempt`` is the store's: one more each time a restarted driver
  resumes the trial.)
- A trial the strategy stops (``median_stop``) ends ``early_stopped`` at once, and its task
  is cancelled (``ray.cancel``): the trial stops at its next report (or its worker process
  ends after :data:`nastrain_ray.worker.STOP_GRACE_SECONDS`), and what it reports after the
  result that stopped it, a final result too, is never read, so the store holds exactly
  the results the strategy saw. One that runs past ``trial_timeout`` (counted from its first
  run's start) is cancelled with force (its worker process is killed) and ends
  ``failed``.

What Ray pickles: Ray sends the task's function by reference (its module and name, with
cloudpickle) and its own control messages; nastrain's arguments and results are JSON
strings. Nothing nastrain writes or reads on disk is pickled.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import socket
import time
import warnings
from collections.abc import Mapping
from typing import Any

import attrs
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from nastrain.experiments.executor import (
    ExecutorContext,
    ExecutorError,
    TrialHandler,
    TrialJob,
    check_options,
)
from nastrain.reporting import check_metric
from nastrain_ray.worker import trial_task

__all__ = ["CONNECT_TIMEOUT", "OPTIONS", "SYSTEM_FAILURES", "RayExecutor", "check_address"]

logger = logging.getLogger(__name__)

#: The options ``executor_options`` (or the config's ``[executor]`` table) may hold.
OPTIONS = (
    "address",
    "num_cpus",
    "num_gpus",
    "resources",
    "max_retries",
    "runtime_env",
    "connect_timeout",
)
#: Ray's errors that mean a trial's worker or node was lost, not that the trial failed: the
#: driver runs the trial again (``max_retries``). ``TaskCancelledError`` is not among them (the
#: driver cancelled it), nor ``RayTaskError`` (the task raised; the worker reports a trial
#: that raises as ``failed`` itself), nor ``RuntimeEnvSetupError`` (it would fail again).
SYSTEM_FAILURES: tuple[type[BaseException], ...] = (
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.LocalRayletDiedError,
    ray.exceptions.OutOfMemoryError,
    ray.exceptions.ObjectLostError,
    ray.exceptions.RaySystemError,
)
#: Seconds the driver waits for the cluster's head (its GCS port) to answer, by default
#: (option ``connect_timeout``), before giving up.
CONNECT_TIMEOUT = 30.0
#: What an HTTP/2 client sends first (RFC 9113, 3.4), then an empty SETTINGS frame: Ray's GCS
#: is a gRPC server, which answers with a SETTINGS frame of its own.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_NOT_GCS = (
    "is this Ray's GCS port? (what `ray start --head` prints, 6379 by default; the "
    "dashboard's 8265 and the Ray Client's 10001 are not)"
)


def _number(name: str, value: Any, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"executor 'ray': option {name!r} must be a number, got {value!r}")
    if value < minimum:
        raise ValueError(f"executor 'ray': option {name!r} must be >= {minimum:g}, got {value!r}")
    return float(value)


def check_address(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Refuse, within about ``timeout`` seconds, a ``host:port`` where nothing listens, or
    where what listens does not answer as a gRPC server (Ray's GCS is one; ``ray.init`` would
    wait there for minutes): an ``ExecutorError`` naming the address. ``"auto"`` and
    ``"local"`` are not checked (Ray finds or starts the cluster)."""
    if address in ("auto", "local"):
        return
    if address.startswith("ray://"):
        raise ExecutorError(
            f"executor 'ray': address {address!r} is a Ray Client address; nastrain's driver "
            "must run on a node of the cluster: give the head's GCS address (host:6379, what "
            "`ray start --head` prints) and run the experiment on a cluster node"
        )
    host, sep, port_text = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit():
        raise ExecutorError(
            f"executor 'ray': address {address!r} must be 'host:port' (the head's GCS address, "
            "e.g. '10.0.0.1:6379'), 'auto' or 'local'"
        )
    began = time.monotonic()
    try:
        connection = socket.create_connection((host, int(port_text)), timeout=timeout)
    except OSError as exc:
        raise ExecutorError(
            f"executor 'ray': cannot reach the Ray cluster at {address!r} within {timeout:g} s "
            f"({type(exc).__name__}: {exc}); is `ray start --head` running there, and is the "
            "port open from this machine?"
        ) from None
    with connection:
        # The server's first frame: 9 bytes, its type (the 4th) SETTINGS (4).
        answer = b""
        try:
            connection.sendall(_HTTP2_PREFACE)
            while len(answer) < 9:
                connection.settimeout(max(0.01, timeout - (time.monotonic() - began)))
                chunk = connection.recv(9 - len(answer))
                if not chunk:
                    break
                answer += chunk
        except TimeoutError:
            raise ExecutorError(
                f"executor 'ray': {address!r} accepts connections but did not answer as Ray's "
                f"GCS within {timeout:g} s (connect_timeout); {_NOT_GCS}"
            ) from None
        except OSError as exc:
            raise ExecutorError(
                f"executor 'ray': {address!r} closed the connection without answering as Ray's "
                f"GCS ({type(exc).__name__}: {exc}); {_NOT_GCS}"
            ) from None
        if len(answer) < 9 or answer[3] != 4:
            raise ExecutorError(
                f"executor 'ray': {address!r} does not answer as Ray's GCS (a gRPC server) "
                f"does (it answered {answer[:40]!r}); {_NOT_GCS}"
            )


@attrs.define
class _Trial:
    """A submitted trial and what the driver knows of it."""

    job: TrialJob
    #: The running run's task (a streaming generator).
    generator: Any
    #: Which run: 0 first, one more each time a lost worker or node made the driver rerun it.
    rerun: int = 0
    #: How many steps are stored: a run's steps below it were stored by an earlier run.
    stored: int = 0
    #: Where it runs, as its worker says (a rerun runs elsewhere).
    worker: str | None = None
    deadline: float | None = None
    intermediate: int = 0


class RayExecutor:
    """``executor="ray"``: each trial a Ray task on a cluster (see the module docstring).

    Options (``executor_options``, or the config's ``[executor]`` table):

    - ``address``: the cluster's head, ``"host:port"`` (its GCS port, 6379 by default), or
      ``"auto"`` (``RAY_ADDRESS``, else the cluster ``ray start`` started last on this
      machine); not given: an existing ``ray.init()`` connection of this process, else as
      ``"auto"`` but, with no cluster found, a Ray instance started here for the run.
    - ``num_cpus`` (default 1), ``num_gpus`` (default 0), ``resources`` (custom resources,
      ``{"name": amount}``): what each trial's task asks for.
    - ``max_retries`` (default 3): how many times the driver reruns a trial after a system
      failure (its worker or node lost: :data:`SYSTEM_FAILURES`); a trial that raises is not
      rerun.
    - ``runtime_env``: Ray's runtime environment for the trial tasks, e.g.
      ``{"working_dir": "."}`` or ``{"py_modules": ["mypackage"]}`` to ship the user's code to
      the workers, ``{"pip": [...]}``, ``{"env_vars": {...}}``.
    - ``connect_timeout`` (seconds, default 30): how long the head's address may take to
      answer as Ray's GCS before the run is refused (an ``ExecutorError`` naming it).
    """

    def __init__(self, context: ExecutorContext) -> None:
        options = check_options(context.name or "ray", context.options, OPTIONS)
        setup = context.setup
        if context.space is not None or setup.space_ref is None:
            raise ExecutorError(
                "executor='ray' needs the space named as module:attr, importable on the "
                "workers (e.g. space='myproject.spaces:Net', with myproject installed there or "
                "shipped with the runtime_env option); a space object cannot be sent"
            )
        if setup.space_ref.partition(":")[0] in ("__main__", "__mp_main__"):
            raise ExecutorError(
                f"executor='ray' needs the space named as module:attr, importable on the "
                f"workers; a space defined in __main__ ({setup.space_ref!r}) is not: move it "
                "into a module of your project and name it as 'module:attr'"
            )
        address = options.get("address")
        if address is not None and (not isinstance(address, str) or not address):
            raise ValueError(
                f"executor 'ray': option 'address' must be 'host:port', got {address!r}"
            )
        self.address: str | None = address
        self.connect_timeout = _number(
            "connect_timeout", options.get("connect_timeout", CONNECT_TIMEOUT), minimum=0.1
        )
        self.num_cpus = _number("num_cpus", options.get("num_cpus", 1))
        self.num_gpus = _number("num_gpus", options.get("num_gpus", 0))
        resources = options.get("resources", {})
        if not isinstance(resources, Mapping):
            raise ValueError(
                f"executor 'ray': option 'resources' must be a table of amounts, got {resources!r}"
            )
        self.resources = {
            str(k): _number(f"resources.{k}", v, minimum=0.0) for k, v in resources.items()
        }
        for name in ("CPU", "GPU"):
            if name in self.resources:
                raise ValueError(
                    f"executor 'ray': give {name} as num_{name.lower()}s, not in 'resources'"
                )
        max_retries = options.get("max_retries", 3)
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(
                f"executor 'ray': option 'max_retries' must be an integer >= 0, got {max_retries!r}"
            )
        self.max_retries = max_retries
        runtime_env = options.get("runtime_env")
        if runtime_env is not None and not isinstance(runtime_env, Mapping):
            raise ValueError(
                f"executor 'ray': option 'runtime_env' must be a table, got {runtime_env!r}"
            )
        self.runtime_env = dict(runtime_env) if runtime_env is not None else None
        # A worker's torch threads follow the CPUs its task holds.
        self.setup_json = attrs.evolve(setup, threads=max(1, int(self.num_cpus))).to_json()
        self.concurrency = context.concurrency
        self.trial_timeout = context.trial_timeout
        self.handler: TrialHandler = context.handler
        self._trials: dict[int, _Trial] = {}
        #: Nodes where a trial ended and no trial was submitted since, oldest first.
        self._freed: collections.deque[str] = collections.deque(maxlen=max(1, self.concurrency))
        self._connected_here = False
        self._remote: Any = None

    # --- starting -------------------------------------------------------------------------

    def start(self) -> None:
        """Connect to the cluster (checking the address first) and check that some node has
        the resources a trial asks for."""
        if not ray.is_initialized():
            if self.address is not None:
                check_address(self.address, self.connect_timeout)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                # The runtime_env goes with the connection (the job): Ray uploads local
                # folders (working_dir, py_modules) only there.
                ray.init(
                    address=self.address,
                    include_dashboard=False,
                    log_to_driver=True,
                    logging_level="WARNING",
                    runtime_env=self.runtime_env,
                )
            self._connected_here = True
        self._check_resources()
        options: dict[str, Any] = {
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            # The driver reruns a lost run itself (see the module's docstring).
            "max_retries": 0,
            "retry_exceptions": False,
        }
        if self.resources:
            options["resources"] = self.resources
        if self.num_gpus > 0:
            # A fresh worker process per GPU trial (Ray's own default for GPU tasks): a
            # process's CUDA state is bound to the GPUs of its first task.
            options["max_calls"] = 1
        if self.runtime_env is not None and not self._connected_here:
            # Connected by this process before (ray.init): per task, where Ray takes only
            # URIs for code (a local folder belongs in that ray.init's runtime_env).
            options["runtime_env"] = self.runtime_env
        try:
            self._remote = ray.remote(**options)(trial_task)
        except (TypeError, ValueError) as exc:
            raise ExecutorError(f"executor 'ray': the task's options {options}: {exc}") from None

    def _check_resources(self) -> None:
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        wanted = {"CPU": self.num_cpus, "GPU": self.num_gpus, **self.resources}
        wanted = {name: amount for name, amount in wanted.items() if amount > 0}
        if any(all(n["Resources"].get(k, 0) >= v for k, v in wanted.items()) for n in nodes):
            return
        for name, amount in wanted.items():
            most = max((n["Resources"].get(name, 0.0) for n in nodes), default=0.0)
            if most < amount:
                option = {"CPU": "num_cpus", "GPU": "num_gpus"}.get(name, f"resources.{name}")
                raise ExecutorError(
                    f"executor 'ray': a trial asks for {amount:g} {name} ({option}), but no node "
                    f"of the cluster has that much (the most any of its {len(nodes)} nodes has: "
                    f"{most:g}); lower {option} or add a node that has it"
                )
        raise ExecutorError(
            f"executor 'ray': no node of the cluster has all a trial asks for at once ({wanted}); "
            f"its nodes have: {[n['Resources'] for n in nodes]}"
        )

    # --- running --------------------------------------------------------------------------

    def free_slots(self) -> int:
        """How many more trials may be submitted (``concurrency`` in all)."""
        return max(0, self.concurrency - len(self._trials))

    def running(self) -> int:
        """Trials submitted and not ended (queued in Ray for resources included)."""
        return len(self._trials)

    def submit(self, job: TrialJob) -> None:
        """Submit ``job`` as a Ray task, on the node where a trial ended last if one did (see
        the module docstring); ``on_start`` comes when a worker starts it."""
        remote = self._remote
        if self._freed:
            with contextlib.suppress(ValueError):  # not a node id Ray takes: Ray places it
                strategy = NodeAffinitySchedulingStrategy(self._freed.popleft(), soft=True)
                remote = remote.options(scheduling_strategy=strategy)
        generator = remote.remote(self.setup_json, job.to_json(), 0)
        self._trials[job.index] = _Trial(job=job, generator=generator)

    def _rerun(self, trial: _Trial, failure: BaseException) -> None:
        """Run the trial again, as a new task, after ``failure`` lost its worker."""
        trial.rerun += 1
        logger.warning(
            "trial %d: %s; running it again (run %d of at most %d, max_retries)",
            trial.job.index,
            _describe_failure(failure),
            trial.rerun + 1,
            self.max_retries + 1,
        )
        trial.generator = self._remote.remote(self.setup_json, trial.job.to_json(), trial.rerun)

    def poll(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` seconds for a message of a running trial; hand the experiment
        one message of each trial that has one ready (one pass, as the local executor makes:
        the experiment submits new trials between passes, however busy the running ones are),
        then enforce ``trial_timeout``."""
        deadlines = [t.deadline for t in self._trials.values() if t.deadline is not None]
        if deadlines:
            until = max(0.0, min(deadlines) - time.monotonic())
            timeout = until if timeout is None else min(timeout, until)
        if self._trials:
            generators = [t.generator for t in self._trials.values()]
            by_generator = {id(t.generator): t for t in self._trials.values()}
            ready, _ = ray.wait(generators, num_returns=1, timeout=timeout, fetch_local=True)
            if ready and len(generators) > 1:
                # Every other trial ready by now gets its turn in this pass too.
                ready, _ = ray.wait(
                    generators, num_returns=len(generators), timeout=0, fetch_local=True
                )
            for generator in ready:
                trial = by_generator[id(generator)]
                if self._trials.get(trial.job.index) is trial:
                    self._next(trial)
        self._enforce_deadlines()

    def _next(self, trial: _Trial) -> None:
        """Take the trial's next message and act on it."""
        index = trial.job.index
        try:
            text = ray.get(next(trial.generator))
        except StopIteration:
            self._end(trial, "failed", "its Ray task ended without saying how the trial ended")
            return
        except SYSTEM_FAILURES as exc:
            if trial.rerun < self.max_retries:
                self._rerun(trial, exc)
            else:
                self._end(
                    trial,
                    "failed",
                    f"{_describe_failure(exc)}, on each of its {trial.rerun + 1} run(s) "
                    f"(max_retries={self.max_retries})",
                )
            return
        except ray.exceptions.RayError as exc:
            self._end(trial, "failed", _describe_failure(exc))
            return
        message = json.loads(text)
        if message.get("rerun", 0) != trial.rerun:
            return  # an earlier run's (never read once it is replaced): ignored
        kind = message["type"]
        if kind == "setup_failed":
            raise ExecutorError(
                f"a Ray worker could not set up for the experiment: {message['reason']}\n"
                "(the workers import the space, the trainer's module and the experiment's "
                "modules: install them on every node, or ship them with the runtime_env "
                "option, e.g. {'working_dir': '.'} or {'py_modules': ['mypackage']})"
            )
        worker = str(message["worker"])
        if worker != trial.worker:
            # Its first message, or a rerun's first, from another worker.
            if trial.worker is None and self.trial_timeout is not None:
                trial.deadline = time.monotonic() + self.trial_timeout
            trial.worker = worker
            self.handler.on_start(index, worker)
        if kind == "result":
            step = int(message["step"])
            if step < trial.stored:
                return  # stored already, as an earlier run reported it
            trial.stored = step + 1
            final = bool(message["final"])
            metric = check_metric(message["metric"])
            if not final:
                trial.intermediate += 1
            if self.handler.on_result(index, metric, final) and not final:
                self._cancel(trial, force=False)
                self._end(
                    trial,
                    "early_stopped",
                    f"stopped by the strategy after {trial.intermediate} intermediate "
                    "results; its Ray task was cancelled",
                )
        elif kind == "end":
            # Its task ends with this message: its node has a trial's resources free (not
            # so for one cancelled, whose task may run on for a while).
            node = _node_of(worker)
            if node is not None:
                self._freed.append(node)
            self._end(trial, str(message["status"]), message.get("reason"))

    def _end(self, trial: _Trial, status: str, reason: str | None) -> None:
        del self._trials[trial.job.index]
        self.handler.on_end(trial.job.index, status, reason)

    def _cancel(self, trial: _Trial, *, force: bool) -> None:
        """Cancel the trial's task and forget it: what it still yields is never read (reading
        a cancelled generator waits for its task to end)."""
        with contextlib.suppress(Exception):
            ray.cancel(trial.generator, force=force)

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for trial in list(self._trials.values()):
            if trial.deadline is not None and now >= trial.deadline:
                self._cancel(trial, force=True)
                self._end(
                    trial,
                    "failed",
                    f"timed out after {self.trial_timeout:g} s (trial_timeout); its Ray task "
                    "was cancelled (force: its worker process killed)",
                )

    def close(self) -> None:
        """Cancel the trials still running (with force) and disconnect from Ray if
        :meth:`start` connected."""
        for trial in list(self._trials.values()):
            self._cancel(trial, force=True)
        self._trials.clear()
        if self._connected_here:
            self._connected_here = False
            ray.shutdown()


def _node_of(worker: str | None) -> str | None:
    """The node id in a worker's description (``... node=<id>``), or ``None``."""
    if worker is None:
        return None
    _, sep, node = worker.rpartition(" node=")
    return node if sep and node else None


def _describe_failure(exc: BaseException) -> str:
    """What Ray said when a trial's task failed (not the trial itself), in one line."""
    first = " ".join(str(exc).split())[:600]
    return f"its Ray task failed ({type(exc).__name__}: {first})"
