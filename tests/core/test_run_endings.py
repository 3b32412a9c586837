"""How a run ends, and that it says so: stopped by Ctrl-C (its trials ``interrupted``, not
``running``, and run again on resume), killed (a reader shows its running trials as
interrupted), out of architectures before ``max_trials`` (``stop_reason``), or refused before
any trial for a misspelt trainer argument."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
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
from nastrain.experiments.store import Store
from nastrain.experiments.strategies import Strategy

FIXTURE = str(Path(__file__).resolve().parents[1] / "fixtures" / "trials")


def _gate_config(tmp_path: Path, executor: str, concurrency: int, max_trials: int) -> Path:
    (tmp_path / "gate").mkdir()
    config = tmp_path / "search.json"
    config.write_text(
        json.dumps(
            {
                "space": "nastrain_test_trials:SmallSpace",
                "max_trials": max_trials,
                "concurrency": concurrency,
                "strategy": "grid",
                "executor": executor,
                "trainer": {
                    "name": "test-gate",
                    "kwargs": {"gate": str(tmp_path / "gate"), "log": str(tmp_path / "log")},
                },
            }
        )
    )
    return config


def _restore_sigint() -> None:
    # A shell's background job (a CI runner's, say) starts with SIGINT ignored, and Python
    # then installs no KeyboardInterrupt handler: give the child the default one.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _nastrain(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), FIXTURE, env.get("PYTHONPATH", "")])
    env.pop("NASTRAIN_DEBUG", None)
    return subprocess.Popen(
        [sys.executable, "-m", "nastrain", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_restore_sigint,
    )


def _wait_for(condition, what: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 90
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the process ended before {what}: {process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _report(store: Path, capsys) -> str:
    assert main(["report", str(store)]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(("executor", "concurrency"), [("inline", 1), ("local", 2)])
def test_ctrl_c_records_unfinished_trials_as_interrupted_and_a_resume_reruns_them(
    trials, tmp_path, capsys, executor, concurrency
) -> None:
    config = _gate_config(tmp_path, executor, concurrency, max_trials=3)
    store, gate = tmp_path / "search.sqlite", tmp_path / "gate"
    first = _nastrain(tmp_path, "run", str(config), "--quiet")
    started = [gate / f"started-{points}" for points in (1.0, 2.0)[:concurrency]]
    _wait_for(lambda: all(path.exists() for path in started), "the trials to start", first)
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=60)
    assert first.returncode == 130, err
    assert err.strip().splitlines()[-1] == (
        "nastrain: interrupted (run the same command again to resume)"
    )

    with Store.read(store) as reader:
        recorded = reader.trials()
        assert reader.live_writer() is None  # the lease was given back
    assert [t.status for t in recorded] == ["interrupted"] * concurrency
    for trial in recorded:
        assert trial.reason == (
            "interrupted: the experiment stopped (KeyboardInterrupt: Ctrl-C) before this "
            "trial ended; a resumed run runs it again"
        )
        assert trial.ended is not None and trial.end_order is None
    lines = _report(store, capsys).splitlines()
    assert f"{concurrency} trials ({concurrency} interrupted)" in lines[0]
    assert all(line.split()[2] == "interrupted" for line in lines[2:])
    assert "interrupted: the experiment stopped (KeyboardInterrupt: Ctrl-C)" in lines[2]

    (gate / "open").touch()
    second = _nastrain(tmp_path, "run", str(config), "--quiet")
    out, err = second.communicate(timeout=90)
    assert second.returncode == 0, err
    assert "3 trials (3 succeeded)" in out
    with Store.read(store) as reader:
        ran = reader.trials()
    assert [(t.status, t.attempts, t.reason) for t in ran] == [
        *[("succeeded", 2, None)] * concurrency,
        *[("succeeded", 1, None)] * (3 - concurrency),
    ]


def test_a_keyboard_interrupt_inside_fit_interrupts_the_trial(trials, tmp_path) -> None:
    @nastrain.register_trainer(name="test-endings-ctrl-c")
    class CtrlC(nastrain.BaseTrainer):
        def __init__(self, model, interrupt: bool = True) -> None:
            self.model, self.interrupt = model, interrupt

        def fit(self) -> None:
            nastrain.report_intermediate_result(0.5)
            if self.interrupt and CtrlC.remaining:
                CtrlC.remaining -= 1
                raise KeyboardInterrupt
            nastrain.report_final_result(1.0)

    CtrlC.remaining = 1
    options = {"max_trials": 2, "executor": "inline", "store": tmp_path / "s.sqlite"}
    experiment = nastrain.Experiment(trials.SmallSpace(), CtrlC(None), "grid", **options)
    with pytest.raises(KeyboardInterrupt):
        experiment.run()
    with Store.read(experiment.store_path) as reader:
        (trial,) = reader.trials()
    assert (trial.status, len(trial.intermediate)) == ("interrupted", 1)
    result = nastrain.Experiment(trials.SmallSpace(), CtrlC(None), "grid", **options).run()
    assert [(t.status, t.attempts) for t in result.trials] == [("succeeded", 2), ("succeeded", 1)]


# --- a killed experiment, seen by a reader ---------------------------------------------------


def _plant_lease(store: Path, pid: int, heartbeat_age: float = 1.0) -> None:
    now = time.time()
    with contextlib.closing(sqlite3.connect(store, isolation_level=None)) as connection:
        connection.execute(
            "INSERT INTO lease (id, token, pid, host, process, started, heartbeat) "
            "VALUES (1, 'planted', ?, ?, NULL, ?, ?)",
            (pid, socket.gethostname(), now - 3600, now - heartbeat_age),
        )


def _digest(store: Path) -> str:
    return hashlib.sha256(store.read_bytes()).hexdigest()


@pytest.fixture
def sleeper():
    """A live process of this host, standing in for an experiment's driver."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    process.kill()
    process.wait()


