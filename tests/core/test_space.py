"""Tests of SearchSpace (reading, counting, enumerating, sampling, validating) and apply_arch."""

from __future__ import annotations

import json
import math
import random
from collections import Counter

import pytest
import torch
from torch import nn

import nastrain
from nastrain import (
    Choice,
    ChosenInputs,
    InputChoice,
    LayerChoice,
    Mutable,
    SearchSpace,
    apply_arch,
)


class Net(nn.Module):
    """Three decisions: op1 (3 names), op2 (2 list candidates), skip (2 of 4 inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.op1 = LayerChoice(
            {"lin": nn.Linear(4, 4), "id": nn.Identity(), "relu": nn.ReLU()}, label="op1"
        )
        self.op2 = LayerChoice([nn.Linear(4, 4), nn.Tanh()], label="op2")
        self.skip = InputChoice(4, 2, reduction="sum", label="skip")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.op1(x)
        b = self.op2(a)
        return self.skip([x, a, b, a * b])


class Nested(nn.Module):
    """A LayerChoice whose first candidate holds another LayerChoice and an InputChoice."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.act = LayerChoice({"relu": nn.ReLU(), "tanh": nn.Tanh()}, label="inner")
            self.mix = InputChoice(2, 1, label="mix")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.mix([x, self.act(self.lin(x))])

    def __init__(self) -> None:
        super().__init__()
        self.outer = LayerChoice({"block": Nested.Block(), "id": nn.Identity()}, label="outer")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(x)


ARCH = {"op1": "lin", "op2": "0", "skip": [1, 2]}


def mutables_of(model: nn.Module) -> list[Mutable]:
    return [m for m in model.modules() if isinstance(m, Mutable)]


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def assert_same_state(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert set(state) == set(saved)
    for key, value in saved.items():
        assert torch.equal(state[key], value), key


# --- from_model -------------------------------------------------------------------------------


def test_from_model_lists_choices_in_model_order_with_their_details() -> None:
    space = SearchSpace.from_model(Net())
    assert space.labels == ["op1", "op2", "skip"]
    op1, op2, skip = space.choices
    assert op1 == Choice(label="op1", kind="layer", names=("lin", "id", "relu"), n_candidates=3)
    assert (op2.kind, op2.names, op2.n_candidates, op2.n_chosen) == ("layer", ("0", "1"), 2, 1)
    assert (skip.kind, skip.names, skip.n_candidates, skip.n_chosen) == ("input", (), 4, 2)
    assert len(space) == 3
    assert list(space) == [op1, op2, skip]
    assert space["skip"] is skip


def test_space_lookup_of_an_unknown_label_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="nope"):
        SearchSpace.from_model(Net())["nope"]


def test_from_model_includes_choices_nested_in_candidates_in_pre_order() -> None:
    space = SearchSpace.from_model(Nested())
    assert space.labels == ["outer", "inner", "mix"]
    assert space["outer"].names == ("block", "id")


def test_size_is_the_product_counting_input_combinations() -> None:
    space = SearchSpace.from_model(Net())
    assert space["skip"].size == math.comb(4, 2) == 6
    assert space.size == 3 * 2 * 6


def test_size_of_nested_space_counts_every_label() -> None:
    assert SearchSpace.from_model(Nested()).size == 2 * 2 * 2


def test_size_of_an_empty_space_is_one() -> None:
    space = SearchSpace.from_model(nn.Linear(4, 4))
    assert space.choices == ()
    assert space.size == 1


def test_enumerate_yields_exactly_size_distinct_valid_architectures() -> None:
    space = SearchSpace.from_model(Net())
    archs = list(space.enumerate())
    assert len(archs) == space.size
    assert len({json.dumps(arch, sort_keys=True) for arch in archs}) == space.size
    for arch in archs:
        assert space.validate(arch) == arch
    assert {tuple(arch["skip"]) for arch in archs} == {
        (0, 1),
        (0, 2),
        (0, 3),
        (1, 2),
        (1, 3),
        (2, 3),
    }


def test_enumerate_order_is_stable_with_the_last_label_fastest() -> None:
    space = SearchSpace.from_model(Net())
    archs = list(space.enumerate())
    assert archs == list(space.enumerate())
    assert archs[0] == {"op1": "lin", "op2": "0", "skip": [0, 1]}
    assert archs[1] == {"op1": "lin", "op2": "0", "skip": [0, 2]}
    assert archs[-1] == {"op1": "relu", "op2": "1", "skip": [2, 3]}


