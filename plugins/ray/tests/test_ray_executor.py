"""The Ray executor on a real two-node Ray cluster on loopback (conftest.py): placement on
both nodes, a node lost in the middle of a trial, early stops that cancel the task, a
driver SIGKILLed and restarted, and the bad input (an unreachable address, resources no node
has, a space object, Ray missing)."""

from __future__ import annotations

import collections
import contextlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import attrs
import pytest
import ray  # conftest.py skips these tests where Ray cannot be imported
from nastrain_ray_test_trainers import CrashingTrainer, EpochsTrainer
from nastrain_test_trials import ScoreTrainer

import nastrain
from nastrain.experiments.executor import ExecutorContext, ExecutorError, WorkerSetup
from nastrain.experiments.store import Store

HERE = Path(__file__).resolve().parent
WORKER = re.compile(r"^ray:127\.0\.0\.1:(\d+) node=([0-9a-f]+)$")


def node_ids(cluster: Any) -> set[str]:
    return {node.node_id for node in [cluster.head_node, *cluster.worker_nodes]}


def experiment(cluster: Any, tmp_path: Path, trainer: Any, **settings: Any) -> nastrain.Experiment:
    options = {"address": cluster.address, **settings.pop("executor_options", {})}
    settings.setdefault("strategy", "grid")
    return nastrain.Experiment(
        "nastrain_test_trials:SmallSpace",
        trainer,
        settings.pop("strategy"),
        store=tmp_path / "experiment.sqlite",
        executor="ray",
        executor_options=options,
        progress=False,
        **settings,
    )


def log_lines(log: Path) -> list[tuple[float, int, int, str]]:
    """``(points, epoch, pid, node id)`` per line the test trainer wrote."""
    if not log.exists():
        return []
    rows = []
    for line in log.read_text().splitlines():
        points, epoch, pid, node, _ = line.split()
        rows.append((float(points), int(epoch), int(pid), node))
    return rows


def settled_lines(
    log: Path, quiet: float = 1.5, limit: float = 60
) -> list[tuple[float, int, int, str]]:
    """The log's lines once no line has come for ``quiet`` seconds (at most ``limit`` seconds
    of waiting): a task still training logs an epoch far more often, so what this returns is
    all a cancelled task wrote, however slow the machine is to end it."""
    deadline = time.monotonic() + limit
    lines = log_lines(log)
    still = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = log_lines(log)
        if now != lines:
            lines, still = now, time.monotonic()
        elif time.monotonic() - still >= quiet:
            return lines
    raise AssertionError(f"{log} still grew after {limit:g} s: a task was not cancelled")


def assert_nothing_recorded(store: Path) -> None:
    if store.exists():
        with Store.read(store) as opened:
            assert opened.trials() == []
            assert opened.run_settings() is None


def test_trials_run_on_both_nodes_and_each_names_its_node(ray_cluster: Any, tmp_path: Path) -> None:
    log = tmp_path / "log"
    trainer = EpochsTrainer(None, log=str(log), epochs=2, sleep=0.3)
    result = experiment(ray_cluster, tmp_path, trainer, max_trials=4, concurrency=2).run()
    assert [t.status for t in result.trials] == ["succeeded"] * 4
    nodes = set()
    for trial in result.trials:
        match = WORKER.match(trial.worker or "")
        assert match, trial.worker
        nodes.add(match.group(2))
        # The node the store names is where the trainer ran.
        ran = {(int(pid), node) for points, _, pid, node in log_lines(log) if points == trial.value}
        assert ran == {(int(match.group(1)), match.group(2))}
        assert trial.intermediate == (trial.value / 2, trial.value)  # type: ignore[operator]
    # Two trials at a time, one CPU per node: both nodes ran trials.
    assert nodes == node_ids(ray_cluster)


