"""Executors as a registry: a plugin's executor registered through
``nastrain_register_executors`` runs an experiment as the built-ins do; unknown and duplicate
names, options that reach the factory (and misspelt ones refused before anything is
recorded), the config's ``[executor]`` table, and the JSON forms of what travels to a worker."""

from __future__ import annotations

import json
import re
import textwrap
import warnings
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

import nastrain
from nastrain import plugins
from nastrain.experiments import (
    ExecutorContext,
    ExecutorSpec,
    TrialJob,
    WorkerSetup,
    check_options,
    describe_exception,
    load_config,
    prepare_worker,
    run_trial,
)
from nastrain.experiments.executor import TrialStopped
from nastrain.experiments.store import Store
from nastrain.testing import builtin_plugins_only, registered


class QueueExecutor:
    """A test double of a remote executor: jobs wait in a queue as JSON; each :meth:`poll`
    runs the oldest one in this process, as a remote worker would (``prepare_worker`` once in
    :meth:`start`, then ``run_trial`` per job); ``slots`` jobs may wait at once."""

    name = "queue"
    made: ClassVar[list[ExecutorContext]] = []
    events: ClassVar[list[str]] = []

    def __init__(self, context: ExecutorContext) -> None:
        self.options = check_options(
            "queue", context.options, ("slots", "unreachable", "runtime_env")
        )
        self.context = context
        self.queue: list[str] = []
        self.space: Any = None
        QueueExecutor.made.append(context)

    def start(self) -> None:
        if self.options.get("unreachable"):
            raise ConnectionError(f"cannot reach the queue at {self.options['unreachable']!r}")
        self.events.append("start")
        self.space = prepare_worker(WorkerSetup.from_json(self.context.setup.to_json()))

    def free_slots(self) -> int:
        return int(self.options.get("slots", 1)) - len(self.queue)

    def running(self) -> int:
        return len(self.queue)

    def submit(self, job: TrialJob) -> None:
        self.queue.append(job.to_json())

    def poll(self, timeout: float | None) -> None:
        job = TrialJob.from_json(self.queue[0])
        handler = self.context.handler
        handler.on_start(job.index, f"queue:{job.attempt}")
        status, reason = "succeeded", None
        try:
            run_trial(self.space, job, lambda m, f: handler.on_result(job.index, m, f))
        except TrialStopped:
            status = "early_stopped"
        except Exception as exc:
            status, reason = "failed", describe_exception(exc)
        self.queue.pop(0)
        handler.on_end(job.index, status, reason)

    def close(self) -> None:
        self.events.append("close")


class QueuePlugin:
    @nastrain.hookimpl
    def nastrain_register_executors(self, register: Any) -> None:
        register(QueueExecutor)


