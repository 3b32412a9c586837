"""nastrain-tensorboard: what it writes is read back with TensorBoard's own reader and
compared with what was reported (the experiment's store, or the record given), for inline
experiments, worker processes (turned on by the environment), one-shot epoch records; and
that nothing is written unless asked, and a folder that cannot be written to stops nothing."""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import nastrain
from nastrain import plugins
from nastrain.space import Choice, SearchSpace
from nastrain_tensorboard import (
    ENV_VAR,
    LogDirError,
    TensorBoardLogger,
    TensorBoardWarning,
    plugin,
)

HERE = Path(__file__).resolve().parent


@pytest.fixture
def fixtures(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """tests/nastrain_tensorboard_fixtures.py, importable here and in worker processes."""
    monkeypatch.syspath_prepend(str(HERE))
    return importlib.import_module("nastrain_tensorboard_fixtures")


@pytest.fixture(autouse=True)
def _no_env_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees another's NASTRAIN_TENSORBOARD, nor its cached logger."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(plugin, "_loggers", {})


def read(run: Path) -> EventAccumulator:
    """Every event of one run, as TensorBoard reads it."""
    assert run.is_dir(), f"no run {run}"
    events = EventAccumulator(str(run), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    events.Reload()
    return events


def scalars(events: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in events.Scalars(tag)]


def expected_curves(trial: Any) -> dict[str, list[tuple[int, float]]]:
    """The scalars a trial's run must hold, from the trial as the store has it."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for step, metric in enumerate(trial.intermediate):
        values = metric if isinstance(metric, dict) else {"default": metric}
        for key, value in values.items():
            curves.setdefault(f"intermediate/{key}", []).append((step, value))
    final = trial.final if isinstance(trial.final, dict) else {"default": trial.final}
    for key, value in final.items():
        curves[f"final/{key}"] = [(len(trial.intermediate), value)]
    return curves


def assert_trial_runs(log_dir: Path, trials: list[Any]) -> None:
    assert sorted(p.name for p in log_dir.iterdir()) == [f"trial-{t.index:05d}" for t in trials]
    for trial in trials:
        events = read(log_dir / f"trial-{trial.index:05d}")
        expected = expected_curves(trial)
        assert sorted(events.Tags()["scalars"]) == sorted(expected)
        for tag, points in expected.items():
            got = scalars(events, tag)
            assert [s for s, _ in got] == [s for s, _ in points], (trial.index, tag)
            # Event files hold float32.
            assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-6)


def test_an_inline_experiment_gets_one_run_per_trial_equal_to_its_store(
    fixtures: ModuleType, tmp_path: Path
) -> None:
    with TensorBoardLogger(tmp_path / "tb") as logger:
        result = nastrain.Experiment(
            fixtures.Space(),
            fixtures.ScoreTrainer(None, epochs=3),
            "grid",
            max_trials=6,
            executor="inline",
            store=tmp_path / "s.sqlite",
            progress=False,
        ).run()
        assert not logger._trials  # every trial's run was closed when its fit ended
    assert not plugins.plugin_manager().is_registered(logger)
    assert [t.status for t in result.trials] == ["succeeded"] * 6
    # The architectures give different points, so a mix-up of trials would show.
    assert len({t.value for t in result.trials}) == 6
    assert_trial_runs(tmp_path / "tb", list(result.trials))


_EXPERIMENT = textwrap.dedent(
    """
    import json, os, sys
    import nastrain
    import nastrain_tensorboard_fixtures as f

    result = nastrain.Experiment(
        f.Space(), f.ScoreTrainer(None, epochs=2), "grid", max_trials=6, concurrency=2,
        store=sys.argv[1], progress=False,
    ).run()
    print(json.dumps({"pid": os.getpid(), "trials": [
        {"index": t.index, "status": t.status, "intermediate": list(t.intermediate),
         "final": t.final, "worker": t.worker} for t in result.trials]}))
    """
)


def test_worker_processes_log_each_trial_when_the_environment_says_so(tmp_path: Path) -> None:
    # A fresh process whose environment names the log dir, as a user's shell would: the
    # forkserver and its workers inherit it.
    env = {**os.environ, ENV_VAR: str(tmp_path / "tb"), "PYTHONPATH": str(HERE)}
    env.pop("NASTRAIN_PLUGINS", None)
    done = subprocess.run(
        [sys.executable, "-c", _EXPERIMENT, str(tmp_path / "s.sqlite")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    trials = [SimpleNamespace(**t) for t in out["trials"]]
    assert [t.status for t in trials] == ["succeeded"] * 6
    assert_trial_runs(tmp_path / "tb", trials)
    for trial in trials:
        # events.out.tfevents.<time>.<host>.<pid>.<n>: written by the trial's worker.
        (event_file,) = (tmp_path / "tb" / f"trial-{trial.index:05d}").iterdir()
        pid = int(event_file.name.split(".")[-2])
        assert pid != out["pid"]
        if trial.worker is not None:
            assert trial.worker.endswith(f":{pid}")


def test_the_entry_point_logs_nothing_unless_the_environment_names_a_folder(
    fixtures: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "tensorboard" in [info.name for info in plugins.loaded_plugins()]
    monkeypatch.chdir(tmp_path)

    def run(store: str) -> Any:
        return nastrain.Experiment(
            fixtures.Space(),
            fixtures.ScoreTrainer(None, epochs=1),
            "grid",
            max_trials=2,
            executor="inline",
            store=tmp_path / store,
            progress=False,
        ).run()

    run("quiet.sqlite")
    assert plugin.env_logger() is None
    written = sorted(p.name for p in tmp_path.rglob("*"))
    assert all(name.startswith("quiet.sqlite") for name in written), written
    # The variable is read at each call: set now, the next experiment logs.
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "tb"))
    result = run("loud.sqlite")
    assert_trial_runs(tmp_path / "tb", list(result.trials))


def test_a_folder_that_cannot_be_written_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    for bad in (tmp_path / "file", tmp_path / "file" / "runs"):
        with pytest.raises(LogDirError, match=f"log directory '{bad}': "):
            TensorBoardLogger(bad)
    with pytest.raises(LogDirError, match="empty"):
        TensorBoardLogger("")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_refused_folder_from_the_environment_warns_once_and_the_search_goes_on(
    fixtures: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "file" / "tb"))
    with pytest.warns(TensorBoardWarning, match="file/tb.*NASTRAIN_TENSORBOARD") as caught:
        result = nastrain.Experiment(
            fixtures.Space(),
            fixtures.ScoreTrainer(None, epochs=1),
            "grid",
            max_trials=3,
            executor="inline",
            store=tmp_path / "s.sqlite",
            progress=False,
        ).run()
    assert [t.status for t in result.trials] == ["succeeded"] * 3
    assert len([w for w in caught if w.category is TensorBoardWarning]) == 1


def test_a_run_that_fails_to_write_is_given_up_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logger = TensorBoardLogger(tmp_path)
    logger.nastrain_on_report({"default": 1.0}, False, 0)
    run = logger._trials[0]
    assert run is not None

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run.writer, "add_scalar", broken)
    with pytest.warns(TensorBoardWarning, match="trial-00000.*No space left"):
        logger.nastrain_on_report({"default": 2.0}, False, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        logger.nastrain_on_report({"default": 3.0}, True, 0)  # given up: silent
    logger.close()
    assert scalars(read(tmp_path / "trial-00000"), "intermediate/default") == [(0, 1.0)]


def test_a_trial_run_again_replaces_its_earlier_events(tmp_path: Path) -> None:
    first = TensorBoardLogger(tmp_path)
    for value in (1.0, 2.0):
        first.nastrain_on_report(value, False, 4)
    first.close()
    # Written an hour before (TensorBoard reads a run's event files in the order of the
    # time in their names).
    (old,) = (tmp_path / "trial-00004").iterdir()
    parts = old.name.split(".")
    parts[3] = str(int(parts[3]) - 3600)
    old.rename(old.with_name(".".join(parts)))
    again = TensorBoardLogger(tmp_path)  # the experiment resumed: trial 4 runs again
    again.nastrain_on_report(5.0, False, 4)
    again.nastrain_on_report(6.0, True, 4)
    again.close()
    events = read(tmp_path / "trial-00004")
    assert scalars(events, "intermediate/default") == [(0, 5.0)]
    assert scalars(events, "final/default") == [(1, 6.0)]


def test_reports_outside_a_trial_are_not_logged(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path / "tb")
    logger.nastrain_on_report({"default": 1.0}, True, None)
    assert list((tmp_path / "tb").iterdir()) == []


def _trainer(name: str = "darts") -> SimpleNamespace:
    """What the logger reads off a one-shot trainer: its name and search space."""
    space = SearchSpace(
        choices=(
            Choice(label="op", kind="layer", names=("conv", "pool", "skip"), n_candidates=3),
            Choice(label="in", kind="input", n_candidates=2, n_chosen=1),
        )
    )
    return SimpleNamespace(name=name, space=space)


def _record(epoch: int) -> dict[str, Any]:
    p = [0.2 + 0.1 * epoch, 0.5 - 0.1 * epoch, 0.3]
    q = [0.6, 0.4]
    return {
        "epoch": epoch,
        "time": 12.5 * epoch,
        "metrics": {"loss": 1.0 / epoch, "accuracy": 0.1 * epoch},
        "probabilities": {"op": p, "in": q},
        "entropy": {"op": -sum(x * math.log(x) for x in p), "in": -sum(x * math.log(x) for x in q)},
        "architecture": {"op": "conv" if epoch > 1 else "skip", "in": [0]},
    }


def test_one_shot_epochs_are_logged_from_the_record(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path)
    trainer = _trainer()
    records = [_record(epoch) for epoch in (1, 2, 3)]

    def fit() -> Any:
        wrapper = logger.nastrain_fit(trainer)
        next(wrapper)  # the fit runs here
        for record in records:
            logger.nastrain_on_epoch(trainer, record)
        with pytest.raises(StopIteration):
            wrapper.send(None)

    fit()
    assert not logger._searches  # closed when the fit ended
    events = read(tmp_path / "darts-0001")
    for key in ("loss", "accuracy"):
        got = scalars(events, f"metrics/{key}")
        assert got == [(r["epoch"], pytest.approx(r["metrics"][key])) for r in records]
    for label in ("op", "in"):
        got = scalars(events, f"entropy/{label}")
        assert got == [(r["epoch"], pytest.approx(r["entropy"][label])) for r in records]
    # A layer choice's candidates by name (from the trainer's space), an input's by index.
    for label, names in (("op", ["conv", "pool", "skip"]), ("in", ["0", "1"])):
        for i, name in enumerate(names):
            got = scalars(events, f"probabilities/{label}/{name}")
            assert got == [
                (r["epoch"], pytest.approx(r["probabilities"][label][i])) for r in records
            ]
        histograms = events.Histograms(f"architecture/{label}")
        assert [h.step for h in histograms] == [1, 2, 3]
        for h, r in zip(histograms, records):
            value = h.histogram_value
            assert list(value.bucket) == pytest.approx(r["probabilities"][label])
            assert list(value.bucket_limit) == [i + 0.5 for i in range(len(names))]
    texts = events.Tensors("architecture/text_summary")
    assert [t.step for t in texts] == [1, 2, 3]
    for t, r in zip(texts, records):
        shown = t.tensor_proto.string_val[0].decode()
        assert json.loads(shown) == r["architecture"]  # JSON, indented as Markdown code
    fit()  # a second fit of the same trainer is a run of its own
    assert sorted(p.name for p in tmp_path.iterdir()) == ["darts-0001", "darts-0002"]
    assert scalars(read(tmp_path / "darts-0002"), "metrics/loss")[0][0] == 1


def test_probabilities_given_by_candidate_name_and_odd_values(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path)
    trainer = SimpleNamespace()  # no name, no space: the class name and indices
    record = {
        "epoch": 1,
        "metrics": {"loss": 0.5, "note": "text is skipped"},
        "probabilities": {"a/b": {"x": 0.25, "y": 0.75}, "c": [0.5, 0.5], "d": "junk"},
    }
    logger.nastrain_on_epoch(trainer, record)
    logger.close()
    (run,) = tmp_path.iterdir()
    assert run.name == "simplenamespace-0001"
    events = read(run)
    assert sorted(events.Tags()["scalars"]) == [
        "metrics/loss",
        "probabilities/a_b/x",
        "probabilities/a_b/y",
        "probabilities/c/0",
        "probabilities/c/1",
    ]
    assert scalars(events, "probabilities/a_b/y") == [(1, 0.75)]
