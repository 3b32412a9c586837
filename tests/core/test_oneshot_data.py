"""The one-shot loop's data: the split into a weight and an architecture half (shuffled or
ordered, kept across a resume) and the DataLoader options."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset, get_worker_info

import nastrain
from nastrain.oneshot import OneShotOptions, SupernetTrainer
from nastrain.utils import replace_layer_choice


class First(nn.Module):
    def __init__(self, choice):
        super().__init__()
        self.op = choice[0]

    def forward(self, x):
        return self.op(x)


class Recording(SupernetTrainer):
    """Always the first candidate; records each half's targets (column 0) per step."""

    name = "recording"

    def __init__(self, dataset, *, num_epochs=1, batch_size=4, **kwargs):
        super().__init__(
            nn.Sequential(nastrain.LayerChoice([nn.Linear(3, 3), nn.Identity()], label="op")),
            loss=nn.functional.mse_loss,
            metrics=None,
            num_epochs=num_epochs,
            dataset=dataset,
            batch_size=batch_size,
            progress=False,
            **kwargs,
        )
        replace_layer_choice(self.model, First)
        self.prepare_model()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.batches: list[tuple[list[int], list[int]]] = []

    def search_step(self, train_batch, valid_batch):
        self.batches.append(
            (train_batch[1][:, 0].long().tolist(), valid_batch[1][:, 0].long().tolist())
        )
        return {"loss": 1.0}

    def checkpointables(self):
        return {"optimizer": self.optimizer}

    def export(self):
        return {"op": "0"}


