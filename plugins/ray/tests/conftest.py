"""A real Ray cluster on loopback for the executor's tests: a head and a second node, each
with one CPU and a custom resource naming it (``head``, ``second``), started by the tests
in a temporary folder of their own and shut down after them, whatever happened. The head
also declares one GPU, which Ray only counts (no trial here uses CUDA): for the placement
of trials that ask for one.

Ray's settings are made explicit, so the tests do not depend on an earlier Ray run or on
the machine's network: ``RAY_AUTH_MODE=disabled``, ``RAY_TMPDIR`` under pytest's temporary
folder (where Ray writes its sessions and ``ray_current_cluster``), and every node on
127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray's own address look-ups
answer the loopback address too; it is read when Ray is imported, so it is set here).
"""

from __future__ import annotations

import os
import sys
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
for _name, _value in RAY_ENV.items():
    os.environ[_name] = _value
for _path in (str(TRIALS), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

ray = pytest.importorskip("ray", reason="Ray cannot be imported here (pip install nastrain-ray)")
from ray.cluster_utils import Cluster  # noqa: E402

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


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The head (resource ``head``) and a second node (``second``), for the whole session."""
    temp = tmp_path_factory.mktemp("ray")
    before = {name: os.environ.get(name) for name in ("RAY_TMPDIR", "PYTHONPATH")}
    os.environ["RAY_TMPDIR"] = str(temp)
    # The raylets, and so the workers, inherit this process's environment.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (WORKER_PATH, before["PYTHONPATH"]) if p)
    cluster = None
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
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
