"""The experiment store: one writer at a time (a lease with a heartbeat), tried with real
processes on the real store file; stores made by several processes at once; stores that
are read-only; and documents in a store that are not what they should be."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import nastrain
from nastrain.cli import main
from nastrain.experiments.experiment import load_config
from nastrain.experiments.store import Store, StoreError, StoreLockedError

FIXTURE = str(Path(__file__).resolve().parents[1] / "fixtures" / "trials")


def _env(*folders: str | Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, folders), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _gate_setup(tmp_path: Path, max_trials: int = 3) -> tuple[Path, Path, Path, Path]:
    """The gate module, a config (inline executor) and its store, gate folder and log."""
    gate, log, store = tmp_path / "gate", tmp_path / "log", tmp_path / "s.sqlite"
    gate.mkdir()
    config = tmp_path / "search.json"
    config.write_text(
        json.dumps(
            {
                "space": "nastrain_test_trials:SmallSpace",
                "max_trials": max_trials,
                "strategy": {"name": "grid"},
                "executor": "inline",
                "store": str(store),
                "trainer": {"name": "test-gate", "kwargs": {"gate": str(gate), "log": str(log)}},
            }
        )
    )
    return config, store, gate, log


def _snapshot(store: Path) -> dict[str, list[tuple]]:
    """Everything a store holds, but the heartbeat (which its live owner keeps refreshing)."""
    connection = sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return {
            "meta": connection.execute("SELECT * FROM meta ORDER BY key").fetchall(),
            "trials": connection.execute("SELECT * FROM trials ORDER BY trial").fetchall(),
            "results": connection.execute("SELECT * FROM results ORDER BY rowid").fetchall(),
            "lease": connection.execute(
                "SELECT token, pid, host, process, started FROM lease"
            ).fetchall(),
        }
    finally:
        connection.close()


def _wait_for(condition, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process ended before {what}: {process.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _nastrain(*args: str, env: dict[str, str], **options) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nastrain", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **options,
    )


def test_a_second_writer_on_a_live_store_is_refused_naming_the_owner(
    trials, tmp_path, monkeypatch
) -> None:
    config, store, gate, log = _gate_setup(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    env = _env(tmp_path, FIXTURE)
    first = _nastrain("run", str(config), "--quiet", env=env)
    try:
        # The first process owns the store and is training trial 0 (score 1.0: x, p, [0, 1]).
        _wait_for(lambda: (gate / "started-1.0").exists(), "trial 0 to start", first)
        before = _snapshot(store)
        assert before["lease"][0][1:3] == (first.pid, socket.gethostname())

        # A second `nastrain run` of the same experiment is refused at once, naming the owner.
        second = _nastrain("run", str(config), "--quiet", env=env)
        out, err = second.communicate(timeout=60)
        assert second.returncode == 1, (out, err)
        assert f"is in use by another experiment process (pid {first.pid} on host " in err
        assert len(err.strip().splitlines()) == 1
        # So is Experiment.run() here, and neither changed anything in the store.
        experiment = load_config(config).experiment(tmp_path)  # the same one, through the API
        with pytest.raises(StoreLockedError, match=f"pid {first.pid} on host ") as refused:
            experiment.run()
        assert refused.value.owner.pid == first.pid
        assert isinstance(refused.value, RuntimeError)  # as the CONTRACT says
        assert _snapshot(store) == before
        assert before["trials"][0][4] == "running" and before["results"] == []
        assert log.read_text().split() == ["1.0", str(first.pid)]  # trial 0 trained once
    finally:
        (gate / "open").touch()
        out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    # The first run went on undisturbed: every trial ran once, with its final result.
    with Store.read(store) as reader:
        ran = reader.trials()
        lease = reader.connection.execute("SELECT * FROM lease").fetchall()
    assert [(t.status, t.attempts, t.value) for t in ran] == [
        ("succeeded", 1, 1.0),
        ("succeeded", 1, 2.0),
        ("succeeded", 1, 3.0),
    ]
    assert lease == []  # given back at the end
    assert sorted(log.read_text().split()[::2]) == ["1.0", "2.0", "3.0"]


def test_the_lease_of_a_dead_writer_is_taken_over_and_its_trial_run_again(trials, tmp_path) -> None:
    config, store, gate, log = _gate_setup(tmp_path, max_trials=2)
    env = _env(tmp_path, FIXTURE)
    first = _nastrain("run", str(config), "--quiet", env=env)
    _wait_for(lambda: (gate / "started-1.0").exists(), "trial 0 to start", first)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    assert _snapshot(store)["lease"][0][1] == first.pid  # a dead owner's lease is left

    (gate / "open").touch()
    second = _nastrain("run", str(config), "--quiet", env=env)
    _, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert (
        f"nastrain: warning: took over the experiment store {store} from its last writer (pid "
        f"{first.pid} on host {socket.gethostname()}, since "
    ) in err
    assert f"): pid {first.pid} is gone; the trials it left running run again" in err
    with Store.read(store) as reader:
        ran = reader.trials()
    assert [(t.status, t.attempts, t.value) for t in ran] == [
        ("succeeded", 2, 1.0),
        ("succeeded", 1, 2.0),
    ]
    pids = log.read_text().split()[1::2]
    assert pids == [str(first.pid), str(second.pid), str(second.pid)]


def _plant_lease(store: Path, pid: int, host: str, heartbeat_age: float, process=None) -> None:
    now = time.time()
    with contextlib.closing(sqlite3.connect(store, isolation_level=None)) as connection:
        connection.execute(
            "INSERT INTO lease (id, token, pid, host, process, started, heartbeat) "
            "VALUES (1, 'planted', ?, ?, ?, ?, ?)",
            (pid, host, process, now - 3600, now - heartbeat_age),
        )


@pytest.fixture
def sleeper():
    """A live process of this host that is not an experiment."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    process.kill()
    process.wait()


