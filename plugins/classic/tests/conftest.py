"""Setup for nastrain-classic's tests."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture
def spaces(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """classic_spaces.py beside this file: model spaces as a user's module, importable here and
    in an experiment's worker processes (they inherit ``sys.path``)."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    return importlib.import_module("classic_spaces")
