"""Smoke tests of the CIFAR-scale DARTS benchmark (benchmarks/bench_darts.py, run_cifar.py).

The benchmark runs end to end at a tiny size on the CPU, ours only (NNI is not installed in
CI); on a machine with a GPU it also runs there. The driver's table is checked on made-up
runs, so its ratios and verdicts are tested without timing anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

pytest.importorskip("nastrain_darts", reason="the DARTS benchmark runs nastrain_darts")

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
TINY = ["--C", "2", "--layers", "3", "--image", "8", "--batch", "4"]


def bench(*options: str) -> dict[str, Any]:
    """Run bench_darts.py for one step, in a fresh process; its JSON line."""
    cmd = [sys.executable, str(BENCHMARKS / "bench_darts.py"), "--impl", "nastrain", *TINY]
    cmd += ["--steps", "1", "--warmup", "0", "--threads", "1", *options]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


@pytest.fixture
def modules(monkeypatch: pytest.MonkeyPatch) -> tuple[ModuleType, ModuleType]:
    """bench_darts and run_cifar, imported from benchmarks/ (they import their neighbours)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_darts
    import run_cifar

    return bench_darts, run_cifar


def test_runs_end_to_end_on_the_cpu() -> None:
    result = bench("--precision", "bf16-mixed")
    assert "error" not in result
    assert result["impl"] == "nastrain" and result["device"] == "cpu"
    assert result["precision"] == "bf16-mixed"
    assert (result["C"], result["layers"], result["image"], result["batch"]) == (2, 3, 8, 4)
    assert result["steps_per_s"] > 0 and len(result["step_times_s"]) == 1
    assert result["peak_rss_mb"] >= result["rss_before_mb"] > 0
    assert result["floor_s"] > 0 and result["floor_ratio"] > 0
    assert "peak_gpu_mb" not in result  # CPU runs report no GPU memory


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_runs_on_a_gpu_and_reports_its_memory() -> None:
    result = bench("--device", "cuda", "--space", "shipped", "--unrolled")
    assert result["device"] == "cuda" and result["steps_per_s"] > 0
    assert result["peak_gpu_mb"] >= result["gpu_before_mb"] > 0
    assert result["gpu_added_mb"] > 0


def test_precision_is_refused_for_nni(
    modules: tuple[ModuleType, ModuleType], capsys: pytest.CaptureFixture[str]
) -> None:
    bench_darts, _ = modules
    with pytest.raises(SystemExit) as exit_info:
        bench_darts.main(["--impl", "nni", "--precision", "bf16-mixed"])
    assert exit_info.value.code == 2
    assert "NNI's legacy DartsTrainer has none" in capsys.readouterr().err


def test_gpu_table_ratios_and_verdicts(modules: tuple[ModuleType, ModuleType]) -> None:
    _, run_cifar = modules
    cfgs = {c.name: c for c in run_cifar.configs()}

    def run(name: str, rep: int, speed: float, memory: float) -> None:
        cfgs[name].runs.append(
            {"rep": rep, "steps_per_s": speed, "median_step_steps_per_s": speed,
             "peak_gpu_mb": memory, "gpu_added_mb": memory / 2, "floor_ratio": 1.0}
        )  # fmt: skip

    for rep in (1, 2):
        run("nni first-order", rep, 2.0, 1000.0)
        run("nastrain first-order", rep, 3.2, 500.0)  # 1.6x, 0.5x: met
        run("nastrain bf16-mixed first-order", rep, 4.0, 300.0)  # 2.0x: under 2.5x
    cfgs["nni second-order"].errors.append("timed out after 60 s")
    rows = {
        row.split(" | ")[0].lstrip("| "): row
        for row in run_cifar.table(list(cfgs.values()), "cuda").splitlines()[2:]
    }
    assert "| 0.50x | 1.60x | 1.60x (1.60, 1.60) |" in rows["nastrain first-order"]
    assert rows["nastrain first-order"].endswith("| speed >= 1.5x, memory <= 0.6x | yes |")
    assert rows["nastrain bf16-mixed first-order"].endswith("| speed >= 2.5x | **no** |")
    assert "n/a (timed out after 60 s)" in rows["nni second-order"]
    assert "n/a (not run)" in rows["nastrain shipped second-order"]
    cpu = run_cifar.table(list(cfgs.values()), "cpu")
    assert "— (GPU targets)" in cpu and "yes" not in cpu