@pytest.mark.parametrize(
    ("who", "age", "taken"),
    [
        ("live", 1.0, False),
        ("live", 3600.0, True),  # silent: stopped or hung
        ("dead", 1.0, True),
        ("reused", 1.0, True),  # the pid is now another process
        ("elsewhere", 1.0, False),  # another host: only the heartbeat tells
        ("elsewhere", 3600.0, True),
    ],
)
def test_a_lease_is_taken_over_only_from_a_dead_or_silent_owner(
    store_with_a_running_trial, sleeper, who, age, taken
) -> None:
    experiment, store = store_with_a_running_trial
    host, process = socket.gethostname(), None
    pid = sleeper.pid
    if who == "dead":
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        pid = gone.pid
    elif who == "reused":
        process = "another-boot/123"
    elif who == "elsewhere":
        host = "some-other-host"
    _plant_lease(store, pid, host, age, process)
    if not taken:
        before = _snapshot(store)
        with pytest.raises(StoreLockedError, match=f"pid {pid} on host {host}, since "):
            experiment.run()
        assert _snapshot(store) == before
        return
    why = {"live": r"its last heartbeat was \d+ s ago", "dead": f"pid {pid} is gone"}
    why["reused"] = f"pid {pid} is now another process"
    why["elsewhere"] = why["live"]
    with pytest.warns(UserWarning, match=f"took over the experiment store .*\\): {why[who]}"):
        result = experiment.run()
    assert [(t.status, t.attempts) for t in result.trials] == [("succeeded", 2), ("succeeded", 1)]
    assert _snapshot(store)["lease"] == []


