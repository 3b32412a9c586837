"""The nastrain-classic plugin: registers the classic trainers (``classification``,
``regression``) and the datasets they read by name."""

from __future__ import annotations

from collections.abc import Callable

import nastrain
from nastrain_classic.datasets import DATASETS
from nastrain_classic.trainers import ClassificationTrainer, RegressionTrainer


@nastrain.hookimpl
def nastrain_register_trainers(register: Callable[..., None]) -> None:
    register(ClassificationTrainer, name="classification")
    register(RegressionTrainer, name="regression")


@nastrain.hookimpl
def nastrain_register_datasets(register: Callable[..., None]) -> None:
    for name, factory in DATASETS.items():
        register(factory, name=name)