def test_a_trial_on_a_lost_node_runs_again_elsewhere_and_each_result_is_stored_once(
    ray_cluster: Any, tmp_path: Path
) -> None:
    third = ray_cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", resources={"third": 1})
    ray_cluster.wait_for_nodes()
    log = tmp_path / "log"
    removed = threading.Event()

    def remove_when_third_trains() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(node == third.node_id for *_, node in log_lines(log)):
                ray_cluster.remove_node(third, allow_graceful=False)
                removed.set()
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=remove_when_third_trains, daemon=True)
    watcher.start()
    # Three trials at a time on three nodes of one CPU: one of them starts on the third.
    # Its first epoch logs at once, the others take 0.8 s each: seconds to remove the node
    # while the trial trains there, on a machine however loaded.
    trainer = EpochsTrainer(None, log=str(log), epochs=4, sleep=0.8, first_sleep=0.05)
    result = experiment(ray_cluster, tmp_path, trainer, max_trials=3, concurrency=3).run()
    watcher.join(5)
    assert removed.is_set()
    assert [t.status for t in result.trials] == ["succeeded"] * 3
    lost = {points for points, _, _, node in log_lines(log) if node == third.node_id}
    assert len(lost) == 1
    with Store.read(tmp_path / "experiment.sqlite") as store:
        rows = store.result_rows()
    for trial in result.trials:
        assert trial.worker is not None and third.node_id not in trial.worker
        mine = [r for r in rows if r["trial"] == trial.index]
        # Every step once, in order, though the lost trial reported its first step twice.
        assert [r["metric"] for r in mine] == [trial.value * (e + 1) / 4 for e in range(4)] + [
            trial.value
        ]
        assert [r["final"] for r in mine] == [False] * 4 + [True]
        epochs = [epoch for points, epoch, *_ in log_lines(log) if points == trial.value]
        if trial.value in lost:
            assert epochs.count(0) == 2  # it trained again on another node
        else:
            assert epochs == [0, 1, 2, 3]


def test_median_stop_cancels_the_running_task(ray_cluster: Any, tmp_path: Path) -> None:
    log = tmp_path / "log"
    epochs = 20
    # mode "min": the grid's trials score 1, 2, 3, 11; the last two are worse than the
    # median of the first two at their first step, and are stopped there. A trial not
    # stopped trains for 20 epochs of 0.15 s, logging each.
    trainer = EpochsTrainer(None, log=str(log), epochs=epochs, sleep=0.15, first_sleep=0.02)
    strategy = nastrain.StrategySpec(
        name="median_stop", kwargs={"base": "grid", "min_trials": 2, "min_steps": 1}
    )
    result = experiment(
        ray_cluster, tmp_path, trainer, strategy=strategy, max_trials=4, mode="min"
    ).run()
    assert [t.status for t in result.trials] == ["succeeded"] * 2 + ["early_stopped"] * 2
    # Once the log is quiet (a task not cancelled would go on logging every 0.15 s).
    per_trial = collections.Counter(points for points, *_ in settled_lines(log))
    finished = {trial.value for trial in result.trials[:2]}
    for points in finished:
        assert per_trial[points] == epochs
    stopped = [points for points in per_trial if points not in finished]
    assert len(stopped) == 2
    for points in stopped:
        # Its task ended soon after its first report: far fewer epochs than the trial's 20
        # (on an idle machine 1 or 2; the bound leaves the cancel seconds to arrive).
        assert 1 <= per_trial[points] <= epochs // 2, per_trial
    for trial in result.trials[2:]:
        assert trial.reason is not None and "Ray task was cancelled" in trial.reason
        assert len(trial.intermediate) == 1