def test_the_heartbeat_keeps_a_long_run_its_store_and_a_lost_lease_stops_writes(
    store_with_a_running_trial,
) -> None:
    experiment, path = store_with_a_running_trial
    # stale_after leaves the heartbeat thread 2 s of slack on a loaded machine.
    owner = Store.open(path, experiment.record, heartbeat=0.05, stale_after=2.0)
    try:
        started = owner.lease.heartbeat
        time.sleep(2.5)  # past stale_after: only the heartbeat keeps the lease alive
        with pytest.raises(StoreLockedError, match=f"pid {os.getpid()} on host "):
            Store.open(path, experiment.record, heartbeat=0.05, stale_after=2.0)
        (beat,) = _snapshot_heartbeat(path)
        assert beat > started + 1.0
        # A writer whose lease was taken over writes nothing more, and says why.
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as connection:
            connection.execute("UPDATE lease SET token = 'thief', pid = 1")
        with pytest.raises(StoreError, match="lost its lease.*it is pid 1 on host"):
            owner.add_trial(1, {"a": "y", "b": "p", "c": [0, 1]}, 8, "{}")
    finally:
        owner.close()
    with Store.read(path) as reader:
        assert len(reader.trials()) == 1


def _snapshot_heartbeat(path: Path) -> tuple[float]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return connection.execute("SELECT heartbeat FROM lease").fetchone()


RACE_SCRIPT = """
import os, sys, time
import nastrain, nastrain_test_trials as t
from nastrain.experiments.experiment import load_config
from nastrain.experiments.store import StoreLockedError

folder = sys.argv[1]
experiment = nastrain.Experiment(
    t.SmallSpace(), t.ScoreTrainer(None, log=os.path.join(folder, "log")), "grid",
    max_trials=4, executor="inline", store=os.path.join(folder, "s.sqlite"), progress=False,
)
open(os.path.join(folder, f"ready-{os.getpid()}"), "w").close()
while not os.path.exists(os.path.join(folder, "go")):
    time.sleep(0.001)
try:
    experiment.run()
except StoreLockedError:
    print("refused")
else:
    print("ran")
"""


def test_processes_creating_one_store_at_once_make_one_store_and_train_each_trial_once(
    trials, tmp_path
) -> None:
    script = tmp_path / "race.py"
    script.write_text(RACE_SCRIPT)
    processes = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path)],
            env=_env(FIXTURE),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        _wait_for(lambda: len(list(tmp_path.glob("ready-*"))) == 3, "the processes to be ready")
        (tmp_path / "go").touch()
        outcomes = []
        for process in processes:
            out, err = process.communicate(timeout=120)
            assert process.returncode == 0, err
            outcomes.append(out.strip())
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert "ran" in outcomes and set(outcomes) <= {"ran", "refused"}
    with Store.read(tmp_path / "s.sqlite") as reader:
        ran = reader.trials()
    assert [(t.status, t.attempts, t.value) for t in ran] == [
        ("succeeded", 1, 1.0),
        ("succeeded", 1, 2.0),
        ("succeeded", 1, 3.0),
        ("succeeded", 1, 11.0),
    ]
    trained = [float(line.split()[0]) for line in (tmp_path / "log").read_text().splitlines()]
    assert sorted(trained) == [1.0, 2.0, 3.0, 11.0]  # each trial trained by one process, once
    assert not list(tmp_path.glob(".*partial"))


# --- read-only folders ----------------------------------------------------------------------


def _can_write(folder: Path) -> bool:
    try:
        (folder / ".probe").touch()
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


@contextlib.contextmanager
def _read_only(folder: Path):
    """``folder`` made read-only for this process: by its mode, or (root ignores modes) by
    the immutable attribute; skips the test where neither blocks writes."""
    mode = folder.stat().st_mode
    folder.chmod(0o555)
    immutable = False
    if _can_write(folder) and shutil.which("chattr"):
        immutable = (
            subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
        )
    try:
        if _can_write(folder):
            pytest.skip(
                "cannot make a folder read-only here: running as root, and chattr +i (which "
                "needs CAP_LINUX_IMMUTABLE) is not available"
            )
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(mode)


