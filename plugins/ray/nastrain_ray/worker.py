"""The worker side of the Ray executor: the remote generator task that runs one trial.

Each run of a trial is one call of :func:`trial_task`, as a Ray task with the trial's
resources. Its arguments are two JSON strings (the experiment's
:class:`~nastrain.experiments.executor.WorkerSetup` and the trial's
:class:`~nastrain.experiments.executor.TrialJob`) and the run's number, ``rerun`` (0 first,
one more each time the driver runs the trial again after a lost worker or node, within the
job's ``attempt``), and it yields JSON strings, one message each, every one carrying
``"rerun"`` and naming the worker:

- ``{"type": "start", "rerun": <r>, "worker": "ray:<node ip>:<pid> node=<node id>"}`` when
  the run starts;
- ``{"type": "result", "rerun": <r>, "step": <n>, "metric": ..., "final": <bool>,
  "worker": ...}`` for every result the trainer reports, ``step`` counting from 0 within the
  run, as soon as it is reported: the driver keys each report by (trial, attempt, rerun,
  step) and stores a step once, as the run that reported it first did;
- ``{"type": "end", "rerun": <r>, "status": "succeeded" | "failed" | "early_stopped",
  "reason": ..., "worker": ...}`` last;
- ``{"type": "setup_failed", "rerun": <r>, "reason": ...}`` instead, when the worker could
  not be prepared (the user's module cannot be imported there, ...).

A worker process prepares once per experiment (:func:`nastrain.experiments.executor.prepare_worker`,
cached by the setup's JSON) and runs each trial in a thread of its own, so that the task's
main thread can yield the trial's reports while it trains and can be interrupted by
``ray.cancel``. A cancelled run (the strategy stopped the trial) sets the trial's stop
flag: the trial's thread raises ``TrialStopped`` at its next report, and what it reports from
then on is never sent; one that does not reach a report within :data:`STOP_GRACE_SECONDS`
ends its worker process (``os._exit(1)``; Ray starts a fresh worker for later tasks), so no
trial thread outlives its task.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Iterator
from typing import Any

import ray
from torch import nn

from nastrain.experiments.executor import (
    SeededSpace,
    TrialJob,
    TrialStopped,
    WorkerSetup,
    describe_exception,
    prepare_worker,
    run_trial,
)

__all__ = ["STOP_GRACE_SECONDS", "trial_task", "worker_description"]

#: How long a cancelled trial's thread may take to reach its next report and stop before
#: the worker process ends itself (a trial thread must not outlive its task).
STOP_GRACE_SECONDS = 10.0

_lock = threading.Lock()
#: The setup JSON this process was prepared for, and what its trials are built from.
_prepared: tuple[str, nn.Module | SeededSpace] | None = None


def worker_description() -> str:
    """How a trial's worker is recorded: ``"ray:<node ip>:<pid> node=<node id>"``."""
    context = ray.get_runtime_context()
    return f"ray:{ray.util.get_node_ip_address()}:{os.getpid()} node={context.get_node_id()}"


def _space(setup_json: str) -> nn.Module | SeededSpace:
    """What this process's trials are built from, prepared once per setup."""
    global _prepared
    with _lock:
        if _prepared is None or _prepared[0] != setup_json:
            space = prepare_worker(WorkerSetup.from_json(setup_json))
            _prepared = (setup_json, space)
        return _prepared[1]


def _message(**fields: Any) -> str:
    return json.dumps(fields, allow_nan=False)


def trial_task(setup_json: str, job_json: str, rerun: int = 0) -> Iterator[str]:
    """Run a trial once and yield its messages (see the module's docstring); a
    generator that Ray runs as a streaming task."""
    try:
        space = _space(setup_json)
        job = TrialJob.from_json(job_json)
    except Exception as exc:
        yield _message(type="setup_failed", rerun=rerun, reason=describe_exception(exc))
        return
    worker = worker_description()
    yield _message(type="start", rerun=rerun, worker=worker)
    events: queue.Queue[tuple[str, Any, Any]] = queue.Queue()
    stop = threading.Event()

    def report(metric: Any, final: bool) -> bool:
        events.put(("result", metric, final))
        return stop.is_set()

    def train() -> None:
        try:
            run_trial(space, job, report)
        except TrialStopped:
            events.put(("end", "early_stopped", None))
        except BaseException as exc:
            events.put(("end", "failed", describe_exception(exc)))
        else:
            events.put(("end", "succeeded", None))

    thread = threading.Thread(target=train, name=f"nastrain-trial-{job.index}", daemon=True)
    thread.start()
    step = 0
    try:
        while True:
            try:
                # Short waits: ray.cancel interrupts this thread between bytecodes.
                kind, first, second = events.get(timeout=0.05)
            except queue.Empty:
                continue
            if kind == "result":
                try:
                    text = _message(
                        type="result",
                        rerun=rerun,
                        step=step,
                        metric=first,
                        final=bool(second),
                        worker=worker,
                    )
                except (TypeError, ValueError) as exc:
                    stop.set()
                    text = _message(
                        type="end",
                        rerun=rerun,
                        status="failed",
                        reason=f"reported a result that is not JSON ({exc}): {first!r}",
                        worker=worker,
                    )
                    yield text
                    return
                step += 1
                yield text
            else:
                yield _message(type="end", rerun=rerun, status=first, reason=second, worker=worker)
                return
    finally:
        # Cancelled (ray.cancel raises in this thread) or done: the trial stops at its next
        # report; one that does not within the grace period takes its process with it.
        stop.set()
        thread.join(STOP_GRACE_SECONDS)
        if thread.is_alive():
            os._exit(1)
