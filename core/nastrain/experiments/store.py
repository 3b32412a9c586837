"""The record of a multi-trial experiment: one SQLite file per experiment.

The file holds the experiment's description (its search space, trainer spec,
strategy spec, seed and mode, as a JSON document through nastrain's one
converter), every trial (architecture, trainer spec, seed, status, reason,
attempts, timings, the worker it ran on) and every reported result, each as JSON
text. (A store written before workers were recorded reads as worker ``None``; a run on
it adds the column when it takes the lease.) It is written
ahead (SQLite's WAL journal) and every report is committed as it arrives, so a
dead experiment process loses nothing that was reported; opening the file again
resumes the experiment.

A file that is not an SQLite database, is corrupt, is an SQLite database of
something else, or records another experiment is refused with an error saying
so, and left exactly as it was.

One writer at a time: :meth:`Store.open` takes an exclusive lease on the store
(a row naming the owner's pid, host and start time, refreshed every
:data:`HEARTBEAT_SECONDS` by a thread while the store is open). A second writer
on a store whose owner is alive is refused at once with
:class:`StoreLockedError`, naming the owner, and the store is not changed. A
lease whose owner is dead (its pid gone, on the same host) or silent (no
heartbeat for :data:`STALE_SECONDS`, on any host: clocks are assumed to agree)
is taken over, and the trials it left running run again. Every write checks
the lease in its own transaction, so a writer whose lease was taken over (a
process stopped for longer than :data:`STALE_SECONDS`) fails instead of
writing. Readers (:meth:`Store.read`, ``nastrain report``) take no lease.

A run stopped by Ctrl-C (or any error) records the trials it left unfinished as
``interrupted``; a process that died without a word (SIGKILL) leaves them ``running``,
and a reader shows those as interrupted once no live process holds the lease
(:meth:`Store.observed_trials`), without writing. Either way a resumed run runs them again.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from nastrain.experiments.records import ExperimentRecord, Trial, TrialStatus
from nastrain.reporting import Metric, check_metric
from nastrain.serialization import SCHEMA_VERSION, converter, dumps, loads
from nastrain.terminal import printable

__all__ = [
    "FORMAT",
    "HEARTBEAT_SECONDS",
    "STALE_SECONDS",
    "Lease",
    "Store",
    "StoreError",
    "StoreLockedError",
]

#: What the ``format`` entry of a store's ``meta`` table says.
FORMAT = "nastrain-experiment"
_SQLITE_HEADER = b"SQLite format 3\x00"

#: How often (seconds) the writer of a store refreshes its lease.
HEARTBEAT_SECONDS = 5.0
#: A lease not refreshed for this long (seconds) belongs to a dead or stuck writer.
STALE_SECONDS = 60.0
#: How long (seconds) a connection waits for another one's write transaction.
_BUSY_SECONDS = 30.0

_LEASE_TABLE = """
CREATE TABLE IF NOT EXISTS lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    token TEXT NOT NULL,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    process TEXT,
    started REAL NOT NULL,
    heartbeat REAL NOT NULL
)
"""

_SCHEMA = (
    """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE trials (
    trial INTEGER PRIMARY KEY,
    arch TEXT NOT NULL,
    trainer TEXT NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    attempts INTEGER NOT NULL,
    started REAL,
    ended REAL,
    end_order INTEGER,
    worker TEXT
);
CREATE TABLE results (
    trial INTEGER NOT NULL REFERENCES trials (trial),
    attempt INTEGER NOT NULL,
    final INTEGER NOT NULL,
    metric TEXT NOT NULL,
    time REAL NOT NULL
);
CREATE INDEX results_by_trial ON results (trial, attempt);
"""
    + _LEASE_TABLE
)


class StoreError(ValueError):
    """A store file that cannot be used for this experiment (the file is left untouched)."""


class StoreLockedError(StoreError, RuntimeError):
    """The store has a live writer already (its :attr:`owner`); nothing was changed.

    A ``RuntimeError`` (the store is fine, another process holds it) and a
    :class:`StoreError`."""

    def __init__(self, message: str, owner: Lease) -> None:
        super().__init__(message)
        self.owner = owner


@attrs.frozen(kw_only=True)
class Lease:
    """Who writes a store: a process (``pid`` on ``host``), since ``started``, alive at
    ``heartbeat`` (both ``time.time()``). ``process`` tells the process apart from a later
    one given the same pid (Linux: boot id and start time), or is ``None``."""

    token: str
    pid: int
    host: str
    process: str | None
    started: float
    heartbeat: float

    def describe(self) -> str:
        """The owner, for people: pid, host, and when it started and last refreshed."""
        return (
            f"pid {self.pid} on host {printable(self.host)}, since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.started))}, last "
            f"heartbeat {max(0.0, time.time() - self.heartbeat):.0f} s ago"
        )

    def dead_because(self, stale_after: float) -> str | None:
        """Why this lease's owner is dead (so the lease may be taken over), or ``None``."""
        silent = time.time() - self.heartbeat
        if silent > stale_after:
            return f"its last heartbeat was {silent:.0f} s ago (more than {stale_after:g} s)"
        if self.host == socket.gethostname():
            if not _pid_alive(self.pid):
                return f"pid {self.pid} is gone"
            if self.process is not None and _process_identity(self.pid) != self.process:
                return f"pid {self.pid} is now another process"
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # someone else's process: alive
    try:  # a zombie (dead, not yet waited for) is not a writer
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _process_identity(pid: int) -> str | None:
    """The boot and start time of process ``pid`` (Linux), telling it apart from a later
    process given the same pid; ``None`` where /proc does not say."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            boot = handle.read().strip()
        with open(f"/proc/{pid}/stat") as handle:
            start = handle.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None
    return f"{boot}/{start}"


_DECODE = json.JSONDecoder().raw_decode


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, allow_nan=False)


class Store:
    """An open experiment store. Use :meth:`open` (read-write, for running) or
    :meth:`read` (read-only, for reporting)."""

    def __init__(
        self,
        path: Path,
        connection: sqlite3.Connection,
        record: ExperimentRecord,
        lease: Lease | None = None,
    ) -> None:
        self.path = path
        self.connection = connection
        self.record = record
        #: This writer's lease (``None`` for a reader).
        self.lease = lease
        #: The lease this writer took over from a dead owner, if it did, and why it was dead.
        self.took_over: tuple[Lease, str] | None = None
        self._heartbeat: _Heartbeat | None = None

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        record: ExperimentRecord,
        *,
        heartbeat: float = HEARTBEAT_SECONDS,
        stale_after: float = STALE_SECONDS,
    ) -> Store:
        """Open the store at ``path`` for the experiment ``record`` and take its lease,
        creating the store if needed (safe when several processes create it at once).

        An existing store must record the same experiment (space, trainer,
        strategy, seed and mode); otherwise :class:`StoreError` says what differs.
        A store whose writer is alive is refused with :class:`StoreLockedError`
        naming it; a folder or file that cannot be written is a :class:`StoreError`
        naming it. In every refusal the store is left as it was. The lease is
        refreshed every ``heartbeat`` seconds until :meth:`close`; a lease silent
        for ``stale_after`` seconds is taken over.
        """
        path = Path(path)
        if not heartbeat > 0 or not stale_after > heartbeat:
            raise ValueError(
                f"need 0 < heartbeat < stale_after, got heartbeat={heartbeat!r}, "
                f"stale_after={stale_after!r}"
            )
        _check_writable(path)
        if not path.exists() or path.stat().st_size == 0:
            _create(path, record)
        connection, stored = _open_existing(path, readonly=False)
        try:
            _check_same(path, stored, record)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            lease, took_over = _take_lease(connection, path, stale_after)
        except BaseException:
            connection.close()
            raise
        store = cls(path, connection, stored, lease)
        store.took_over = took_over
        store._heartbeat = _Heartbeat(path, lease, heartbeat)
        return store

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> Store:
        """Open an existing store read-only (``nastrain report``; safe while it runs)."""
        path = Path(path)
        if not path.exists():
            raise StoreError(f"no experiment store at {path}")
        connection, stored = _open_existing(path, readonly=True)
        return cls(path, connection, stored)

    def check_experiment(self, record: ExperimentRecord) -> None:
        """Raise :class:`StoreError` unless this store records the experiment ``record``."""
        _check_same(self.path, self.record, record)

    def close(self) -> None:
        """Give the lease back (a writer) and close the connection (everything is already
        committed). Closing twice does nothing."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        try:
            if self.lease is not None:
                # On an error the lease is left to go stale.
                with contextlib.suppress(sqlite3.Error):
                    self.connection.execute(
                        "DELETE FROM lease WHERE id = 1 AND token = ?", (self.lease.token,)
                    )
                self.lease = None
        finally:
            self.connection.close()

    def _write(self) -> _transaction:
        """A write transaction, refused unless this store still holds its lease."""
        if self.lease is None:
            raise StoreError(f"{self.path} was opened read-only (or closed): it cannot be written")
        return _transaction(self.connection, self.path, self.lease)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading ---------------------------------------------------------------------------

    def trials(self) -> list[Trial]:
        """Every trial, in index order, with the results of its latest attempt."""
        results: dict[int, list[tuple[bool, Metric]]] = {}
        # Stores written before workers were recorded have no such column: None.
        worker = "worker" if self._has_worker_column() else "NULL"

        for trial, final, metric in self.connection.execute(
            "SELECT r.trial, r.final, r.metric FROM results r JOIN trials t "
            "ON r.trial = t.trial AND r.attempt = t.attempts ORDER BY r.rowid"
        ):
            results.setdefault(trial, []).append((bool(final), self._stored_metric(trial, metric)))
        rows = self.connection.execute(
            "SELECT trial, arch, seed, status, reason, attempts, started, ended, end_order, "
            f"{worker} FROM trials ORDER BY trial"
        )
        trials = []
        for index, arch, seed, status, reason, attempts, started, ended, end_order, who in rows:
            reported = results.get(index, [])
            finals = [metric for final, metric in reported if final]
            trials.append(
                Trial(
                    index=index,
                    arch=_object(arch, f"the architecture of trial {index}", self.path),
                    status=status,
                    seed=seed,
                    intermediate=tuple(metric for final, metric in reported if not final),
                    final=finals[-1] if finals else None,
                    reason=reason,
                    attempts=attempts,
                    started=started,
                    ended=ended,
                    end_order=end_order,
                    worker=who,
                )
            )
        return trials

    def _has_worker_column(self) -> bool:
        columns = self.connection.execute("PRAGMA table_info(trials)")
        return any(row[1] == "worker" for row in columns)

    def run_settings(self) -> dict[str, Any] | None:
        """What the last run on this store said of itself (:meth:`record_run`: its
        ``max_trials``, ``concurrency``, ``executor``, and when it started), or ``None``
        for a store no run described (written before runs were recorded)."""
        row = self.connection.execute("SELECT value FROM meta WHERE key = 'last_run'").fetchone()
        if row is None:
            return None
        try:
            value = json.loads(row[0])
        except (TypeError, json.JSONDecodeError):
            return None  # for people only: a bad entry is as good as none
        return value if isinstance(value, dict) else None

    def observed_trials(self, stale_after: float = STALE_SECONDS) -> list[Trial]:
        """:meth:`trials` as a reader should show them: in a store that no live process
        writes (no lease, or one whose owner is dead or silent for ``stale_after`` seconds),
        a trial still marked ``running`` was interrupted, its experiment process having died
        (a SIGKILL, a lost machine) before it could say so; it is shown as ``interrupted``,
        with the reason. Nothing is written: the next run on the store runs it again."""
        trials = self.trials()
        if not any(t.status == "running" for t in trials):
            return trials
        gone = self._no_writer_because(stale_after)
        if gone is None:
            return trials
        reason = f"interrupted: {gone}, and this trial had not ended; a resumed run runs it again"
        return [
            attrs.evolve(t, status="interrupted", reason=reason) if t.status == "running" else t
            for t in trials
        ]

    def live_writer(self, stale_after: float = STALE_SECONDS) -> Lease | None:
        """The lease of the live process writing this store, or ``None`` when there is none
        (no lease, or its owner is dead or silent for ``stale_after`` seconds)."""
        if self._no_writer_because(stale_after) is not None:
            return None
        return _read_lease(self.connection)

    def _no_writer_because(self, stale_after: float) -> str | None:
        """Why no live process writes this store, or ``None`` when one does."""
        has_lease_table = self.connection.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'lease'"
        ).fetchone()[0]
        lease = _read_lease(self.connection) if has_lease_table else None
        if lease is None:  # a store written before leases has no lease table
            return "no experiment process holds the store"
        dead = lease.dead_because(stale_after)
        return None if dead is None else f"its experiment process is gone ({dead})"

    def _stored_metric(self, trial: int, text: str) -> Metric:
        """:meth:`_metric`, quicker for what nastrain writes (a report reads every result of
        thousands of trials): a finite float, or a dict of them with a ``"default"``, is
        taken as it is; anything else gets the full check."""
        try:
            value, end = _DECODE(text)
        except ValueError:  # not JSON: the full check says so
            end = -1
        if end == len(text):
            if type(value) is float and math.isfinite(value):
                return value
            if (
                type(value) is dict
                and "default" in value
                and all(type(v) is float and math.isfinite(v) for v in value.values())
            ):
                return value
        return self._metric(trial, text)

    def _metric(self, trial: int, text: str) -> Metric:
        what = f"a result of trial {trial}"
        try:
            return check_metric(json.loads(text))
        except (TypeError, ValueError) as exc:  # JSONDecodeError is a ValueError
            raise StoreError(f"{self.path}: {what} is not a metric ({exc})") from None

    def trainer_spec(self, index: int) -> str:
        """The trainer spec (JSON) trial ``index`` ran with."""
        row = self.connection.execute(
            "SELECT trainer FROM trials WHERE trial = ?", (index,)
        ).fetchone()
        if row is None:
            raise KeyError(f"no trial {index} in {self.path}")
        return row[0]

    # --- writing (each call is one committed transaction) -----------------------------------

    def add_trial(self, index: int, arch: dict[str, Any], seed: int, trainer: str) -> Trial:
        """Record a new trial as running."""
        now = time.time()
        with self._write():
            self.connection.execute(
                "INSERT INTO trials (trial, arch, trainer, seed, status, attempts, started) "
                "VALUES (?, ?, ?, ?, 'running', 1, ?)",
                (index, _json(arch), trainer, seed, now),
            )
        return Trial(index=index, arch=arch, status="running", seed=seed, started=now)

    def record_run(self, settings: dict[str, Any]) -> None:
        """Record how this run was started (JSON ``settings``: ``max_trials``,
        ``concurrency``, ``executor``...), for reports; it replaces the last run's."""
        with self._write():
            self.connection.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_run', ?)",
                (_json({**settings, "started": time.time()}),),
            )

    def set_worker(self, trial: Trial, worker: str) -> Trial:
        """Record where ``trial``'s current attempt runs (a free-form name: the local
        executor's ``"<host>:<pid>"``); returns it with its worker."""
        with self._write():
            self.connection.execute(
                "UPDATE trials SET worker = ? WHERE trial = ?", (worker, trial.index)
            )
        return attrs.evolve(trial, worker=worker)

    def restart_trial(self, trial: Trial) -> Trial:
        """Run an interrupted trial (``interrupted``, or left ``running`` by a process that
        died) again: a new attempt, with no results yet."""
        now = time.time()
        attempts = trial.attempts + 1
        with self._write():
            self.connection.execute(
                "UPDATE trials SET status = 'running', reason = NULL, attempts = ?, started = ?, "
                "ended = NULL, end_order = NULL, worker = NULL WHERE trial = ?",
                (attempts, now, trial.index),
            )
        return attrs.evolve(
            trial,
            status="running",
            reason=None,
            attempts=attempts,
            started=now,
            ended=None,
            end_order=None,
            intermediate=(),
            final=None,
            worker=None,
        )

    def add_result(self, trial: Trial, metric: Metric, final: bool) -> None:
        """Record one reported result of ``trial``'s current attempt."""
        with self._write():
            self.connection.execute(
                "INSERT INTO results (trial, attempt, final, metric, time) VALUES (?, ?, ?, ?, ?)",
                (trial.index, trial.attempts, int(final), _json(metric), time.time()),
            )

    def end_trial(self, trial: Trial, status: TrialStatus, reason: str | None) -> Trial:
        """Record that ``trial`` ended with ``status``; returns it with its end time and order."""
        now = time.time()
        with self._write():
            (order,) = self.connection.execute(
                "SELECT COALESCE(MAX(end_order), -1) + 1 FROM trials"
            ).fetchone()
            self.connection.execute(
                "UPDATE trials SET status = ?, reason = ?, ended = ?, end_order = ? "
                "WHERE trial = ?",
                (status, reason, now, order, trial.index),
            )
        return attrs.evolve(trial, status=status, reason=reason, ended=now, end_order=order)

    def interrupt_trials(self, trials: Sequence[Trial], reason: str) -> list[Trial]:
        """Record the running ``trials`` as ``interrupted`` with ``reason``, in one
        transaction: their experiment stopped before they ended. A resumed run runs them
        again. Returns them as recorded."""
        if self.connection.in_transaction:
            # An interrupt (Ctrl-C) may have come inside another write, after its BEGIN.
            self.connection.execute("ROLLBACK")
        now = time.time()
        with self._write():
            self.connection.executemany(
                "UPDATE trials SET status = 'interrupted', reason = ?, ended = ?, "
                "end_order = NULL WHERE trial = ? AND status = 'running'",
                [(reason, now, trial.index) for trial in trials],
            )
        return [
            attrs.evolve(trial, status="interrupted", reason=reason, ended=now, end_order=None)
            for trial in trials
        ]

    def end_reported_trial(self, trial: Trial) -> Trial:
        """Record as succeeded a trial left running whose current attempt already stored its
        final result (its process died before ending it): it ended when that result came."""
        with self._write():
            (ended,) = self.connection.execute(
                "SELECT MAX(time) FROM results WHERE trial = ? AND attempt = ? AND final = 1",
                (trial.index, trial.attempts),
            ).fetchone()
            if ended is None:
                raise ValueError(f"trial {trial.index} has no final result in {self.path}")
            (order,) = self.connection.execute(
                "SELECT COALESCE(MAX(end_order), -1) + 1 FROM trials"
            ).fetchone()
            self.connection.execute(
                "UPDATE trials SET status = 'succeeded', reason = NULL, ended = ?, "
                "end_order = ? WHERE trial = ?",
                (ended, order, trial.index),
            )
        return attrs.evolve(trial, status="succeeded", reason=None, ended=ended, end_order=order)

    def result_rows(self) -> list[dict[str, Any]]:
        """Every reported result of every attempt, in the order they arrived."""
        return [
            {"trial": t, "attempt": a, "final": bool(f), "metric": self._metric(t, m), "time": s}
            for t, a, f, m, s in self.connection.execute(
                "SELECT trial, attempt, final, metric, time FROM results ORDER BY rowid"
            )
        ]