def test_a_failing_trial_fails_once_and_a_hanging_one_times_out(
    ray_cluster: Any, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    trainer = ScoreTrainer(None, fail=[2.0], hang=[3.0], log=str(log))
    result = experiment(ray_cluster, tmp_path, trainer, max_trials=3, trial_timeout=3).run()
    statuses = {t.value if t.final is not None else None: t.status for t in result.trials}
    assert statuses[1.0] == "succeeded"
    failed, hung = result.trials[1], result.trials[2]
    assert failed.status == "failed" and "score 2.0 fails on purpose" in (failed.reason or "")
    assert hung.status == "failed" and "timed out after 3 s" in (hung.reason or "")
    # A trial that raises is not retried (max_retries is for lost workers and nodes).
    scores = [float(line.split()[0]) for line in log.read_text().splitlines()]
    assert scores.count(2.0) == 1


def test_a_sigkilled_driver_restarted_finishes_every_trial_once(
    ray_cluster: Any, tmp_path: Path
) -> None:
    store, log = tmp_path / "experiment.sqlite", tmp_path / "log"
    command = [
        sys.executable,
        str(HERE / "ray_driver.py"),
        ray_cluster.address,
        str(store),
        str(log),
        "3",  # epochs
        "0.4",  # seconds each: the kill comes while two trials are half-way
    ]
    with open(tmp_path / "first.err", "w") as err:
        first = subprocess.Popen(command, stderr=err, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            # Kill it once two trials are done and two more are half-way.
            while sum(1 for _, epoch, *_ in log_lines(log) if epoch == 2) < 2 or (
                sum(1 for _, epoch, *_ in log_lines(log) if epoch == 0) < 4
            ):
                assert first.poll() is None, (tmp_path / "first.err").read_text()
                assert time.monotonic() < deadline, (tmp_path / "first.err").read_text()
                time.sleep(0.02)
            first.send_signal(signal.SIGKILL)
        finally:
            first.kill()
            first.wait()
    second = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    with Store.read(store) as opened:
        trials, rows = opened.trials(), opened.result_rows()
    assert [t.status for t in trials] == ["succeeded"] * 6
    assert any(t.attempts == 2 for t in trials)  # the interrupted ones ran again
    for trial in trials:
        latest = [r for r in rows if r["trial"] == trial.index and r["attempt"] == trial.attempts]
        assert [r["final"] for r in latest] == [False] * 3 + [True]
        assert trial.intermediate == tuple(trial.value * (e + 1) / 3 for e in range(3))  # type: ignore[operator]
        for attempt in range(1, trial.attempts + 1):
            some = [r for r in rows if r["trial"] == trial.index and r["attempt"] == attempt]
            assert len(some) <= 4 and sum(r["final"] for r in some) <= 1
    assert sum(1 for r in rows if r["final"]) == 6


def test_a_trial_asking_for_a_gpu_runs_where_one_is_in_a_fresh_worker_each_time(
    ray_cluster: Any, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    trainer = EpochsTrainer(None, log=str(log), epochs=1)
    result = experiment(
        ray_cluster, tmp_path, trainer, max_trials=2, executor_options={"num_gpus": 0.5}
    ).run()
    assert [t.status for t in result.trials] == ["succeeded"] * 2
    nodes = {node for *_, node in log_lines(log)}
    assert nodes == {ray_cluster.head_node.node_id}  # the node with the GPU
    pids = [pid for _, _, pid, _ in log_lines(log)]
    assert len(set(pids)) == 2  # a new worker process for each GPU trial


def test_ctrl_c_cancels_the_running_tasks_and_records_them_interrupted(
    ray_cluster: Any, tmp_path: Path
) -> None:
    store, log = tmp_path / "experiment.sqlite", tmp_path / "log"
    driver = str(HERE / "ray_driver.py")
    epochs = 20  # of 0.25 s: a trial not cancelled trains on for seconds
    command = [sys.executable, driver, ray_cluster.address, str(store), str(log), str(epochs)]
    with open(tmp_path / "driver.err", "w") as err:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while sum(1 for _, epoch, *_ in log_lines(log) if epoch == 0) < 2:
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=15)
    finally:
        process.kill()
        process.wait()
    assert process.returncode != 0
    # Once the log is quiet (a task still running logs an epoch every 0.25 s), no trial
    # trained all its epochs: the tasks ended when the driver stopped.
    per_trial = collections.Counter(points for points, *_ in settled_lines(log))
    assert per_trial and max(per_trial.values()) < epochs, per_trial
    with Store.read(store) as opened:
        trials = opened.trials()
    interrupted = [t for t in trials if t.status == "interrupted"]
    assert interrupted and all("KeyboardInterrupt" in (t.reason or "") for t in interrupted)
    assert all(t.status in ("interrupted", "succeeded") for t in trials)


def test_nastrain_run_with_an_executor_table_ships_the_code_with_runtime_env(
    ray_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nastrain.cli import main

    # The space's module is only in the project folder, which Ray ships to the workers
    # (working_dir); nastrain run puts it on this process's path (--app-dir).
    project = tmp_path / "project"
    project.mkdir()
    (project / "nastrain_ray_shipped_space.py").write_text(
        "from nastrain_test_trials import SmallSpace as Space\n"
    )
    (project / "search.toml").write_text(
        f"""
space = "nastrain_ray_shipped_space:Space"
strategy = "grid"
max_trials = 3
concurrency = 2

[trainer]
name = "test-score"
kwargs = {{epochs = 1}}

[executor]
name = "ray"
address = "{ray_cluster.address}"
runtime_env = {{working_dir = "{project}"}}
"""
    )
    # Elsewhere: Ray puts a driver's working directory on the path of workers on its machine.
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(project / "search.toml"), "--app-dir", str(project)]) == 0
    with Store.read(project / "search.sqlite") as store:
        trials, settings = store.trials(), store.run_settings()
    assert [t.status for t in trials] == ["succeeded"] * 3
    assert [t.value for t in trials] == [1.0, 2.0, 3.0]  # the grid's first three
    assert all(WORKER.match(t.worker or "") for t in trials)
    assert settings is not None and settings["executor"] == "ray"
    assert settings["executor_options"]["runtime_env"] == {"working_dir": str(project)}


# --- bad input -----------------------------------------------------------------------------


def test_an_unreachable_address_is_named_within_seconds_and_nothing_is_recorded(
    tmp_path: Path,
) -> None:
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"127.0.0.1:{port}"
    exp = nastrain.Experiment(
        "nastrain_test_trials:SmallSpace",
        ScoreTrainer(None),
        max_trials=2,
        store=tmp_path / "experiment.sqlite",
        executor="ray",
        executor_options={"address": address},
        progress=False,
    )
    began = time.monotonic()
    with pytest.raises(
        ExecutorError, match=re.escape(f"cannot reach the Ray cluster at '{address}'")
    ):
        exp.run()
    assert time.monotonic() - began < 10
    assert not ray.is_initialized()
    assert_nothing_recorded(tmp_path / "experiment.sqlite")


@pytest.mark.parametrize(
    ("answer", "named"),
    [
        (None, "did not answer as Ray's GCS within 2 s (connect_timeout)"),
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "does not answer as Ray's GCS"),
    ],
)
def test_a_port_that_is_not_rays_gcs_is_named_within_the_connect_timeout(
    tmp_path: Path, answer: bytes | None, named: str
) -> None:
    # A plain TCP listener on loopback: silent, or answering as an HTTP/1.1 server would
    # (Ray's dashboard); ray.init would wait there for minutes.
    listener = socket.create_server(("127.0.0.1", 0))
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    accepted: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            connection, _ = listener.accept()
            accepted.append(connection)
            if answer is not None:
                connection.recv(1024)
                connection.sendall(answer)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    exp = nastrain.Experiment(
        "nastrain_test_trials:SmallSpace",
        ScoreTrainer(None),
        max_trials=2,
        store=tmp_path / "experiment.sqlite",
        executor="ray",
        executor_options={"address": address, "connect_timeout": 2},
        progress=False,
    )
    began = time.monotonic()
    try:
        with pytest.raises(ExecutorError, match=re.escape(named)) as raised:
            exp.run()
    finally:
        listener.close()
        server.join(5)
        for connection in accepted:
            connection.close()
    assert time.monotonic() - began < 10
    message = str(raised.value)
    assert repr(address) in message and "is this Ray's GCS port?" in message
    assert "8265" in message and "10001" in message
    assert not ray.is_initialized()
    assert_nothing_recorded(tmp_path / "experiment.sqlite")


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"num_cpus": 4}, "4 CPU (num_cpus)"),
        ({"num_gpus": 2}, "2 GPU (num_gpus)"),
        ({"resources": {"tpu": 2}}, "2 tpu (resources.tpu)"),
        ({"resources": {"head": 1, "second": 1}}, "no node of the cluster has all"),
    ],
)
def test_a_trial_asking_for_more_than_any_node_has_is_refused_before_it_starts(
    ray_cluster: Any, tmp_path: Path, options: dict[str, Any], named: str
) -> None:
    exp = experiment(
        ray_cluster, tmp_path, ScoreTrainer(None), max_trials=2, executor_options=options
    )
    with pytest.raises(ExecutorError, match=re.escape(named)):
        exp.run()
    assert not ray.is_initialized()
    assert_nothing_recorded(tmp_path / "experiment.sqlite")


