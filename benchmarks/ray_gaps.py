"""Where the Ray executor's throughput goes: per-trial work against idle gaps (a diagnostic).

Runs CPU-bound trials (:class:`bench_trials.TimedCpuTrainer`) with the local executor (2
workers) and on a 2-node loopback Ray cluster (1 CPU each), alternating, and prints per run:
the steady-state throughput (trials ending after the first 2), each trial's median wall and
thread CPU time (equal on both: the work itself is not slower in a Ray worker), and, per
worker, the idle gaps between one trial's end and the next one's start. Not a table of
benchmarks/README.md: what it found is in the Ray section there.

    .venv/bin/python benchmarks/ray_gaps.py [--trials 12] [--repeats 3] [--steps 3000000]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_trials import TimedCpuTrainer, ray_environment  # beside this script (sys.path)

import nastrain


def run(folder: Path, name: str, trials: int, steps: int, **options: Any) -> None:
    began = time.perf_counter()
    result = nastrain.Experiment(
        "bench_trials:Space",
        TimedCpuTrainer(None, steps=steps),
        "random",
        store=folder / f"{name}.sqlite",
        progress=False,
        max_trials=trials,
        concurrency=2,
        seed=0,
        **options,
    ).run()
    seconds = time.perf_counter() - began
    done = list(result.trials)
    by_worker: dict[str, list[tuple[float, float]]] = {}
    for trial in done:
        by_worker.setdefault(str(trial.worker), []).append(
            (trial.final["started"], trial.final["wall"])
        )
    gaps = []
    for items in by_worker.values():
        items.sort()
        gaps += [b[0] - (a[0] + a[1]) for a, b in itertools.pairwise(items)]
    ends = sorted(t.ended for t in done)
    steady = (len(ends) - 2) / (ends[-1] - ends[1])
    print(
        f"{name}: {seconds:.2f} s, steady {steady:.2f} trials/s, {len(by_worker)} worker(s); "
        f"per trial wall {statistics.median(t.final['wall'] for t in done):.3f} s, "
        f"cpu {statistics.median(t.final['cpu'] for t in done):.3f} s; "
        f"gaps ms {sorted(round(g * 1000) for g in gaps)}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3_000_000, help="loop length of one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nrg", dir="/tmp") as name:
        folder = Path(name)
        os.environ["RAY_TMPDIR"] = str(folder)
        (folder / "ray").mkdir()
        import ray  # after RAY_TMPDIR: Ray reads it when imported
        from ray.cluster_utils import Cluster

        node = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}
        head = {**node, "include_dashboard": False, "temp_dir": str(folder / "ray" / "two")}
        cluster = Cluster(initialize_head=True, connect=False, head_node_args=head)
        try:
            cluster.add_node(**node)
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, logging_level="WARNING")
            run(folder, "ray-warm-up", args.trials, args.steps, executor="ray")
            for r in range(args.repeats):
                run(folder, f"local-{r}", args.trials, args.steps)
                run(folder, f"ray-{r}", args.trials, args.steps, executor="ray")
        finally:
            ray.shutdown()
            cluster.shutdown()
    return 0


if __name__ == "__main__":  # the local executor's workers import this module again
    ray_environment()
    sys.exit(main())
