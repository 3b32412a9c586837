"""The TensorBoard logger: a plugin object that writes what nastrain reports as TensorBoard
event files, one run (a folder under the log directory) per trial or per one-shot search.

What goes where:

- A trial of a multi-trial experiment (``nastrain_on_report`` with a ``trial`` index) is the
  run ``<log dir>/trial-00003``: every key of an intermediate result as the scalar
  ``intermediate/<key>`` and every key of the final result as ``final/<key>`` (a number is
  the key ``default``), at step = the report's index within the trial (the final result
  comes after the intermediate ones, so its step is their count). Reports outside a trial
  are not logged.
- A one-shot search (``nastrain_on_epoch``) is the run ``<log dir>/<trainer name>-0001``
  (the next free number, one run per ``fit()``): at step = the record's ``epoch``, each
  metric as ``metrics/<key>``, each label's ``entropy/<label>``, each candidate's
  probability as ``probabilities/<label>/<candidate>``, each label's probabilities as the
  histogram ``architecture/<label>`` (bucket ``i`` is candidate ``i``, its count the
  probability), and the architecture that would be exported, as JSON text (``architecture``).

Each run is flushed after every report and every epoch, and closed when its ``fit()`` ends
(``nastrain_fit``, as a wrapper) or the process exits. Nothing is written before something
is reported, and nothing that goes wrong while writing stops a search: the run is given up
with one :class:`TensorBoardWarning` naming its folder.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import numbers
import os
import re
import tempfile
import threading
import warnings
import weakref
from collections.abc import Generator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nastrain
from nastrain.reporting import current_trial

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["LogDirError", "TensorBoardLogger", "TensorBoardWarning", "check_log_dir"]


class LogDirError(ValueError):
    """A log directory that cannot be written to (the message names it and says why)."""


class TensorBoardWarning(UserWarning):
    """Something could not be logged; the search goes on without it."""


def check_log_dir(log_dir: str | os.PathLike[str]) -> Path:
    """Make sure ``log_dir`` is a folder this process can write to, creating it (and its
    parents) if missing, and return it as an absolute path; raise :class:`LogDirError`
    naming it otherwise."""
    path = Path(log_dir).expanduser()
    if not str(log_dir).strip():
        raise LogDirError("nastrain-tensorboard: the log directory is an empty string")
    try:
        path.mkdir(parents=True, exist_ok=True)
        # Creating a file is the only sure test (root ignores permission bits, a read-only
        # mount does not).
        handle, probe = tempfile.mkstemp(prefix=".nastrain-probe-", dir=path)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if isinstance(exc, FileExistsError) or (path.exists() and not path.is_dir()):
            reason = "it is not a folder"
        raise LogDirError(
            f"nastrain-tensorboard: cannot write to the log directory {str(path)!r}: {reason}"
        ) from exc
    return path.resolve()


def _number(value: Any) -> float | None:
    """``value`` as a float, or ``None`` for anything that is not a real number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def _tag_part(text: str) -> str:
    """A label, key or candidate name as one part of a tag (``/`` separates the parts)."""
    return re.sub(r"\s+", "_", str(text).replace("/", "_")) or "_"


class _Run:
    """One run: a folder of event files and its writer."""

    def __init__(self, directory: Path, writer: SummaryWriter) -> None:
        self.directory = directory
        self.writer = writer
        #: The index of the next report (multi-trial runs).
        self.reports = 0


#: Every logger not yet closed, closed at exit (atexit runs in the experiment's process;
#: worker processes end their runs when each trial's fit() returns).
_open_loggers: weakref.WeakSet[TensorBoardLogger] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for logger in list(_open_loggers):
        logger.close()


