"""The space and trainers of benchmarks/bench_ray.py, in a module of their own: the Ray
workers and the local workers import it (the benchmark puts this folder on their path)."""

from __future__ import annotations

import time

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


@nastrain.register_trainer(name="bench-ray-trivial")
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


@nastrain.register_trainer(name="bench-ray-cpu")
class CpuTrainer(nastrain.BaseTrainer):
    """A trial of :func:`work`."""

    def __init__(self, model: nn.Module, steps: int = 3_000_000) -> None:
        self.steps = steps

    def fit(self) -> None:
        nastrain.report_final_result(float(work(self.steps) % 1000))
