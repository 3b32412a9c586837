"""The run record of a one-shot search (``run.jsonl``): what a SupernetTrainer writes per
epoch, that a resumed search leaves the record an uninterrupted one leaves, that
``nastrain_on_epoch`` hears every epoch's line, and how the report reads records (and
refuses what is not one). The trainer here is a minimal DARTS of the test's own (the core
may not import the darts plugin): softmax-weighted candidates, alpha trained by Adam."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import nastrain
from nastrain import htmlreport, testing
from nastrain.htmlreport import run as run_report
from nastrain.oneshot import SupernetTrainer
from nastrain.runrecord import (
    FORMAT,
    RunRecordError,
    RunRecordWriter,
    json_line,
    read_record,
    writer_identity,
)
from nastrain.serialization import SCHEMA_VERSION
from nastrain.utils import replace_choices, replace_layer_choice

# --- a minimal DARTS over nastrain.testing's TinyCell -----------------------------------------


class Mixed(nn.Module):
    """A choice relaxed to the softmax(alpha)-weighted sum of its candidates (or inputs)."""

    def __init__(self, choice: nn.Module, alpha: nn.Parameter) -> None:
        super().__init__()
        self.ops = nn.ModuleList(list(choice)) if isinstance(choice, nastrain.LayerChoice) else None
        self._alpha = [alpha]

    def forward(self, x: Any) -> torch.Tensor:
        weights = torch.softmax(self._alpha[0], -1)
        outputs = [op(x) for op in self.ops] if self.ops is not None else x
        return sum(w * out for w, out in zip(weights, outputs))


class DrawnCell(testing.TinyCell):
    """TinyCell with the ``architecture_graph`` method the trainer's default asks the model
    for: the cell's input, node 1, node 2 (one of two edges kept) and the output."""

    def architecture_graph(self, arch: dict[str, Any]) -> dict[str, Any]:
        kept = ["edge_02", "edge_12"][arch["node_2"][0]]
        edges = [
            ["in", "1", arch["edge_01"]],
            ["in" if kept == "edge_02" else "1", "2", arch[kept]],
        ]
        edges += [["in", "out", None], ["1", "out", None], ["2", "out", None]]
        return {"cells": {"cell": {"nodes": ["in", "1", "2", "out"], "edges": edges}}}


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    return {"acc": (logits.argmax(-1) == y).float().mean().item()}


class Alphas:
    """The trainer's alphas, checkpointable."""

    def __init__(self) -> None:
        self.alphas: dict[str, nn.Parameter] = {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.alphas.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for k, v in self.alphas.items():
                v.copy_(state[k])


class SoftTrainer(SupernetTrainer):
    """First-order DARTS in miniature; the record's probabilities are softmax(alpha)."""

    name = "soft"

    def __init__(self, model: nn.Module | None = None, num_epochs: int = 3, **options: Any):
        torch.manual_seed(0)
        model = model if model is not None else DrawnCell()
        super().__init__(
            model,
            loss=nn.functional.cross_entropy,
            metrics=accuracy,
            num_epochs=num_epochs,
            dataset=testing.tiny_data(64),
            batch_size=16,
            seed=0,
            progress=False,
            **options,
        )
        self.arch = Alphas()
        replace_choices(self.model, trainer=self, init_fn=self._relax)
        self.prepare_model()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        self.arch_optimizer = torch.optim.Adam(self.arch.alphas.values(), lr=0.1)

    def _relax(self, choice: Any) -> nn.Module:
        size = (
            len(choice.names) if isinstance(choice, nastrain.LayerChoice) else choice.n_candidates
        )
        alpha = self.arch.alphas.setdefault(choice.label, nn.Parameter(torch.zeros(size)))
        return Mixed(choice, alpha)

    def search_step(self, train_batch: Any, valid_batch: Any) -> dict[str, float]:
        self.arch_optimizer.zero_grad()
        vx, vy = valid_batch
        self.loss(self.model(vx), vy).backward(inputs=list(self.arch.alphas.values()))
        self.arch_optimizer.step()
        self.optimizer.zero_grad()
        x, y = train_batch
        logits = self.model(x)
        loss = self.loss(logits, y)
        loss.backward(inputs=list(self.model.parameters()))
        self.optimizer.step()
        return {"loss": loss.item(), **self.compute_metrics(logits.detach(), y)}

    def checkpointables(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer, "arch_optimizer": self.arch_optimizer, "a": self.arch}

    def softmax(self) -> dict[str, list[float]]:
        with torch.no_grad():
            return {k: torch.softmax(v, -1).tolist() for k, v in self.arch.alphas.items()}

    def architecture_probabilities(self) -> dict[str, list[float]]:
        return self.softmax()

    def export(self) -> dict[str, Any]:
        arch = self.current_architecture()
        assert arch is not None
        return arch


class First(nn.Module):
    def __init__(self, choice: nn.Module) -> None:
        super().__init__()
        self.op = choice[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Bare(SupernetTrainer):
    """A third-party trainer that overrides none of the record's hooks."""

    name = "bare"

    def __init__(self, **options: Any) -> None:
        model = nn.Sequential(nastrain.LayerChoice([nn.Linear(3, 3), nn.Identity()], label="op"))
        x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
        super().__init__(
            model,
            loss=nn.functional.mse_loss,
            metrics=None,
            num_epochs=2,
            dataset=torch.utils.data.TensorDataset(x, x),
            batch_size=8,
            seed=0,
            progress=False,
            **options,
        )
        replace_layer_choice(self.model, First)
        self.prepare_model()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)

    def search_step(self, train_batch: Any, valid_batch: Any) -> dict[str, float]:
        self.optimizer.zero_grad()
        loss = self.loss(self.model(train_batch[0]), train_batch[1])
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}

    def export(self) -> dict[str, Any]:
        return {"op": "0"}


