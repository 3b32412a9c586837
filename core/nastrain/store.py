"""The record of a multi-trial experiment: one SQLite file per experiment.

The file holds the experiment's description (its search space, trainer spec,
strategy spec, seed and mode, as a JSON document through nastrain's one
converter), every trial (architecture, trainer spec, seed, status, reason,
attempts, timings) and every reported result, each as JSON text. It is written
ahead (SQLite's WAL journal) and every report is committed as it arrives, so a
dead experiment process loses nothing that was reported; opening the file again
resumes the experiment.

A file that is not an SQLite database, is corrupt, is an SQLite database of
something else, or records another experiment is refused with an error saying
so, and left exactly as it was.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import attrs

from nastrain.experiment import ExperimentRecord, Trial, TrialStatus
from nastrain.reporting import Metric, check_metric
from nastrain.serialization import SCHEMA_VERSION, converter, dumps, loads

__all__ = ["FORMAT", "Store", "StoreError"]

#: What the ``format`` entry of a store's ``meta`` table says.
FORMAT = "nastrain-experiment"
_SQLITE_HEADER = b"SQLite format 3\x00"

_SCHEMA = """
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
    end_order INTEGER
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


class StoreError(ValueError):
    """A store file that cannot be used for this experiment (the file is left untouched)."""


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, allow_nan=False)


class Store:
    """An open experiment store. Use :meth:`open` (read-write, for running) or
    :meth:`read` (read-only, for reporting)."""

    def __init__(self, path: Path, connection: sqlite3.Connection, record: ExperimentRecord):
        self.path = path
        self.connection = connection
        self.record = record

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], record: ExperimentRecord) -> Store:
        """Open the store at ``path`` for the experiment ``record``, creating it if needed.

        An existing store must record the same experiment (space, trainer,
        strategy, seed and mode); otherwise :class:`StoreError` says what differs.
        """
        path = Path(path)
        if path.exists() and path.stat().st_size > 0:
            connection, stored = _open_existing(path, readonly=False)
            try:
                _check_same(path, stored, record)
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")
            except BaseException:
                connection.close()
                raise
            return cls(path, connection, stored)
        _create(path, record)
        connection = sqlite3.connect(path, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return cls(path, connection, record)

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
        """Close the connection (everything is already committed)."""
        self.connection.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading ---------------------------------------------------------------------------

    def trials(self) -> list[Trial]:
        """Every trial, in index order, with the results of its latest attempt."""
        results: dict[int, list[tuple[bool, Metric]]] = {}
        for trial, final, metric in self.connection.execute(
            "SELECT r.trial, r.final, r.metric FROM results r JOIN trials t "
            "ON r.trial = t.trial AND r.attempt = t.attempts ORDER BY r.rowid"
        ):
            results.setdefault(trial, []).append((bool(final), check_metric(json.loads(metric))))
        rows = self.connection.execute(
            "SELECT trial, arch, seed, status, reason, attempts, started, ended, end_order "
            "FROM trials ORDER BY trial"
        )
        trials = []
        for index, arch, seed, status, reason, attempts, started, ended, end_order in rows:
            reported = results.get(index, [])
            finals = [metric for final, metric in reported if final]
            trials.append(
                Trial(
                    index=index,
                    arch=json.loads(arch),
                    status=status,
                    seed=seed,
                    intermediate=tuple(metric for final, metric in reported if not final),
                    final=finals[-1] if finals else None,
                    reason=reason,
                    attempts=attempts,
                    started=started,
                    ended=ended,
                    end_order=end_order,
                )
            )
        return trials

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
        with _transaction(self.connection):
            self.connection.execute(
                "INSERT INTO trials (trial, arch, trainer, seed, status, attempts, started) "
                "VALUES (?, ?, ?, ?, 'running', 1, ?)",
                (index, _json(arch), trainer, seed, now),
            )
        return Trial(index=index, arch=arch, status="running", seed=seed, started=now)

    def restart_trial(self, trial: Trial) -> Trial:
        """Run an interrupted trial again: a new attempt, with no results yet."""
        now = time.time()
        attempts = trial.attempts + 1
        with _transaction(self.connection):
            self.connection.execute(
                "UPDATE trials SET status = 'running', reason = NULL, attempts = ?, started = ?, "
                "ended = NULL, end_order = NULL WHERE trial = ?",
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
        )

    def add_result(self, trial: Trial, metric: Metric, final: bool) -> None:
        """Record one reported result of ``trial``'s current attempt."""
        with _transaction(self.connection):
            self.connection.execute(
                "INSERT INTO results (trial, attempt, final, metric, time) VALUES (?, ?, ?, ?, ?)",
                (trial.index, trial.attempts, int(final), _json(metric), time.time()),
            )

    def end_trial(self, trial: Trial, status: TrialStatus, reason: str | None) -> Trial:
        """Record that ``trial`` ended with ``status``; returns it with its end time and order."""
        now = time.time()
        with _transaction(self.connection):
            (order,) = self.connection.execute(
                "SELECT COALESCE(MAX(end_order), -1) + 1 FROM trials"
            ).fetchone()
            self.connection.execute(
                "UPDATE trials SET status = ?, reason = ?, ended = ?, end_order = ? "
                "WHERE trial = ?",
                (status, reason, now, order, trial.index),
            )
        return attrs.evolve(trial, status=status, reason=reason, ended=now, end_order=order)

    def result_rows(self) -> list[dict[str, Any]]:
        """Every reported result of every attempt, in the order they arrived."""
        return [
            {"trial": t, "attempt": a, "final": bool(f), "metric": json.loads(m), "time": s}
            for t, a, f, m, s in self.connection.execute(
                "SELECT trial, attempt, final, metric, time FROM results ORDER BY rowid"
            )
        ]


class _transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on an error)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def __enter__(self) -> None:
        self.connection.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.connection.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _create(path: Path, record: ExperimentRecord) -> None:
    """Make a new store at ``path`` at once: built beside it, then renamed into place, so
    that no reader (and no crash) ever sees half a store."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.unlink(missing_ok=True)
    connection = sqlite3.connect(partial, isolation_level=None)
    try:
        with _transaction(connection):
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
        connection.execute("PRAGMA journal_mode=WAL")
    finally:
        connection.close()
    os.replace(partial, path)


def _open_existing(path: Path, *, readonly: bool) -> tuple[sqlite3.Connection, ExperimentRecord]:
    """Check that ``path`` is a nastrain store without writing to it; returns it opened."""
    untouched = "; the file was left untouched (pass another store path, or move it away)"
    with path.open("rb") as handle:
        head = handle.read(len(_SQLITE_HEADER))
    if head != _SQLITE_HEADER:
        raise StoreError(
            f"{path} is not an SQLite database (it starts with {head[:16]!r}), so it cannot be "
            f"an experiment store{untouched}"
        )
    uri = f"{path.resolve().as_uri()}?mode={'ro' if readonly else 'rw'}"
    try:
        connection = sqlite3.connect(uri, uri=True, isolation_level=None)
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