def _score_experiment(trials, store: Path, log: Path, max_trials: int = 3) -> nastrain.Experiment:
    return nastrain.Experiment(
        trials.SmallSpace(),
        trials.ScoreTrainer(None, log=str(log)),
        "grid",
        max_trials=max_trials,
        executor="inline",
        store=store,
        progress=False,
    )


def test_a_good_store_in_a_read_only_folder_is_read_and_not_written(
    trials, tmp_path, capsys
) -> None:
    folder, log = tmp_path / "shared", tmp_path / "log"
    folder.mkdir()
    store = folder / "s.sqlite"
    _score_experiment(trials, store, log).run()
    trained = log.read_text()
    with _read_only(folder):
        assert sorted(p.name for p in folder.iterdir()) == ["s.sqlite"]
        # Read: `nastrain report` and the API, not called corrupt.
        assert main(["report", str(store)]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"{store}: 3 trials (3 succeeded); strategy grid")
        with Store.read(store) as reader:
            assert [t.value for t in reader.trials()] == [1.0, 2.0, 3.0]
        # Written: refused before anything is trained, naming the folder.
        more = _score_experiment(trials, store, log, max_trials=5)
        with pytest.raises(StoreError, match=f"the folder {folder} is not writable"):
            more.run()
        fresh = _score_experiment(trials, folder / "new.sqlite", log)
        with pytest.raises(StoreError, match=f"the folder {folder} is not writable"):
            fresh.run()
        assert sorted(p.name for p in folder.iterdir()) == ["s.sqlite"]
    assert log.read_text() == trained  # nothing was trained