class Listener:
    """A logger plugin: keeps every epoch's record and the trainer's alphas at that moment."""

    def __init__(self) -> None:
        self.heard: list[tuple[int, dict[str, Any], dict[str, list[float]] | None]] = []

    @nastrain.hookimpl
    def nastrain_on_epoch(self, trainer: Any, record: Any) -> None:
        softmax = trainer.softmax() if isinstance(trainer, SoftTrainer) else None
        self.heard.append((trainer.epoch, json.loads(json.dumps(record)), softmax))


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def timeless(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The record without what differs between two runs of one search: times and folders."""
    out = []
    for entry in entries:
        entry = {k: v for k, v in entry.items() if k not in ("time", "seconds", "started")}
        if "options" in entry:
            entry["options"] = {k: v for k, v in entry["options"].items() if not k.endswith("_dir")}
        out.append(entry)
    return out


# --- what a run writes ------------------------------------------------------------------------


def test_a_run_with_a_checkpoint_dir_writes_header_epochs_and_end(tmp_path, nastrain_plugin):
    listener = Listener()
    nastrain_plugin(listener, name="listener")
    trainer = SoftTrainer(checkpoint_dir=tmp_path)
    trainer.fit()
    record = lines(tmp_path / htmlreport.RUN_RECORD)
    header, epochs, end = record[0], record[1:-1], record[-1]
    assert header["format"] == FORMAT and header["schema_version"] == SCHEMA_VERSION
    assert header["type"] == "header" and header["trainer"] == "soft"
    assert header["trainer_class"].endswith("SoftTrainer") and header["num_epochs"] == 3
    assert header["choices"][0] == {
        "label": "edge_01",
        "kind": "layer",
        "candidates": ["linear", "relu_linear", "skip", "zero"],
        "n_chosen": 1,
    }
    assert header["choices"][-1] == {
        "label": "node_2",
        "kind": "input",
        "candidates": ["0", "1"],
        "n_chosen": 1,
    }
    assert header["options"]["checkpoint_dir"] == str(tmp_path) and header["options"]["seed"] == 0
    assert [e["epoch"] for e in epochs] == [1, 2, 3] and {e["type"] for e in epochs} == {"epoch"}
    assert end["type"] == "end" and end["status"] == "completed" and end["epochs"] == 3
    # Every epoch's line is what the plugin heard, and its probabilities are softmax(alpha)
    # as the trainer held it at that epoch's end (the alphas move: they differ per epoch).
    assert [epoch for epoch, _, _ in listener.heard] == [1, 2, 3]
    assert [heard for _, heard, _ in listener.heard] == epochs
    for entry, (_, _, softmax) in zip(epochs, listener.heard):
        assert softmax is not None and set(entry["probabilities"]) == set(softmax)
        for label, probs in softmax.items():
            assert entry["probabilities"][label] == pytest.approx(probs, rel=1e-5, abs=1e-6)
            expected = -sum(p * math.log(p) for p in probs if p > 0)
            assert entry["entropy"][label] == pytest.approx(expected, rel=1e-4)
        # The default derivation: each label's most probable candidate.
        edge = entry["probabilities"]["edge_01"]
        assert (
            entry["architecture"]["edge_01"]
            == header["choices"][0]["candidates"][edge.index(max(edge))]
        )
        assert entry["metrics"].keys() == {"loss", "acc"}
    assert epochs[0]["probabilities"] != epochs[-1]["probabilities"]
    # The model's architecture_graph drew the exported architecture.
    graph = epochs[-1]["graph"]["cells"]["cell"]
    assert graph["nodes"] == ["in", "1", "2", "out"]
    assert graph["edges"][0] == ["in", "1", epochs[-1]["architecture"]["edge_01"]]
    # The history the trainer keeps is what it was: metrics and epoch_record() extras only.
    assert [set(h) for h in trainer.history] == [{"epoch", "metrics"}] * 3


def test_log_dir_takes_the_record_and_without_either_folder_nothing_is_written(
    tmp_path, monkeypatch, nastrain_plugin
):
    SoftTrainer(num_epochs=1, log_dir=tmp_path / "logs").fit()
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["run.jsonl"]  # no checkpoint
    both = SoftTrainer(num_epochs=1, log_dir=tmp_path / "l2", checkpoint_dir=tmp_path / "c2")
    both.fit()
    assert (tmp_path / "l2" / "run.jsonl").is_file()
    assert sorted(p.name for p in (tmp_path / "c2").iterdir()) == ["checkpoint.pt"]
    # Neither: no file anywhere, and the hook still hears each epoch.
    listener = Listener()
    nastrain_plugin(listener, name="listener")
    monkeypatch.chdir(tmp_path / "logs")
    trainer = SoftTrainer(num_epochs=2)
    assert trainer.record_dir is None
    trainer.fit()
    assert [e for e, _, _ in listener.heard] == [1, 2]
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["run.jsonl"]
    # A log_dir that cannot be a folder is refused when the trainer is built, by its name.
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"log_dir .*file is a file, not a folder"):
        SoftTrainer(log_dir=tmp_path / "file")
    with pytest.raises(TypeError, match="log_dir must be a path"):
        SoftTrainer(log_dir=3)


def test_a_third_party_trainer_gets_the_defaults(tmp_path) -> None:
    trainer = Bare(checkpoint_dir=tmp_path)
    trainer.fit()
    entries = lines(tmp_path / "run.jsonl")
    assert [e["type"] for e in entries] == ["header", "epoch", "epoch", "end"]
    for entry in entries[1:3]:
        assert entry["probabilities"] == {} and entry["entropy"] == {}
        assert entry["architecture"] is None and entry["graph"] is None
        assert set(entry["metrics"]) == {"loss"} and entry["seconds"] >= 0


def test_an_architecture_hook_that_breaks_the_record_is_named(tmp_path) -> None:
    class Wrong(SoftTrainer):
        def architecture_probabilities(self):
            return {**self.softmax(), "edge_01": [0.5, 0.5]}

    with pytest.raises(ValueError, match=r"gives 2 numbers for 'edge_01', which has 4 candidates"):
        Wrong(log_dir=tmp_path).fit()
    end = lines(tmp_path / "run.jsonl")[-1]
    assert end["type"] == "end" and end["status"] == "failed" and "ValueError" in end["error"]

    class Unknown(SoftTrainer):
        def architecture_probabilities(self):
            return {"nope": [1.0]}

    with pytest.raises(ValueError, match=r"label 'nope', which the space lacks"):
        Unknown(log_dir=tmp_path).fit()


class StopAtReport:
    """Stops a fit at the report of epoch ``epoch``: the epoch's record line is written, its
    checkpoint is not (as a kill between the two would leave it)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    @nastrain.hookimpl
    def nastrain_on_report(self, trainer: Any, final: bool) -> None:
        if trainer is not None and trainer.epoch == self.epoch:
            raise KeyboardInterrupt


def test_a_resumed_run_leaves_the_record_of_an_uninterrupted_one(tmp_path) -> None:
    SoftTrainer(num_epochs=4, checkpoint_dir=tmp_path / "whole").fit()
    whole = lines(tmp_path / "whole" / "run.jsonl")
    folder = tmp_path / "stopped"
    with testing.registered(StopAtReport(3), name="stop"), pytest.raises(KeyboardInterrupt):
        SoftTrainer(num_epochs=4, checkpoint_dir=folder).fit()
    stopped = lines(folder / "run.jsonl")
    # Epoch 3's line is there, but its checkpoint is not: the checkpoint is of epoch 2.
    assert [e.get("epoch") for e in stopped[1:-1]] == [1, 2, 3]
    assert stopped[-1]["status"] == "interrupted"
    assert torch.load(folder / "checkpoint.pt", weights_only=True)["epoch"] == 2
    # A process killed while writing a line leaves it cut short.
    with open(folder / "run.jsonl", "a") as f:
        f.write('{"type": "epoch", "epoch": 4, "metr')
    resumed = SoftTrainer(num_epochs=4, checkpoint_dir=folder)
    resumed.fit()
    again = lines(folder / "run.jsonl")
    assert [e.get("epoch") for e in again[1:-1]] == [1, 2, 3, 4]
    assert timeless(again) == timeless(whole)
    assert again[0]["started"] == stopped[0]["started"]  # the header is the first run's
    # A fit() on a finished search trains nothing and leaves the same record.
    SoftTrainer(num_epochs=4, checkpoint_dir=folder).fit()
    assert timeless(lines(folder / "run.jsonl")) == timeless(whole)


def test_a_run_started_afresh_in_the_folder_of_an_old_record_replaces_it(tmp_path) -> None:
    Bare(log_dir=tmp_path).fit()
    SoftTrainer(num_epochs=1, log_dir=tmp_path).fit()  # no checkpoint: a new search
    entries = lines(tmp_path / "run.jsonl")
    assert entries[0]["trainer"] == "soft" and [e["type"] for e in entries] == [
        "header",
        "epoch",
        "end",
    ]


# --- reading records: collect, ended, bad input ------------------------------------------------


@pytest.fixture(scope="module")
def soft_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("soft-run")
    SoftTrainer(num_epochs=3, checkpoint_dir=folder).fit()
    return folder


def test_collect_reads_the_record_as_written_and_draws_its_cells(soft_run, tmp_path) -> None:
    data = run_report.collect(soft_run)
    entries = lines(soft_run / "run.jsonl")
    assert data["kind"] == "run" and data["status"] == "completed" and data["notes"] == []
    assert data["header"] == entries[0] and data["epochs"] == entries[1:-1]
    assert data["end"] == entries[-1] and run_report.ended(soft_run / "run.jsonl")
    # Each distinct graph once, with its epochs; every epoch with a graph in one of them.
    assert sorted(e for d in data["diagrams"] for e in d["epochs"]) == [1, 2, 3]
    svg = data["diagrams"][-1]["cells"][0]["svg"]
    import xml.etree.ElementTree as ET  # only this test parses SVG

    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg"
    final = entries[-2]["graph"]["cells"]["cell"]
    assert len(root.findall(f".//{ns}g[@class='node']")) == len(final["nodes"])
    assert len(root.findall(f".//{ns}path[@class='edge']")) == len(final["edges"])
    texts = {t.text for t in root.iter(f"{ns}text")}
    assert {entries[-2]["architecture"]["edge_01"], "in", "out"} <= texts
    # The page embeds exactly that, and report() writes the .dot beside it.
    page = htmlreport.report(soft_run, tmp_path / "soft.html")
    assert htmlreport.read_embedded(page.read_text()) == json.loads(json.dumps(data))
    dot = (tmp_path / "soft.cell.dot").read_text()
    check_dot(dot, final)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["soft.cell.dot", "soft.html"]


def check_dot(text: str, cell: dict[str, Any]) -> None:
    """Parse the DOT text minimally: one ``digraph "name" { ... }`` of statements ending in
    ``;``, quoted identifiers, a node statement per node and an edge per edge."""
    token = re.compile(
        r'\s*("(?:[^"\\]|\\.)*"|->|[{}\[\];,=]|[A-Za-z_][A-Za-z0-9_]*|-?(?:\.\d+|\d+(?:\.\d*)?))'
    )
    tokens, pos = [], 0
    while pos < len(text.rstrip()):
        match = token.match(text, pos)
        assert match, f"unexpected DOT text at {text[pos : pos + 30]!r}"
        tokens.append(match.group(1))
        pos = match.end()
    assert tokens[:3] == ["digraph", tokens[1], "{"] and tokens[-1] == "}"
    body = tokens[3:-1]
    statements: list[list[str]] = [[]]
    depth = 0
    for t in body:
        depth += t == "["
        depth -= t == "]"
        if t == ";" and depth == 0:
            statements.append([])
        else:
            statements[-1].append(t)
    assert statements.pop() == []  # every statement ends with ";"
    unquote = lambda t: json.loads(t) if t.startswith('"') else t  # noqa: E731
    edges = [s for s in statements if len(s) > 2 and s[1] == "->"]
    nodes = [s for s in statements if s and s[0].startswith('"') and (len(s) == 1 or s[1] == "[")]
    assert [unquote(s[0]) for s in nodes] == cell["nodes"]
    assert [[unquote(s[0]), unquote(s[2])] for s in edges] == [e[:2] for e in cell["edges"]]
    for statement, edge in zip(edges, cell["edges"]):
        if edge[2] is not None:
            assert f"label={json.dumps(edge[2])}" in "".join(statement)
    if shutil.which("dot"):  # Graphviz renders it where installed
        subprocess.run(["dot", "-Tsvg"], input=text, text=True, check=True, capture_output=True)


def test_dot_and_svg_escape_what_they_are_given() -> None:
    cell = {
        "nodes": ['a "b"', "c\\d", "<e>"],
        "edges": [['a "b"', "c\\d", "op</svg>"], ["c\\d", "<e>", None]],
    }
    check_dot(run_report.cell_dot(cell, name='n"1'), cell)
    svg = run_report.cell_svg(cell, title="<t>")
    import xml.etree.ElementTree as ET  # only these tests parse SVG

    texts = [t.text for t in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}text")]
    assert "op</svg>" in texts and "<e>" in texts


def test_a_record_cut_short_is_read_up_to_its_last_whole_line(soft_run, tmp_path) -> None:
    record = tmp_path / "run.jsonl"
    text = (soft_run / "run.jsonl").read_text().splitlines(keepends=True)
    record.write_text("".join(text[:3]) + text[3][:25])  # header, epochs 1-2, epoch 3 cut
    data = run_report.collect(record)
    assert [e["epoch"] for e in data["epochs"]] == [1, 2] and data["status"] == "running"
    assert len(data["notes"]) == 1 and "line 4 of run.jsonl is cut short" in data["notes"][0]
    assert not run_report.ended(record)
    # A record with only its header: a page that says so.
    record.write_text(text[0])
    data = run_report.collect(record)
    assert data["epochs"] == [] and data["diagrams"] == [] and data["dot"] == {}
    # Epochs missing (a record deleted and the search resumed) are noted.
    record.write_text(text[0] + text[3])
    assert "epoch(s) 1-2 are missing" in run_report.collect(record)["notes"][0]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("", r"bad\.jsonl is empty, not a run record"),
        ("hello\n", r"bad\.jsonl is not a run record: its first line is not JSON"),
        ('{"a": 1}\n', r'bad\.jsonl is not a nastrain run record: its first line has no "format"'),
        ("[1, 2]\n", r"bad\.jsonl: line 1 is a JSON list, not an object"),
        (
            '{"format": "nastrain-run", "schema_version": 99}\n',
            r"bad\.jsonl is a run record of schema_version 99, written by a newer nastrain; "
            rf"this nastrain reads schema_version {SCHEMA_VERSION} and older",
        ),
        (
            '{"format": "nastrain-run", "schema_version": 1}\nnot json\n{"type": "end"}\n',
            r"bad\.jsonl: line 2 is not JSON",
        ),
        (
            '{"format": "nastrain-run", "schema_version": 1}\n{"type": "trial"}\n',
            r"bad\.jsonl: line 2 has type 'trial'",
        ),
        (
            '{"format": "nastrain-run", "schema_version": 1}\n{"type": "epoch"}\n',
            r"bad\.jsonl: line 2 is an epoch line without an epoch",
        ),
        (
            '{"format": "nastrain-run", "schema_version": 1}\n'
            '{"type": "epoch", "epoch": 1, "graph": {"cells": {"c": {"nodes": ["a"], '
            '"edges": [["a", "b", "op"]]}}}}\n',
            r"bad\.jsonl: epoch 1's graph: cell 'c' has an edge .* between nodes it does not list",
        ),
    ],
)
def test_a_file_that_is_not_a_run_record_is_refused_by_name(tmp_path, content, match) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    with pytest.raises(htmlreport.ReportError, match=match):
        run_report.collect(bad)
    if '"graph"' not in content:  # (ended() reads the lines, not what the page draws)
        with pytest.raises(htmlreport.ReportError, match=match):
            run_report.ended(bad)
    # report() refuses it too (a file not starting with "{" already as no record at all),
    # and writes nothing.
    with pytest.raises(htmlreport.ReportError, match=r"bad\.jsonl"):
        htmlreport.report(bad, tmp_path / "page.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


def test_read_record_is_the_reader_loggers_use(soft_run) -> None:
    record = read_record(soft_run / "run.jsonl")
    assert record.header["trainer"] == "soft" and len(record.epochs) == 3
    assert record.end is not None and record.end["status"] == "completed"


# --- robust reading and resuming ---------------------------------------------------------------


def _record(folder: Path, labels: list[str], epochs: int = 3) -> tuple[dict[str, Any], list[str]]:
    """A hand-made record of ``epochs`` epochs over ``labels`` in ``folder``: its header and
    its lines as written (``json_line``: non-ASCII kept as it is)."""
    header = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "type": "header",
        "trainer": "soft",
        "choices": [
            {"label": label, "kind": "layer", "candidates": ["a", "b"], "n_chosen": 1}
            for label in labels
        ],
        "num_epochs": epochs,
    }
    written = [json_line(header)]
    for epoch in range(1, epochs + 1):
        p = round(0.5 + 0.1 * epoch, 3)
        written.append(
            json_line(
                {
                    "type": "epoch",
                    "epoch": epoch,
                    "time": float(epoch),
                    "metrics": {"loss": 1.0 / epoch},
                    "probabilities": {label: [round(1 - p, 3), p] for label in labels},
                    "entropy": {},
                    "architecture": dict.fromkeys(labels, "b"),
                    "graph": None,
                }
            )
        )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.jsonl").write_bytes("".join(written).encode("utf-8"))
    return header, written


