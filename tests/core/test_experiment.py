"""Multi-trial experiments: the run loop, worker processes that fail, die or hang, the store,
resuming after the experiment process itself is killed, and bad input."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from torch import nn

import nastrain
from nastrain.experiments.store import Store, StoreError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "trials"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_failed_killed_and_hung_trials_are_recorded_and_the_rest_finish(trials, tmp_path) -> None:
    # Scores in grid order: 1 2 3 11 12 13 | 2 3 4 12 13 14 | 3 4 5 13 14 15.
    experiment = nastrain.Experiment(
        trials.SmallSpace(),
        trials.ScoreTrainer(None, fail=[3.0], kill=[12.0], hang=[15.0], log=str(tmp_path / "log")),
        "grid",
        max_trials=18,
        concurrency=2,
        trial_timeout=1.5,
        store=tmp_path / "s.sqlite",
    )
    result = experiment.run()
    assert len(result.trials) == 18
    space = trials.SmallSpace()
    scores = {t.index: trials.score(nastrain.apply_arch(space, t.arch)) for t in result.trials}
    for trial in result.trials:
        score = scores[trial.index]
        if score == 3.0:
            assert trial.status == "failed"
            first, *traceback = trial.reason.splitlines()
            assert first == "ValueError: score 3.0 fails on purpose"
            assert any("nastrain_test_trials.py" in line for line in traceback)
        elif score == 12.0:
            assert trial.status == "failed"
            assert "died: killed by signal SIGKILL; it was replaced" in trial.reason
        elif score == 15.0:
            assert trial.status == "failed"
            assert trial.reason.startswith("timed out after 1.5 s (trial_timeout)")
        else:
            assert trial.status == "succeeded" and trial.value == score, trial
    assert result.counts() == {"succeeded": 12, "failed": 6}
    assert result.best_trial.value == 14.0
    # Every trial ran once (failures are not retried), and no trial ran in a process after
    # its trial failed: workers of raising, killed and hung trials were replaced.
    runs = [line.split() for line in (tmp_path / "log").read_text().splitlines()]
    assert sorted(float(points) for points, _ in runs) == sorted(scores.values())
    by_pid: dict[str, list[float]] = {}
    for points, pid in runs:
        by_pid.setdefault(pid, []).append(float(points))
    assert sum(points[-1] in (3.0, 12.0, 15.0) for points in by_pid.values()) == 6
    assert not any({3.0, 12.0, 15.0} & set(points[:-1]) for points in by_pid.values())
    with Store.read(tmp_path / "s.sqlite") as store:
        assert [t.status for t in store.trials()] == [t.status for t in result.trials]


def test_a_trial_without_a_final_result_fails_saying_so(trials, tmp_path) -> None:
    result = nastrain.Experiment(
        trials.SmallSpace(),
        nastrain.TrainerSpec(name="test-silent"),
        max_trials=1,
        executor="inline",
        store=tmp_path / "s.sqlite",
    ).run()
    (trial,) = result.trials
    assert trial.status == "failed" and trial.intermediate == (1.0,)
    assert "without reporting a final result" in trial.reason
    assert result.best_arch is None


def test_the_store_holds_every_result_as_json_and_names_not_paths(trials, tmp_path) -> None:
    store = tmp_path / "s.sqlite"
    experiment = nastrain.Experiment(
        trials.SmallSpace(),
        trials.ScoreTrainer(None, epochs=2),
        "evolution",
        max_trials=4,
        seed=7,
        executor="inline",
        store=store,
    )
    result = experiment.run()
    connection = sqlite3.connect(store)
    meta = dict(connection.execute("SELECT key, value FROM meta"))
    assert meta["format"] == "nastrain-experiment" and meta["schema_version"] == "1"
    record = json.loads(meta["experiment"])
    assert record["schema_version"] == 1 and record["seed"] == 7 and record["mode"] == "max"
    assert record["trainer"]["name"] == "test-score"
    assert record["strategy"] == {"name": "evolution", "kwargs": {}, "schema_version": 1}
    assert [c["label"] for c in record["space"]["choices"]] == ["a", "b", "c"]
    rows = connection.execute("SELECT trial, arch, trainer, status FROM trials").fetchall()
    assert [json.loads(arch) for _, arch, _, _ in rows] == [t.arch for t in result.trials]
    assert all(json.loads(spec)["name"] == "test-score" for _, _, spec, _ in rows)
    results = connection.execute("SELECT trial, final, metric FROM results").fetchall()
    assert len(results) == 4 * 3
    assert json.loads(results[2][2]) == {"default": result.trials[0].value, "epochs": 2}
    assert result.trials[0].intermediate == (
        result.trials[0].value / 2,
        result.trials[0].value,
    )
    assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_running_again_resumes_and_export_top_models_reads_the_store(trials, tmp_path) -> None:
    log = tmp_path / "log"

    def experiment(max_trials: int) -> nastrain.Experiment:
        return nastrain.Experiment(
            trials.SmallSpace(),
            trials.ScoreTrainer(None, log=str(log)),
            "random",
            max_trials=max_trials,
            executor="inline",
            store=tmp_path / "s.sqlite",
        )

    first = experiment(5).run()
    assert len(log.read_text().splitlines()) == 5
    again = experiment(5).run()
    assert again.trials == first.trials and len(log.read_text().splitlines()) == 5
    more = experiment(8).run()
    assert more.trials[:5] == first.trials and len(more.trials) == 8
    assert len(log.read_text().splitlines()) == 8
    fresh = experiment(8)
    top = fresh.export_top_models(3)
    assert top == [t.arch for t in more.ranked()[:3]]
    values = [t.value for t in more.ranked()]
    assert values == sorted(values, reverse=True)
    with pytest.raises(FileNotFoundError, match="no store yet.*call run"):
        nastrain.Experiment(
            trials.SmallSpace(),
            trials.ScoreTrainer(None),
            max_trials=1,
            store=tmp_path / "new.sqlite",
        ).export_top_models(1)


def test_mode_min_ranks_smaller_results_first(trials, tmp_path) -> None:
    result = nastrain.Experiment(
        trials.SmallSpace(),
        trials.ScoreTrainer(None),
        "grid",
        max_trials=18,
        mode="min",
        executor="inline",
        store=tmp_path / "s.sqlite",
    ).run()
    assert result.best_arch == {"a": "x", "b": "p", "c": [0, 1]}


def test_a_killed_experiment_resumes_and_runs_every_trial_exactly_once(trials, tmp_path) -> None:
    store, log = tmp_path / "s.sqlite", tmp_path / "log"
    script = tmp_path / "run_experiment.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(FIXTURE)!r})
            import nastrain, nastrain_test_trials as t

            def experiment():
                return nastrain.Experiment(
                    t.SmallSpace(),
                    t.ScoreTrainer(None, epochs=2, sleep=0.15, log={str(log)!r}),
                    "grid", max_trials=14, concurrency=2, store={str(store)!r},
                )

            if __name__ == "__main__":
                experiment().run()
            """
        )
    )
    process = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE, text=True)

    def ended() -> int:
        if not store.exists():
            return 0
        with Store.read(store) as reader:
            return sum(t.status != "running" for t in reader.trials())

    deadline = time.monotonic() + 60
    while ended() < 4 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read()
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()

    with Store.read(store) as reader:
        before = {t.index: t for t in reader.trials()}
    assert 4 <= len(before) < 14
    done_before = {i: t for i, t in before.items() if t.status == "succeeded"}
    # The workers notice that the experiment is gone and exit.
    pids = {int(line.split()[1]) for line in log.read_text().splitlines()}
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids)

    namespace: dict = {}
    exec(compile(script.read_text(), str(script), "exec"), namespace)
    # The killed process's lease is left behind; its owner is dead, so it is taken over.
    with pytest.warns(UserWarning, match=rf"took over .*\): pid {process.pid} is gone; the"):
        result = namespace["experiment"]().run()

    grid = list(nastrain.SearchSpace.from_model(trials.SmallSpace()).enumerate())[:14]
    assert [t.arch for t in result.trials] == grid
    assert all(t.status == "succeeded" for t in result.trials)
    for index, trial in done_before.items():
        assert result.trials[index] == trial  # finished trials were not run again
    rerun = [t for t in result.trials if t.attempts > 1]
    assert {t.index for t in rerun} == {i for i, t in before.items() if t.status == "running"}
    with Store.read(store) as reader:
        rows = reader.result_rows()
    for trial in result.trials:
        attempts = [r["attempt"] for r in rows if r["trial"] == trial.index and r["final"]]
        # One final result per attempt at most, and the trial's last attempt reported its own.
        assert len(attempts) == len(set(attempts)) and attempts[-1] == trial.attempts
        assert trial.intermediate == (trial.value / 2, trial.value)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of ours does not count
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except OSError:
        return True


