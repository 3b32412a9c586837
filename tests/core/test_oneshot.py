"""The shared one-shot machinery: data halves, the loop, reporting, checkpoints."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import nastrain
from nastrain.oneshot import SupernetTrainer
from nastrain.seeding import rng_state, set_rng_state
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
    train, valid = trainer.seen["train"], trainer.seen["valid"]
    assert len(train) == len(valid) == 8 and train | valid == set(range(16))
    assert train != set(range(8))  # shuffled by default
    ordered = SeenTrainer(space(), indexed(16), seed=0, split="ordered")
    ordered.fit()
    assert ordered.seen == {"train": set(range(8)), "valid": set(range(8, 16))}
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


# --- the options record -------------------------------------------------------------------


def test_options_are_keywords_or_one_record_and_become_trainer_options(tmp_path) -> None:
    from nastrain.oneshot import OneShotOptions

    by_keyword = SeenTrainer(space(), indexed(16), seed=3, checkpoint_dir=str(tmp_path))
    assert by_keyword.options == OneShotOptions(seed=3, checkpoint_dir=tmp_path, progress=False)
    assert by_keyword.seed == 3 and by_keyword.checkpoint_dir == tmp_path
    record = OneShotOptions(seed=3, checkpoint_dir=tmp_path)
    by_record = SeenTrainer(space(), indexed(16), options=record)
    assert by_record.options == by_keyword.options
    both = SeenTrainer(space(), indexed(16), options=record, seed=4)  # keywords win
    assert both.options.seed == 4 and both.options.checkpoint_dir == tmp_path
    assert OneShotOptions.names() == [
        "seed",
        "checkpoint_dir",
        "progress",
        "channels_last",
        "rewrite_model",
        "lr_scheduler",
        "log_dir",
        "drop_last",
        "collate_fn",
        "prefetch_factor",
        "persistent_workers",
        "split",
        "split_fraction",
        "precision",
        "find_unused_parameters",
    ]


def test_a_misspelt_option_names_the_trainer_the_key_and_what_it_takes() -> None:
    with pytest.raises(TypeError) as error:
        SeenTrainer(space(), indexed(16), sed=0)
    message = str(error.value)
    assert message.startswith(
        "SeenTrainer() got an unexpected keyword argument 'sed' (did you mean 'seed'?)"
    )
    assert "dataset" in message  # the trainer's own arguments
    assert "seed, checkpoint_dir, progress, channels_last, rewrite_model, lr_scheduler" in message


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"seed": "0"}, "seed must be an int or None, got '0'"),
        ({"seed": True}, "seed must be an int or None"),
        ({"checkpoint_dir": 3}, "checkpoint_dir must be a path"),
        ({"channels_last": "yes"}, "channels_last must be True, False or None"),
        ({"rewrite_model": None}, "rewrite_model must be True or False"),
        ({"find_unused_parameters": 1}, "find_unused_parameters must be True, False or None"),
        ({"lr_scheduler": object()}, r"lr_scheduler must be a learning-rate scheduler.*step\(\)"),
        ({"options": {"seed": 0}}, "options must be a nastrain.oneshot.OneShotOptions, got dict"),
    ],
)
def test_bad_options_are_refused_naming_the_option(options, match) -> None:
    with pytest.raises(TypeError, match=match):
        SeenTrainer(space(), indexed(16), **options)


@pytest.mark.parametrize(
    ("arguments", "match"),
    [({"log_frequency": 0}, "log_frequency must be an int >= 1"), ({"workers": -1}, "workers")],
)
def test_bad_loop_arguments_are_refused(arguments, match) -> None:
    class Configurable(SeenTrainer):
        def __init__(self, model, dataset, **kwargs):
            SupernetTrainer.__init__(
                self, model, loss=None, metrics=None, num_epochs=1, dataset=dataset, **kwargs
            )

        def search_step(self, train_batch, valid_batch):
            return {}

    with pytest.raises(ValueError, match=match):
        Configurable(space(), indexed(16), **arguments)


def test_the_lr_scheduler_option_steps_once_per_epoch_and_is_checkpointed(tmp_path) -> None:
    model = space()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    trainer = SeenTrainer(model, indexed(16), lr_scheduler=scheduler, checkpoint_dir=tmp_path)
    trainer.optimizer = optimizer  # the scheduler's
    trainer.fit()
    assert optimizer.param_groups[0]["lr"] == 0.25
    assert scheduler.last_epoch == 2
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["extra"]["lr_scheduler"]["last_epoch"] == 2
    assert set(state["extra"]) == {"optimizer", "lr_scheduler"}


# --- the data halves, the epoch's shape, arch_parameters -----------------------------------


def test_the_data_halves_are_public_datasets() -> None:
    data = indexed(10)
    trainer = SeenTrainer(space(), data, split="ordered")
    assert [int(y) for _, y in trainer.train_data] == list(range(5))
    assert [int(y) for _, y in trainer.valid_data] == list(range(5, 10))
    shuffled = SeenTrainer(space(), data, seed=0)
    halves = [[int(y) for _, y in half] for half in (shuffled.train_data, shuffled.valid_data)]
    assert sorted(halves[0] + halves[1]) == list(range(10)) and len(halves[0]) == 5
    other = indexed(4)
    given = SeenTrainer(space(), data, valid_dataset=other)
    assert given.train_data is data and given.valid_data is other


def test_an_architecture_phase_follows_the_steps_in_eval_mode() -> None:
    """pair_batches = False walks the weight half alone; architecture_step then walks the
    architecture half, the model in evaluation mode."""

    class Phased(SeenTrainer):
        pair_batches = False

        def search_step(self, train_batch, valid_batch):
            assert valid_batch is None and self.model.training
            self.calls.append(("search", train_batch[1][:, 0].long().tolist()))
            return {"loss": 1.0}

        def architecture_step(self, valid_batch):
            assert not self.model.training
            self.calls.append(("arch", valid_batch[1][:, 0].long().tolist()))
            return {"reward": 2.0}

    trainer = Phased(space(), indexed(16), seed=0, split="ordered")
    trainer.calls = []
    assert trainer.steps_per_epoch() == 4  # 2 weight batches, then 2 architecture batches
    trainer.fit()
    kinds = [kind for kind, _ in trainer.calls]
    assert kinds == ["search", "search", "arch", "arch"] * 2
    first_epoch = trainer.calls[:4]
    assert sorted(i for kind, ys in first_epoch if kind == "search" for i in ys) == list(range(8))
    assert sorted(i for kind, ys in first_epoch if kind == "arch" for i in ys) == list(range(8, 16))
    assert trainer.history[0]["metrics"] == {"loss": 1.0, "reward": 2.0}


def test_arch_parameters_default_to_none_learned() -> None:
    assert SeenTrainer(space(), indexed(16)).arch_parameters() == []


# --- log_frequency ----------------------------------------------------------------------------


def test_log_frequency_goes_through_logging_when_it_is_configured(caplog, capsys) -> None:
    """Under pytest logging is configured (its capture handler): the lines go to the
    ``nastrain.steps`` logger and are not printed as well."""
    with caplog.at_level("INFO", logger="nastrain.steps"):
        SeenTrainer(space(), indexed(32), log_frequency=2, seed=0).fit()
    lines = [r.getMessage() for r in caplog.records if r.name == "nastrain.steps"]
    assert lines[0].startswith("seen: epoch 1/2 step 2/4: loss ")
    assert len(lines) == 4  # 4 steps per epoch, every 2nd, 2 epochs
    assert "epoch 1/2 step 2/4" not in capsys.readouterr().err


def test_log_frequency_prints_when_logging_is_unconfigured(monkeypatch, capsys) -> None:
    from nastrain import oneshot

    monkeypatch.setattr(oneshot.step_logger, "hasHandlers", lambda: False)
    SeenTrainer(space(), indexed(32), log_frequency=3, seed=0).fit()
    err = capsys.readouterr().err.splitlines()
    assert [line.split(":")[1] for line in err] == [" epoch 1/2 step 3/4", " epoch 2/2 step 3/4"]
    assert all(line.startswith("seen: ") and "loss " in line for line in err)


def test_an_nni_user_sees_log_frequency_lines_without_configuring_logging() -> None:
    """In a fresh interpreter, as an NNI script runs: no logging configured at all."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import torch
        from torch import nn
        from torch.utils.data import TensorDataset
        import nastrain
        from nastrain.oneshot import SupernetTrainer

        class Trainer(SupernetTrainer):
            name = "t"
            def __init__(self, model, dataset, **options):
                super().__init__(model, loss=None, metrics=None, num_epochs=1,
                                 dataset=dataset, batch_size=2, log_frequency=2, **options)
            def search_step(self, train_batch, valid_batch):
                return {"loss": 0.5}
            def export(self):
                return {}

        model = nn.Sequential(nastrain.LayerChoice([nn.Identity()], label="op"))
        Trainer(model, TensorDataset(torch.zeros(16, 1), torch.zeros(16, 1)), seed=0).fit()
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stderr.splitlines() == [
        "t: epoch 1/1 step 2/4: loss 0.5",
        "t: epoch 1/1 step 4/4: loss 0.5",
    ]
    assert result.stdout == ""