def test_a_last_line_cut_mid_character_is_dropped_and_a_resume_keeps_the_epochs(tmp_path):
    labels = ["ребро_01", "边_02"]
    header, written = _record(tmp_path, labels)
    last = written[-1].encode("utf-8")
    inside = last.index("边".encode()) + 1  # the kill came in the middle of a 3-byte character
    (tmp_path / "run.jsonl").write_bytes("".join(written[:-1]).encode("utf-8") + last[:inside])
    record = read_record(tmp_path / "run.jsonl")
    assert [e["epoch"] for e in record.epochs] == [1, 2] and record.end is None
    assert record.notes == [
        "line 4 of run.jsonl is cut short (the run was stopped while writing it) and was ignored"
    ]
    assert set(record.epochs[1]["probabilities"]) == set(labels)
    # The search resumes from epoch 2's checkpoint: the record keeps epochs 1-2.
    assert RunRecordWriter(tmp_path).start(header, epoch=2) is True
    entries = lines(tmp_path / "run.jsonl")
    assert [e.get("epoch") for e in entries] == [None, 1, 2]
    assert entries[1:] == [json.loads(line) for line in written[1:3]]
    assert list(tmp_path.iterdir()) == [tmp_path / "run.jsonl"]  # nothing moved aside


@pytest.mark.parametrize("cut", ["in JSON", "mid-character"])
def test_an_epoch_line_cut_short_then_an_end_line_keeps_the_end_and_drops_the_cut(tmp_path, cut):
    # A disk full while epoch 3's line was written: part of it reached the file, fit() failed
    # and its end line (written once space was free) continues the cut line.
    header, written = _record(tmp_path, ["边_01"])
    third = written[3].encode("utf-8")
    part = third[: third.index("边".encode()) + 1] if cut == "mid-character" else third[:40]
    end = json_line({"type": "end", "time": 9.0, "epochs": 2, "status": "failed", "error": "E"})
    (tmp_path / "run.jsonl").write_bytes(
        "".join(written[:3]).encode("utf-8") + part + end.encode("utf-8")
    )
    record = read_record(tmp_path / "run.jsonl")
    assert [e["epoch"] for e in record.epochs] == [1, 2]
    assert record.end == json.loads(end)
    assert (
        len(record.notes) == 1
        and "line 4 of run.jsonl starts with a line cut short" in (record.notes[0])
    )
    data = run_report.collect(tmp_path)
    assert data["status"] == "failed" and data["notes"] == record.notes
    assert run_report.ended(tmp_path)
    # A resume from epoch 2 keeps epochs 1-2 and drops the end line.
    assert RunRecordWriter(tmp_path).start(header, epoch=2) is True
    assert [e["type"] for e in lines(tmp_path / "run.jsonl")] == ["header", "epoch", "epoch"]


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("[" * 100_000, r"bad\.jsonl: line 2 is JSON nested too deeply to read"),
        ('{"type": "epoch", "epoch": ' + "1" * 5000 + "}", r"line 2 is JSON that cannot be read"),
        ("\udcff", r"bad\.jsonl: line 2 is not UTF-8 text"),
    ],
)
def test_json_python_cannot_read_is_refused_by_file_and_line(tmp_path, line, match) -> None:
    bad = tmp_path / "bad.jsonl"
    head = json.dumps({"format": FORMAT, "schema_version": 1}) + "\n"
    bad.write_bytes(head.encode() + line.encode("utf-8", "surrogateescape") + b"\n{}\n")
    with pytest.raises(htmlreport.ReportError, match=match):
        run_report.collect(bad)
    # As a last line, not newline-ended, the same is a line cut short.
    bad.write_bytes(head.encode() + line.encode("utf-8", "surrogateescape"))
    assert "line 2 of bad.jsonl is cut short" in read_record(bad).notes[0]
    # As the first line: not a run record.
    bad.write_bytes(line.encode("utf-8", "surrogateescape") + b"\n")
    with pytest.raises(RunRecordError, match=r"bad\.jsonl is not a run record: its first line"):
        read_record(bad)


