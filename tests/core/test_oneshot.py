"""The shared one-shot machinery: data halves, the loop, reporting, checkpoints."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import nastrain
from nastrain.oneshot import SupernetTrainer, rng_state, set_rng_state
from nastrain.utils import replace_layer_choice


class First(nn.Module):
    def __init__(self, choice):
        super().__init__()
        self.op = choice[0]

    def forward(self, x):
        return self.op(x)


class SeenTrainer(SupernetTrainer):
    """Always the first candidate; records which samples each half delivered."""

    name = "seen"

    def __init__(self, model, dataset, **kwargs):
        super().__init__(
            model,
            loss=nn.functional.mse_loss,
            metrics=None,
            num_epochs=2,
            dataset=dataset,
            batch_size=4,
            progress=False,
            **kwargs,
        )
        replace_layer_choice(self.model, First)
        self.prepare_model()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.seen = {"train": set(), "valid": set()}

    def search_step(self, train_batch, valid_batch):
        self.seen["train"].update(train_batch[1][:, 0].long().tolist())
        self.seen["valid"].update(valid_batch[1][:, 0].long().tolist())
        self.optimizer.zero_grad()
        loss = self.loss(self.model(train_batch[0]), train_batch[0])
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "score": 1.0}

    def checkpointables(self):
        return {"optimizer": self.optimizer}

    def export(self):
        return {"op": "0"}


def space() -> nn.Module:
    return nn.Sequential(nastrain.LayerChoice([nn.Linear(3, 3), nn.Identity()], label="op"))


def indexed(n: int) -> TensorDataset:
    return TensorDataset(torch.randn(n, 3), torch.arange(n).float().unsqueeze(1))


def test_the_dataset_is_split_in_disjoint_halves_unless_a_valid_set_is_given() -> None:
    trainer = SeenTrainer(space(), indexed(16), seed=0)
    trainer.fit()
    assert trainer.seen == {"train": set(range(8)), "valid": set(range(8, 16))}
    other = SeenTrainer(space(), indexed(8), valid_dataset=indexed(8), seed=0)
    other.fit()
    assert other.seen == {"train": set(range(8)), "valid": set(range(8))}


def test_epochs_are_reported_recorded_and_checkpointed(tmp_path) -> None:
    trainer = SeenTrainer(space(), indexed(16), seed=0, checkpoint_dir=tmp_path)
    trainer.fit()
    assert [r["epoch"] for r in trainer.history] == [1, 2]
    assert trainer.intermediate_results[0]["default"] == 1.0  # the first non-loss metric
    again = SeenTrainer(space(), indexed(16), seed=1, checkpoint_dir=tmp_path)
    again.load_checkpoint(tmp_path)
    assert again.epoch == 2 and again.history == trainer.history
    assert all(
        torch.equal(a, b)
        for a, b in zip(again.model.state_dict().values(), trainer.model.state_dict().values())
    )


def test_a_checkpoint_of_another_trainer_is_refused(tmp_path) -> None:
    trainer = SeenTrainer(space(), indexed(16), seed=0, checkpoint_dir=tmp_path)
    trainer.fit()

    class Renamed(SeenTrainer):
        name = "renamed"

    with pytest.raises(ValueError, match="trainer 'seen', not 'renamed'"):
        Renamed(space(), indexed(16), checkpoint_dir=tmp_path).fit()


def test_rng_state_round_trips_torch_python_and_numpy() -> None:
    import numpy as np

    state = rng_state()
    draws = (torch.rand(3), random.random(), np.random.rand())
    set_rng_state(*state)
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(draws[0], again[0]) and draws[1:] == again[1:]


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="nothing to search"):
        SeenTrainer(nn.Linear(3, 3), indexed(16))
    with pytest.raises(ValueError, match="needs 2"):
        SeenTrainer(space(), indexed(1))
    with pytest.raises(TypeError, match="search_step"):

        class Incomplete(SupernetTrainer):
            def export(self):
                return {}

        Incomplete(space(), loss=None, metrics=None, num_epochs=1, dataset=indexed(4))


class OrderTrainer(SeenTrainer):
    """SeenTrainer that also keeps the order in which weight-half samples came."""

    def search_step(self, train_batch, valid_batch):
        self.order = [*getattr(self, "order", []), *train_batch[1][:, 0].long().tolist()]
        return super().search_step(train_batch, valid_batch)


def test_seed_none_leaves_torch_s_global_generator_to_the_user() -> None:
    def run() -> tuple:
        torch.manual_seed(0)
        trainer = OrderTrainer(space(), indexed(16))  # seed=None
        trainer.fit()
        weights = [t.clone() for t in trainer.model.state_dict().values()]
        return trainer.order, weights, torch.rand(3), torch.initial_seed()

    first, again = run(), run()
    assert first[3] == again[3] == 0  # the generator was never reseeded
    assert first[0] == again[0]  # the user's seed fixes the data order...
    assert all(torch.equal(a, b) for a, b in zip(first[1], again[1]))  # ... the weights...
    assert torch.equal(first[2], again[2])  # ... and what the user draws afterwards
    torch.manual_seed(1)
    other = OrderTrainer(space(), indexed(16))
    other.fit()
    assert other.order != first[0]  # and another user seed gives another order


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda", 1)])
def test_a_cuda_device_without_cuda_is_refused_when_the_trainer_is_built(device) -> None:
    with pytest.raises(ValueError, match=r"device .*'cuda.* asks for CUDA, but CUDA is not avail"):
        SeenTrainer(space(), indexed(16), device=device)


def test_an_unknown_device_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="device 'gpu7' is not a device torch knows"):
        SeenTrainer(space(), indexed(16), device="gpu7")


def strided_shortcut_space() -> nn.Module:
    """A conv candidate space with a strided 1x1 convolution in its stem, which no plugin may
    rewrite (it is not a candidate)."""
    return nn.Sequential(
        nn.Conv2d(3, 3, 1, stride=2),
        nastrain.LayerChoice([nn.Conv2d(3, 3, 3, padding=1), nn.Identity()], label="op"),
    )


def test_channels_last_is_not_chosen_for_a_strided_1x1_convolution_left_after_the_rewrites():
    """The library's channels-last backward of a strided 1x1 convolution aborts the process
    on some sizes (torch 2.14.1): such a model stays contiguous, and asking for channels-last
    explicitly is an error naming the convolution; without it, a CPU picks channels-last."""
    data = TensorDataset(torch.randn(8, 3, 8, 10), torch.zeros(8, 1))
    without = nn.Sequential(
        nn.Conv2d(3, 3, 1),
        nastrain.LayerChoice([nn.Conv2d(3, 3, 3, padding=1), nn.Identity()], label="op"),
    )
    assert SeenTrainer(without, data, device="cpu").channels_last
    trainer = SeenTrainer(strided_shortcut_space(), data, device="cpu")
    assert not trainer.channels_last
    assert trainer.model[0].weight.is_contiguous()
    with pytest.raises(ValueError, match=r"\['0'\] are strided 1x1 .*channels_last=False"):
        SeenTrainer(strided_shortcut_space(), data, device="cpu", channels_last=True)