# --- sample -----------------------------------------------------------------------------------


def test_sample_is_reproducible_for_the_same_seed() -> None:
    space = SearchSpace.from_model(Net())
    for seed in range(20):
        assert space.sample(seed) == space.sample(seed)
    assert space.sample(random.Random(7)) == space.sample(7)


def test_sample_differs_across_seeds() -> None:
    space = SearchSpace.from_model(Net())
    draws = {json.dumps(space.sample(seed), sort_keys=True) for seed in range(100)}
    # 36 architectures, 100 seeds: a sampler that ignored the seed would give 1.
    assert len(draws) >= 20


def test_samples_are_valid_and_cover_every_candidate() -> None:
    space = SearchSpace.from_model(Net())
    seen: dict[str, Counter] = {label: Counter() for label in space.labels}
    for seed in range(400):
        arch = space.sample(seed)
        assert space.validate(arch) == arch
        skip = arch["skip"]
        assert len(skip) == 2
        assert skip == sorted(set(skip))
        assert all(0 <= i < 4 for i in skip)
        seen["op1"][arch["op1"]] += 1
        seen["op2"][arch["op2"]] += 1
        seen["skip"].update(skip)
    assert set(seen["op1"]) == {"lin", "id", "relu"}
    assert set(seen["op2"]) == {"0", "1"}
    assert set(seen["skip"]) == {0, 1, 2, 3}
    # Uniformity sanity: each of 3 names expects ~133 of 400 draws.
    assert min(seen["op1"].values()) > 80


def test_sample_from_a_shared_rng_advances_it() -> None:
    space = SearchSpace.from_model(Net())
    rng = random.Random(3)
    draws = {json.dumps(space.sample(rng), sort_keys=True) for _ in range(50)}
    assert len(draws) > 1


# --- validate ---------------------------------------------------------------------------------


def test_validate_returns_canonical_form() -> None:
    space = SearchSpace.from_model(Net())
    arch = {"skip": (3, 0), "op2": "1", "op1": "relu"}
    canonical = space.validate(arch)
    assert canonical == {"op1": "relu", "op2": "1", "skip": [0, 3]}
    assert list(canonical) == ["op1", "op2", "skip"]
    assert isinstance(canonical["skip"], list)


@pytest.mark.parametrize(
    ("arch", "label", "what"),
    [
        ({**ARCH, "op3": "0"}, "op3", "unknown label"),
        ({"op1": "lin", "skip": [0, 1]}, "op2", "missing label"),
        ({**ARCH, "op1": "conv"}, "op1", "no candidate 'conv'"),
        ({**ARCH, "op2": 0}, "op2", "no candidate 0"),
        ({**ARCH, "skip": [1]}, "skip", "expected 2 distinct"),
        ({**ARCH, "skip": [0, 1, 2]}, "skip", "expected 2 distinct"),
        ({**ARCH, "skip": [2, 2]}, "skip", "expected 2 distinct"),
        ({**ARCH, "skip": [1, 4]}, "skip", "out of range"),
        ({**ARCH, "skip": [-1, 2]}, "skip", "out of range"),
        ({**ARCH, "skip": 1}, "skip", "list of 2"),
        ({**ARCH, "skip": [0, True]}, "skip", "list of 2"),
    ],
    ids=[
        "unknown-label",
        "missing-label",
        "unknown-candidate",
        "int-candidate",
        "too-few-inputs",
        "too-many-inputs",
        "duplicate-index",
        "index-too-large",
        "negative-index",
        "not-a-list",
        "bool-index",
    ],
)
def test_validate_rejects_bad_architectures_naming_the_label(
    arch: dict, label: str, what: str
) -> None:
    space = SearchSpace.from_model(Net())
    with pytest.raises(ValueError, match=f"'{label}'") as info:
        space.validate(arch)
    assert what in str(info.value)


def test_validate_rejects_a_non_mapping() -> None:
    with pytest.raises(TypeError, match="list"):
        SearchSpace.from_model(Net()).validate([("op1", "lin")])


# --- shared labels ----------------------------------------------------------------------------


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = LayerChoice({"id": nn.Identity(), "lin": nn.Linear(4, 4)}, label="op")
        self.b = LayerChoice({"id": nn.Identity(), "lin": nn.Linear(4, 4)}, label="op")
        self.ia = InputChoice(3, label="in")
        self.ib = InputChoice(3, reduction="mean", label="in")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b(self.a(x))
        return self.ib([self.ia([x, y, x + y]), y, x])