def test_a_space_object_is_refused(tmp_path: Path) -> None:
    from nastrain_test_trials import SmallSpace

    exp = nastrain.Experiment(
        SmallSpace(),
        ScoreTrainer(None),
        max_trials=1,
        store=tmp_path / "s.sqlite",
        executor="ray",
        progress=False,
    )
    with pytest.raises(ExecutorError, match="needs the space named as module:attr"):
        exp.run()
    assert_nothing_recorded(tmp_path / "s.sqlite")


def context(**options: Any) -> ExecutorContext:
    return ExecutorContext(
        setup=WorkerSetup(space_ref="nastrain_test_trials:SmallSpace"),
        space=None,
        concurrency=1,
        trial_timeout=None,
        handler=None,  # type: ignore[arg-type]
        options=options,
        store_path=Path("unused.sqlite"),
        name="ray",
    )


def test_a_space_in_main_and_unknown_options_are_refused() -> None:
    from nastrain_ray import ray_executor

    main = attrs.evolve(context(), setup=WorkerSetup(space_ref="__main__:Net"))
    with pytest.raises(ExecutorError, match=r"defined in __main__ \('__main__:Net'\)"):
        ray_executor(main)
    with pytest.raises(ValueError, match="no option 'num_cpu' \\(did you mean 'num_cpus'\\?\\)"):
        ray_executor(context(num_cpu=1))
    with pytest.raises(ValueError, match="'max_retries' must be an integer >= 0"):
        ray_executor(context(max_retries=-1))
    with pytest.raises(ValueError, match="give CPU as num_cpus"):
        ray_executor(context(resources={"CPU": 2}))


