"""nastrain-tensorboard with a real one-shot search: a first-order DARTS in miniature
(softmax-mixed candidates, alternating weight and architecture steps) over
``nastrain.testing.PlantedOp``; the events of its run equal the run record (``run.jsonl``)
the trainer wrote, epoch by epoch, whether the logger is an object or the environment's."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

import nastrain
from nastrain import testing
from nastrain.oneshot import SupernetTrainer
from nastrain.utils import replace_layer_choice
from nastrain_tensorboard import ENV_VAR, TensorBoardLogger, plugin


class Mixed(nn.Module):
    """A layer choice's candidates, summed with the softmax of its label's alpha."""

    def __init__(self, choice: nastrain.LayerChoice, alphas: nn.ParameterDict) -> None:
        super().__init__()
        self.ops = nn.ModuleList(choice.candidates)
        self.label = choice.label
        object.__setattr__(self, "alphas", alphas)  # the trainer's, not this module's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.alphas[self.label], 0)
        return sum(w * op(x) for w, op in zip(weights, self.ops))


class TinyDarts(SupernetTrainer):
    """First-order DARTS in miniature."""

    name = "tiny-darts"

    def __init__(self, model: nn.Module, epochs: int, **options: Any) -> None:
        super().__init__(
            model,
            loss=nn.functional.cross_entropy,
            metrics=None,
            num_epochs=epochs,
            dataset=testing.tiny_data(96),
            batch_size=32,
            progress=False,
            **options,
        )
        self.alphas = nn.ParameterDict()

        def mix(choice: nastrain.LayerChoice) -> nn.Module:
            if choice.label not in self.alphas:
                self.alphas[choice.label] = nn.Parameter(torch.zeros(len(choice.candidates)))
            return Mixed(choice, self.alphas)

        replace_layer_choice(self.model, mix)
        self.prepare_model()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.2)
        self.arch_optimizer = torch.optim.Adam(self.alphas.parameters(), lr=0.3)

    def search_step(self, train_batch: Any, valid_batch: Any) -> dict[str, float]:
        x, y = valid_batch
        self.arch_optimizer.zero_grad()
        self.loss(self.model(x), y).backward()
        self.arch_optimizer.step()
        x, y = train_batch
        self.optimizer.zero_grad()
        loss = self.loss(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alphas.values())

    def checkpointables(self) -> dict[str, Any]:
        return {"alphas": self.alphas, "arch_optimizer": self.arch_optimizer}

    def architecture_probabilities(self) -> dict[str, list[float]]:
        return {label: torch.softmax(a.detach(), 0).tolist() for label, a in self.alphas.items()}

    def export(self) -> dict[str, Any]:
        names = dict(zip(self.alphas, (c.names for c in self.space.choices)))
        return {label: names[label][int(a.argmax())] for label, a in self.alphas.items()}


def epoch_lines(directory: Path) -> list[dict[str, Any]]:
    lines = (directory / "run.jsonl").read_text().splitlines()
    return [entry for entry in map(json.loads, lines) if entry.get("type") == "epoch"]


@pytest.mark.parametrize("how", ["object", "environment"])
def test_a_search_logs_what_its_run_record_says_per_epoch(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_dir = tmp_path / "tb"
    monkeypatch.setattr(plugin, "_loggers", {})
    torch.manual_seed(0)
    trainer = TinyDarts(testing.PlantedOp(), epochs=4, seed=0, log_dir=tmp_path / "record")
    if how == "object":
        monkeypatch.delenv(ENV_VAR, raising=False)
        with TensorBoardLogger(log_dir):
            trainer.fit()
    else:
        monkeypatch.setenv(ENV_VAR, str(log_dir))
        trainer.fit()
        logger = plugin.env_logger()
        assert logger is not None and not logger._searches  # closed when the fit ended
    records = epoch_lines(tmp_path / "record")
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    (run,) = log_dir.iterdir()
    assert run.name == "tiny-darts-0001"
    events = EventAccumulator(str(run), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    events.Reload()

    def curve(tag: str) -> list[tuple[int, float]]:
        return [(e.step, e.value) for e in events.Scalars(tag)]

    def expected(values: Any) -> list[tuple[int, Any]]:
        return [(r["epoch"], pytest.approx(values(r), rel=1e-5)) for r in records]

    assert curve("metrics/loss") == expected(lambda r: r["metrics"]["loss"])
    assert curve("entropy/op") == expected(lambda r: r["entropy"]["op"])
    names = ["relu", "neg_relu", "zero"]
    for i, name in enumerate(names):
        assert curve(f"probabilities/op/{name}") == expected(
            lambda r, i=i: r["probabilities"]["op"][i]
        )
    # The search learns: the planted candidate ends above uniform and above where its first
    # epoch left it, so the curves are not flat.
    relu = [v for _, v in curve("probabilities/op/relu")]
    assert relu[-1] > max(relu[0], 1 / 3)
    histograms = events.Histograms("architecture/op")
    assert [h.step for h in histograms] == [1, 2, 3, 4]
    for h, r in zip(histograms, records):
        assert list(h.histogram_value.bucket) == pytest.approx(r["probabilities"]["op"], rel=1e-5)
    texts = events.Tensors("architecture/text_summary")
    shown = [json.loads(t.tensor_proto.string_val[0].decode()) for t in texts]
    assert shown == [r["architecture"] for r in records]
    assert shown[-1] == testing.PlantedOp.PLANTED


def test_a_search_without_a_logger_writes_no_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(plugin, "_loggers", {})
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TinyDarts(testing.PlantedOp(), epochs=1, seed=0).fit()
    assert list(tmp_path.iterdir()) == []
