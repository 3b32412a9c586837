"""Benchmark of nastrain's multi-trial experiments (the local executor and the store).

1. Per-trial overhead: an experiment of trivial trials (a fit that only reports a result)
   with one worker. For consecutive trials, the time between their ends in the store
   minus the trial's own ``fit`` time is everything else: proposing, recording, sending the
   trial to the worker, ``apply_arch``, building the trainer, streaming the result back.
2. Throughput: CPU-bound, single-threaded trials (a pure-Python loop of fixed length)
   with 1 and with 2 workers; trials per second over each run's whole ``run()``, worker
   start-up included (the fork server is warm).

    .venv/bin/python benchmarks/bench_experiment.py            # prints the table
    .venv/bin/python benchmarks/bench_experiment.py --write    # and puts it in README.md

``--write`` replaces what is between ``<!-- experiment-table -->`` and
``<!-- /experiment-table -->`` in benchmarks/README.md (appending the section if absent).
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import nastrain
from nastrain.experiments.executor import available_cpus

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench_trials, for this process (and, below, the workers)
from bench_trials import README, CpuTrainer, Space, TrivialTrainer, work_many, write_table  # noqa: E402

BEGIN, END = "<!-- experiment-table -->", "<!-- /experiment-table -->"
INTRO = """\
Per-trial overhead of `nastrain.Experiment` with the local executor, and the
throughput of 2 workers against 1 on CPU-bound single-threaded trials
([`bench_experiment.py`](bench_experiment.py), which says how each is measured).
The machine is shared: the control row (the same work in plain processes) and the
load average say what it allowed during the run.
"""


def bare(trials: int, steps: int, processes: int) -> float:
    """Trials per second of the same work in ``processes`` plain processes, no nastrain:
    what the machine allows at the moment (it may be shared)."""
    context = multiprocessing.get_context("forkserver")
    start = time.perf_counter()
    jobs = [
        context.Process(target=work_many, args=(trials // processes, steps))
        for _ in range(processes)
    ]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
    return trials / (time.perf_counter() - start)


def run(folder: Path, name: str, trainer: nastrain.BaseTrainer, **options) -> tuple[float, list]:
    start = time.perf_counter()
    result = nastrain.Experiment(
        Space(), trainer, "random", store=folder / f"{name}.sqlite", progress=False, **options
    ).run()
    seconds = time.perf_counter() - start
    assert all(t.status == "succeeded" for t in result.trials), result.counts()
    return seconds, list(result.trials)


def overhead(folder: Path, trials: int) -> dict[str, float]:
    seconds, done = run(folder, "overhead", TrivialTrainer(None), max_trials=trials)
    done.sort(key=lambda t: t.end_order)
    gaps = [(b.ended - a.ended) - b.final["fit_seconds"] for a, b in itertools.pairwise(done)]
    return {
        "median_ms": 1000 * statistics.median(gaps),
        "p90_ms": 1000 * statistics.quantiles(gaps, n=10)[-1],
        "total_ms_per_trial": 1000 * seconds / trials,
    }


def throughput(folder: Path, trials: int, steps: int, repeats: int) -> dict[str, float]:
    rates: dict[int, list[float]] = {1: [], 2: []}
    ceiling: dict[int, list[float]] = {1: [], 2: []}
    for r in range(repeats):
        for workers in (1, 2):
            ceiling[workers].append(bare(trials, steps, workers))
            seconds, _ = run(
                folder,
                f"cpu-{workers}-{r}",
                CpuTrainer(None, steps=steps),
                max_trials=trials,
                concurrency=workers,
                seed=r,
            )
            rates[workers].append(trials / seconds)
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    best_one, best_two = max(rates[1]), max(rates[2])
    return {
        "one": one,
        "two": two,
        "speedup": two / one,
        "best_one": best_one,
        "best_two": best_two,
        "best_speedup": best_two / best_one,
        "bare_speedup": statistics.median(ceiling[2]) / statistics.median(ceiling[1]),
    }


def table(o: dict[str, float], t: dict[str, float], args: argparse.Namespace) -> str:
    machine = f"{platform.machine()}, {available_cpus()} CPUs, Python {platform.python_version()}"
    return "\n".join(
        [
            f"Measured on {machine}, torch {torch.__version__} "
            f"(`{' '.join(['benchmarks/bench_experiment.py', *sys.argv[1:]])}`).",
            "",
            "| measure | value | target |",
            "|---|---|---|",
            f"| per-trial overhead, median ({args.trials} trivial trials, 1 worker) "
            f"| {o['median_ms']:.1f} ms | < 50 ms |",
            f"| per-trial overhead, 90th percentile | {o['p90_ms']:.1f} ms | |",
            "| whole run / trials (worker start-up included) "
            f"| {o['total_ms_per_trial']:.1f} ms | |",
            f"| throughput, 1 worker ({args.cpu_trials} CPU-bound trials; median, best of "
            f"{args.repeats} runs) | {t['one']:.2f}, {t['best_one']:.2f} trials/s | |",
            f"| throughput, 2 workers (median, best) | {t['two']:.2f}, {t['best_two']:.2f} "
            "trials/s | |",
            f"| 2 workers / 1 worker (medians, bests) | {t['speedup']:.2f}x, "
            f"{t['best_speedup']:.2f}x | >= 1.7x |",
            "| the same work in 2 plain processes / 1, no nastrain (medians): what the "
            f"machine allowed | {t['bare_speedup']:.2f}x | |",
            f"| load average of the machine when done | {os.getloadavg()[0]:.1f} | |",
        ]
    )


def write(text: str) -> None:
    write_table(text, (BEGIN, END), "Multi-trial experiments", INTRO, "bench_experiment.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200, help="trivial trials")
    parser.add_argument("--cpu-trials", type=int, default=12, help="CPU-bound trials per run")
    parser.add_argument("--steps", type=int, default=3_000_000, help="loop length of one")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each concurrency")
    parser.add_argument("--write", action="store_true", help="update benchmarks/README.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        run(Path(folder), "warm-up", TrivialTrainer(None), max_trials=2)  # the fork server
        o = overhead(Path(folder), args.trials)
        t = throughput(Path(folder), args.cpu_trials, args.steps, args.repeats)
    text = table(o, t, args)
    print(text)
    if args.write:
        write(text)
        print(f"\nwritten to {README}", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    # The workers import bench_trials (the space and trainers).
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p
    )
    main()
