"""The store records where each trial ran (``Trial.worker``): the local executor's worker
process, or the experiment's own process inline; a store written before workers were
recorded reads as worker ``None`` and gets the column when a run takes its lease."""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
from pathlib import Path

import nastrain
from nastrain.experiments.store import Store

HOST = socket.gethostname()


def _columns(store: Path) -> list[str]:
    uri = f"{store.resolve().as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:
        return [row[1] for row in connection.execute("PRAGMA table_info(trials)")]


def test_local_trials_name_the_worker_process_that_trained_them(trials, tmp_path) -> None:
    log = tmp_path / "fits.log"
    store = tmp_path / "s.sqlite"
    nastrain.Experiment(
        trials.SmallSpace(),
        trials.ScoreTrainer(None, log=str(log)),
        "grid",
        max_trials=6,
        concurrency=2,
        store=store,
        progress=False,
    ).run()
    # Each fit logs its score and its process; the grid's scores are all different here.
    fits = [line.split() for line in log.read_text().splitlines()]
    pid_of = {float(points): int(pid) for points, pid in fits}
    with Store.read(store) as reader:
        ran = reader.trials()
    assert len(ran) == 6
    for trial in ran:
        assert trial.worker == f"{HOST}:{pid_of[trial.value]}"
    assert os.getpid() not in pid_of.values()


def test_inline_trials_name_the_experiment_process(trials, tmp_path) -> None:
    store = tmp_path / "s.sqlite"
    result = nastrain.Experiment(
        trials.SmallSpace(),
        trials.ScoreTrainer(None),
        "grid",
        max_trials=3,
        executor="inline",
        store=store,
        progress=False,
    ).run()
    assert [t.worker for t in result.trials] == [f"{HOST}:{os.getpid()}"] * 3
    with Store.read(store) as reader:
        assert reader.trials() == list(result.trials)


def test_a_store_from_before_workers_reads_as_none_and_gets_the_column_when_run(
    store_with_a_running_trial,
) -> None:
    experiment, store = store_with_a_running_trial
    with contextlib.closing(sqlite3.connect(store)) as connection:
        connection.execute("ALTER TABLE trials DROP COLUMN worker")  # as stores were written
        connection.commit()
    assert "worker" not in _columns(store)
    with Store.read(store) as reader:
        (trial,) = reader.trials()
    assert trial.worker is None and trial.status == "running"
    assert "worker" not in _columns(store)  # a reader adds nothing
    result = experiment.run()  # takes the lease: adds the column, runs trial 0 again
    assert "worker" in _columns(store)
    assert [(t.status, t.attempts, t.worker) for t in result.trials] == [
        ("succeeded", 2, f"{HOST}:{os.getpid()}"),
        ("succeeded", 1, f"{HOST}:{os.getpid()}"),
    ]
    with Store.read(store) as reader:
        assert reader.trials() == list(result.trials)
