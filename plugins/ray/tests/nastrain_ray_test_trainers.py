"""Trainers for the Ray executor's tests, in a module the Ray workers import (the tests put
this folder on their path).

``ray-test-epochs`` reports ``score(model) * (epoch + 1) / epochs`` after each epoch and then
``score(model)``, like the fixtures' ScoreTrainer, and appends a line per epoch to ``log``:
``<points> <epoch> <pid> <node id>``, so the tests see where and how far each trial ran
(and that a cancelled one stopped). ``ray-test-crash`` kills its own worker process part-way,
for the driver's reruns.
"""

from __future__ import annotations

import os
import signal
import time

import ray
from nastrain_test_trials import score
from torch import nn

import nastrain


@nastrain.register_trainer(name="ray-test-epochs")
class EpochsTrainer(nastrain.BaseTrainer):
    """``epochs`` epochs of ``sleep`` seconds each (the first ``first_sleep``), each logged."""

    def __init__(
        self,
        model: nn.Module,
        log: str,
        epochs: int = 3,
        sleep: float = 0.0,
        first_sleep: float | None = None,
    ) -> None:
        self.model = model
        self.log = log
        self.epochs = epochs
        self.sleep = sleep
        self.first_sleep = sleep if first_sleep is None else first_sleep

    def fit(self) -> None:
        points = score(self.model)
        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "-"
        for epoch in range(self.epochs):
            time.sleep(self.first_sleep if epoch == 0 else self.sleep)
            with open(self.log, "a") as handle:
                handle.write(f"{points} {epoch} {os.getpid()} {node} {time.time():.3f}\n")
            nastrain.report_intermediate_result(points * (epoch + 1) / self.epochs)
        nastrain.report_final_result(points)


@nastrain.register_trainer(name="ray-test-crash")
class CrashingTrainer(nastrain.BaseTrainer):
    """Reports ``epochs`` intermediate results and a final one, like ``ray-test-epochs``,
    plus ``1000 * run`` (so the tests see which run's value was stored); the trials scoring
    one of ``crash`` kill their own worker process (SIGKILL: a lost worker, as Ray sees it)
    after ``crash_after`` reports, on each of their first ``crashes`` runs. The runs are
    counted in ``log``: a line ``<points> <pid>`` per run."""

    def __init__(
        self,
        model: nn.Module,
        log: str,
        crash: list[float],
        crashes: int = 1,
        epochs: int = 4,
        crash_after: int = 2,
    ) -> None:
        self.model = model
        self.log = log
        self.crash = crash
        self.crashes = crashes
        self.epochs = epochs
        self.crash_after = crash_after

    def fit(self) -> None:
        points = score(self.model)
        with open(self.log, "a+") as handle:
            handle.seek(0)
            run = sum(1 for line in handle if float(line.split()[0]) == points)
            handle.write(f"{points} {os.getpid()}\n")
        for epoch in range(self.epochs):
            if epoch == self.crash_after and points in self.crash and run < self.crashes:
                time.sleep(0.2)  # the reports so far reach the driver first
                os.kill(os.getpid(), signal.SIGKILL)
            nastrain.report_intermediate_result(points * (epoch + 1) + 1000 * run)
        nastrain.report_final_result(points + 1000 * run)