def test_choices_sharing_a_label_are_one_decision() -> None:
    space = SearchSpace.from_model(Shared())
    assert space.labels == ["op", "in"]
    assert space.size == 2 * 3


def test_apply_arch_gives_choices_sharing_a_label_the_same_value() -> None:
    fixed = apply_arch(Shared(), {"op": "lin", "in": [2]})
    assert isinstance(fixed.a, nn.Linear)
    assert isinstance(fixed.b, nn.Linear)
    assert fixed.a is not fixed.b
    assert fixed.ia.chosen == fixed.ib.chosen == [2]
    assert fixed(torch.randn(2, 4)).shape == (2, 4)


def _pair(first: nn.Module, second: nn.Module) -> nn.Module:
    return nn.ModuleDict({"first": first, "second": second})


@pytest.mark.parametrize(
    "make",
    [
        lambda: _pair(
            LayerChoice({"id": nn.Identity(), "lin": nn.Linear(4, 4)}, label="op"),
            LayerChoice({"id": nn.Identity(), "relu": nn.ReLU()}, label="op"),
        ),
        lambda: _pair(
            LayerChoice({"id": nn.Identity(), "lin": nn.Linear(4, 4)}, label="op"),
            LayerChoice({"lin": nn.Linear(4, 4), "id": nn.Identity()}, label="op"),
        ),
        lambda: _pair(InputChoice(2, label="op"), InputChoice(3, label="op")),
        lambda: _pair(InputChoice(3, 1, label="op"), InputChoice(3, 2, label="op")),
        lambda: _pair(LayerChoice([nn.Identity()], label="op"), InputChoice(1, label="op")),
    ],
    ids=[
        "layer-different-names",
        "layer-different-order",
        "input-different-n_candidates",
        "input-different-n_chosen",
        "layer-and-input",
    ],
)
def test_incompatible_choices_sharing_a_label_are_a_value_error_naming_it(make) -> None:
    with pytest.raises(ValueError, match="label 'op' is shared by incompatible choices"):
        SearchSpace.from_model(make())
    model = make()
    with pytest.raises(ValueError, match="'op'"):
        apply_arch(model, {"op": "id"})


# --- apply_arch -------------------------------------------------------------------------------


def test_apply_arch_returns_a_new_model_that_runs() -> None:
    model = Net()
    fixed = apply_arch(model, ARCH)
    assert fixed is not model
    assert mutables_of(fixed) == []
    assert isinstance(fixed.op1, nn.Linear)
    assert isinstance(fixed.op2, nn.Linear)
    assert isinstance(fixed.skip, ChosenInputs)
    assert fixed.skip.chosen == [1, 2]
    x = torch.randn(3, 4)
    a = fixed.op1(x)
    torch.testing.assert_close(fixed(x), a + fixed.op2(a))


def test_apply_arch_keeps_the_chosen_candidates_weights() -> None:
    model = Net()
    fixed = apply_arch(model, ARCH)
    assert torch.equal(fixed.op1.weight, model.op1["lin"].weight)
    assert fixed.op1.weight is not model.op1["lin"].weight


def test_apply_arch_accepts_unsorted_indices() -> None:
    fixed = apply_arch(Net(), {**ARCH, "skip": [3, 0]})
    assert fixed.skip.chosen == [0, 3]


def test_apply_arch_leaves_the_space_untouched_even_after_training_the_copy() -> None:
    model = Net()
    saved = snapshot(model)
    fixed = apply_arch(model, ARCH)
    assert isinstance(model.op1, LayerChoice)
    assert isinstance(model.op2, LayerChoice)
    assert isinstance(model.skip, InputChoice)
    assert_same_state(model, saved)

    optimizer = torch.optim.SGD(fixed.parameters(), lr=0.5)
    loss = fixed(torch.randn(8, 4)).pow(2).mean()
    loss.backward()
    optimizer.step()

    assert not torch.equal(fixed.op1.weight, saved["op1.lin.weight"])  # the copy did train
    assert_same_state(model, saved)
    assert all(p.grad is None for p in model.parameters())
    assert SearchSpace.from_model(model).labels == ["op1", "op2", "skip"]


