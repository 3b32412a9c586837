"""The core's layers, checked in fresh processes: ``import nastrain`` imports no kernel
module (the CPU kernels are a plugin, ``nastrain-cpu``), and the spine
(``nastrain.hookspecs``, ``nastrain.plugins``) imports neither the experiments package nor
torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def modules_after(code: str) -> list[str]:
    """The nastrain and torch modules loaded after running ``code`` in a fresh interpreter."""
    probe = (
        f"{code}\nimport json, sys\n"
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('nastrain', 'nastrain_cpu', 'torch'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(result.stdout.splitlines()[-1])


def test_import_nastrain_imports_no_kernel_module_and_no_torch() -> None:
    loaded = modules_after("import nastrain")
    assert loaded == ["nastrain", "nastrain._lazy"]


@pytest.mark.parametrize("spine", ["nastrain.hookspecs", "nastrain.plugins"])
def test_the_spine_imports_no_experiments_module_and_no_torch(spine: str) -> None:
    loaded = modules_after(f"import {spine}")
    assert not [m for m in loaded if m.startswith("nastrain.experiments")], loaded
    assert not [m for m in loaded if m.split(".")[0] == "torch"], loaded


def test_the_one_shot_loop_imports_no_kernel_and_no_experiments_module() -> None:
    loaded = modules_after("import nastrain.oneshot, nastrain.utils")
    assert not [m for m in loaded if "kernel" in m or m.startswith("nastrain_cpu")], loaded
    assert not [m for m in loaded if m.startswith("nastrain.experiments")], loaded


def test_the_public_names_still_come_from_the_top_level() -> None:
    import nastrain

    for name in nastrain.__all__:
        assert getattr(nastrain, name) is not None, name
    assert set(nastrain.__all__) <= set(dir(nastrain))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        nastrain.Nope  # noqa: B018


def test_loading_the_plugins_imports_no_store_no_executor_and_no_sqlite() -> None:
    probe = (
        "import sys, nastrain\nnastrain.trainer_names(), nastrain.strategy_names()\n"
        "print(sorted(m for m in sys.modules if m == 'sqlite3' or m.startswith('nastrain.')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = result.stdout.splitlines()[-1]
    for module in ("sqlite3", "nastrain.experiments.store", "nastrain.experiments.executor"):
        assert f"'{module}'" not in loaded, loaded
    assert "'nastrain.experiments.strategies'" in loaded  # the built-ins registered them


def test_submodules_are_attributes_after_a_bare_import() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import nastrain; print(nastrain.plugins.__name__)"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout.strip() == "nastrain.plugins"
