"""The report of a multi-trial experiment (``nastrain report STORE -o page.html``): the
JSON it embeds is what the store holds, for finished, crashed and empty experiments, and
for metrics of every shape; bad input is refused with one line and nothing written; and
``--watch`` rewrites the page while the experiment runs and stops when it ends."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import nastrain
from nastrain.cli import main
from nastrain.experiments.store import Store
from nastrain.htmlreport import experiment as report_experiment
from nastrain.htmlreport import read_embedded

FIXTURE = str(Path(__file__).resolve().parents[1] / "fixtures" / "trials")


def _points(arch: dict[str, Any]) -> float:
    """What ``nastrain_test_trials.score`` gives the architecture (worked out here again)."""
    return {"x": 0, "y": 1, "z": 2}[arch["a"]] + {"p": 0, "q": 10}[arch["b"]] + sum(arch["c"])


def _experiment(trials, store: Path, **options: Any) -> nastrain.Experiment:
    trainer = options.pop("trainer", None) or trials.ScoreTrainer(None, epochs=3, fail=[3.0])
    return nastrain.Experiment(
        trials.SmallSpace(),
        trainer,
        options.pop("strategy", "grid"),
        max_trials=options.pop("max_trials", 18),
        executor="inline",
        store=store,
        progress=False,
        **options,
    )


def _page(store: Path, tmp_path: Path) -> dict[str, Any]:
    output = tmp_path / "report.html"
    assert nastrain.report(store, output) == output
    return read_embedded(output.read_text(encoding="utf-8"))


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``nastrain ARGV`` (a bad command line exits 2)."""
    try:
        code = main(argv)
    except SystemExit as exited:
        code = int(exited.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_embedded_json_is_what_the_store_holds(trials, tmp_path) -> None:
    store = tmp_path / "s.sqlite"
    _experiment(trials, store).run()
    data = _page(store, tmp_path)
    with Store.read(store) as reader:
        held = reader.observed_trials()
        record = reader.record
    # Every field of every trial, the intermediate results decoded from their columns.
    assert report_experiment.trials(data) == held
    assert len(held) == 18 and data["counts"] == {"succeeded": 15, "failed": 3}
    # ... and what the trainer reported, worked out independently of the store.
    for entry, results in zip(data["trials"], report_experiment.intermediate(data), strict=True):
        points = _points(entry["arch"])
        if points == 3.0:
            assert entry["status"] == "failed" and "fails on purpose" in entry["reason"]
            assert results == ()
            continue
        assert results == tuple(points * (e + 1) / 3 for e in range(3))
        assert entry["final"] == {"default": points, "epochs": 3.0}
        assert entry["worker"] == f"{socket.gethostname()}:{os.getpid()}"  # inline: this process
    succeeded = [e for e in data["trials"] if e["status"] == "succeeded"]
    best = max(succeeded, key=lambda e: (e["value"], -e["index"]))
    assert data["best"]["index"] == best["index"] and data["best"]["value"] == 15.0
    assert sorted(e["rank"] for e in succeeded) == list(range(1, 16))
    assert data["experiment"]["mode"] == "max" and data["experiment"]["max_trials"] == 18
    assert data["experiment"]["trainer"] == {
        "name": "test-score",
        "kwargs": record.trainer.kwargs,
        "schema_version": record.trainer.schema_version,
    }
    assert [(c["label"], c["size"]) for c in data["space"]] == [("a", 3), ("b", 2), ("c", 3)]
    assert data["ended"] is True and data["writer"] is None


def test_smaller_is_better_ranks_and_picks_the_smallest(trials, tmp_path) -> None:
    store = tmp_path / "s.sqlite"
    _experiment(trials, store, mode="min", max_trials=6).run()
    data = _page(store, tmp_path)
    values = {e["index"]: e["value"] for e in data["trials"] if e["status"] == "succeeded"}
    smallest = min(values, key=lambda i: (values[i], i))
    assert data["best"]["index"] == smallest and data["best"]["value"] == min(values.values())
    rank = {e["index"]: e["rank"] for e in data["trials"]}
    ranked = sorted(values, key=lambda i: rank[i])
    assert [values[i] for i in ranked] == sorted(values.values())


def test_metrics_of_every_shape_read_back_as_stored(trials, tmp_path) -> None:
    """Plain numbers and dicts mixed, keys missing in some results, extreme floats."""
    experiment = _experiment(trials, tmp_path / "s.sqlite")
    shapes = [
        [0.1, 0.2, {"default": 0.3, "loss": 2.5}],
        [{"default": -0.0, "loss": 1e-300}, {"default": 5e300, "lr": 0.01}, 7.0],
        [],
        [{"default": 1 / 3}],
    ]
    with Store.open(experiment.store_path, experiment.record) as store:
        for index, results in enumerate(shapes):
            trial = store.add_trial(index, {"a": "x", "b": "p", "c": [0, 1]}, index, "{}")
            for metric in results:
                store.add_result(trial, metric, False)
            store.add_result(trial, {"default": float(index), "extra": 2.0}, True)
            store.end_trial(trial, "succeeded", None)
    data = _page(experiment.store_path, tmp_path)
    decoded = report_experiment.intermediate(data)
    assert [list(d) for d in decoded] == shapes
    assert str(decoded[1][0]["default"]) == "-0.0"  # the sign of zero survives
    assert data["intermediate"]["keys"] == ["default", "loss", "lr"]
    with Store.read(experiment.store_path) as reader:
        assert report_experiment.trials(data) == reader.observed_trials()


def test_a_store_left_with_a_running_trial_and_no_lease_renders_it_interrupted(
    store_with_a_running_trial, tmp_path
) -> None:
    _, store = store_with_a_running_trial
    data = _page(store, tmp_path)
    (trial,) = data["trials"]
    assert trial["status"] == "interrupted"
    assert "no experiment process holds the store" in trial["reason"]
    assert data["ended"] is True and data["best"] is None
    assert data["counts"] == {"interrupted": 1}
    with Store.read(store) as reader:  # nothing was written: the store still says running
        assert [t.status for t in reader.trials()] == ["running"]


def _gate_config(tmp_path: Path, max_trials: int) -> tuple[Path, Path, Path]:
    """A config whose trials wait at a gate (the folder ``gate``) until ``gate/open`` exists."""
    gate, store = tmp_path / "gate", tmp_path / "s.sqlite"
    gate.mkdir()
    config = tmp_path / "search.json"
    kwargs = {"gate": str(gate), "log": str(tmp_path / "log")}
    config.write_text(
        json.dumps(
            {
                "space": "nastrain_test_trials:SmallSpace",
                "max_trials": max_trials,
                "strategy": "grid",
                "executor": "inline",
                "store": str(store),
                "trainer": {"name": "test-gate", "kwargs": kwargs},
            }
        )
    )
    return config, store, gate


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([FIXTURE, env.get("PYTHONPATH", "")])
    return env


def _nastrain(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "nastrain", *args],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(condition: Callable[[], bool], what: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 90
    while not condition():
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"exited ({process.returncode}) before {what}: {out}\n{err}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_killed_experiment_renders_its_running_trial_as_interrupted(trials, tmp_path) -> None:
    config, store, gate = _gate_config(tmp_path, max_trials=2)
    run = _nastrain("run", str(config), "--quiet")
    _wait_for(lambda: (gate / "started-1.0").exists(), "trial 0 to start", run)
    run.send_signal(signal.SIGKILL)
    run.communicate()
    data = _page(store, tmp_path)
    (trial,) = data["trials"]
    assert trial["status"] == "interrupted"
    assert f"pid {run.pid} is gone" in trial["reason"]
    assert trial["worker"] == f"{socket.gethostname()}:{run.pid}"  # inline: the run's process
    assert trial["ended"] is None and data["experiment"]["max_trials"] == 2


def test_watch_rewrites_the_page_while_the_experiment_runs_and_stops_when_it_ends(
    trials, tmp_path
) -> None:
    config, store, gate = _gate_config(tmp_path, max_trials=2)
    page = tmp_path / "live.html"
    run = _nastrain("run", str(config), "--quiet")
    _wait_for(lambda: (gate / "started-1.0").exists(), "trial 0 to start", run)
    watch = _nastrain("report", str(store), "-o", str(page), "--watch", "--interval", "0.2")
    try:
        _wait_for(page.exists, "the first page", watch)
        first = read_embedded(page.read_text(encoding="utf-8"))
        assert first["ended"] is False and f"pid {run.pid}" in first["writer"]
        assert [t["status"] for t in first["trials"]] == ["running"]
        time.sleep(0.5)
        assert watch.poll() is None  # still watching a live experiment
        (gate / "open").touch()
        assert run.wait(timeout=90) == 0
        out, err = watch.communicate(timeout=60)  # it stops by itself
    finally:
        for process in (run, watch):
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert watch.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"wrote {page} (1 trial); rewriting it every 0.2 s")
    assert lines[-1].startswith(f"wrote {page} (2 trials); the experiment has ended (")
    assert int(lines[-1].rpartition("(")[2].split()[0]) >= 3  # rewritten meanwhile
    last = read_embedded(page.read_text(encoding="utf-8"))
    assert last["ended"] is True
    assert [t["status"] for t in last["trials"]] == ["succeeded", "succeeded"]


def test_an_empty_experiment_gives_a_page_that_says_so(trials, tmp_path, capsys) -> None:
    experiment = _experiment(trials, tmp_path / "s.sqlite")
    Store.open(experiment.store_path, experiment.record).close()
    output = tmp_path / "r.html"
    code, out, err = _run(["report", str(experiment.store_path), "-o", str(output)], capsys)
    assert (code, err) == (0, "")
    assert out == f"wrote {output} (0 trials)\n"
    data = read_embedded(output.read_text(encoding="utf-8"))
    assert data["trials"] == [] and data["best"] is None and data["counts"] == {}
    assert data["intermediate"]["count"] == 0


def test_the_command_writes_the_page_and_says_where_and_how_many(trials, tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    _experiment(trials, store, max_trials=4).run()
    output = tmp_path / "r.html"
    code, out, err = _run(["report", str(store), "-o", str(output)], capsys)
    assert (code, out, err) == (0, f"wrote {output} (4 trials)\n", "")
    assert read_embedded(output.read_text(encoding="utf-8"))["store"] == str(store)
    # Without -o: the table, as before.
    code, out, _ = _run(["report", str(store)], capsys)
    assert code == 0 and out.startswith(f"{store}: 4 trials (")


def _newer(store: Path) -> None:
    with sqlite3.connect(store) as connection:
        connection.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    connection.close()


@pytest.mark.parametrize(
    ("make", "argv", "code", "message"),
    [
        (lambda p: p.write_text("hello"), [], 1, r"x is neither an experiment store"),
        (
            lambda p: sqlite3.connect(p).execute("CREATE TABLE t (a)").connection.commit(),
            [],
            1,
            r"is an SQLite database but not a nastrain experiment store",
        ),
        ("newer", [], 1, r"store schema_version 99, this one reads up to 1\b"),
        ("store", ["--output-in-a-missing-folder"], 1, r"the folder .*nowhere does not exist"),
        ("store", ["--watch-without-o"], 2, r"--watch needs -o/--output"),
        ("store", ["--interval", "0"], 2, r"--interval: must be a number of seconds > 0"),
        ("store", ["--interval", "-1"], 2, r"--interval: must be a number of seconds > 0"),
        ("store", ["--json"], 2, r"--json and --top print the table \(without -o\)"),
        ("store", ["--interval", "1"], 2, r"--interval goes with --watch"),
    ],
)
def test_bad_input_is_one_line_and_nothing_is_written(
    trials, tmp_path, capsys, make, argv, code, message
) -> None:
    source = tmp_path / "x"
    if make in ("store", "newer"):
        _experiment(trials, source, max_trials=2).run()
        if make == "newer":
            _newer(source)
    else:
        make(source)
    output = tmp_path / "r.html"
    if argv == ["--output-in-a-missing-folder"]:
        output, argv = tmp_path / "nowhere" / "r.html", []
    command = ["report", str(source), "-o", str(output), *argv]
    if argv == ["--watch-without-o"]:
        command = ["report", str(source), "--watch"]

    def files() -> list[str]:
        # SQLite's own files beside a store it reads (its WAL index) are not the report's.
        return sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(("-shm", "-wal")))

    before, content = files(), source.read_bytes()
    got, out, err = _run(command, capsys)
    assert got == code and out == ""
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert not output.exists() and files() == before and source.read_bytes() == content


def test_a_run_record_without_o_is_told_to_use_it(tmp_path, capsys) -> None:
    record = tmp_path / "run.jsonl"
    record.write_text('{"kind": "header"}\n')
    for source in (record, tmp_path):
        code, out, err = _run(["report", str(source)], capsys)
        assert code == 1 and out == ""
        assert err.strip().endswith(f"written with nastrain report {source} -o report.html")