class TensorBoardLogger:
    """A nastrain plugin object that logs to TensorBoard event files under ``log_dir``.

    Turn it on for one process by registering it::

        logger = TensorBoardLogger("runs")
        nastrain.plugin_manager().register(logger)

    or with ``with TensorBoardLogger("runs"):`` (registered in the block, closed after it).
    ``log_dir`` is created if missing; one that cannot be written to is refused here with
    :class:`LogDirError` naming it, before any search starts. Worker processes of an
    experiment do not see an object registered here; set ``NASTRAIN_TENSORBOARD`` in the
    environment for them (see :mod:`nastrain_tensorboard.plugin`).
    """

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        #: The folder every run is written under.
        self.log_dir = check_log_dir(log_dir)
        self._lock = threading.RLock()
        self._trials: dict[int, _Run | None] = {}  # None: given up
        self._searches: dict[int, _Run | None] = {}  # by id(trainer)
        _open_loggers.add(self)

    def __repr__(self) -> str:
        return f"TensorBoardLogger({str(self.log_dir)!r})"

    def __enter__(self) -> TensorBoardLogger:
        nastrain.plugin_manager().register(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        pm = nastrain.plugin_manager()
        if pm.is_registered(self):
            pm.unregister(self)
        self.close()

    # --- hooks -------------------------------------------------------------------------

    @nastrain.hookimpl
    def nastrain_on_report(self, metric: Any, final: bool, trial: int | None) -> None:
        """Log a trial's report as scalars of the run ``trial-NNNNN`` (see the module)."""
        if trial is None:
            return
        values = metric if isinstance(metric, Mapping) else {"default": metric}
        with self._lock:
            run = self._trial_run(trial)
            if run is None:
                return
            step = run.reports
            run.reports += 1
            prefix = "final" if final else "intermediate"
            self._write(run, self._trials, trial, lambda w: self._scalars(w, prefix, values, step))

    @nastrain.hookimpl
    def nastrain_on_epoch(self, trainer: Any, record: Mapping[str, Any]) -> None:
        """Log a one-shot search's epoch record (see the module)."""
        with self._lock:
            run = self._search_run(trainer)
            if run is None:
                return
            self._write(run, self._searches, id(trainer), lambda w: self._epoch(w, trainer, record))

    @nastrain.hookimpl(wrapper=True)
    def nastrain_fit(self, trainer: Any) -> Generator[None, Any, Any]:
        """Close the run of the trial or search whose ``fit()`` just ended."""
        trial = current_trial()
        try:
            return (yield)
        finally:
            with self._lock:
                if trial is not None:
                    self._end(self._trials, trial)
                self._end(self._searches, id(trainer))

    # --- runs ----------------------------------------------------------------------------

    def close(self) -> None:
        """Flush and close every open run (the logger opens new ones if it hears more)."""
        with self._lock:
            for runs in (self._trials, self._searches):
                for key in list(runs):
                    self._end(runs, key)

    def _trial_run(self, trial: int) -> _Run | None:
        if trial not in self._trials:
            directory = self.log_dir / f"trial-{trial:05d}"
            # A trial run again (the experiment resumed after a crash) starts over: the
            # events of its earlier run are purged from step 0.
            again = directory.is_dir() and any(directory.glob("events.out.tfevents.*"))
            self._trials[trial] = self._open(directory, purge_step=0 if again else None)
        return self._trials[trial]

    def _search_run(self, trainer: Any) -> _Run | None:
        key = id(trainer)
        if key not in self._searches:
            name = _tag_part(getattr(trainer, "name", None) or type(trainer).__name__.lower())
            self._searches[key] = self._open_new(name)
        return self._searches[key]

    def _open_new(self, name: str) -> _Run | None:
        """A new run ``<name>-NNNN``, the first number no folder has (taken atomically, so
        two processes logging to one log dir never share a run)."""
        number = 1
        while True:
            directory = self.log_dir / f"{name}-{number:04d}"
            try:
                directory.mkdir(parents=True)
            except FileExistsError:
                number += 1
                continue
            except OSError as exc:
                self._give_up(directory, exc)
                return None
            return self._open(directory, purge_step=None)

    def _open(self, directory: Path, purge_step: int | None) -> _Run | None:
        try:
            # Here, not at the top: torch and tensorboard load only once something is logged.
            from torch.utils.tensorboard import SummaryWriter

            directory.mkdir(parents=True, exist_ok=True)
            writer = SummaryWriter(str(directory), purge_step=purge_step)
        except Exception as exc:
            self._give_up(directory, exc)
            return None
        return _Run(directory, writer)

    def _write(self, run: _Run, runs: dict[Any, _Run | None], key: Any, write: Any) -> None:
        try:
            write(run.writer)
            run.writer.flush()
        except Exception as exc:
            runs[key] = None
            self._give_up(run.directory, exc)
            # The folder may be gone; the warning has said so already.
            with contextlib.suppress(Exception):
                run.writer.close()

    def _end(self, runs: dict[Any, _Run | None], key: Any) -> None:
        run = runs.pop(key, None)
        if run is None:
            return
        try:
            run.writer.close()
        except Exception as exc:
            self._give_up(run.directory, exc)

    @staticmethod
    def _give_up(directory: Path, exc: BaseException) -> None:
        warnings.warn(
            f"nastrain-tensorboard: cannot write the run {str(directory)!r} "
            f"({type(exc).__name__}: {exc}); the search goes on without it",
            TensorBoardWarning,
            stacklevel=4,
        )

    # --- what is written -----------------------------------------------------------------

    @staticmethod
    def _scalars(writer: SummaryWriter, prefix: str, values: Mapping[str, Any], step: int) -> None:
        for key, value in values.items():
            number = _number(value)
            if number is not None:
                writer.add_scalar(f"{prefix}/{_tag_part(key)}", number, step)

    def _epoch(self, writer: SummaryWriter, trainer: Any, record: Mapping[str, Any]) -> None:
        step = int(record["epoch"])
        self._scalars(writer, "metrics", record.get("metrics") or {}, step)
        self._scalars(writer, "entropy", record.get("entropy") or {}, step)
        for label, probabilities in (record.get("probabilities") or {}).items():
            names, values = _candidates(trainer, label, probabilities)
            if not values:
                continue
            self._scalars(
                writer, f"probabilities/{_tag_part(label)}", dict(zip(names, values)), step
            )
            _histogram(writer, f"architecture/{_tag_part(label)}", values, step)
        architecture = record.get("architecture")
        if architecture is not None:
            text = json.dumps(architecture, indent=2, sort_keys=True)
            # Indented four spaces: TensorBoard renders the text as Markdown, this as code.
            writer.add_text(
                "architecture", "\n".join("    " + line for line in text.split("\n")), step
            )


def _candidates(trainer: Any, label: str, probabilities: Any) -> tuple[list[str], list[float]]:
    """Candidate names and probabilities of one label: a mapping gives both; a list is named
    after the trainer's space (a layer choice's candidate names; an input choice's input
    indices)."""
    if isinstance(probabilities, Mapping):
        pairs = [(str(k), _number(v)) for k, v in probabilities.items()]
    elif isinstance(probabilities, Sequence) and not isinstance(probabilities, str):
        names: Sequence[str] = [str(i) for i in range(len(probabilities))]
        space = getattr(trainer, "space", None)
        try:
            choice = space[label] if space is not None else None
        except (KeyError, TypeError):
            choice = None
        layer_names = (
            getattr(choice, "names", ()) if getattr(choice, "kind", None) == "layer" else ()
        )
        if len(layer_names) == len(probabilities):
            names = layer_names
        pairs = [(str(n), _number(v)) for n, v in zip(names, probabilities)]
    else:
        return [], []
    kept = [(n, v) for n, v in pairs if v is not None and math.isfinite(v)]
    return [n for n, _ in kept], [v for _, v in kept]


def _histogram(writer: SummaryWriter, tag: str, values: Sequence[float], step: int) -> None:
    """One label's probabilities as a histogram over candidate indices: bucket ``i`` holds
    candidate ``i`` (its right edge at ``i + 0.5``), its count the probability."""
    total = sum(values)
    writer.add_histogram_raw(
        tag,
        min=0,
        max=len(values) - 1,
        num=total,
        sum=sum(i * p for i, p in enumerate(values)),
        sum_squares=sum(i * i * p for i, p in enumerate(values)),
        bucket_limits=[i + 0.5 for i in range(len(values))],
        bucket_counts=list(values),
        global_step=step,
    )