def test_a_resume_moves_an_unreadable_record_aside_and_never_overwrites_it(tmp_path, caplog):
    header, written = _record(tmp_path, ["x"])
    record = tmp_path / "run.jsonl"
    garbage = ("".join(written[:2]) + "not json\n" + written[2]).encode("utf-8")
    record.write_bytes(garbage)
    with caplog.at_level("WARNING", logger="nastrain.runrecord"):
        assert RunRecordWriter(tmp_path).start(header, epoch=2) is False
    aside = tmp_path / "run.jsonl.unreadable-1"
    assert aside.read_bytes() == garbage
    assert [e["type"] for e in lines(record)] == ["header"]  # afresh
    (message,) = [r.getMessage() for r in caplog.records]
    assert str(record) in message and str(aside) in message and "line 3 is not JSON" in message
    # Again: the next free name; the earlier one stays.
    record.write_bytes(b"\xff\xfe\n")
    RunRecordWriter(tmp_path).start(header, epoch=2)
    assert (tmp_path / "run.jsonl.unreadable-2").read_bytes() == b"\xff\xfe\n"
    assert aside.read_bytes() == garbage
    # Another trainer's record is moved aside too; a fresh start (epoch 0) replaces it.
    _record(tmp_path, ["x"])
    RunRecordWriter(tmp_path).start({**header, "trainer": "other"}, epoch=2)
    assert read_record(tmp_path / "run.jsonl.other-1").header["trainer"] == "soft"
    RunRecordWriter(tmp_path).start(header)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "run.jsonl",
        "run.jsonl.other-1",
        "run.jsonl.unreadable-1",
        "run.jsonl.unreadable-2",
    ]