class _transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on an error); with a ``lease``,
    refused (rolled back, :class:`StoreError`) unless the store's lease is still it."""

    def __init__(
        self, connection: sqlite3.Connection, path: Path | None = None, lease: Lease | None = None
    ) -> None:
        self.connection = connection
        self.path = path
        self.lease = lease

    def __enter__(self) -> None:
        self.connection.execute("BEGIN IMMEDIATE")
        if self.lease is None:
            return
        try:
            holder = _read_lease(self.connection)
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise
        if holder is None or holder.token != self.lease.token:
            self.connection.execute("ROLLBACK")
            taken = "nobody holds it now" if holder is None else f"it is {holder.describe()}"
            raise StoreError(
                f"this process lost its lease on the experiment store {self.path} ({taken}): "
                "it was silent too long and another process took the store over; nothing more "
                "was written"
            )

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.connection.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _read_lease(connection: sqlite3.Connection) -> Lease | None:
    row = connection.execute(
        "SELECT token, pid, host, process, started, heartbeat FROM lease WHERE id = 1"
    ).fetchone()
    if row is None:
        return None
    token, pid, host, process, started, heartbeat = row
    return Lease(
        token=str(token),
        pid=int(pid),
        host=str(host),
        process=None if process is None else str(process),
        started=float(started),
        heartbeat=float(heartbeat),
    )