def test_ray_missing_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from nastrain_ray import ray_executor

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails
    for name in ("nastrain_ray.executor", "nastrain_ray.worker"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(ExecutorError, match=re.escape('pip install "ray>=2.40"')):
        ray_executor(context())


def test_a_lost_worker_reruns_the_trial_and_each_step_is_stored_once_as_first_reported(
    ray_cluster: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "log"
    # The trial scoring 1 kills its worker after 2 of its 4 reports, on its first run; a
    # rerun's values are 1000 higher, so the store shows whose each step is.
    trainer = CrashingTrainer(None, log=str(log), crash=[1.0], crashes=1)
    with caplog.at_level("WARNING", logger="nastrain_ray.executor"):
        result = experiment(ray_cluster, tmp_path, trainer, max_trials=2, concurrency=2).run()
    assert [t.status for t in result.trials] == ["succeeded"] * 2
    runs = collections.defaultdict(list)
    for line in log.read_text().splitlines():
        points, pid = line.split()
        runs[float(points)].append(int(pid))
    assert {points: len(pids) for points, pids in runs.items()} == {1.0: 2, 2.0: 1}
    assert "WorkerCrashedError" in caplog.text
    assert "running it again (run 2 of at most 4, max_retries)" in caplog.text
    with Store.read(tmp_path / "experiment.sqlite") as store:
        rows = store.result_rows()
    for trial in result.trials:
        mine = [(r["metric"], r["final"]) for r in rows if r["trial"] == trial.index]
        match = WORKER.match(trial.worker or "")
        assert match
        points = 1.0 if mine[0][0] == 1.0 else 2.0
        # The store names the worker of the run that finished.
        assert int(match.group(1)) == runs[points][-1]
        if points == 1.0:
            # Steps 0 and 1 as the lost run reported them; the rerun's own reports of
            # them ignored; steps 2, 3 and the final one from the rerun.
            assert mine == [
                (1.0, False),
                (2.0, False),
                (1003.0, False),
                (1004.0, False),
                (1001.0, True),
            ]
        else:
            assert mine == [(2.0, False), (4.0, False), (6.0, False), (8.0, False), (2.0, True)]


def test_a_trial_whose_workers_are_lost_more_than_max_retries_times_fails_naming_it(
    ray_cluster: Any, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    trainer = CrashingTrainer(None, log=str(log), crash=[1.0], crashes=99)
    result = experiment(
        ray_cluster, tmp_path, trainer, max_trials=2, executor_options={"max_retries": 1}
    ).run()
    lost, other = result.trials
    assert other.status == "succeeded"
    assert lost.status == "failed"
    assert "WorkerCrashedError" in (lost.reason or "")
    assert "on each of its 2 run(s) (max_retries=1)" in (lost.reason or "")
    assert [line.split()[0] for line in log.read_text().splitlines()].count("1.0") == 2
    # What the first run reported is kept, once; the second's reports of the same
    # steps (1000 higher) are not stored.
    assert lost.intermediate == (1.0, 2.0)


class _Recorder:
    """A TrialHandler that records what the executor hands it."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def on_start(self, index: int, worker: str) -> None:
        self.calls.append(("start", index, worker))

    def on_result(self, index: int, metric: Any, final: bool) -> bool:
        self.calls.append(("result", index, metric, final))
        return False

    def on_end(self, index: int, status: str, reason: str | None) -> None:
        self.calls.append(("end", index, status))


class _Stream:
    """A stand-in for a Ray streaming generator: its items are the message texts (what
    ``ray.get`` of each ref gives) or an exception (what ``ray.get`` raises)."""

    def __init__(self, items: list[Any]) -> None:
        self.items = list(items)

    def __next__(self) -> Any:
        if not self.items:
            raise StopIteration
        return self.items.pop(0)


def _fake_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    from nastrain_ray import executor

    def wait(
        streams: list[_Stream], num_returns: int, timeout: Any, fetch_local: bool
    ) -> tuple[list[_Stream], list[_Stream]]:
        ready = [s for s in streams if s.items][: max(num_returns, 1)]
        return ready, [s for s in streams if s not in ready]

    def get(item: Any) -> Any:
        if isinstance(item, BaseException):
            raise item
        return item

    monkeypatch.setattr(executor.ray, "wait", wait)
    monkeypatch.setattr(executor.ray, "get", get)


def _msg(kind: str, rerun: int, worker: str = "w", **fields: Any) -> str:
    import json

    return json.dumps({"type": kind, "rerun": rerun, "worker": worker, **fields})


def _job(index: int) -> Any:
    from nastrain.experiments.executor import TrialJob

    return TrialJob(index=index, attempt=1, arch={}, seed=0, trainer=ScoreTrainer(None).spec)  # type: ignore[attr-defined]


def test_poll_hands_over_one_message_of_each_ready_trial_per_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from nastrain_ray import ray_executor
    from nastrain_ray.executor import _Trial

    _fake_ray(monkeypatch)
    recorder = _Recorder()
    executor = ray_executor(attrs.evolve(context(), handler=recorder, concurrency=2))
    busy = [_msg("start", 0, "a")] + [
        _msg("result", 0, "a", step=s, metric=float(s), final=False) for s in range(50)
    ]
    executor._trials = {
        0: _Trial(job=_job(0), generator=_Stream(busy)),
        1: _Trial(job=_job(1), generator=_Stream([_msg("start", 0, "b")])),
    }
    executor.poll(0)
    # One pass: each trial's first message, not the busy trial's fifty results.
    assert recorder.calls == [("start", 0, "a"), ("start", 1, "b")]
    executor.poll(0)
    assert recorder.calls[2:] == [("result", 0, 0.0, False)]


def test_a_rerun_reports_each_step_again_and_only_new_steps_are_handed_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from nastrain_ray import ray_executor
    from nastrain_ray.executor import _Trial

    _fake_ray(monkeypatch)
    recorder = _Recorder()
    executor = ray_executor(attrs.evolve(context(), handler=recorder))
    first = [
        _msg("start", 0, "a"),
        _msg("result", 0, "a", step=0, metric=1.0, final=False),
        _msg("result", 0, "a", step=1, metric=2.0, final=False),
        ray.exceptions.WorkerCrashedError(),
    ]
    second = [
        _msg("start", 1, "b"),
        _msg("result", 1, "b", step=0, metric=10.0, final=False),
        _msg("result", 1, "b", step=1, metric=20.0, final=False),
        _msg("result", 1, "b", step=2, metric=30.0, final=False),
        _msg("result", 1, "b", step=3, metric=5.0, final=True),
        _msg("end", 1, "b", status="succeeded", reason=None),
    ]
    submitted = []

    class Remote:
        def remote(self, setup: str, job: str, rerun: int) -> _Stream:
            submitted.append(rerun)
            return _Stream(second)

    executor._remote = Remote()
    executor._trials = {0: _Trial(job=_job(0), generator=_Stream(first))}
    for _ in range(20):
        executor.poll(0)
    assert submitted == [1]
    assert recorder.calls == [
        ("start", 0, "a"),
        ("result", 0, 1.0, False),
        ("result", 0, 2.0, False),
        ("start", 0, "b"),
        ("result", 0, 30.0, False),
        ("result", 0, 5.0, True),
        ("end", 0, "succeeded"),
    ]


def test_the_next_trial_asks_first_for_the_node_where_a_trial_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A trial submitted after another's task ended asks for that node (soft affinity); the
    first trials, and one after a trial whose task was cancelled, are placed by Ray."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from nastrain_ray import ray_executor
    from nastrain_ray.executor import _Trial

    _fake_ray(monkeypatch)
    executor = ray_executor(attrs.evolve(context(), handler=_Recorder(), concurrency=2))
    placed: list[Any] = []

    class Remote:
        def __init__(self, strategy: Any = None) -> None:
            self.strategy = strategy

        def options(self, scheduling_strategy: Any) -> Remote:
            return Remote(scheduling_strategy)

        def remote(self, setup: str, job: str, rerun: int) -> _Stream:
            placed.append(self.strategy)
            return _Stream([])

    executor._remote = Remote()
    executor.submit(_job(0))
    assert placed == [None]
    node = "ab" * 28  # Ray's node ids: 28 bytes in hex
    worker = f"ray:127.0.0.1:7 node={node}"
    executor._trials[0] = _Trial(
        job=_job(0),
        generator=_Stream(
            [_msg("start", 0, worker), _msg("end", 0, worker, status="succeeded", reason=None)]
        ),
    )
    executor.poll(0)
    executor.poll(0)
    assert executor.running() == 0
    executor.submit(_job(1))
    executor.submit(_job(2))  # the freed node is taken: Ray places this one
    assert isinstance(placed[1], NodeAffinitySchedulingStrategy)
    assert (placed[1].node_id, placed[1].soft) == (node, True)
    assert placed[2] is None

    class Stopping(_Recorder):
        def on_result(self, index: int, metric: Any, final: bool) -> bool:
            return True  # median_stop, say

    executor.handler = Stopping()
    monkeypatch.setattr(ray, "cancel", lambda ref, force: None)
    executor._trials = {
        3: _Trial(
            job=_job(3),
            generator=_Stream(
                [
                    _msg("start", 0, worker),
                    _msg("result", 0, worker, step=0, metric=1.0, final=False),
                ]
            ),
        )
    }
    executor.poll(0)
    executor.poll(0)
    assert executor.running() == 0  # stopped, its task cancelled and maybe still running
    executor.submit(_job(4))
    assert placed[3] is None
