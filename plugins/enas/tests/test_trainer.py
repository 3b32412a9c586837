"""EnasTrainer and RandomOneShotTrainer: registration, sampling modules through the hook,
the epoch structure, export, and bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import nastrain
from nastrain.oneshot import SupernetTrainer
from nastrain_enas import (
    EnasTrainer,
    RandomOneShotTrainer,
    SampledInputChoice,
    SampledLayerChoice,
)
from nastrain_enas.sampling import replace_for_sampling


class Space(nn.Module):
    """op (two modules share the label), pick: 2 of 3 inputs. 9 architectures."""

    def __init__(self) -> None:
        super().__init__()
        self.op = nastrain.LayerChoice(
            {"linear": nn.Linear(4, 4), "tanh": nn.Tanh(), "double": Double()}, label="op"
        )
        self.again = nastrain.LayerChoice(
            {"linear": nn.Linear(4, 4), "tanh": nn.Tanh(), "double": Double()}, label="op"
        )
        self.pick = nastrain.InputChoice(3, 2, label="pick")
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = self.op(x)
        return self.head(self.pick([h, self.again(h), x]))


class Double(nn.Module):
    def forward(self, x):
        return 2 * x


def data(n: int = 64) -> TensorDataset:
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
    return TensorDataset(x, (x[:, 0] > 0).long())


def accuracy(logits, y):
    return {"acc": (logits.argmax(1) == y).float().mean()}


def enas(model=None, **kwargs) -> EnasTrainer:
    kwargs.setdefault("num_epochs", 2)
    kwargs.setdefault("dataset", data())
    kwargs.setdefault("progress", False)
    kwargs.setdefault("reward_function", lambda logits, y: accuracy(logits, y)["acc"])
    return EnasTrainer(
        model or Space(), nn.CrossEntropyLoss(), accuracy, optimizer=None, batch_size=16, seed=0,
        **kwargs,
    )  # fmt: skip


def spos(model=None, **kwargs) -> RandomOneShotTrainer:
    kwargs.setdefault("num_epochs", 2)
    kwargs.setdefault("dataset", data())
    kwargs.setdefault("progress", False)
    return RandomOneShotTrainer(
        model or Space(), nn.CrossEntropyLoss(), accuracy, None, batch_size=16, seed=0, **kwargs
    )


def test_registered_as_enas_random_and_spos_through_the_entry_point() -> None:
    assert nastrain.get_trainer("enas") is EnasTrainer
    assert nastrain.get_trainer("random") is RandomOneShotTrainer
    assert nastrain.get_trainer("spos") is RandomOneShotTrainer
    info = next(p for p in nastrain.plugins.loaded_plugins() if p.name == "enas")
    assert info.distribution == "nastrain-enas"
    assert info.trainers == ("enas", "random", "spos")


@pytest.mark.parametrize("make", [enas, spos], ids=["enas", "random"])
def test_choices_become_sampling_modules_and_a_label_gets_one_value(make) -> None:
    trainer = make()
    kinds = [(label, type(module)) for label, module in trainer.nas_modules]
    assert kinds == [
        ("op", SampledLayerChoice),
        ("op", SampledLayerChoice),
        ("pick", SampledInputChoice),
    ]
    for _ in range(5):
        arch = trainer.sample_arch()
        trainer.set_arch(arch)
        first, second = (module.sampled for _, module in trainer.nas_modules[:2])
        assert first == second == arch["op"]
        assert trainer.nas_modules[2][1].sampled == arch["pick"]


def test_the_hook_answers_only_for_this_plugins_trainers() -> None:
    class Other(SupernetTrainer):
        def search_step(self, train_batch, valid_batch):
            return {}

        def export(self):
            return {}

    other = Other(Space(), loss=None, metrics=None, num_epochs=1, dataset=data())
    choice = nastrain.LayerChoice([nn.Identity()], label="x")
    assert replace_for_sampling(choice, other) is None
    assert isinstance(replace_for_sampling(choice, spos()), SampledLayerChoice)


def test_a_sampled_layer_choice_runs_only_its_candidate() -> None:
    class Exploding(nn.Module):
        def forward(self, x):
            raise AssertionError("an unsampled candidate ran")

    module = SampledLayerChoice(
        nastrain.LayerChoice({"a": Exploding(), "b": Double(), "c": Exploding()}, label="op")
    )
    with pytest.raises(RuntimeError, match="'op': no candidate is sampled"):
        module(torch.ones(2))
    module.sampled = "b"
    assert torch.equal(module(torch.ones(2)), torch.full((2,), 2.0))
    with pytest.raises(ValueError, match="'op' has no candidate 'd'"):
        module.sampled = "d"


def test_a_sampled_input_choice_reduces_exactly_its_inputs() -> None:
    module = SampledInputChoice(nastrain.InputChoice(3, 2, reduction="concat", label="pick"))
    inputs = [torch.full((1, 1), float(i)) for i in range(3)]
    module.sampled = [2, 0]
    assert module.sampled == [0, 2]
    assert module(inputs).tolist() == [[0.0, 2.0]]
    for bad in ([1], [1, 1], [0, 3], "01"):
        with pytest.raises(ValueError, match="'pick' takes 2 distinct input indices"):
            module.sampled = bad


def test_enas_epochs_train_weights_then_controller_and_record_its_choice() -> None:
    trainer = enas(num_epochs=3)
    assert trainer.steps_per_epoch() == 4  # 2 weight batches, then 2 controller batches
    phases = []
    original = (trainer.search_step, trainer.architecture_step)
    trainer.search_step = lambda batch, none: phases.append(("w", none)) or original[0](batch, none)
    trainer.architecture_step = lambda batch: phases.append(("c", None)) or original[1](batch)
    trainer.fit()
    assert "".join(kind for kind, _ in phases) == "wwcc" * 3
    assert all(valid is None for _, valid in phases)  # weight steps take no architecture batch
    assert [r["epoch"] for r in trainer.history] == [1, 2, 3]
    record = trainer.history[-1]
    assert record["arch"] == trainer.greedy_arch()[0] and 0 < record["arch_prob"] <= 1
    assert {"loss", "acc", "reward", "baseline", "ctrl_loss", "entropy", "val_acc"} <= set(
        record["metrics"]
    )
    assert trainer.intermediate_results[-1]["default"] == record["metrics"]["acc"]
    fixed = nastrain.apply_arch(Space(), trainer.export())
    assert fixed(torch.randn(3, 4)).shape == (3, 2)


def test_enas_export_samples_from_the_controller_and_keeps_the_best_by_reward() -> None:
    trainer: EnasTrainer
    sampled = []

    def rank(arch):  # a reward of the architecture alone
        return ["linear", "tanh", "double"].index(arch["op"]) + sum(arch["pick"])

    trainer = enas(reward_function=lambda logits, y: rank(trainer.current_arch), export_samples=7)
    trainer.fit()
    draw = trainer.controller.sample
    trainer.controller.sample = lambda **kw: sampled.append(draw(**kw)) or sampled[-1]
    state = torch.get_rng_state()
    best = trainer.export()
    assert torch.equal(torch.get_rng_state(), state)  # its own generator, seeded by seed
    assert len(sampled) == 7
    drawn = [s.arch for s in sampled]
    archs = [arch for arch, _ in trainer.ranking]
    assert sorted(map(str, archs)) == sorted(set(map(str, drawn)))  # each distinct one once
    assert best == archs[0] == max(drawn, key=rank)  # ties: the first drawn
    assert trainer.best_score == rank(best)
    trainer.controller.sample = draw
    assert trainer.export() == best  # deterministic


def test_enas_greedy_export_is_the_greedy_decoding() -> None:
    trainer = enas(export_mode="greedy")
    trainer.fit()
    assert trainer.export() == trainer.greedy_arch()[0] == trainer.history[-1]["arch"]
    assert trainer.ranking == [] and trainer.best_score is None


def test_enas_rewards_use_the_batchs_own_batchnorm_statistics_and_leave_the_supernets() -> None:
    class Normed(Space):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm1d(4)

        def forward(self, x):
            return super().forward(self.bn(3 * self.op(x) + 1))

    seen = []
    trainer = enas(Normed(), reward_function=lambda logits, y: seen.append(logits) or 0.0)
    trainer.fit()
    with torch.no_grad():
        trainer.model.bn.running_mean.fill_(5.0)  # far from any batch's
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    x, y = trainer.to_device(data()[32:48])
    seen.clear()
    trainer.architecture_step((x, y))
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    model = copy.deepcopy(trainer.model)  # running the architecture the step sampled
    with torch.no_grad():
        pooled = model.eval()(x)
        own = model.train()(x)  # batch statistics (the copy's running ones move)
    assert torch.allclose(seen[0], own, atol=1e-5)
    assert not torch.allclose(own, pooled, atol=1e-2)  # the difference is real


def test_batchnorm1d_with_batches_of_one_item_left_over_still_searches() -> None:
    class Normed(Space):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm1d(4)

        def forward(self, x):
            return super().forward(self.bn(x))

    # Architecture batches of 16, 16 and 1 (the controller's rewards, the export's scores).
    for make in (enas, spos):
        trainer = make(Normed(), valid_dataset=data(33), num_epochs=1)
        trainer.fit()
        assert trainer.export()["op"] in ("linear", "tanh", "double")
    # Calibration batches (of the weight half: 33 items) leave out a last one of 1 item.
    trainer = spos(Normed(), dataset=data(66))
    assert [len(y) for _, y in trainer.calibration_batches()] == [16, 16]


def test_the_controller_gradient_accumulates_across_epochs() -> None:
    # 2 controller samples per epoch, 5 per update: NNI's trainer would never update.
    trainer = enas(num_epochs=5, ctrl_steps_aggregate=5)
    updates = []
    step = trainer.ctrl_optim.step
    trainer.ctrl_optim.step = lambda *a, **k: updates.append(trainer.epoch) or step(*a, **k)
    trainer.fit()
    assert updates == [2, 4]  # during the 3rd and 5th epochs (0-based epochs done)
    assert trainer.pending_samples == 0


def test_the_controller_lives_on_the_trainers_device() -> None:
    trainer = enas(device="cpu")
    devices = {p.device for p in trainer.controller.parameters()}
    devices |= {b.device for b in trainer.controller.buffers()}
    assert devices == {trainer.device}


def test_random_one_shot_trains_on_the_weight_half_only() -> None:
    trainer = spos(num_epochs=1)
    assert trainer.steps_per_epoch() == 2
    trainer.fit()
    assert trainer.history[0]["metrics"].keys() == {"loss", "acc"}


def test_random_export_evaluates_a_small_space_whole_and_keeps_the_ranking() -> None:
    trainer = spos(export_budget=9)
    trainer.fit()
    best = trainer.export()
    archs = [arch for arch, _ in trainer.ranking]
    assert sorted(map(str, archs)) == sorted(map(str, trainer.space.enumerate()))  # each once
    scores = [score for _, score in trainer.ranking]
    assert scores == sorted(scores, reverse=True)
    assert best == archs[0] and trainer.best_score == scores[0]
    # The score is minus the mean validation loss: check the winner's by hand.
    loss = nn.CrossEntropyLoss()
    trainer.set_arch(best)
    with torch.no_grad():
        x, y = trainer.to_device(data()[list(trainer.valid_data.indices)])
        assert trainer.best_score == pytest.approx(-loss(trainer.model(x), y).item(), rel=1e-5)


def test_random_export_samples_distinct_architectures_beyond_the_budget() -> None:
    trainer = spos(export_budget=4, export_batches=1, score_function=lambda o, y: 1.0)
    trainer.fit()
    trainer.export()
    archs = [str(arch) for arch, _ in trainer.ranking]
    assert len(archs) == len(set(archs)) == 4
    assert trainer.best_score == 1.0


def test_bad_reward_functions_are_named() -> None:
    def text_reward(logits, y):
        return "good"

    with pytest.raises(TypeError, match=r"reward_function .*text_reward returned a str"):
        enas(reward_function=text_reward).fit()

    def vector_reward(logits, y):
        return logits.sum(1)

    with pytest.raises(TypeError, match=r"vector_reward returned a Tensor.*one-element tensor"):
        enas(reward_function=vector_reward).fit()

    def nan_reward(logits, y):
        return torch.tensor(float("nan"))

    with pytest.raises(ValueError, match=r"nan_reward returned nan at epoch 1, controller step 1"):
        enas(reward_function=nan_reward).fit()
    with pytest.raises(TypeError, match="reward_function must be a callable"):
        enas(reward_function=0.5)


def test_bad_input_is_a_clear_error() -> None:
    for make in (enas, spos):
        with pytest.raises(ValueError, match="nothing to search"):
            make(nn.Linear(4, 2))
    with pytest.raises(ValueError, match="ctrl_steps_aggregate must be an int >= 1"):
        enas(ctrl_steps_aggregate=0)
    with pytest.raises(TypeError, match=r"ctrl_kwargs has unknown option\(s\) \['lstm_units'\]"):
        enas(ctrl_kwargs={"lstm_units": 32})
    with pytest.raises(ValueError, match="baseline_decay"):
        enas(baseline_decay=1.0)
    with pytest.raises(ValueError, match="export_budget"):
        spos(export_budget=0)
    with pytest.raises(ValueError, match="grad_clip"):
        spos(grad_clip=-1)
    with pytest.raises(ValueError, match="export_mode must be 'sample' or 'greedy'"):
        enas(export_mode="most_likely")
    with pytest.raises(ValueError, match="export_samples must be an int >= 1"):
        enas(export_samples=0)
    for make in (enas, spos):
        with pytest.raises(ValueError, match="bn_batches must be an int >= 0"):
            make(bn_batches=-1)


def test_works_imported_directly_with_its_plugin_left_out(monkeypatch, nastrain_reload) -> None:
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    import nastrain
    from nastrain_enas import RandomOneShotTrainer

    monkeypatch.setenv("NASTRAIN_PLUGINS", "")
    nastrain_reload()
    model = nn.Sequential(nastrain.LayerChoice({"a": nn.Linear(4, 4), "b": nn.Tanh()}, label="op"))
    x = torch.randn(32, 4)
    trainer = RandomOneShotTrainer(
        model, nn.MSELoss(), None, None, 1, TensorDataset(x, x), batch_size=8, progress=False
    )
    trainer.fit()
    assert trainer.export()["op"] in ("a", "b")


def test_arch_parameters_are_the_controller_s_for_enas_and_none_for_random() -> None:
    trainer = enas()
    assert trainer.arch_parameters() == list(trainer.controller.parameters())
    assert trainer.arch_parameters()
    assert spos().arch_parameters() == []


@pytest.mark.parametrize("make", [enas, spos], ids=["enas", "random"])
def test_a_misspelt_option_names_the_trainer(make) -> None:
    name = "EnasTrainer" if make is enas else "RandomOneShotTrainer"
    with pytest.raises(TypeError, match=rf"{name}\(\) got an unexpected keyword argument 'sede'"):
        make(sede=0)


def test_enas_export_scores_its_samples_on_the_architecture_half() -> None:
    # Minus the validation loss as the reward, so that every sample's score is a real number
    # that depends on the data: the best one's score is its loss on trainer.valid_data.
    loss = nn.CrossEntropyLoss()
    trainer = enas(reward_function=lambda logits, y: -loss(logits, y).item())
    trainer.fit()
    best = trainer.export()
    assert trainer.ranking[0] == (best, trainer.best_score)
    assert len(trainer.ranking) > 1  # several distinct samples were scored
    trainer.set_arch(best)
    trainer.model.eval()
    with torch.no_grad():
        x, y = trainer.to_device(data()[list(trainer.valid_data.indices)])
        assert trainer.best_score == pytest.approx(-loss(trainer.model(x), y).item(), rel=1e-5)
        x, y = trainer.to_device(data()[list(trainer.train_data.indices)])
        assert trainer.best_score != pytest.approx(-loss(trainer.model(x), y).item(), rel=1e-3)
