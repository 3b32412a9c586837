"""The run records of ENAS and random one-shot (SPOS): ENAS writes each decision's
distribution along the controller's greedy path and its greedy decoding, a resumed ENAS
search the record of an uninterrupted one; SPOS writes its uniform sampling distribution
and no architecture (it chooses one only in export())."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import nastrain
from nastrain import testing
from nastrain.space import SearchSpace
from nastrain_enas import EnasTrainer, RandomOneShotTrainer
from nastrain_enas.controller import Controller


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def timeless(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for entry in entries:
        entry = {k: v for k, v in entry.items() if k not in ("time", "seconds", "started")}
        if "options" in entry:
            entry["options"] = {k: v for k, v in entry["options"].items() if not k.endswith("_dir")}
        out.append(entry)
    return out


def reward(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(-1) == y).float().mean().item()


def enas(folder: Path, num_epochs: int = 3) -> EnasTrainer:
    torch.manual_seed(0)
    return EnasTrainer(
        testing.TinyCell(), nn.CrossEntropyLoss(), None, reward, None, num_epochs,
        testing.tiny_data(64), batch_size=16, ctrl_lr=0.05, ctrl_steps_aggregate=1, seed=0,
        checkpoint_dir=folder, progress=False,
    )  # fmt: skip


class Greedy:
    """A logger plugin: each epoch's record and the controller's greedy decoding then."""

    def __init__(self) -> None:
        self.heard: list[tuple[dict[str, Any], dict[str, Any]]] = []

    @nastrain.hookimpl
    def nastrain_on_epoch(self, trainer: Any, record: Any) -> None:
        self.heard.append((dict(record), trainer.greedy_arch()[0]))


def test_enas_records_the_greedy_path_s_distributions_and_decoding(
    tmp_path, nastrain_plugin
) -> None:
    listener = Greedy()
    nastrain_plugin(listener, name="greedy")
    trainer = enas(tmp_path)
    trainer.fit()
    entries = lines(tmp_path / "run.jsonl")
    header, epochs = entries[0], entries[1:-1]
    assert header["trainer"] == "enas" and entries[-1]["status"] == "completed"
    assert [e["epoch"] for e in epochs] == [1, 2, 3] == [r["epoch"] for r, _ in listener.heard]
    choices = {c["label"]: c for c in header["choices"]}
    for entry, (heard, greedy) in zip(epochs, listener.heard):
        assert heard == entry and entry["architecture"] == greedy
        for label, probs in entry["probabilities"].items():
            choice = choices[label]
            assert len(probs) == len(choice["candidates"])
            # A distribution (an input choice's: each input's share of the chosen).
            assert sum(probs) == pytest.approx(choice["n_chosen"], abs=1e-4)
            # The greedy decoding takes each decision's most likely value on that path.
            value = entry["architecture"][label]
            picked = choice["candidates"].index(value) if choice["kind"] == "layer" else value[0]
            assert probs[picked] == max(probs)
            h = -sum(p * math.log(p) for p in probs if p > 0)
            assert entry["entropy"][label] == pytest.approx(h, rel=1e-3, abs=1e-5)
    assert epochs[0]["probabilities"] != epochs[-1]["probabilities"]  # the controller learned
    assert epochs[-1]["architecture"] == trainer.greedy_arch()[0]


def test_the_controller_s_greedy_distributions_of_a_multi_input_choice() -> None:
    class Space(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.op = nastrain.LayerChoice([nn.Identity(), nn.Tanh(), nn.ReLU()], label="op")
            self.pick = nastrain.InputChoice(4, 2, label="pick")
            self.all = nastrain.InputChoice(2, 2, label="all")  # one value: no decision

    torch.manual_seed(0)
    controller = Controller(SearchSpace.from_model(Space()).choices)
    found = controller.greedy_distributions()
    assert list(found) == ["op", "pick", "all"]
    probs, entropy = found["pick"]
    assert len(probs) == 4 and sum(probs) == pytest.approx(2.0, abs=1e-5)
    assert 0 < entropy < math.log(math.comb(4, 2))  # over the 6 sets, not uniform
    # Each input's share is the sum of the probabilities of the sets holding it, given the
    # greedy op: P(pick = s | op) = P(op, pick = s) / P(op), from the controller's log_prob.
    greedy = controller.sample(greedy=True).arch
    op_prob = found["op"][0][["0", "1", "2"].index(greedy["op"])]
    given = {
        pair: math.exp(controller.log_prob({**greedy, "pick": list(pair)}).item()) / op_prob
        for pair in itertools.combinations(range(4), 2)
    }
    assert sum(given.values()) == pytest.approx(1.0, rel=1e-4)
    for i in range(4):
        assert probs[i] == pytest.approx(sum(p for s, p in given.items() if i in s), rel=1e-4)
    assert entropy == pytest.approx(-sum(p * math.log(p) for p in given.values()), rel=1e-4)
    assert found["all"] == ([1.0, 1.0], 0.0)


def test_a_resumed_enas_search_leaves_an_uninterrupted_one_s_record(tmp_path) -> None:
    enas(tmp_path / "whole", num_epochs=3).fit()

    class Stop:
        @nastrain.hookimpl
        def nastrain_on_epoch(self, trainer: Any, record: Any) -> None:
            if record["epoch"] == 2:
                raise KeyboardInterrupt

    with testing.registered(Stop(), name="stop"), pytest.raises(KeyboardInterrupt):
        enas(tmp_path / "cut", num_epochs=3).fit()
    assert lines(tmp_path / "cut" / "run.jsonl")[-1]["status"] == "interrupted"
    enas(tmp_path / "cut", num_epochs=3).fit()
    assert timeless(lines(tmp_path / "cut" / "run.jsonl")) == timeless(
        lines(tmp_path / "whole" / "run.jsonl")
    )


def test_spos_records_its_uniform_distribution_and_no_architecture(tmp_path) -> None:
    torch.manual_seed(0)
    trainer = RandomOneShotTrainer(
        testing.TinyCell(), nn.CrossEntropyLoss(), None, None, 2, testing.tiny_data(64),
        batch_size=16, seed=0, log_dir=tmp_path, progress=False,
    )  # fmt: skip
    trainer.fit()
    entries = lines(tmp_path / "run.jsonl")
    assert [e["type"] for e in entries] == ["header", "epoch", "epoch", "end"]
    for entry in entries[1:3]:
        assert entry["probabilities"] == {
            "edge_01": [0.25] * 4,
            "edge_02": [0.25] * 4,
            "edge_12": [0.25] * 4,
            "node_2": [0.5, 0.5],
        }
        for choice in trainer.space.choices:
            assert entry["entropy"][choice.label] == pytest.approx(math.log(choice.size), 1e-5)
        assert entry["architecture"] is None and entry["graph"] is None
        assert "loss" in entry["metrics"]
