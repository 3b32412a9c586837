"""The space and trainers of benchmarks/bench_experiment.py and bench_ray.py, in a module of
their own, which the Ray workers and the local workers import (the benchmarks put this folder
on their path), and how both write their table into benchmarks/README.md."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn

import nastrain


class Space(nn.Module):
    """4^6 = 4096 architectures of identity-like candidates."""

    def __init__(self) -> None:
        super().__init__()
        self.choices = nn.ModuleList(
            nastrain.LayerChoice([nn.Identity() for _ in range(4)], label=f"c{i}") for i in range(6)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for choice in self.choices:
            x = choice(x)
        return x


@nastrain.register_trainer(name="bench-trivial")
class TrivialTrainer(nastrain.BaseTrainer):
    """Reports one final result, with how long its own fit took."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def fit(self) -> None:
        start = time.perf_counter()
        value = float(len(list(self.model.modules())))
        nastrain.report_final_result({"default": value, "fit_seconds": time.perf_counter() - start})


def work(steps: int) -> int:
    """A fixed amount of single-threaded pure-Python work."""
    total = 0
    for i in range(steps):
        total += i * i % 7
    return total


def work_many(trials: int, steps: int) -> None:
    """:func:`work` for ``trials`` trials, one after the other."""
    for _ in range(trials):
        work(steps)


@nastrain.register_trainer(name="bench-cpu")
class CpuTrainer(nastrain.BaseTrainer):
    """A trial of :func:`work`."""

    def __init__(self, model: nn.Module, steps: int = 3_000_000) -> None:
        self.steps = steps

    def fit(self) -> None:
        nastrain.report_final_result(float(work(self.steps) % 1000))


@nastrain.register_trainer(name="bench-timed-cpu")
class TimedCpuTrainer(nastrain.BaseTrainer):
    """A trial of :func:`work` that reports when its work started (``time.perf_counter``,
    one clock for every process of the machine), how long it took and its thread's CPU time,
    so that a benchmark can tell slower work from idle gaps between trials."""

    def __init__(self, model: nn.Module, steps: int = 3_000_000) -> None:
        self.steps = steps

    def fit(self) -> None:
        wall, cpu = time.perf_counter(), time.thread_time()
        work(self.steps)
        nastrain.report_final_result(
            {
                "default": 0.0,
                "started": wall,
                "wall": time.perf_counter() - wall,
                "cpu": time.thread_time() - cpu,
            }
        )


README = Path(__file__).resolve().parent / "README.md"


def write_table(text: str, marks: tuple[str, str], heading: str, intro: str, script: str) -> None:
    """Put ``text`` between the ``marks`` in benchmarks/README.md, or append a section
    ``heading`` (with ``intro`` and the command running ``script``) holding it."""
    begin, end = marks
    content = README.read_text() if README.exists() else "# Benchmarks\n"
    block = f"{begin}\n{text}\n{end}"
    if begin in content and end in content:
        head, rest = content.split(begin, 1)
        _, tail = rest.split(end, 1)
        content = head + block + tail
    else:
        content = (
            content.rstrip("\n")
            + f"\n\n## {heading}\n\n"
            + intro
            + f"\n```sh\n.venv/bin/python benchmarks/{script} --write\n"
            + f"```\n\n{block}\n"
        )
    README.write_text(content)


def ray_environment() -> None:
    """What a Ray benchmark sets before it imports Ray: its workers import this folder's
    modules (``PYTHONPATH``), and Ray runs on loopback only, with no earlier Ray state, as the
    plugin's tests run it."""
    here = str(Path(__file__).resolve().parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    os.environ.update(
        {
            "RAY_AUTH_MODE": "disabled",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
    )
