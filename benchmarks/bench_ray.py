"""Benchmark of the Ray executor (nastrain-ray) against the local executor.

1. Per-trial overhead: an experiment of trivial trials (a fit that only reports a result),
   one at a time, with ``executor="ray"`` on a local one-node Ray instance (started here,
   2 CPUs) and with ``executor="local"`` (1 worker). For consecutive trials, the time
   between their ends in the store minus the trial's own ``fit`` time is everything else:
   proposing, recording, submitting the Ray task (or sending the job over the pipe),
   ``apply_arch``, building the trainer, streaming the result back. Median and 90th
   percentile; the first trial (worker start-up) is not a gap.
2. Throughput: CPU-bound, single-threaded trials (a pure-Python loop of fixed length) on a
   2-node Ray cluster on loopback (``ray.cluster_utils.Cluster``, 1 CPU per node, trials of
   ``num_cpus=1``, concurrency 2) against the local executor with 2 workers; trials per
   second over each run's whole ``run()``, the two executors' runs interleaved. The
   cluster is started before, and the timed Ray runs share one driver connection
   (``ray.init`` once, warmed by a first run: a Ray job keeps its worker processes), while
   each local run starts its workers: not like for like, so the steady state is measured
   too, the same way for both: the trials that ended after the first ``concurrency`` (2),
   over the time from the 2nd trial's end to the last's (every worker started by then, for
   both executors). A cold run (a new driver, whose workers start and import torch) is
   timed apart.

    .venv/bin/python benchmarks/bench_ray.py            # prints the table
    .venv/bin/python benchmarks/bench_ray.py --write    # and puts it in README.md

``--write`` replaces what is between ``<!-- ray-table -->`` and ``<!-- /ray-table -->`` in
benchmarks/README.md (appending a "Ray" section if absent). Not a test: run it by hand.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import nastrain
from nastrain.experiments.executor import available_cpus

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench_trials, for this process (and, below, the workers)
from bench_trials import (  # noqa: E402
    README,
    CpuTrainer,
    TrivialTrainer,
    ray_environment,
    write_table,
)

BEGIN, END = "<!-- ray-table -->", "<!-- /ray-table -->"
INTRO = """\
The Ray executor (nastrain-ray) against the local executor
([`bench_ray.py`](bench_ray.py), which says how each is measured): the per-trial overhead
of trivial trials on a local Ray instance, and the throughput of CPU-bound trials on a
2-node Ray cluster on loopback (1 CPU per node) against 2 local workers. The timed Ray
runs share one driver connection, as a driver running many experiments would (a Ray job
keeps its worker processes), while each local run starts its workers; the steady-state
rows compare the two like for like (the trials that end once every worker has started);
a cold run, a new driver whose workers start and import torch, is a row of its own.
"""


def run(
    folder: Path, name: str, trainer: nastrain.BaseTrainer, **options: Any
) -> tuple[float, list]:
    start = time.perf_counter()
    result = nastrain.Experiment(
        "bench_trials:Space",
        trainer,
        "random",
        store=folder / f"{name}.sqlite",
        progress=False,
        **options,
    ).run()
    seconds = time.perf_counter() - start
    assert all(t.status == "succeeded" for t in result.trials), result.counts()
    return seconds, list(result.trials)


def overhead(folder: Path, name: str, trials: int, **options: Any) -> dict[str, float]:
    seconds, done = run(folder, name, TrivialTrainer(None), max_trials=trials, **options)
    done.sort(key=lambda t: t.end_order)
    gaps = [(b.ended - a.ended) - b.final["fit_seconds"] for a, b in itertools.pairwise(done)]
    return {
        "median_ms": 1000 * statistics.median(gaps),
        "p90_ms": 1000 * statistics.quantiles(gaps, n=10)[-1],
        "total_ms_per_trial": 1000 * seconds / trials,
    }


def throughput(
    folder: Path, name: str, trials: int, steps: int, repeats: int, **options: Any
) -> list[tuple[float, float]]:
    """Per run: (trials per second over the whole run, steady-state trials per second)."""
    rates = []
    for r in range(repeats):
        seconds, done = run(
            folder,
            f"{name}-{r}",
            CpuTrainer(None, steps=steps),
            max_trials=trials,
            concurrency=2,
            seed=r,
            **options,
        )
        ends = sorted(t.ended for t in done)
        steady = (len(ends) - 2) / (ends[-1] - ends[1]) if len(ends) > 2 else float("nan")
        rates.append((trials / seconds, steady))
    return rates


def measure(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    import ray  # the benchmark's own Ray instances
    from ray.cluster_utils import Cluster

    # Ray keeps ray_current_cluster in $RAY_TMPDIR/ray, and each instance's sessions below it.
    os.environ["RAY_TMPDIR"] = str(folder)
    temp = folder / "ray"
    temp.mkdir()
    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}
    results: dict[str, Any] = {}

    # 1. Overhead: a local one-node Ray instance, trials one at a time.
    run(folder, "warm-up-local", TrivialTrainer(None), max_trials=2)  # the fork server
    results["local_overhead"] = overhead(folder, "overhead-local", args.trials)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=str(temp / "single"),
        _node_ip_address="127.0.0.1",
        logging_level="WARNING",
    )
    try:
        run(folder, "warm-up-ray", TrivialTrainer(None), max_trials=2, executor="ray")
        results["ray_overhead"] = overhead(folder, "overhead-ray", args.trials, executor="ray")
    finally:
        ray.shutdown()

    # 2. Throughput: 2 nodes of 1 CPU on loopback against 2 local workers.
    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={**node, "include_dashboard": False, "temp_dir": str(temp / "two")},
    )
    try:
        cluster.add_node(**node)
        cluster.wait_for_nodes()
        # A fresh driver (a new Ray job) starts its worker processes, which import torch and
        # nastrain: measured once, then the timed runs share one connection (ray.init here;
        # the executor uses it), as a driver running many experiments would.
        began = time.perf_counter()
        throughput(
            folder,
            "cold-cluster",
            2,
            args.steps,
            1,
            executor="ray",
            executor_options={"address": cluster.address},
        )
        results["cold_seconds"] = time.perf_counter() - began
        ray.init(address=cluster.address, logging_level="WARNING")
        ray_options = {"executor": "ray"}
        throughput(folder, "warm-up-cluster", 2, args.steps, 1, **ray_options)
        local, cluster_rates = [], []
        for r in range(args.repeats):  # interleaved, so both see the same machine
            local += throughput(folder, f"cpu-local-{r}", args.cpu_trials, args.steps, 1)
            cluster_rates += throughput(
                folder, f"cpu-ray-{r}", args.cpu_trials, args.steps, 1, **ray_options
            )
    finally:
        ray.shutdown()
        cluster.shutdown()
    results["local_rates"], results["ray_rates"] = local, cluster_rates
    results["ray_version"] = ray.__version__
    return results


def table(m: dict[str, Any], args: argparse.Namespace) -> str:
    machine = f"{platform.machine()}, {available_cpus()} CPUs, Python {platform.python_version()}"
    lo, ro = m["local_overhead"], m["ray_overhead"]
    local = [whole for whole, _ in m["local_rates"]]
    ray_rates = [whole for whole, _ in m["ray_rates"]]
    local_steady = [steady for _, steady in m["local_rates"]]
    ray_steady = [steady for _, steady in m["ray_rates"]]
    ratio = statistics.median(ray_rates) / statistics.median(local)
    best = max(ray_rates) / max(local)
    steady_ratio = statistics.median(ray_steady) / statistics.median(local_steady)
    return "\n".join(
        [
            f"Measured on {machine}, torch {torch.__version__}, ray {m['ray_version']} "
            f"(`{' '.join(['benchmarks/bench_ray.py', *sys.argv[1:]])}`).",
            "",
            "| measure | ray | local | target |",
            "|---|---|---|---|",
            f"| per-trial overhead, median ({args.trials} trivial trials, one at a time) "
            f"| {ro['median_ms']:.1f} ms | {lo['median_ms']:.1f} ms | ray < 20 ms |",
            f"| per-trial overhead, 90th percentile | {ro['p90_ms']:.1f} ms "
            f"| {lo['p90_ms']:.1f} ms | |",
            "| whole run / trials (worker start-up included) "
            f"| {ro['total_ms_per_trial']:.1f} ms | {lo['total_ms_per_trial']:.1f} ms | |",
            f"| throughput, {args.cpu_trials} CPU-bound trials, 2 at a time (median, best of "
            f"{args.repeats} runs; ray: 2 nodes of 1 CPU, local: 2 workers) "
            f"| {statistics.median(ray_rates):.2f}, {max(ray_rates):.2f} trials/s "
            f"| {statistics.median(local):.2f}, {max(local):.2f} trials/s | |",
            f"| ray / local throughput (medians, bests; ray's workers warm, local's started "
            f"by each run) | {ratio:.2f}x, {best:.2f}x | | >= 0.9x |",
            f"| steady-state throughput, like for like: the {args.cpu_trials - 2} trials ending "
            "after the first 2, from the 2nd end to the last (every worker started, both) "
            f"(median of {args.repeats} runs) | {statistics.median(ray_steady):.2f} trials/s "
            f"| {statistics.median(local_steady):.2f} trials/s | |",
            f"| ray / local steady-state throughput (medians) | {steady_ratio:.2f}x | | >= 0.9x |",
            "| a cold run of 2 of those trials on the cluster (a new driver: connecting, "
            f"starting the workers) | {m['cold_seconds']:.2f} s | | |",
            f"| load average of the machine when done | {os.getloadavg()[0]:.1f} | | |",
        ]
    )


def write(text: str) -> None:
    write_table(text, (BEGIN, END), "Ray", INTRO, "bench_ray.py")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200, help="trivial trials")
    parser.add_argument("--cpu-trials", type=int, default=12, help="CPU-bound trials per run")
    parser.add_argument("--steps", type=int, default=3_000_000, help="loop length of one")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each executor")
    parser.add_argument("--write", action="store_true", help="update benchmarks/README.md")
    args = parser.parse_args()
    # Short paths: Ray's sockets live under its temporary folder.
    with tempfile.TemporaryDirectory(prefix="nbr", dir="/tmp") as folder:
        text = table(measure(args, Path(folder)), args)
    print(text)
    if args.write:
        write(text)
        print(f"\nwritten to {README}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    # The workers import bench_trials; Ray on loopback only, with no earlier Ray state,
    # as the plugin's tests run it (these are read when Ray is imported, in measure()).
    ray_environment()
    sys.exit(main())