@pytest.fixture
def queue(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The queue executor registered while the test runs. Its worker runs in this process,
    so what a worker does to its own process (reload the plugins, set torch's threads) is
    kept from undoing the registration or the test process's threads."""
    QueueExecutor.made.clear()
    QueueExecutor.events.clear()
    monkeypatch.setattr(plugins, "reload_plugins", plugins.plugin_manager)
    threads = torch.get_num_threads()
    with registered(QueuePlugin(), name="queue-plugin"):
        yield QueueExecutor
    torch.set_num_threads(threads)


def _experiment(trials: Any, tmp_path: Path, **options: Any) -> nastrain.Experiment:
    settings: dict[str, Any] = {
        "max_trials": 4,
        "store": tmp_path / "s.sqlite",
        "progress": False,
        **options,
    }
    return nastrain.Experiment(
        "nastrain_test_trials:SmallSpace", trials.ScoreTrainer(None, epochs=2), "grid", **settings
    )


def test_the_builtin_executors_are_registered_through_the_hook() -> None:
    with builtin_plugins_only():
        assert plugins.executor_names() == ["inline", "local"]
        for name in ("local", "inline"):
            (provider,) = plugins.executor_providers()[name]
            assert (
                provider.provider
                == "plugin 'nastrain.experiments.builtin' of distribution nastrain"
            )
            assert callable(plugins.get_executor(name))


def test_a_plugins_executor_runs_an_experiment_with_its_options(queue, trials, tmp_path) -> None:
    result = _experiment(
        trials, tmp_path, executor="queue", executor_options={"slots": 2}, concurrency=3
    ).run()
    space = trials.SmallSpace()
    assert [t.status for t in result.trials] == ["succeeded"] * 4
    for trial in result.trials:
        expected = trials.score(nastrain.apply_arch(space, trial.arch))
        assert trial.value == expected
        assert [m for m in trial.intermediate] == [expected / 2, expected]
        assert trial.worker == "queue:1"
    (context,) = queue.made
    assert context.name == "queue"
    assert context.options == {"slots": 2}
    assert context.concurrency == 3
    assert context.store_path == tmp_path / "s.sqlite"
    assert context.setup.space_ref == "nastrain_test_trials:SmallSpace"
    assert context.space is None
    assert "nastrain_test_trials" in context.setup.modules
    assert queue.events == ["start", "close"]
    with Store.read(tmp_path / "s.sqlite") as store:
        settings = store.run_settings()
    assert settings is not None
    assert settings["executor"] == "queue"
    assert settings["executor_options"] == {"slots": 2}


def test_the_concurrency_a_factory_is_given_is_at_most_the_trials_to_run(
    queue, trials, tmp_path
) -> None:
    _experiment(trials, tmp_path, executor="queue", concurrency=8, max_trials=2).run()
    assert [c.concurrency for c in queue.made] == [2]


def test_an_unknown_executor_is_refused_listing_the_known_ones(trials, tmp_path) -> None:
    with builtin_plugins_only():
        with pytest.raises(
            KeyError, match=r"unknown executor 'cluster'; known executors: \['inline', 'local'\]"
        ):
            _experiment(trials, tmp_path, executor="cluster")
        # nastrain-ray is a plugin of its own: not loaded here, and the error says so.
        with pytest.raises(KeyError, match=r"pip install nastrain-ray.*known executors"):
            _experiment(trials, tmp_path, executor="ray")
    assert not (tmp_path / "s.sqlite").exists()


def test_two_plugins_registering_one_executor_name_is_an_error_naming_both() -> None:
    class Other:
        name = "queue"

        def __init__(self, context: ExecutorContext) -> None:
            raise AssertionError("never built")

    class OtherPlugin:
        @nastrain.hookimpl
        def nastrain_register_executors(self, register: Any) -> None:
            register(Other)

    with registered(QueuePlugin(), name="queue-plugin"):
        with (
            pytest.warns(plugins.PluginWarning, match="executor name 'queue' is provided by both"),
            registered(OtherPlugin(), name="other-plugin"),
            pytest.raises(ValueError) as error,
        ):
            plugins.get_executor("queue")
        message = str(error.value)
        assert "QueueExecutor (from plugin 'queue-plugin')" in message
        assert "Other (from plugin 'other-plugin')" in message
        assert plugins.get_executor("queue") is QueueExecutor  # the other one is gone


def test_a_registered_executor_must_be_callable() -> None:
    class BadPlugin:
        @nastrain.hookimpl
        def nastrain_register_executors(self, register: Any) -> None:
            register("not-a-factory", name="bad")

    with (
        pytest.raises(TypeError, match="registered 'not-a-factory' as executor 'bad'"),
        registered(BadPlugin(), name="bad-plugin"),
    ):
        pass


def test_a_misspelt_option_is_refused_by_the_factory_before_anything_is_recorded(
    queue, trials, tmp_path
) -> None:
    experiment = _experiment(trials, tmp_path, executor="queue", executor_options={"slot": 2})
    with pytest.raises(
        ValueError,
        match=r"executor 'queue' has no option 'slot' \(did you mean 'slots'\?\); "
        "its options: slots, unreachable",
    ):
        experiment.run()
    local = _experiment(trials, tmp_path, executor_options={"address": "auto"})
    with pytest.raises(
        ValueError, match="executor 'local' has no option 'address'; it takes no options"
    ):
        local.run()
    with Store.read(tmp_path / "s.sqlite") as store:
        assert store.trials() == []
        assert store.run_settings() is None


def test_an_executor_that_cannot_start_leaves_the_store_without_a_trial(
    queue, trials, tmp_path
) -> None:
    experiment = _experiment(
        trials, tmp_path, executor="queue", executor_options={"unreachable": "10.0.0.1:6379"}
    )
    with pytest.raises(ConnectionError, match="cannot reach the queue at '10.0.0.1:6379'"):
        experiment.run()
    assert queue.events == ["close"]  # closed, although it never started
    with Store.read(tmp_path / "s.sqlite") as store:
        assert store.trials() == []
        assert store.run_settings() is None
    # The same experiment with a reachable queue then runs on that store.
    fixed = _experiment(trials, tmp_path, executor="queue")
    assert len(fixed.run().trials) == 4


def test_options_that_are_not_json_are_refused_when_the_experiment_is_made(
    queue, trials, tmp_path
) -> None:
    with pytest.raises(TypeError, match="option 'slots' of executor 'queue' is nan"):
        _experiment(trials, tmp_path, executor="queue", executor_options={"slots": float("nan")})
    with pytest.raises(TypeError, match="executor_options keys must be strings, got 1"):
        _experiment(trials, tmp_path, executor="queue", executor_options={1: 2})
    with pytest.raises(TypeError, match="executor must be a registered executor's name"):
        _experiment(trials, tmp_path, executor=QueueExecutor)


def test_a_factory_that_returns_no_executor_is_refused_naming_it(trials, tmp_path) -> None:
    def half(context: ExecutorContext) -> object:
        return object()

    class HalfPlugin:
        @nastrain.hookimpl
        def nastrain_register_executors(self, register: Any) -> None:
            register(half, name="half")

    with registered(HalfPlugin(), name="half-plugin"):
        experiment = _experiment(trials, tmp_path, executor="half")
        with pytest.raises(
            TypeError,
            match=r"executor 'half' \(factory .*half\) returned object, which has no "
            r"start\(\) method",
        ):
            experiment.run()


def _write_config(tmp_path: Path, executor: str) -> Path:
    """A config of 3 grid trials; ``executor`` is its lines about the executor."""
    path = tmp_path / "search.toml"
    body = textwrap.dedent(
        """\
        space = "nastrain_test_trials:SmallSpace"
        max_trials = 3
        strategy = "grid"
        store = "s.sqlite"
        trainer = {name = "test-score"}
        """
    )
    path.write_text(body + executor)
    return path


def test_the_config_executor_table_holds_the_name_and_its_options(queue, trials, tmp_path) -> None:
    path = _write_config(tmp_path, '\n[executor]\nname = "queue"\nslots = 2\n')
    config = load_config(path)
    assert config.executor == ExecutorSpec(name="queue", options={"slots": 2})
    result = config.experiment(tmp_path, progress=False).run()
    assert [t.status for t in result.trials] == ["succeeded"] * 3
    assert [c.options for c in queue.made] == [{"slots": 2}]
    with Store.read(tmp_path / "s.sqlite") as store:
        assert store.run_settings()["executor"] == "queue"  # type: ignore[index]
    # The short form, and the default.
    assert load_config(_write_config(tmp_path, 'executor = "inline"\n')).executor == ExecutorSpec(
        name="inline"
    )
    assert load_config(_write_config(tmp_path, "")).executor == ExecutorSpec(name="local")


def test_an_executor_table_without_a_name_is_refused_naming_it(trials, tmp_path) -> None:
    path = _write_config(tmp_path, '\n[executor]\naddress = "auto"\n')
    with pytest.raises(
        ValueError, match=r"executor.*needs a 'name'.*\(address\) are the executor's options"
    ):
        load_config(path)
    path = _write_config(tmp_path, "executor = 3\n")
    with pytest.raises(ValueError, match="executor.*expected an executor's name or a table"):
        load_config(path)


def test_a_config_executor_option_reaches_the_factory_and_a_bad_one_is_named(
    queue, trials, tmp_path
) -> None:
    path = _write_config(tmp_path, '\n[executor]\nname = "queue"\nslotz = 2\n')
    experiment = load_config(path).experiment(tmp_path, progress=False)
    with pytest.raises(ValueError, match="executor 'queue' has no option 'slotz'"):
        experiment.run()


def test_jobs_and_worker_setups_go_through_json_and_back() -> None:
    job = TrialJob(
        index=3,
        attempt=2,
        arch={"a": "y", "c": [0, 2]},
        seed=17,
        trainer=nastrain.TrainerSpec(name="ScoreTrainer", kwargs={"epochs": 2}),
    )
    assert TrialJob.from_json(job.to_json()) == job
    setup = WorkerSetup(
        space_ref="m:f", space_kwargs={"n": 2}, modules=("m",), threads=3, environ={"A": "b"}
    )
    assert WorkerSetup.from_json(setup.to_json()) == setup
    with pytest.raises(ValueError, match="invalid trial job.*seed"):
        TrialJob.from_json(job.to_json().replace('"seed": 17', '"seed": "x"'))
    with pytest.raises(ValueError, match="invalid worker setup: not JSON"):
        WorkerSetup.from_json("{")


def test_prepare_worker_needs_a_space_named_by_reference() -> None:
    with pytest.raises(
        ValueError, match="no space_ref: the model space must be named as 'module:attr'"
    ):
        prepare_worker(WorkerSetup())


def test_describe_exception_names_the_error_then_its_traceback() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError as exc:
        text = describe_exception(exc)
    first, *rest = text.splitlines()
    assert first == "ValueError: bad value"
    assert rest[0] == "Traceback (most recent call last):"
    assert "test_describe_exception_names_the_error_then_its_traceback" in text


def test_check_options_takes_the_known_and_names_the_unknown() -> None:
    assert check_options("x", {"a": 1}, ("a", "b")) == {"a": 1}
    with pytest.raises(ValueError, match="executor 'x' has no option 'c'; its options: a, b"):
        check_options("x", {"c": 1}, ("a", "b"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_options("x", {}) == {}


def test_nastrain_executors_lists_the_registered_ones(capsys) -> None:
    from nastrain.cli import main  # the command line, only for this test

    with builtin_plugins_only():
        assert main(["executors"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert main(["executors", "--json"]) == 0
        listing = json.loads(capsys.readouterr().out)
    assert [line.split()[0] for line in lines] == ["inline", "local"]
    assert "(from plugin 'nastrain.experiments.builtin' of distribution nastrain)" in lines[1]
    assert listing["local"] == [
        {
            "object": "nastrain.experiments.builtin._local",
            "provider": "plugin 'nastrain.experiments.builtin' of distribution nastrain",
        }
    ]


def test_a_used_up_grid_run_again_starts_no_executor(queue, trials, tmp_path) -> None:
    # SmallSpace has 18 architectures: the grid is used up after the first run.
    first = _experiment(trials, tmp_path, executor="queue", max_trials=30).run()
    assert len(first.trials) == 18
    assert queue.events == ["start", "close"] and len(queue.made) == 1
    again = _experiment(trials, tmp_path, executor="queue", max_trials=30).run()
    assert again.trials == first.trials
    assert again.stop_reason == "the search space has only 18 architectures (grid exhausted)"
    assert queue.events == ["start", "close"] and len(queue.made) == 1  # none made, none started
    # A run with trials left does start one, and its first trial is the grid's next.
    fresh = _experiment(
        trials, tmp_path, executor="queue", max_trials=2, store=tmp_path / "t.sqlite"
    ).run()
    assert [t.arch for t in fresh.trials] == [t.arch for t in first.trials[:2]]
    assert queue.events == ["start", "close"] * 2


def test_a_trainer_defined_in_main_is_refused_for_a_remote_executor(
    queue, trials, tmp_path, monkeypatch
) -> None:
    # As if the script run (__main__) defined the trainer: a remote executor's workers run
    # another __main__, so every trial would fail there; it is refused before anything runs.
    monkeypatch.setattr(trials.ScoreTrainer, "__module__", "__main__")
    with pytest.raises(
        ValueError,
        match=re.escape(
            "executor='queue' needs the trainer importable on its workers; a trainer defined "
            "in __main__ ('ScoreTrainer') is not: move it into a module"
        ),
    ):
        _experiment(trials, tmp_path, executor="queue")
    assert queue.made == []
    assert not (tmp_path / "s.sqlite").exists()
    # The local executor's processes import the script (as __mp_main__), inline runs here.
    for executor in ("local", "inline"):
        assert _experiment(trials, tmp_path, executor=executor).executor == executor


def test_env_vars_in_the_options_are_recorded_by_name_only(queue, trials, tmp_path) -> None:
    options = {
        "slots": 1,
        "runtime_env": {"env_vars": {"WANDB_API_KEY": "s3cret", "HF_TOKEN": "hf_x"}, "pip": ["a"]},
    }
    _experiment(trials, tmp_path, executor="queue", executor_options=options, max_trials=1).run()
    # The executor has the values; the store, which reports show, only the names.
    (context,) = queue.made
    assert context.options["runtime_env"]["env_vars"]["WANDB_API_KEY"] == "s3cret"
    with Store.read(tmp_path / "s.sqlite") as store:
        settings = store.run_settings()
    assert settings is not None
    assert settings["executor_options"] == {
        "slots": 1,
        "runtime_env": {"env_vars": {"WANDB_API_KEY": "***", "HF_TOKEN": "***"}, "pip": ["a"]},
    }
    raw = (tmp_path / "s.sqlite").read_bytes()
    assert b"s3cret" not in raw and b"hf_x" not in raw