def _take_lease(
    connection: sqlite3.Connection, path: Path, stale_after: float
) -> tuple[Lease, tuple[Lease, str] | None]:
    """Take the lease of the store, in one transaction: returns it, and the dead owner's
    lease it replaced with why it was dead (or ``None``); a live owner is a
    :class:`StoreLockedError` and the transaction is rolled back: the store is not changed."""
    now = time.time()
    pid = os.getpid()
    lease = Lease(
        token=uuid.uuid4().hex,
        pid=pid,
        host=socket.gethostname(),
        process=_process_identity(pid),
        started=now,
        heartbeat=now,
    )
    with _transaction(connection):
        connection.execute(_LEASE_TABLE)  # stores written before leases have none yet
        previous = _read_lease(connection)
        took_over = None
        if previous is not None:
            dead = previous.dead_because(stale_after)
            took_over = None if dead is None else (previous, dead)
            if dead is None:
                raise StoreLockedError(
                    f"the experiment store {path} is in use by another experiment process "
                    f"({previous.describe()}); one writer at a time: wait for it to finish, "
                    "stop it, or pass another store path. Nothing was changed. (Watch it "
                    f"with: nastrain report {path})",
                    previous,
                )
        columns = {row[1] for row in connection.execute("PRAGMA table_info(trials)")}
        if "worker" not in columns:  # stores written before workers were recorded
            connection.execute("ALTER TABLE trials ADD COLUMN worker TEXT")
        connection.execute(
            "INSERT OR REPLACE INTO lease (id, token, pid, host, process, started, heartbeat) "
            "VALUES (1, ?, ?, ?, ?, ?, ?)",
            (lease.token, lease.pid, lease.host, lease.process, lease.started, lease.heartbeat),
        )
    return lease, took_over


