"""The ENAS controller: its distribution, its steps, its skip penalty, and that REINFORCE
teaches it a rewarded architecture."""

from __future__ import annotations

import collections
import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import nastrain
from nastrain import SearchSpace
from nastrain_enas import Controller, EnasTrainer


class Space(nn.Module):
    """27 architectures: two operations, one shared by two modules, and 2 of 3 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nastrain.LayerChoice([nn.Identity(), nn.Tanh(), nn.ReLU()], label="a")
        self.b = nastrain.LayerChoice([nn.Identity(), nn.Tanh(), nn.ReLU()], label="b")
        self.again = nastrain.LayerChoice([nn.Identity(), nn.Tanh(), nn.ReLU()], label="a")
        self.c = nastrain.InputChoice(3, 2, label="c")

    def forward(self, x):
        h = self.again(self.b(self.a(x)))
        return self.c([h, x, -x])


TARGET = {"a": "2", "b": "0", "c": [0, 2]}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_reward_for_one_architecture_only_drives_its_probability_above_0_9(seed: int) -> None:
    x = torch.randn(400, 4, generator=torch.Generator().manual_seed(seed))
    trainer: EnasTrainer

    def reward(logits, y):
        return float(trainer.current_arch == TARGET)

    trainer = EnasTrainer(
        Space(),
        nn.MSELoss(),
        None,
        reward,
        None,
        4,
        TensorDataset(x, x),
        batch_size=4,
        ctrl_lr=0.01,
        ctrl_steps_aggregate=4,
        baseline_decay=0.9,
        # No tanh squashing (it caps each decision's probability, by design) and no skip
        # penalty (it holds the inputs' probabilities apart, by design): neither lets one
        # architecture reach 0.9.
        skip_weight=0,
        ctrl_kwargs={"tanh_constant": None},
        seed=seed,
        progress=False,
    )
    with torch.no_grad():
        start = trainer.controller.log_prob(TARGET).exp().item()
    assert start == pytest.approx(1 / 27, rel=0.2)
    trainer.fit()
    with torch.no_grad():
        assert trainer.controller.log_prob(TARGET).exp().item() > 0.9
    assert trainer.export() == TARGET
    assert trainer.history[-1]["arch"] == TARGET and trainer.history[-1]["arch_prob"] > 0.9


def space_of(*choices: nn.Module) -> SearchSpace:
    return SearchSpace.from_model(nn.ModuleList(choices))


def perturb(controller: Controller, std: float) -> None:
    """Every parameter normal with ``std``: a controller far from uniform."""
    for parameter in controller.parameters():
        nn.init.normal_(parameter, std=std)


def mixed_space() -> SearchSpace:
    return space_of(
        nastrain.LayerChoice([nn.Identity()] * 3, label="op"),
        nastrain.InputChoice(4, 2, label="two"),
        nastrain.InputChoice(3, 1, label="one"),
        nastrain.InputChoice(2, 2, label="all"),  # a single value: no step
    )


def test_the_probabilities_of_all_architectures_sum_to_one() -> None:
    torch.manual_seed(0)
    space = mixed_space()
    controller = Controller(space.choices, tanh_constant=None)
    with torch.no_grad():
        perturb(controller, 1.0)
        total = sum(controller.log_prob(arch).exp().item() for arch in space.enumerate())
    assert space.size == 3 * 6 * 3
    assert total == pytest.approx(1.0, abs=1e-5)


def test_samples_follow_the_probabilities_and_take_exactly_n_chosen_distinct_inputs() -> None:
    torch.manual_seed(0)
    space = space_of(
        nastrain.InputChoice(4, 2, label="two"), nastrain.InputChoice(5, 3, label="three")
    )
    controller = Controller(space.choices, tanh_constant=None)
    with torch.no_grad():
        perturb(controller, 0.5)
        counts = collections.Counter()
        for _ in range(3000):
            arch = controller.sample(stats=False).arch
            for label, n_chosen in (("two", 2), ("three", 3)):
                assert arch[label] == sorted(set(arch[label])) and len(arch[label]) == n_chosen
            counts[tuple(arch["two"])] += 1
        probs = collections.Counter()
        for arch in space.enumerate():
            probs[tuple(arch["two"])] += controller.log_prob(arch).exp().item()
    assert len(probs) == 6
    for subset, p in probs.items():
        assert counts[subset] / 3000 == pytest.approx(p, abs=4 * math.sqrt(p / 3000) + 0.005)


def test_one_controller_step_per_decision_not_per_module() -> None:
    space = Space()
    steps = []
    controller = Controller(SearchSpace.from_model(space).choices, lstm_num_layers=2)
    controller.lstm[0].register_forward_hook(lambda *args: steps.append(1))
    controller.sample()
    assert len(steps) == 3  # labels a (two modules), b, c


def test_greedy_decoding_is_the_argmax_of_each_decision_given_those_before() -> None:
    torch.manual_seed(0)
    space = space_of(
        nastrain.InputChoice(5, 2, label="two"),
        nastrain.LayerChoice([nn.Identity()] * 4, label="op"),
    )
    controller = Controller(space.choices, tanh_constant=None)
    with torch.no_grad():
        perturb(controller, 1.0)
        state = torch.get_rng_state()
        greedy = controller.sample(greedy=True).arch
        assert torch.equal(torch.get_rng_state(), state)  # draws no randomness
        probs = {json.dumps(a): controller.log_prob(a).exp().item() for a in space.enumerate()}

    def p(arch):
        return probs[json.dumps(arch)]

    # The first decision: the argmax of its marginal; the second: of its conditional.
    marginal = collections.Counter()
    for arch in space.enumerate():
        marginal[tuple(arch["two"])] += p(arch)
    assert tuple(greedy["two"]) == max(marginal, key=marginal.get)
    ops = [{"two": greedy["two"], "op": op} for op in "0123"]
    assert greedy == max(ops, key=p)


def test_input_choices_are_scored_by_attention_over_the_earlier_decisions_states() -> None:
    torch.manual_seed(0)
    space = space_of(
        nastrain.LayerChoice([nn.Identity()] * 3, label="a"),
        nastrain.LayerChoice([nn.Identity()] * 2, label="b"),
        nastrain.InputChoice(3, 1, label="c"),
    )
    controller = Controller(space.choices, tanh_constant=None)
    states = []
    controller.lstm[0].register_forward_hook(lambda module, args, out: states.append(out[0]))
    with torch.no_grad():
        perturb(controller, 0.5)
        arch = {"a": "2", "b": "1", "c": [0]}
        controller.log_prob(arch)
        h_a, h_b, h_c = states
        # Input 0 has no decision that far back: a learned start anchor; 1 and 2: a and b.
        anchors = torch.cat([controller.start_anchors, h_a, h_b])
        w_prev = controller.attention["w_prev"].weight
        w_curr = controller.attention["w_curr"].weight
        v = controller.attention["v"].weight
        logits = (torch.tanh(anchors @ w_prev.T + h_c @ w_curr.T) @ v.T).view(-1)
        expected = torch.log_softmax(logits, 0)
        got = torch.stack(
            [
                controller.log_prob({**arch, "c": [i]}) - controller.log_prob({**arch, "c": [0]})
                for i in range(3)
            ]
        )
    assert torch.allclose(got, expected - expected[0], atol=1e-5)
    # No readout of a fixed size for the input choice: only the layer choices have one.
    assert sorted(controller.soft) == ["0", "1"]


def test_the_skip_penalty_is_the_kl_of_each_inputs_chance_of_being_chosen() -> None:
    torch.manual_seed(0)
    space = space_of(nastrain.InputChoice(4, 2, label="two"), nastrain.InputChoice(3, 1))
    controller = Controller(space.choices, skip_target=0.3, tanh_constant=None)
    with torch.no_grad():
        perturb(controller, 0.5)
        arch = {"two": [0, 1], "inputchoice_1": [0]}
        penalty = controller.sample(arch=arch, skip_penalty=True).skip_penalty.item()
        chosen = [0.0] * 4
        for arch in space.enumerate():  # `two`'s marginal: summed over the other choice
            p = controller.log_prob(arch).exp().item()
            for i in arch["two"]:
                chosen[i] += p
    assert sum(chosen) == pytest.approx(2.0, abs=1e-5)
    expected = sum(
        p * math.log(p / 0.3) + (1 - p) * math.log((1 - p) / 0.7) for p in chosen
    )  # the single-input choice carries no penalty, as in NNI
    assert penalty == pytest.approx(expected, rel=1e-4)


def test_the_controller_gradient_flows_into_log_prob_and_skip_penalty() -> None:
    controller = Controller(mixed_space().choices)
    sample = controller.sample(skip_penalty=True)
    (sample.log_prob + sample.skip_penalty).backward()
    assert all(p.grad is not None for p in controller.parameters())


def test_bad_controller_options_are_named() -> None:
    choices = mixed_space().choices
    with pytest.raises(ValueError, match="lstm_size"):
        Controller(choices, lstm_size=0)
    with pytest.raises(ValueError, match="skip_target"):
        Controller(choices, skip_target=1.0)
    with pytest.raises(ValueError, match="tanh_constant"):
        Controller(choices, tanh_constant=-1)