KILL_IN_START = """
import os, signal, sys
from pathlib import Path
from nastrain import _files
from nastrain.runrecord import RunRecordWriter, read_record

folder, stage = Path(sys.argv[1]), sys.argv[2]
real_fsync, real_replace = os.fsync, os.replace
die = lambda: os.kill(os.getpid(), signal.SIGKILL)

def fsync(fd):
    if stage == "writing":  # the new record is in its temporary file, not yet synced
        die()
    real_fsync(fd)

def replace(src, dst):
    if stage == "renaming":
        die()
    real_replace(src, dst)
    if stage == "renamed":  # in place, the folder not yet synced
        die()

os.fsync, os.replace = fsync, replace
RunRecordWriter(folder).start(read_record(folder / "run.jsonl").header, epoch=2)
"""


@pytest.mark.parametrize("stage", ["writing", "renaming", "renamed"])
def test_a_kill_at_any_moment_in_start_leaves_a_record_that_resumes(tmp_path, stage) -> None:
    header, _ = _record(tmp_path, ["x"])
    killed = subprocess.run(
        [sys.executable, "-c", KILL_IN_START, str(tmp_path), stage], capture_output=True
    )
    assert killed.returncode == -9, killed.stderr
    record = read_record(tmp_path / "run.jsonl")  # the old record or the new, whole
    old, new = [1, 2, 3], [1, 2]
    assert [e["epoch"] for e in record.epochs] == (old if stage != "renamed" else new)
    assert record.notes == []
    assert RunRecordWriter(tmp_path).start(header, epoch=2) is True
    assert [e.get("epoch") for e in lines(tmp_path / "run.jsonl")] == [None, 1, 2]