def test_apply_arch_resolves_nested_choices() -> None:
    fixed = apply_arch(Nested(), {"outer": "block", "inner": "relu", "mix": [1]})
    assert mutables_of(fixed) == []
    assert isinstance(fixed.outer, Nested.Block)
    assert isinstance(fixed.outer.act, nn.ReLU)
    assert isinstance(fixed.outer.mix, ChosenInputs)
    x = torch.randn(2, 4)
    torch.testing.assert_close(fixed(x), torch.relu(fixed.outer.lin(x)))


def test_apply_arch_needs_nested_labels_even_when_their_candidate_is_not_chosen() -> None:
    with pytest.raises(ValueError, match="'inner'"):
        apply_arch(Nested(), {"outer": "id", "mix": [0]})
    fixed = apply_arch(Nested(), {"outer": "id", "inner": "tanh", "mix": [0]})
    assert isinstance(fixed.outer, nn.Identity)


def test_apply_arch_on_a_model_without_choices_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="no LayerChoice or InputChoice"):
        apply_arch(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), {})


def test_apply_arch_with_a_bad_arch_names_the_label() -> None:
    model = Net()
    with pytest.raises(ValueError, match="'op1'"):
        apply_arch(model, {**ARCH, "op1": "conv"})
    assert isinstance(model.op1, LayerChoice)


def test_apply_arch_on_a_root_layer_choice_returns_the_chosen_candidate() -> None:
    root = LayerChoice({"lin": nn.Linear(4, 4), "id": nn.Identity()}, label="root")
    fixed = apply_arch(root, {"root": "lin"})
    assert isinstance(fixed, nn.Linear)
    assert fixed is not root["lin"]
    assert torch.equal(fixed.weight, root["lin"].weight)
    assert isinstance(apply_arch(root, {"root": "id"}), nn.Identity)
    assert isinstance(root, LayerChoice)


def test_apply_arch_on_a_root_input_choice_returns_chosen_inputs() -> None:
    fixed = apply_arch(InputChoice(3, 2, reduction="concat", label="root"), {"root": [0, 2]})
    assert isinstance(fixed, ChosenInputs)
    a, b, c = (torch.randn(2, 2) for _ in range(3))
    torch.testing.assert_close(fixed([a, b, c]), torch.cat([a, c], dim=1))


def test_apply_arch_matches_a_model_built_under_fixed_arch() -> None:
    space_model = Net()
    arch = SearchSpace.from_model(space_model).sample(5)
    applied = apply_arch(space_model, arch)
    with nastrain.fixed_arch(arch):
        built = Net()
    assert [type(m) for m in applied.modules()] == [type(m) for m in built.modules()]
    assert set(applied.state_dict()) == set(built.state_dict())


# --- JSON -------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [Net, Nested, Shared, nn.Identity])
def test_to_json_from_json_round_trip_equals_the_original(make) -> None:
    space = SearchSpace.from_model(make())
    text = space.to_json()
    assert isinstance(json.loads(text), dict)
    again = SearchSpace.from_json(text)
    assert again == space
    assert again.size == space.size
    assert list(again.enumerate()) == list(space.enumerate())


def test_from_json_accepts_bytes() -> None:
    space = SearchSpace.from_model(Net())
    assert SearchSpace.from_json(space.to_json().encode()) == space


def test_from_json_with_an_unknown_top_level_key_names_it() -> None:
    data = json.loads(SearchSpace.from_model(Net()).to_json())
    data["colour"] = "red"
    with pytest.raises(ValueError, match="colour"):
        SearchSpace.from_json(json.dumps(data))


def test_from_json_with_an_unknown_choice_key_names_it() -> None:
    data = json.loads(SearchSpace.from_model(Net()).to_json())
    data["choices"][1]["weight"] = 0.5
    with pytest.raises(ValueError, match=r"weight.*choices\[1\]"):
        SearchSpace.from_json(json.dumps(data))


def test_from_json_with_malformed_json_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not JSON"):
        SearchSpace.from_json("{choices")


def test_from_json_refuses_a_newer_schema_version() -> None:
    # serialization.py: "a reader refuses documents newer than it knows" (TrainerSpec does).
    data = json.loads(SearchSpace.from_model(Net()).to_json())
    data["schema_version"] += 1
    with pytest.raises(ValueError, match="schema_version"):
        SearchSpace.from_json(json.dumps(data))
