"""A trainer for the Ray executor's tests, in a module the Ray workers import (the tests put
this folder on their path).

``ray-test-epochs`` reports ``score(model) * (epoch + 1) / epochs`` after each epoch and then
``score(model)``, like the fixtures' ScoreTrainer, and appends a line per epoch to ``log``:
``<points> <epoch> <pid> <node id>``, so the tests see where and how far each trial ran
(and that a cancelled one stopped).
"""

from __future__ import annotations

import os
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