def test_a_resumed_record_has_this_run_s_header_and_the_first_run_s_start(tmp_path) -> None:
    SoftTrainer(num_epochs=2, checkpoint_dir=tmp_path).fit()
    first = lines(tmp_path / "run.jsonl")[0]
    assert first["pid"] == os.getpid() and first["host"] == socket.gethostname()
    resumed = SoftTrainer(num_epochs=4, checkpoint_dir=tmp_path, channels_last=False)
    resumed.fit()
    entries = lines(tmp_path / "run.jsonl")
    header = entries[0]
    assert [e.get("epoch") for e in entries[1:-1]] == [1, 2, 3, 4]
    assert header["num_epochs"] == 4 and header["options"]["channels_last"] is False  # this run's
    assert (header["started"], header["time"]) == (first["started"], first["time"])
    assert timeless([header]) == timeless([resumed._record_header() | writer_identity()])


WRITE_AND_WAIT = """
import sys, time
from nastrain.runrecord import FORMAT, RunRecordWriter
from nastrain.serialization import SCHEMA_VERSION

header = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "type": "header",
          "trainer": "soft", "choices": [], "num_epochs": 2}
RunRecordWriter(sys.argv[1]).start(header)
print("started", flush=True)
time.sleep(600)
"""


def test_a_watch_of_a_record_whose_writer_was_killed_ends(tmp_path) -> None:
    folder = tmp_path / "run"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITE_AND_WAIT, str(folder)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "started\n"
        header = read_record(folder / "run.jsonl").header
        assert header["pid"] == writer.pid and header["host"] == socket.gethostname()
        assert not run_report.ended(folder)  # its writer runs
        pages: list[Path] = []
        watch = threading.Thread(
            target=htmlreport.watch,
            args=(folder, tmp_path / "page.html"),
            kwargs={"interval": 0.1, "on_write": pages.append},
            daemon=True,
        )
        watch.start()
        deadline = time.monotonic() + 30
        while len(pages) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert watch.is_alive() and len(pages) >= 3  # it rewrites the page while it runs
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=30)
        watch.join(30)
        assert not watch.is_alive()  # no end line, but the writer is gone
        assert run_report.ended(folder)
    finally:
        writer.kill()
        writer.wait()


