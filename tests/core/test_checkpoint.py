"""One-shot checkpoints: one file, synced and renamed atomically; a half-written one is skipped
with a warning; hostile or foreign files and unwritable folders are refused, naming them."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import pickle
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import nastrain
from nastrain.oneshot import CHECKPOINT_FORMAT, SupernetTrainer, read_checkpoint
from nastrain.utils import replace_layer_choice


class First(nn.Module):
    def __init__(self, choice):
        super().__init__()
        self.op = choice[0]

    def forward(self, x):
        return self.op(x)


class Tiny(SupernetTrainer):
    """The first candidate, SGD with momentum, a dropout draw per step; counts its steps."""

    name = "tiny"

    def __init__(self, checkpoint_dir, num_epochs: int = 2, **kwargs) -> None:
        torch.manual_seed(0)
        model = nn.Sequential(
            nastrain.LayerChoice([nn.Linear(3, 3), nn.Identity()], label="op"), nn.Dropout(0.3)
        )
        x = torch.randn(32, 3, generator=torch.Generator().manual_seed(1))
        super().__init__(
            model,
            loss=nn.functional.mse_loss,
            metrics=None,
            num_epochs=num_epochs,
            dataset=TensorDataset(x, x),
            batch_size=8,
            seed=0,
            checkpoint_dir=checkpoint_dir,
            progress=False,
            **kwargs,
        )
        replace_layer_choice(self.model, First)
        self.prepare_model()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        self.steps = 0

    def search_step(self, train_batch, valid_batch):
        self.steps += 1
        self.optimizer.zero_grad()
        loss = self.loss(self.model(train_batch[0]), train_batch[1])
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}

    def checkpointables(self):
        return {"optimizer": self.optimizer}

    def export(self):
        return {"op": "0"}


def weights(trainer: SupernetTrainer) -> list[torch.Tensor]:
    return [t.clone() for t in trainer.model.state_dict().values()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_a_checkpoint_is_one_file_synced_then_renamed_then_its_folder_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to see which file a descriptor is")
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    # Only what touches the checkpoint folder: the interpreter itself renames files too (a
    # bytecode cache written while the search imports a module).
    def fsync(fd: int) -> None:
        target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if target == tmp_path:
            events.append("sync folder")
        elif target.parent == tmp_path:
            events.append(f"sync {target.name}")
        real_fsync(fd)

    def replace(src, dst) -> None:
        if Path(dst).parent == tmp_path:
            events.append(f"rename {Path(src).name} -> {Path(dst).name}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    Tiny(tmp_path).fit()
    one_save = ["sync checkpoint.pt.tmp", "rename checkpoint.pt.tmp -> checkpoint.pt"]
    # (The run record beside it, run.jsonl, is written and synced on its own: its start is
    # renamed into place and the folder synced, before the first epoch.)
    started = next(i for i, event in enumerate(events) if event.endswith("-> run.jsonl"))
    assert events.pop(started + 1) == "sync folder"
    events = [event for event in events if "run.jsonl" not in event]
    assert events == 2 * [*one_save, "sync folder"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "run.jsonl"]
    # One torch file that a weights-only load reads whole: tensors and the metadata as JSON.
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["format"] == CHECKPOINT_FORMAT and state["epoch"] == 2
    assert '"trainer": "tiny"' in state["meta"]


def test_a_half_written_checkpoint_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uninterrupted = Tiny(None, num_epochs=3)
    uninterrupted.fit()
    Tiny(tmp_path, num_epochs=1).fit()
    whole = (tmp_path / "checkpoint.pt").read_bytes()
    # A crash while the checkpoint after epoch 2 was written left half of a file behind.
    (tmp_path / "checkpoint.pt.tmp").write_bytes(whole[: len(whole) // 2])
    resumed = Tiny(tmp_path, num_epochs=3)
    with caplog.at_level(logging.INFO, logger="nastrain"):
        resumed.fit()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "checkpoint.pt.tmp" in warnings[0] and "interrupted" in warnings[0]
    assert "last whole checkpoint" in warnings[0] and "after epoch 1" in warnings[0]
    assert resumed.steps == 2 * 2  # epochs 2 and 3 only
    assert same(weights(resumed), weights(uninterrupted))
    assert resumed.history == uninterrupted.history
    assert not (tmp_path / "checkpoint.pt.tmp").exists()


def test_a_half_written_first_checkpoint_starts_over_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uninterrupted = Tiny(None)
    uninterrupted.fit()
    (tmp_path / "checkpoint.pt.tmp").write_bytes(b"PK\x03\x04 half")
    again = Tiny(tmp_path)
    with caplog.at_level(logging.WARNING, logger="nastrain"):
        again.fit()
    assert "no whole checkpoint" in caplog.text and "starts from the first epoch" in caplog.text
    assert same(weights(again), weights(uninterrupted))


def _whole_state(tmp_path: Path) -> dict:
    Tiny(tmp_path / "good", num_epochs=1).fit()
    return torch.load(tmp_path / "good" / "checkpoint.pt", weights_only=True)


def _write(path: Path, what: str, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if what == "empty":
        path.write_bytes(b"")
    elif what == "truncated":
        torch.save(state, path)
        path.write_bytes(path.read_bytes()[:-100])
    elif what == "foreign":
        torch.save({"weights": torch.ones(2), "epoch": 3}, path)
    elif what == "a list":
        torch.save([torch.ones(2)], path)
    elif what == "pickled object":
        torch.save({**state, "extra": argparse.Namespace(evil=True)}, path)
    elif what == "plain pickle":
        path.write_bytes(pickle.dumps({"epoch": 1}))
    elif what == "metadata not an object":
        torch.save({**state, "meta": "[1, 2, 3]"}, path)
    elif what == "metadata not JSON":
        torch.save({**state, "meta": "{'epoch': 1"}, path)
    elif what == "another format":
        torch.save({**state, "format": "someone-else"}, path)
    elif what == "older format":
        torch.save({k: state[k] for k in ("epoch", "model", "extra", "rng")}, path)
        (path.parent / "checkpoint.json").write_text(state["meta"])
    elif what == "older format, json only":
        (path.parent / "checkpoint.json").write_text(state["meta"])
    else:
        raise AssertionError(what)


@pytest.mark.parametrize(
    ("what", "says"),
    [
        ("empty", "is empty"),
        ("truncated", "truncated or corrupt"),
        ("foreign", r"not a nastrain checkpoint: .*without the key\(s\) 'format', 'meta'"),
        ("a list", "not a nastrain checkpoint: it holds a list"),
        ("pickled object", "pickled objects.*not unpickled.*argparse.Namespace"),
        ("plain pickle", "pickled objects beyond tensors and plain containers, or is no torch"),
        ("metadata not an object", "metadata in .*: a JSON list where an object was expected"),
        ("metadata not JSON", "metadata in .*: not JSON"),
        ("another format", "its format is 'someone-else'"),
        ("older format", "older two-file format"),
        ("older format, json only", "older two-file format"),
    ],
)
def test_a_bad_checkpoint_file_is_refused_naming_the_file(
    tmp_path: Path, what: str, says: str
) -> None:
    state = _whole_state(tmp_path)
    folder = tmp_path / "bad"
    _write(folder / "checkpoint.pt", what, state)
    named = "checkpoint.json" if what == "older format, json only" else "checkpoint.pt"
    trainer = Tiny(folder)
    with pytest.raises(ValueError, match=says) as caught:
        trainer.fit()
    assert str(folder / named) in str(caught.value)
    assert trainer.steps == 0 and trainer.epoch == 0  # refused before anything ran
    if what != "older format, json only":
        with pytest.raises(ValueError, match=says):
            read_checkpoint(folder / "checkpoint.pt")


def test_a_checkpoint_folder_that_cannot_be_written_is_refused_when_built(
    tmp_path: Path,
) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    with pytest.raises(NotADirectoryError, match=f"{a_file} is a file, not a folder"):
        Tiny(a_file)
    under = a_file / "runs" / "x"
    with pytest.raises(NotADirectoryError, match=f"{under} lies under {a_file}, which is a file"):
        Tiny(under)
    if os.geteuid() == 0:
        return  # root writes into read-only folders; the next case needs a plain user
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match=f"{locked} is not writable"):
            Tiny(locked)
        with pytest.raises(PermissionError, match=f"would be created in {locked}"):
            Tiny(locked / "sub")
    finally:
        locked.chmod(0o700)


def test_a_read_only_checkpoint_folder_is_reported_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A read-only file system (which root cannot write either): the probe write fails.
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    trainer = Tiny(tmp_path / "ckpt")
    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    with pytest.raises(
        PermissionError, match=f"checkpoint_dir {tmp_path / 'ckpt'} is not writable"
    ):
        trainer.fit()
    assert trainer.steps == 0


def test_load_checkpoint_refuses_state_that_does_not_fit(tmp_path: Path) -> None:
    Tiny(tmp_path, num_epochs=1).fit()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    del state["extra"]["optimizer"]
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(
        ValueError, match=f"{tmp_path / 'checkpoint.pt'} lacks the state of 'optimizer'"
    ):
        Tiny(tmp_path).fit()
