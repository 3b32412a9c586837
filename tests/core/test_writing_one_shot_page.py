"""docs/writing-a-one-shot-algorithm.md: its code runs as it stands, prints what the page
says it prints, stays under 150 lines, and its GDAS trainer finds the planted operation at
the page's settings."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest
import torch
from torch import nn

PAGE = Path(__file__).resolve().parents[2] / "docs" / "writing-a-one-shot-algorithm.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)


def expected_output(block: str) -> list[str]:
    """The page's record of what a block prints: its comment lines at column 0."""
    return [line[2:] for line in block.splitlines() if line.startswith("# ")]


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The page's namespace after running every block in order, each block's output checked
    against the page."""
    namespace: dict = {"__name__": "writing_a_one_shot_algorithm"}
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("page"))  # contextlib.chdir is Python 3.11+
    try:
        for i, block in enumerate(blocks()):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(block, f"{PAGE.name}, block {i + 1}", "exec"), namespace)
            assert out.getvalue().splitlines() == expected_output(block), f"block {i + 1}"
    finally:
        os.chdir(cwd)
    return namespace


def test_the_page_runs_and_prints_what_it_says(page: dict) -> None:
    assert page["trainer"].export() == {"op": "sin2"}
    assert [r["epoch"] for r in page["resumed"].history] == [1, 2, 3, 4]


def test_the_page_builds_a_trainer_in_under_150_lines() -> None:
    code = [
        line
        for block in blocks()
        for line in block.splitlines()
        if line.strip() and not line.startswith("# ")
    ]
    assert len(code) < 150


def test_the_trainer_is_a_plugin_with_the_base_class_surface(page: dict) -> None:
    import nastrain
    import nastrain.testing

    trainer_cls = page["GdasTrainer"]
    with nastrain.testing.registered(page["gdas_plugin"]):
        assert nastrain.get_trainer("gdas") is trainer_cls
    assert "gdas" not in nastrain.trainer_names()  # registered only inside the block
    trainer = trainer_cls(
        page["Planted"](), nn.MSELoss(), None, None, 1, page["planted_data"](), progress=False
    )
    (alpha,) = trainer.arch_parameters()
    assert all(p is not alpha for p in trainer.model.parameters())
    assert isinstance(trainer.nas_modules[0][1], page["GumbelLayerChoice"])


def test_gdas_finds_the_planted_op_in_9_of_10_seeds_at_the_page_s_settings(page: dict) -> None:
    """The page's run (10 epochs, batch 32, the trainer's defaults otherwise) on other data
    and seeds: the targets are sin(2x), and "sin2" is the only candidate computing them."""
    found = []
    for seed in range(10):
        torch.manual_seed(seed)
        trainer = page["GdasTrainer"](
            page["Planted"](),
            nn.MSELoss(),
            None,
            None,
            num_epochs=10,
            dataset=page["planted_data"](seed=100 + seed),
            batch_size=32,
            seed=seed,
            progress=False,
        )
        trainer.fit()
        found.append(trainer.export()["op"])
    assert found.count("sin2") >= 9, found