def test_nastrain_run_on_a_read_only_folder_exits_naming_it(trials, tmp_path, capsys) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    config = tmp_path / "search.json"
    config.write_text(
        json.dumps(
            {
                "space": "nastrain_test_trials:SmallSpace",
                "max_trials": 2,
                "executor": "inline",
                "store": str(folder / "s.sqlite"),
                "trainer": {"name": "test-score", "kwargs": {"log": str(tmp_path / "log")}},
            }
        )
    )
    with _read_only(folder):
        code = main(["run", str(config), "--app-dir", FIXTURE, "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith(f"nastrain: error: the folder {folder} is not writable (")
    assert not (tmp_path / "log").exists()


# --- resuming -------------------------------------------------------------------------------


def test_a_trial_whose_final_result_was_stored_is_not_trained_again(trials, tmp_path) -> None:
    log = tmp_path / "log"
    experiment = _score_experiment(trials, tmp_path / "s.sqlite", log, max_trials=2)
    arch = {"a": "z", "b": "q", "c": [1, 2]}  # 15 points
    with Store.open(experiment.store_path, experiment.record) as store:
        trial = store.add_trial(0, arch, 7, experiment.trainer_spec.to_json())
        store.add_result(trial, 7.5, final=False)
        store.add_result(trial, {"default": 15.0, "epochs": 0}, final=True)
        # ... and the experiment process died here, before recording that the trial ended.
    result = experiment.run()
    first = result.trials[0]
    assert (first.status, first.attempts, first.value, first.intermediate) == (
        "succeeded",
        1,
        15.0,
        (7.5,),
    )
    assert first.ended is not None and first.end_order == 0
    assert [float(line.split()[0]) for line in log.read_text().splitlines()] == [
        result.trials[1].value
    ]  # only the new trial was trained
    with Store.read(experiment.store_path) as reader:
        assert reader.trials() == list(result.trials)


# --- documents that are not what they should be ----------------------------------------------


def _tamper(store: Path, sql: str, *args) -> None:
    with contextlib.closing(sqlite3.connect(store, isolation_level=None)) as connection:
        connection.execute(sql, args)


@pytest.mark.parametrize(
    ("sql", "args", "message"),
    [
        (
            "UPDATE meta SET value = ? WHERE key = 'experiment'",
            ("[1, 2]",),
            r"invalid experiment record: expected a JSON object \(a table of keys\), got an "
            r"array \(\[1, 2\]\)",
        ),
        (
            "UPDATE meta SET value = ? WHERE key = 'experiment'",
            ('"text"',),
            "invalid experiment record: expected a JSON object .*got a string",
        ),
        (
            "UPDATE trials SET arch = ? WHERE trial = 1",
            ("[1, 2]",),
            "the architecture of trial 1 must be a JSON object, got list",
        ),
        (
            "UPDATE trials SET arch = ? WHERE trial = 1",
            ("{oops",),
            "the architecture of trial 1 is not JSON",
        ),
        (
            "UPDATE results SET metric = ? WHERE trial = 0",
            ('"fast"',),
            "a result of trial 0 is not a metric",
        ),
    ],
)
def test_a_store_document_that_is_not_an_object_is_a_store_error_naming_it(
    trials, tmp_path, sql, args, message
) -> None:
    store = tmp_path / "s.sqlite"
    _score_experiment(trials, store, tmp_path / "log", max_trials=2).run()
    _tamper(store, sql, *args)
    with pytest.raises(StoreError, match=message) as raised, Store.read(store) as reader:
        reader.trials()
        reader.result_rows()
    assert str(store) in str(raised.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1]", r"invalid trainer spec: expected a JSON object \(a table of keys\), got an array"),
        ("3", "invalid trainer spec: expected a JSON object .*got a number"),
        ("null", "invalid trainer spec: expected a JSON object .*got null"),
        ('{"name": "x", "kwargs": {}, "extra": []}', r"extra fields found \(extra\)"),
    ],
)
def test_a_trainer_spec_that_is_not_an_object_is_a_value_error(text, message) -> None:
    with pytest.raises(ValueError, match=message):
        nastrain.TrainerSpec.from_json(text)


def test_a_config_whose_tables_are_not_tables_names_the_key(tmp_path) -> None:
    config = tmp_path / "search.json"
    config.write_text('{"space": "m:S", "max_trials": 2, "trainer": ["test-score"]}')
    with pytest.raises(
        ValueError, match=r"expected a JSON object \(a table of keys\) @ \$.trainer"
    ):
        load_config(config)


# --- what `nastrain report` prints from a stranger's store ---------------------------------


def test_report_escapes_control_characters_read_from_the_store(trials, tmp_path, capsys) -> None:
    store = tmp_path / "s.sqlite"
    experiment = _score_experiment(trials, store, tmp_path / "log", max_trials=2)
    experiment.run()
    _tamper(
        store,
        "UPDATE trials SET status = 'failed', reason = ? WHERE trial = 1",
        "boom\x1b]0;owned\x07\x1b[2J\u202etxt.exe\nsecond line",
    )
    record = json.loads(_snapshot(store)["meta"][1][1])
    record["trainer"]["name"] = "test-score\x1b[31m"
    _tamper(store, "UPDATE meta SET value = ? WHERE key = 'experiment'", json.dumps(record))

    assert main(["report", str(store)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "trainer test-score\\x1b[31m," in out
    assert "boom\\x1b]0;owned\\x07\\x1b[2J\\u202etxt.exe" in out
    assert "second line" not in out  # the reason's first line only, as before
    assert main(["report", str(store), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)  # JSON escapes them itself
    assert document["trials"][1]["reason"].startswith("boom\x1b]0;owned")


@pytest.mark.parametrize(
    "argv",
    [
        ["report", "s.sqlite", "--top", "-1"],
        ["report", "s.sqlite", "--top", "0"],
        ["report", "s.sqlite", "--top", "two"],
        ["run", "c.toml", "--max-trials", "0"],
        ["run", "c.toml", "--concurrency", "-3"],
    ],
)
def test_cli_numbers_out_of_range_exit_2(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "must be an integer >= 1" in err or "expected an integer, got 'two'" in err
