"""Shared test setup (nastrain's opt-in testing kit is enabled in pyproject's addopts)."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

import nastrain
from nastrain.experiments.store import Store


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled digits as (N, 1, 8, 8) float images and int labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return images, torch.tensor(data.target, dtype=torch.long)


@pytest.fixture
def trials(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """tests/fixtures/trials/nastrain_test_trials.py: model spaces and trainers whose results
    are known functions of the architecture, importable here and in experiment workers (they
    inherit ``sys.path``)."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "fixtures" / "trials"))
    return importlib.import_module("nastrain_test_trials")


@pytest.fixture
def store_with_a_running_trial(trials: ModuleType, tmp_path: Path) -> tuple[Any, Path]:
    """An experiment (a grid over ``trials.SmallSpace``, 2 trials, inline) and its store, in
    which trial 0 is marked running and no process holds a lease: what a writer stopped
    right after starting the trial leaves behind."""
    experiment = nastrain.Experiment(
        trials.SmallSpace(),
        trials.ScoreTrainer(None),
        "grid",
        max_trials=2,
        executor="inline",
        store=tmp_path / "s.sqlite",
        progress=False,
    )
    with Store.open(experiment.store_path, experiment.record) as store:
        store.add_trial(0, {"a": "x", "b": "p", "c": [0, 1]}, 7, "{}")
    return experiment, experiment.store_path
