"""DARTS' run record (``run.jsonl``): a real search writes softmax(alpha) per label at every
epoch's end and the architecture export() gives; a search SIGKILLed and resumed leaves the
record an uninterrupted one leaves; a DartsSpace search draws its two cells, which the
report inlines as SVG and writes beside the page as Graphviz text."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import nastrain
from nastrain import htmlreport, testing
from nastrain.htmlreport import run as run_report
from nastrain_darts import DartsTrainer
from nastrain_darts.spaces import DartsSpace, genotype


class Alphas:
    """A logger plugin that keeps each epoch's record and softmax(alpha) as the trainer held
    it when the record was heard (computed here, from the alphas themselves)."""

    def __init__(self) -> None:
        self.heard: list[tuple[dict[str, Any], dict[str, list[float]], dict[str, Any]]] = []

    @nastrain.hookimpl
    def nastrain_on_epoch(self, trainer: Any, record: Any) -> None:
        with torch.no_grad():
            softmax = {k: F.softmax(a, -1).tolist() for k, a in trainer.arch.alphas.items()}
        self.heard.append((dict(record), softmax, trainer.export()))


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def timeless(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The record without times, folders and pids, which differ between two runs of a search."""
    out = []
    for entry in entries:
        entry = {k: v for k, v in entry.items() if k not in ("time", "seconds", "started", "pid")}
        if "options" in entry:
            entry["options"] = {k: v for k, v in entry["options"].items() if not k.endswith("_dir")}
        out.append(entry)
    return out


def test_a_darts_search_records_softmax_alpha_and_its_export_each_epoch(
    tmp_path, nastrain_plugin
) -> None:
    listener = Alphas()
    nastrain_plugin(listener, name="alphas")
    torch.manual_seed(0)
    trainer = DartsTrainer(
        testing.TinyCell(), nn.CrossEntropyLoss(), None, None, 3, testing.tiny_data(64),
        batch_size=16, arc_learning_rate=0.05, seed=0, checkpoint_dir=tmp_path,
        formulation="nni", progress=False,
    )  # fmt: skip
    trainer.fit()
    entries = lines(tmp_path / "run.jsonl")
    epochs = entries[1:-1]
    assert entries[0]["trainer"] == "darts" and entries[-1]["status"] == "completed"
    assert [e["epoch"] for e in epochs] == [1, 2, 3] == [h["epoch"] for h, _, _ in listener.heard]
    for entry, (heard, softmax, exported) in zip(epochs, listener.heard):
        assert heard == entry
        # Every label has alpha in NNI's formulation, the input choice included.
        assert set(entry["probabilities"]) == set(softmax) == set(trainer.space.labels)
        for label, probs in softmax.items():
            assert entry["probabilities"][label] == pytest.approx(probs, rel=1e-5, abs=1e-7)
            h = -sum(p * math.log(p) for p in probs)
            assert entry["entropy"][label] == pytest.approx(h, rel=1e-4)
        assert entry["architecture"] == exported
    assert epochs[0]["probabilities"] != epochs[-1]["probabilities"]  # alpha learned
    assert epochs[-1]["architecture"] == trainer.export()
    # The history keeps its own copy (alphas), the same numbers.
    assert [h["alphas"] for h in trainer.history] == [e["probabilities"] for e in epochs]


SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from torch import nn
    from nastrain import testing
    from nastrain_darts import DartsTrainer

    class Killed(DartsTrainer):
        def save_checkpoint(self, directory):
            # Killed as the checkpoint of epoch KILL_AT is due: its record line is written,
            # its checkpoint is not.
            if self.epoch == int(os.environ.get("KILL_AT", "0")):
                os.kill(os.getpid(), signal.SIGKILL)
            return super().save_checkpoint(directory)

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = testing.TinyCell()
    trainer = Killed(model, nn.CrossEntropyLoss(), None, None, 4, testing.tiny_data(64),
                     batch_size=16, arc_learning_rate=0.05, seed=0, checkpoint_dir=sys.argv[1],
                     progress=False)
    trainer.fit()
    """
)


def test_a_killed_and_resumed_search_leaves_an_uninterrupted_one_s_record(tmp_path) -> None:
    script = tmp_path / "search.py"
    script.write_text(SCRIPT)

    def run(folder: Path, kill_at: int = 0) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KILL_AT": str(kill_at), "OMP_NUM_THREADS": "1"}
        return subprocess.run(
            [sys.executable, str(script), str(folder)], capture_output=True, text=True, env=env
        )

    whole = run(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    killed = run(tmp_path / "killed", kill_at=3)
    assert killed.returncode == -signal.SIGKILL
    record = tmp_path / "killed" / "run.jsonl"
    before = lines(record)
    assert [e.get("epoch") for e in before[1:]] == [1, 2, 3]  # no end line: killed
    # The writer is gone (its pid on this host no longer runs): a watch of it ends.
    assert before[0]["pid"] != os.getpid() and run_report.ended(record)
    assert torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["epoch"] == 2
    resumed = run(tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr
    expected = lines(tmp_path / "whole" / "run.jsonl")
    assert timeless(lines(record)) == timeless(expected)
    assert [e.get("epoch") for e in expected[1:-1]] == [1, 2, 3, 4]


def test_a_darts_space_search_draws_its_cells_in_the_page_and_as_dot(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 8, 8, generator=g)
    data = TensorDataset(x, torch.randint(0, 10, (16,), generator=g))
    torch.manual_seed(0)
    space = DartsSpace(C=4, layers=3, n_nodes=2, ops=["max_pool_3x3", "skip_connect", "none"])
    trainer = DartsTrainer(
        space, nn.CrossEntropyLoss(), None, None, 2, data, batch_size=8, seed=0,
        log_dir=tmp_path / "run", progress=False,
    )  # fmt: skip
    trainer.fit()
    final = lines(tmp_path / "run" / "run.jsonl")[-2]
    arch = trainer.export()
    assert final["architecture"] == arch
    cells = final["graph"]["cells"]
    assert set(cells) == {"normal", "reduce"}
    gene = genotype(arch, n_nodes=2)
    names = ["c_{k-2}", "c_{k-1}", "0", "1", "c_{k}"]
    for cell_type, pairs in (("normal", gene.normal), ("reduce", gene.reduce)):
        cell = cells[cell_type]
        assert cell["nodes"] == names
        # The genotype's (op, input) pairs, two per node, are the labelled edges.
        labelled = [(op, names.index(source)) for source, _, op in cell["edges"] if op]
        assert labelled == list(pairs)
        assert [e[:2] for e in cell["edges"] if e[2] is None] == [["0", "c_{k}"], ["1", "c_{k}"]]
    page = htmlreport.report(tmp_path / "run", tmp_path / "search.html")
    data_ = htmlreport.read_embedded(page.read_text())
    svgs = {c["name"]: c["svg"] for c in data_["diagrams"][-1]["cells"]}
    assert set(svgs) == {"normal", "reduce"}
    for cell_type, svg in svgs.items():
        assert svg.startswith("<svg") and svg.count('class="node"') == len(names)
        assert svg.count('class="edge"') == len(cells[cell_type]["edges"])
        dot = (tmp_path / f"search.{cell_type}.dot").read_text()
        assert dot.startswith(f'digraph "{cell_type}" {{') and dot.rstrip().endswith("}")
        edges = re.findall(r'^  "([^"]+)" -> "([^"]+)" \[(.*)\];$', dot, re.M)
        assert [[a, b] for a, b, _ in edges] == [e[:2] for e in cells[cell_type]["edges"]]
        for (_, _, attributes), edge in zip(edges, cells[cell_type]["edges"]):
            assert (f'label="{edge[2]}"' in attributes) == (edge[2] is not None)