def test_a_record_from_another_host_ends_when_unchanged_for_an_hour(tmp_path) -> None:
    header, _ = _record(tmp_path, ["x"])
    record = tmp_path / "run.jsonl"
    for stamp in ({"pid": 1, "host": "elsewhere.invalid"}, {}):  # and a record without them
        record.write_text(json_line({**header, **stamp}))
        assert not run_report.ended(record)
        an_hour_ago = time.time() - run_report.STALE_SECONDS - 1
        os.utime(record, (an_hour_ago, an_hour_ago))
        assert run_report.ended(record)
        assert not run_report.ended(record, stale_after=2 * run_report.STALE_SECONDS)


def test_cells_whose_names_come_out_alike_get_a_dot_file_each(tmp_path) -> None:
    names = ["a b", "a_b", "A_B", "a_b-2", "", "/"]
    data = {"dot": {name: f"digraph {json.dumps(name)} {{}}\n" for name in names}}
    paths = run_report.dot_paths(data, tmp_path / "page.html")
    assert [p.name for p in paths.values()] == [
        "page.a_b.dot",
        "page.a_b-2.dot",
        "page.A_B-3.dot",
        "page.a_b-2-2.dot",
        "page.cell.dot",
        "page._.dot",
    ]
    written = run_report.write_dot_files(data, tmp_path / "page.html")
    assert len(set(written)) == len(names)
    assert [p.read_text() for p in written] == list(data["dot"].values())