def class_sorted(n: int, classes: int = 4) -> TensorDataset:
    """``n`` items sorted by class: column 0 of the target is the index, column 1 the class."""
    index = torch.arange(n).float()
    return TensorDataset(torch.randn(n, 3), torch.stack([index, index * classes // n], 1))


def labels(half: Dataset) -> set[int]:
    return {int(y[1]) for _, y in half}  # type: ignore[attr-defined]


def indices(half: Dataset) -> list[int]:
    return [int(y[0]) for _, y in half]  # type: ignore[attr-defined]


def test_a_shuffled_split_gives_both_halves_every_class_and_ordered_the_old_halves() -> None:
    data = class_sorted(40)
    shuffled = Recording(data, seed=0)
    assert labels(shuffled.train_data) == labels(shuffled.valid_data) == {0, 1, 2, 3}
    assert sorted(indices(shuffled.train_data) + indices(shuffled.valid_data)) == list(range(40))
    ordered = Recording(data, seed=0, split="ordered")
    assert indices(ordered.train_data) == list(range(20))
    assert indices(ordered.valid_data) == list(range(20, 40))
    assert labels(ordered.train_data) == {0, 1} and labels(ordered.valid_data) == {2, 3}
    # The permutation follows the seed: the same seed, the same halves.
    assert indices(Recording(data, seed=0).train_data) == indices(shuffled.train_data)
    assert indices(Recording(data, seed=1).train_data) != indices(shuffled.train_data)


def test_the_split_fraction_sizes_the_weight_half() -> None:
    trainer = Recording(class_sorted(40), seed=0, split_fraction=0.75)
    assert len(trainer.train_data) == 30 and len(trainer.valid_data) == 10  # type: ignore[arg-type]
    steps_seen = {i for train, _ in _fit(trainer) for i in train}
    assert steps_seen <= set(indices(trainer.train_data))
    with pytest.raises(ValueError, match="split_fraction must be strictly between 0 and 1"):
        OneShotOptions(split_fraction=1.0)
    with pytest.raises(ValueError, match="split must be one of 'shuffled', 'ordered'"):
        OneShotOptions(split="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs 2"):
        Recording(class_sorted(3), split_fraction=0.1)


def _fit(trainer: Recording) -> list[tuple[list[int], list[int]]]:
    trainer.fit()
    return trainer.batches


def test_a_resumed_search_keeps_the_halves_it_was_written_with(tmp_path) -> None:
    data = class_sorted(40)
    first = Recording(data, checkpoint_dir=tmp_path)  # no seed: a drawn permutation seed
    _fit(first)
    resumed = Recording(data, num_epochs=2, checkpoint_dir=tmp_path)
    assert indices(resumed.train_data) != indices(first.train_data)  # before the resume
    resumed.fit()
    assert indices(resumed.train_data) == indices(first.train_data)
    assert indices(resumed.valid_data) == indices(first.valid_data)
    assert resumed.split_state == first.split_state
    assert {i for train, _ in resumed.batches for i in train} == set(indices(first.train_data))


def test_a_checkpoint_without_a_split_resumes_with_the_ordered_halves(tmp_path) -> None:
    """Older releases split in order and saved no split: their checkpoints resume so."""
    data = class_sorted(40)
    _fit(Recording(data, seed=0, checkpoint_dir=tmp_path))
    path = tmp_path / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    del state["split"]
    torch.save(state, path)
    resumed = Recording(data, seed=0, num_epochs=2, checkpoint_dir=tmp_path)
    resumed.fit()
    assert indices(resumed.train_data) == list(range(20))
    assert resumed.split_state is not None and resumed.split_state["split"] == "ordered"


def test_drop_last_and_collate_fn_reach_the_loaders() -> None:
    data = class_sorted(18)  # halves of 9: two batches of 4 and one of 1
    assert len(Recording(data, seed=0).train_loader) == 3
    trainer = Recording(data, seed=0, drop_last=True)
    assert len(trainer.train_loader) == 2
    assert all(len(train) == 4 for train, _ in _fit(trainer))

    calls = []

    def collate(items):
        calls.append(len(items))
        return torch.utils.data.default_collate(items)

    _fit(Recording(data, seed=0, collate_fn=collate))
    assert calls and set(calls) <= {4, 1}
    with pytest.raises(TypeError, match="collate_fn must be a callable"):
        OneShotOptions(collate_fn=3)  # type: ignore[arg-type]


def test_worker_options_need_workers() -> None:
    data = class_sorted(8)
    with pytest.raises(ValueError, match="prefetch_factor=4 needs worker processes"):
        Recording(data, prefetch_factor=4)
    with pytest.raises(ValueError, match="persistent_workers=True needs worker processes"):
        Recording(data, persistent_workers=True)
    with pytest.raises(ValueError, match="prefetch_factor must be an int >= 1"):
        OneShotOptions(prefetch_factor=0)
    loader = Recording(data, workers=1, prefetch_factor=3).train_loader
    assert loader.prefetch_factor == 3 and loader.persistent_workers


class WorkerPids(Dataset):
    """Items whose target holds the index and the id of the worker process that loaded it."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        assert get_worker_info() is not None
        return torch.zeros(3), torch.tensor([float(i), float(os.getpid())])


class PidRecording(Recording):
    """Records, per epoch, the worker processes that loaded each half's batches."""

    def search_step(self, train_batch, valid_batch):
        pids = self.pids.setdefault(self.epoch, {"train": set(), "valid": set()})
        pids["train"].update(train_batch[1][:, 1].long().tolist())
        pids["valid"].update(valid_batch[1][:, 1].long().tolist())
        return {"loss": 1.0}


@pytest.mark.parametrize("persistent", [None, False])
def test_workers_persist_across_epochs_unless_told_not_to(persistent) -> None:
    trainer = PidRecording(WorkerPids(), num_epochs=2, workers=1, persistent_workers=persistent)
    trainer.pids = {}
    trainer.fit()
    first, second = trainer.pids[0], trainer.pids[1]
    assert all(len(pids) == 1 for pids in (*first.values(), *second.values()))  # one worker
    assert first["train"] != first["valid"]  # one worker per half's loader
    if persistent is None:  # workers > 0: kept alive from one epoch to the next
        assert first == second
    else:
        assert not first["train"] & second["train"] and not first["valid"] & second["valid"]


@pytest.mark.parametrize("n", [0, 1])
def test_a_dataset_too_small_to_split_is_refused_naming_its_size(n: int) -> None:
    with pytest.raises(ValueError, match=rf"dataset has {n} item\(s\).*needs 2\+ items"):
        Recording(TensorDataset(torch.zeros(n, 3), torch.zeros(n, 1)), seed=0)