# --- bad input ------------------------------------------------------------------------------


def _experiment(trials, tmp_path, **options):
    options.setdefault("max_trials", 2)
    options.setdefault("store", tmp_path / "s.sqlite")
    space = options.pop("space", trials.SmallSpace())
    trainer = options.pop("trainer", trials.ScoreTrainer(None))
    return nastrain.Experiment(space, trainer, **options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_trials": 0}, "max_trials must be an integer >= 1, got 0"),
        ({"max_trials": 2.5}, "max_trials must be an integer >= 1, got 2.5"),
        ({"concurrency": 0}, "concurrency must be an integer >= 1, got 0"),
        ({"concurrency": True}, "concurrency must be an integer >= 1, got True"),
        ({"mode": "maximize"}, "mode must be 'max' or 'min', got 'maximize'"),
        ({"trial_timeout": 0}, "trial_timeout must be a number of seconds > 0"),
        ({"executor": "inline", "concurrency": 2}, "executor='inline'.*concurrency=1"),
        ({"space": nn.Linear(2, 2)}, "has no LayerChoice or InputChoice"),
        ({"space": "nastrain_test_trials"}, "must be given as 'module:attr'"),
        ({"space": "no_such_module_xyz:Net"}, "cannot import module 'no_such_module_xyz'"),
        ({"space": "nastrain_test_trials:Nope"}, "has no attribute 'Nope'"),
        ({"space": "nastrain_test_trials:score"}, "returned a NoneType|missing 1 required"),
        ({"modules": ["no_such_module_xyz"]}, "cannot import module 'no_such_module_xyz'"),
        ({"seed": 1.5}, "seed must be an integer, got 1.5"),
        ({"seed": "0"}, "seed must be an integer, got '0'"),
        ({"seed": True}, "seed must be an integer, got True"),
    ],
)
def test_bad_options_are_refused_naming_what_is_wrong(trials, tmp_path, options, message) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        _experiment(trials, tmp_path, **options)