class _Heartbeat:
    """A thread that refreshes a lease every ``interval`` seconds, on its own connection,
    until stopped or until the lease is found taken over."""

    def __init__(self, path: Path, lease: Lease, interval: float) -> None:
        self.path = path.resolve()
        self.token = lease.token
        self.interval = interval
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"nastrain-lease-{path.name}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        connection = sqlite3.connect(
            self.path, isolation_level=None, timeout=_BUSY_SECONDS, check_same_thread=False
        )
        try:
            while not self._stop.wait(self.interval):
                try:
                    updated = connection.execute(
                        "UPDATE lease SET heartbeat = ? WHERE id = 1 AND token = ?",
                        (time.time(), self.token),
                    ).rowcount
                except sqlite3.Error:
                    continue  # busy for long, or a passing error: try again at the next beat
                if updated == 0:
                    self.lost = True  # taken over: the next write says so
                    return
        finally:
            connection.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _check_writable(path: Path) -> None:
    """Refuse, before anything is trained, a store that could not be written: its folder
    (where SQLite keeps the store's journal beside it) and the file itself."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create the folder {folder} of the experiment store {path}: "
            f"{exc.strerror or exc}"
        ) from None
    if not folder.is_dir():
        raise StoreError(f"{folder} is not a folder, so it cannot hold the experiment store {path}")
    try:  # a real probe: catches read-only mounts, ACLs and immutable folders, also for root
        handle, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
    except OSError as exc:
        raise StoreError(
            f"the folder {folder} is not writable ({exc.strerror or exc}), so the experiment "
            f"store {path} cannot be written there (SQLite writes its journal beside the "
            "store); pass a store path in a writable folder. Reading a store there works: "
            "nastrain report STORE"
        ) from None
    os.close(handle)
    os.unlink(probe)
    if path.exists():
        try:
            with path.open("r+b"):
                pass
        except OSError as exc:
            raise StoreError(
                f"the experiment store {path} is not writable ({exc.strerror or exc}); it was "
                "left untouched"
            ) from None


def _create(path: Path, record: ExperimentRecord) -> None:
    """Make a new store at ``path``, safe against another process making it at the same
    time. The store is built beside ``path`` and hard-linked into place, which fails if
    ``path`` exists: no reader (and no crash) ever sees half a store, and of two
    processes making it, one store wins and the other process opens it. Where there is
    an empty file at ``path`` already (or the file system has no hard links), the schema
    is written into it in one exclusive transaction instead."""
    if not path.exists():
        partial = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
        try:
            _write_schema(partial, record)
            try:
                os.link(partial, path)
                return
            except FileExistsError:
                return  # made by another process meanwhile: opening it checks it
            except OSError:
                pass  # no hard links here
        finally:
            partial.unlink(missing_ok=True)
    _write_schema(path, record)


def _write_schema(path: Path, record: ExperimentRecord) -> None:
    """Write the schema and the experiment into ``path`` unless it has them already (one
    exclusive transaction: of two processes, the second finds them written)."""
    try:
        connection = sqlite3.connect(path, isolation_level=None, timeout=_BUSY_SECONDS)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot create the experiment store {path}: {exc}") from None
    try:
        connection.execute("BEGIN EXCLUSIVE")
        try:
            made = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if not made:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        connection.execute(statement)
                connection.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [
                        ("format", FORMAT),
                        ("schema_version", str(SCHEMA_VERSION)),
                        ("experiment", dumps(record)),
                        ("created", _json(time.time())),
                    ],
                )
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        if not made:
            connection.execute("PRAGMA journal_mode=WAL")
    except sqlite3.DatabaseError:
        pass  # not a database after all (written meanwhile): opening it says what it is
    finally:
        connection.close()


def _open_existing(path: Path, *, readonly: bool) -> tuple[sqlite3.Connection, ExperimentRecord]:
    """Check that ``path`` is a nastrain store without writing to it; returns it opened."""
    untouched = "; the file was left untouched (pass another store path, or move it away)"
    with path.open("rb") as handle:
        head = handle.read(len(_SQLITE_HEADER))
    if not head:
        raise StoreError(
            f"{path} is empty: no experiment store yet (a run on it makes one){untouched}"
        )
    if head != _SQLITE_HEADER:
        raise StoreError(
            f"{path} is not an SQLite database (it starts with {head[:16]!r}), so it cannot be "
            f"an experiment store{untouched}"
        )
    uri = f"{path.resolve().as_uri()}?mode={'ro' if readonly else 'rw'}"
    if readonly and not _shm(path).exists() and not _can_write_beside(path):
        # SQLite's readers of a WAL store create its shared-memory file beside it; in a
        # folder nobody can write, nobody can be writing the store either: read it as is.
        uri += "&immutable=1"
    try:
        connection = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=_BUSY_SECONDS)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the experiment store {path}: {exc}{untouched}") from None
    try:
        (check,) = connection.execute("PRAGMA quick_check").fetchone()
        if check != "ok":
            raise sqlite3.DatabaseError(check)
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        if not {"meta", "trials", "results"} <= tables:
            raise StoreError(
                f"{path} is an SQLite database but not a nastrain experiment store (its tables "
                f"are {sorted(tables) or 'none'}){untouched}"
            )
        meta = dict(connection.execute("SELECT key, value FROM meta"))
    except StoreError:
        connection.close()
        raise
    except sqlite3.Error as exc:
        connection.close()
        raise StoreError(
            f"{path} is a corrupt SQLite database ({exc}); it cannot be read as an experiment "
            f"store{untouched}"
        ) from None
    if meta.get("format") != FORMAT:
        connection.close()
        raise StoreError(
            f"{path} is an SQLite database but not a nastrain experiment store (its format is "
            f"{meta.get('format')!r}){untouched}"
        )
    version = int(meta.get("schema_version", "0"))
    if version > SCHEMA_VERSION:
        connection.close()
        raise StoreError(
            f"{path} was written by a newer nastrain (store schema_version {version}, this one "
            f"reads up to {SCHEMA_VERSION}); upgrade nastrain{untouched}"
        )
    try:
        record = loads(meta.get("experiment", ""), ExperimentRecord, what="experiment record")
    except ValueError as exc:
        connection.close()
        raise StoreError(f"{path}: {exc}{untouched}") from None
    return connection, record


def _shm(path: Path) -> Path:
    return path.with_name(path.name + "-shm")


def _can_write_beside(path: Path) -> bool:
    """Whether a file can be made in ``path``'s folder (a real probe, true also for root)."""
    try:
        handle, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
    except OSError:
        return False
    os.close(handle)
    os.unlink(probe)
    return True


