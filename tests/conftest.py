"""Shared test setup (nastrain's opt-in testing kit is enabled in pyproject's addopts)."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest
import torch


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