def test_bad_trainers_and_strategies_are_refused(trials, tmp_path) -> None:
    with pytest.raises(TypeError, match="argument 'log' of trainer ScoreTrainer.*PosixPath"):
        trials.ScoreTrainer(None, log=tmp_path / "log")

    class Unregistered(nastrain.BaseTrainer):
        def fit(self):
            pass

    with pytest.raises(TypeError, match="Unregistered has no spec.*TrainerSpec"):
        _experiment(trials, tmp_path, trainer=Unregistered())

    class OneShot(nastrain.BaseOneShotTrainer):
        def fit(self):
            pass

        def export(self):
            return {}

    with pytest.raises(TypeError, match="OneShot is a one-shot trainer"):
        _experiment(trials, tmp_path, trainer=OneShot())
    with pytest.raises(KeyError, match="unknown trainer 'nope'; known trainers: .*'test-score'"):
        _experiment(trials, tmp_path, trainer=nastrain.TrainerSpec(name="nope"))
    # A spec is built once when the experiment is made, so a bad argument fails at once.
    with pytest.raises(TypeError, match="unexpected keyword argument 'epochz'"):
        _experiment(
            trials, tmp_path, trainer=nastrain.TrainerSpec(name="test-score", kwargs={"epochz": 1})
        )
    assert not (tmp_path / "s.sqlite").exists()
    with pytest.raises(KeyError, match="unknown strategy 'bayes'; known strategies: .*'grid'"):
        _experiment(trials, tmp_path, strategy="bayes")
    with pytest.raises(TypeError, match="strategy must be a registered name"):
        _experiment(trials, tmp_path, strategy=42)


def test_a_space_that_cannot_reach_the_workers_is_an_error(trials, tmp_path) -> None:
    space = trials.SmallSpace()
    space.hook = lambda x: x  # a lambda cannot be pickled
    with pytest.raises(RuntimeError, match="cannot be sent to worker processes.*inline"):
        _experiment(trials, tmp_path, space=space).run()
    result = _experiment(trials, tmp_path, space=space, executor="inline").run()
    assert len(result.trials) == 2


def test_a_store_of_another_experiment_is_refused_and_left_alone(trials, tmp_path) -> None:
    store = tmp_path / "s.sqlite"
    _experiment(trials, tmp_path, executor="inline").run()
    digest = _digest(store)
    with pytest.raises(StoreError, match=r"another experiment: its trainer is .*\"epochs\": 0"):
        _experiment(trials, tmp_path, trainer=trials.ScoreTrainer(None, epochs=1)).run()
    with pytest.raises(StoreError, match=r"its space is .*\"c0: 8\".*left untouched"):
        _experiment(trials, tmp_path, space=trials.SyntheticSpace()).run()
    with pytest.raises(StoreError, match="its strategy is .*grid.*its seed is 0"):
        _experiment(trials, tmp_path, strategy="grid", seed=1).run()
    assert _digest(store) == digest


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"trial,arch\n0,{}\n", "is not an SQLite database .*left untouched"),
        (b"SQLite format 3\x00" + bytes(range(256)) * 40, "is a corrupt SQLite database"),
    ],
)
def test_a_non_sqlite_or_corrupt_store_is_a_clear_error(trials, tmp_path, content, message):
    store = tmp_path / "s.sqlite"
    store.write_bytes(content)
    with pytest.raises(StoreError, match=message):
        _experiment(trials, tmp_path).run()
    assert store.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.sqlite"]


def test_a_damaged_store_is_a_clear_error(trials, tmp_path) -> None:
    store = tmp_path / "s.sqlite"
    _experiment(trials, tmp_path, executor="inline").run()
    data = bytearray(store.read_bytes())
    data[4096:8192] = b"\xff" * 4096  # page 2: a table's b-tree
    store.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="corrupt SQLite database"):
        _experiment(trials, tmp_path).run()
    assert store.read_bytes() == bytes(data)


def test_an_sqlite_database_of_something_else_is_refused(trials, tmp_path) -> None:
    store = tmp_path / "s.sqlite"
    connection = sqlite3.connect(store)
    connection.execute("CREATE TABLE songs (title TEXT)")
    connection.commit()
    connection.close()
    digest = _digest(store)
    with pytest.raises(StoreError, match=r"not a nastrain experiment store .*\['songs'\]"):
        _experiment(trials, tmp_path).run()
    assert _digest(store) == digest