def _object(text: str, what: str, path: Path) -> dict[str, Any]:
    """The JSON object ``text``, read from the store at ``path``; anything else (not JSON,
    or JSON but not an object) is a :class:`StoreError` naming ``what`` it is."""
    try:
        value = json.loads(text)
    except (TypeError, json.JSONDecodeError) as exc:
        raise StoreError(f"{path}: {what} is not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise StoreError(
            f"{path}: {what} must be a JSON object, got {type(value).__name__} "
            f"{printable(_json_or_repr(value))[:80]}"
        )
    return value


def _json_or_repr(value: Any) -> str:
    try:
        return _json(value)
    except (TypeError, ValueError):
        return repr(value)


def _check_same(path: Path, stored: ExperimentRecord, record: ExperimentRecord) -> None:
    """Refuse a store of another experiment, saying what differs."""
    differences = []
    for field in ("space", "trainer", "strategy", "seed", "mode"):
        ours, theirs = getattr(record, field), getattr(stored, field)
        if ours != theirs:
            differences.append(
                f"its {field} is {_describe(field, theirs)}, this experiment's is "
                f"{_describe(field, ours)}"
            )
    if differences:
        raise StoreError(
            f"{path} is the store of another experiment: {'; '.join(differences)}. It was left "
            "untouched: pass another store path to start a new experiment, or remove the file"
        )


def _describe(field: str, value: Any) -> str:
    if field == "space":
        return _json([f"{c.label}: {c.size}" for c in value.choices])
    if attrs.has(type(value)):
        data = converter.unstructure(value)
        data.pop("schema_version", None)
        return _json(data)
    return repr(value)
