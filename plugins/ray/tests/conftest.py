"""A real Ray cluster on loopback for the executor's tests: a head and a second node, each
with one CPU and a custom resource naming it (``head``, ``second``), started for the test
module in a temporary folder of its own and shut down after it, whatever happened (and no
process of it left running). The head also declares one GPU, which Ray only counts (no trial
here uses CUDA): for the placement of trials that ask for one.

Ray's settings are made explicit, so the tests do not depend on an earlier Ray run or on
the machine's network: ``RAY_AUTH_MODE=disabled``, ``RAY_TMPDIR`` under pytest's temporary
folder (where Ray writes its sessions and ``ray_current_cluster``), and every node on
127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray's own address look-ups
answer the loopback address too; Ray reads it when it is imported). Nothing of this stays
in the test process for the tests collected after these (tox's ``all`` env): the variables
are set while Ray is imported and while the cluster runs, and restored after; the folders
put on ``sys.path`` for the collection of these tests are taken off once collection is done.

Where Ray cannot be imported (``ImportError``) these tests are skipped, unless
``NASTRAIN_REQUIRE_RAY`` is set (tox's ``ray`` env), where that is an error, as is a Ray
install that is broken in any other way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
#: tests/fixtures/trials of the repository: nastrain_test_trials (SmallSpace, ScoreTrainer).
TRIALS = HERE.parents[2] / "tests" / "fixtures" / "trials"
#: What the workers need on their path: the fixtures' trainers and this folder's.
WORKER_PATH = os.pathsep.join([str(TRIALS), str(HERE)])

RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
}


@contextlib.contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set, restored as it was after."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


#: The folders this conftest put on sys.path (for collecting the tests), taken off after.
_ADDED_PATHS = [p for p in (str(TRIALS), str(HERE)) if p not in sys.path]
sys.path[:0] = _ADDED_PATHS

with environ(RAY_ENV):
    try:
        import ray
    except ImportError as exc:
        if os.environ.get("NASTRAIN_REQUIRE_RAY"):
            raise ImportError(
                f"Ray cannot be imported ({exc}), and NASTRAIN_REQUIRE_RAY is set: the Ray "
                "tests must run here (pip install nastrain-ray)"
            ) from exc
        for _path in _ADDED_PATHS:
            sys.path.remove(_path)
        pytest.skip(
            f"Ray cannot be imported here ({exc}; pip install nastrain-ray)",
            allow_module_level=True,
        )
    from ray.cluster_utils import Cluster


def pytest_collection_finish(session: pytest.Session) -> None:
    """Take this conftest's folders off ``sys.path`` once the tests are collected (their
    modules are imported by then; the workers get the folders through ``PYTHONPATH``)."""
    for path in _ADDED_PATHS:
        with contextlib.suppress(ValueError):
            sys.path.remove(path)


#: Quick detection of a lost node (Ray's default takes tens of seconds).
SYSTEM_CONFIG = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_failure_threshold": 3,
}


def node_args(name: str) -> dict[str, Any]:
    """A node of one CPU on loopback with the custom resource ``name``."""
    return {
        "num_cpus": 1,
        "node_ip_address": "127.0.0.1",
        "resources": {name: 1},
        "object_store_memory": 80 * 1024 * 1024,
    }


def ray_processes(temp: Path) -> list[int]:
    """The ids of the processes whose command line names ``temp`` (the cluster's folder:
    every Ray process of the cluster is given its session folder there)."""
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if str(temp).encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The head (resource ``head``) and a second node (``second``), for the test module; after
    it, the cluster is shut down and no process of it is left (one that is, is killed and
    named in an error)."""
    temp = tmp_path_factory.mktemp("ray")
    # The raylets, and so the workers, inherit this process's environment.
    python_path = os.pathsep.join(p for p in (WORKER_PATH, os.environ.get("PYTHONPATH")) if p)
    cluster = None
    with environ({**RAY_ENV, "RAY_TMPDIR": str(temp), "PYTHONPATH": python_path}):
        try:
            cluster = Cluster(
                initialize_head=True,
                connect=False,
                head_node_args={
                    **node_args("head"),
                    "num_gpus": 1,
                    "include_dashboard": False,
                    "temp_dir": str(temp / "ray"),
                    "_system_config": SYSTEM_CONFIG,
                },
            )
            cluster.add_node(**node_args("second"))
            cluster.wait_for_nodes()
            yield cluster
        finally:
            if ray.is_initialized():
                ray.shutdown()
            if cluster is not None:
                cluster.shutdown()
    deadline = time.monotonic() + 15
    while (left := ray_processes(temp)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if left:
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        raise AssertionError(f"Ray processes left running after the cluster's shutdown: {left}")