def _dead_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


@pytest.mark.parametrize("owner", ["none", "dead", "silent", "old store", "live"])
def test_report_shows_trials_of_a_dead_experiment_as_interrupted_without_writing(
    store_with_a_running_trial, capsys, sleeper, owner
) -> None:
    _, store = store_with_a_running_trial
    why = "no experiment process holds the store"
    if owner == "dead":
        pid = _dead_pid()
        _plant_lease(store, pid)
        why = f"its experiment process is gone (pid {pid} is gone)"
    elif owner == "silent":
        _plant_lease(store, sleeper.pid, heartbeat_age=3600)
        why = "its experiment process is gone (its last heartbeat was"
    elif owner == "old store":  # written before stores had leases
        with contextlib.closing(sqlite3.connect(store, isolation_level=None)) as connection:
            connection.execute("DROP TABLE lease")
    elif owner == "live":
        _plant_lease(store, sleeper.pid)
    before = _digest(store)
    out = _report(store, capsys)
    assert main(["report", str(store), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["trials"]
    if owner == "live":  # a running experiment's trial is running
        assert "1 trials (1 running)" in out and row["status"] == "running"
    else:
        assert "1 trials (1 interrupted)" in out and row["status"] == "interrupted"
        assert row["reason"].startswith(f"interrupted: {why}")
        assert row["reason"].endswith("and this trial had not ended; a resumed run runs it again")
    assert _digest(store) == before  # read, not written
    with Store.read(store) as reader:
        assert [t.status for t in reader.trials()] == ["running"]


# --- a run that ends before max_trials says why ----------------------------------------------


def test_a_run_out_of_architectures_says_why(trials, tmp_path) -> None:
    def run(strategy, max_trials: int, store: str):
        return nastrain.Experiment(
            trials.SyntheticSpace(n=2, k=2),
            trials.ScoreTrainer(None),
            strategy,
            max_trials=max_trials,
            executor="inline",
            store=tmp_path / store,
        ).run()

    result = run("grid", 10, "grid.sqlite")
    assert len(result.trials) == 4
    assert result.stop_reason == "the search space has only 4 architectures (grid exhausted)"
    # Resumed with nothing left to try, it says so again.
    assert run("grid", 10, "grid.sqlite").stop_reason == result.stop_reason
    assert run("grid", 4, "all.sqlite").stop_reason is None  # it ran its max_trials
    assert run("grid", 3, "some.sqlite").stop_reason is None

    class TwoOnly(Strategy):
        name = "test-endings-two-only"

        def propose(self, index, history):
            return None if index >= 2 else self.space.sample(index)

    result = run(TwoOnly(), 10, "two.sqlite")
    assert len(result.trials) == 2
    assert result.stop_reason == (
        "strategy 'test-endings-two-only' proposed no more architectures (2 of the space's 4 tried)"
    )


# --- trainer arguments are checked before any trial ------------------------------------------


def test_trainer_arguments_are_checked_against_the_trainer_before_any_trial(trials, tmp_path):
    @nastrain.register_trainer(name="test-endings-needs-lr")
    class NeedsLr(nastrain.BaseTrainer):
        def __init__(self, model, lr: float, *, epochs: int = 1) -> None:
            self.model = model

        def fit(self) -> None:
            raise AssertionError("no trial may run")

    @nastrain.register_trainer(name="test-endings-anything")
    class Anything(nastrain.BaseTrainer):
        def __init__(self, model, **options) -> None:
            self.model = model

        def fit(self) -> None:
            nastrain.report_final_result(1.0)

    def experiment(name: str, **kwargs):
        return nastrain.Experiment(
            trials.SmallSpace(),
            nastrain.TrainerSpec(name=name, kwargs=kwargs),
            max_trials=1,
            executor="inline",
            store=tmp_path / "s.sqlite",
        )

    who = f"trainer 'test-endings-needs-lr' ({__name__}.{NeedsLr.__qualname__})"
    with pytest.raises(TypeError) as info:
        experiment("test-endings-needs-lr", lr=0.1, epoch=3, momentum=0.9)
    assert str(info.value) == (
        f"{who} got unexpected keyword arguments 'epoch' (did you mean 'epochs'?), "
        "'momentum'; it takes: lr, epochs"
    )
    with pytest.raises(TypeError) as info:
        experiment("test-endings-needs-lr", epochs=3)
    assert str(info.value) == f"{who} needs the argument 'lr' in its kwargs; it takes: lr, epochs"
    assert not (tmp_path / "s.sqlite").exists()
    # A trainer taking **options takes any key: nothing to check.
    assert len(experiment("test-endings-anything", whatever=1).run().trials) == 1
