"""Tests of the model-space primitives: LayerChoice, InputChoice, ChosenInputs, fixed_arch."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import nastrain
from nastrain import ChosenInputs, InputChoice, LayerChoice, Mutable, fixed_arch, label_scope


class Net(nn.Module):
    """A tiny model space: two layer choices and one input choice."""

    def __init__(self) -> None:
        super().__init__()
        self.op1 = LayerChoice(
            {"lin": nn.Linear(4, 4), "id": nn.Identity(), "relu": nn.ReLU()}, label="op1"
        )
        self.op2 = LayerChoice([nn.Linear(4, 4), nn.Tanh()], label="op2")
        self.skip = InputChoice(3, 2, reduction="sum", label="skip")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.op1(x)
        b = self.op2(a)
        return self.skip([x, a, b])


def unlabeled_choices() -> list[Mutable]:
    """Two unlabeled layer choices around an unlabeled input choice, in that order."""
    return [
        LayerChoice([nn.Identity(), nn.ReLU()]),
        InputChoice(2),
        LayerChoice([nn.Identity(), nn.Tanh()]),
    ]


def mutables_of(model: nn.Module) -> list[Mutable]:
    return [m for m in model.modules() if isinstance(m, Mutable)]


# --- LayerChoice: construction and access ---------------------------------------------------


def test_layer_choice_from_list_names_candidates_by_position() -> None:
    first, second, third = nn.Linear(4, 4), nn.Identity(), nn.ReLU()
    choice = LayerChoice([first, second, third], label="op")
    assert choice.names == ["0", "1", "2"]
    assert choice.candidates == [first, second, third]


def test_layer_choice_from_dict_keeps_insertion_order() -> None:
    zeta, alpha, mid = nn.Identity(), nn.ReLU(), nn.Tanh()
    choice = LayerChoice({"zeta": zeta, "alpha": alpha, "mid": mid}, label="op")
    assert choice.names == ["zeta", "alpha", "mid"]
    assert choice.candidates == [zeta, alpha, mid]


def test_label_and_its_alias_key_are_the_given_label() -> None:
    layer = LayerChoice([nn.Identity()], label="cell.edge:0")
    inputs = InputChoice(2, label="cell/in-1")
    assert layer.label == layer.key == "cell.edge:0"
    assert inputs.label == inputs.key == "cell/in-1"


def test_named_children_yields_name_and_candidate_in_order() -> None:
    conv, pool = nn.Linear(4, 4), nn.Identity()
    choice = LayerChoice({"conv": conv, "pool": pool}, label="op")
    children = list(choice.named_children())
    assert [name for name, _ in children] == ["conv", "pool"]
    assert children[0][1] is conv
    assert children[1][1] is pool


def test_len_and_indexing_by_int_and_by_name() -> None:
    lin, ident = nn.Linear(4, 4), nn.Identity()
    choice = LayerChoice({"lin": lin, "id": ident}, label="op")
    assert len(choice) == 2
    assert choice[0] is lin
    assert choice[1] is ident
    assert choice[-1] is ident
    assert choice["lin"] is lin
    assert choice["id"] is ident
    assert list(choice) == [lin, ident]


def test_candidates_are_registered_submodules_with_their_parameters() -> None:
    lin = nn.Linear(4, 4)
    choice = LayerChoice({"lin": lin, "id": nn.Identity()}, label="op")
    assert set(choice.state_dict()) == {"lin.weight", "lin.bias"}
    assert torch.equal(choice.state_dict()["lin.weight"], lin.weight)


def test_input_choice_records_its_arguments() -> None:
    choice = InputChoice(4, 2, reduction="concat", label="in")
    assert (choice.n_candidates, choice.n_chosen, choice.reduction) == (4, 2, "concat")


# --- Bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidates", "bad_name"),
    [
        ([nn.Identity(), "relu"], "1"),
        ({"a": nn.Identity(), "b": 3}, "b"),
        ({"lin": nn.Linear, "id": nn.Identity()}, "lin"),
    ],
    ids=["list-str", "dict-int", "module-class-not-instance"],
)
def test_candidate_that_is_not_a_module_is_a_type_error_naming_it(
    candidates: object, bad_name: str
) -> None:
    with pytest.raises(TypeError, match=f"'{bad_name}'") as info:
        LayerChoice(candidates, label="op")
    assert "'op'" in str(info.value)
    assert "nn.Module" in str(info.value)


@pytest.mark.parametrize("candidates", [[], {}], ids=["list", "dict"])
def test_empty_candidates_is_a_value_error_naming_the_label(candidates: object) -> None:
    with pytest.raises(ValueError, match=r"'op'.*empty"):
        LayerChoice(candidates, label="op")


@pytest.mark.parametrize(
    "candidates",
    [nn.Linear(4, 4), "relu", 3, {nn.Identity()}, None],
    ids=["module", "str", "int", "set", "none"],
)
def test_candidates_not_a_list_or_dict_is_a_type_error_naming_the_label(
    candidates: object,
) -> None:
    with pytest.raises(TypeError, match=r"'op'.*list or dict"):
        LayerChoice(candidates, label="op")


@pytest.mark.parametrize("bad_name", ["", "a.b"])
def test_dict_candidate_name_that_cannot_be_a_module_name_is_rejected(bad_name: str) -> None:
    with pytest.raises(ValueError, match=f"'op'.*{re.escape(repr(bad_name))}"):
        LayerChoice({bad_name: nn.Identity(), "ok": nn.Identity()}, label="op")


def test_dict_candidate_names_that_collide_as_strings_are_rejected() -> None:
    # {1: ..., "1": ...} would keep one candidate silently, under a name of the other.
    with pytest.raises(ValueError, match=r"'op'.*1.*'1'.*distinct"):
        LayerChoice({1: nn.Identity(), "1": nn.ReLU()}, label="op")


@pytest.mark.parametrize("name", ["label", "names", "forward", "train", "float"])
def test_dict_candidate_named_like_a_module_attribute_works(name: str) -> None:
    candidate = nn.Linear(4, 4)
    choice = LayerChoice({name: candidate, "ok": nn.Identity()}, label="op")
    model = nn.Sequential(choice)
    assert (choice.label, choice.names, choice[name]) == ("op", [name, "ok"], candidate)
    model.eval()
    assert not choice.training
    assert not candidate.training
    model.train()
    assert choice.training
    with pytest.raises(RuntimeError, match="'op'"):
        choice(torch.ones(1, 4))
    assert isinstance(nastrain.apply_arch(model, {"op": name})[0], nn.Linear)


def test_candidate_named_training_is_rejected_clearly_or_survives_train_and_eval() -> None:
    # nn.Module.train() assigns self.training; with a child module stored under that name,
    # torch raises "cannot assign 'bool' as child module 'training'" from model.eval().
    candidate = nn.Linear(4, 4)
    try:
        choice = LayerChoice({"training": candidate, "ok": nn.Identity()}, label="op")
    except ValueError as exc:
        assert "'op'" in str(exc)
        assert "'training'" in str(exc)
        return
    model = nn.Sequential(choice)
    model.eval()
    assert not choice.training
    assert not candidate.training
    model.train()
    assert choice.training
    assert choice["training"] is candidate


def test_input_choice_with_more_chosen_than_candidates_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"'skip'.*n_chosen is 3"):
        InputChoice(2, 3, label="skip")


@pytest.mark.parametrize("n_chosen", [0, -1])
def test_input_choice_with_fewer_than_one_chosen_is_a_value_error(n_chosen: int) -> None:
    with pytest.raises(ValueError, match=f"'skip'.*n_chosen is {n_chosen}"):
        InputChoice(3, n_chosen, label="skip")


def test_input_choice_with_no_candidates_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"'skip'.*n_candidates is 0"):
        InputChoice(0, label="skip")


@pytest.mark.parametrize("n_chosen", [True, 1.0, "1"], ids=["bool", "float", "str"])
def test_input_choice_with_non_int_n_chosen_is_a_type_error(n_chosen: object) -> None:
    with pytest.raises(TypeError, match=r"'skip'.*n_chosen must be an int") as info:
        InputChoice(3, n_chosen, label="skip")
    assert type(n_chosen).__name__ in str(info.value)


def test_input_choice_with_missing_n_candidates_is_a_type_error_naming_the_label() -> None:
    with pytest.raises(TypeError, match=r"'skip'.*n_candidates"):
        InputChoice(None, label="skip")


def test_input_choice_with_unknown_reduction_names_label_and_reduction() -> None:
    with pytest.raises(ValueError, match=r"'skip'.*'max'"):
        InputChoice(3, reduction="max", label="skip")


@pytest.mark.parametrize("label", ["", "has space", "semi;colon", "naïve", 5])
def test_invalid_label_is_a_value_error_naming_it(label: object) -> None:
    with pytest.raises(ValueError, match=f"label {label!r} is not valid"):
        LayerChoice([nn.Identity()], label=label)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=f"label {label!r} is not valid"):
        InputChoice(2, label=label)  # type: ignore[arg-type]


# --- Unresolved choices cannot run ------------------------------------------------------------


def test_forwarding_an_unresolved_layer_choice_says_how_to_resolve_it() -> None:
    choice = LayerChoice([nn.Identity(), nn.ReLU()], label="op")
    with pytest.raises(RuntimeError, match="'op'") as info:
        choice(torch.ones(1, 4))
    assert "apply_arch" in str(info.value)
    assert "fixed_arch" in str(info.value)


def test_forwarding_an_unresolved_input_choice_says_how_to_resolve_it() -> None:
    choice = InputChoice(2, label="skip")
    with pytest.raises(RuntimeError, match="'skip'") as info:
        choice([torch.ones(1, 4), torch.ones(1, 4)])
    assert "apply_arch" in str(info.value)
    assert "fixed_arch" in str(info.value)


def test_forwarding_a_model_space_names_the_first_unresolved_choice() -> None:
    with pytest.raises(RuntimeError, match=r"'op1'.*apply_arch"):
        Net()(torch.ones(2, 4))


# --- Derived labels ---------------------------------------------------------------------------


def test_unlabeled_choices_get_numbered_labels_in_construction_order() -> None:
    with label_scope():
        first, inputs, second = unlabeled_choices()
        third = LayerChoice([nn.Identity()])
        more_inputs = InputChoice(3, 2)
    assert [first.label, second.label, third.label] == [
        "layerchoice_1",
        "layerchoice_2",
        "layerchoice_3",
    ]
    assert [inputs.label, more_inputs.label] == ["inputchoice_1", "inputchoice_2"]


def test_explicit_labels_do_not_consume_derived_numbers() -> None:
    with label_scope():
        first = LayerChoice([nn.Identity()])
        LayerChoice([nn.Identity()], label="named")
        second = LayerChoice([nn.Identity()])
    assert [first.label, second.label] == ["layerchoice_1", "layerchoice_2"]


def test_label_scope_restarts_numbering_and_restores_the_outer_count() -> None:
    with label_scope():
        outer_first = LayerChoice([nn.Identity()])
        with label_scope():
            inner = LayerChoice([nn.Identity()])
        outer_second = LayerChoice([nn.Identity()])
    assert inner.label == "layerchoice_1"
    assert [outer_first.label, outer_second.label] == ["layerchoice_1", "layerchoice_2"]


def test_the_same_space_built_in_two_scopes_gets_the_same_labels() -> None:
    with label_scope():
        first = [m.label for m in unlabeled_choices()]
    with label_scope():
        second = [m.label for m in unlabeled_choices()]
    assert first == second == ["layerchoice_1", "inputchoice_1", "layerchoice_2"]


_LABELS_SNIPPET = textwrap.dedent(
    """
    from torch import nn
    import nastrain

    class Cell(nn.Module):
        def __init__(self):
            super().__init__()
            self.op = nastrain.LayerChoice({"id": nn.Identity(), "relu": nn.ReLU()})
            self.inp = nastrain.InputChoice(3, 2)

    class Space(nn.Module):
        def __init__(self):
            super().__init__()
            self.cells = nn.ModuleList([Cell() for _ in range(3)])
            self.head = nastrain.LayerChoice([nn.Linear(4, 4), nn.Identity()])

    def labels(model):
        return ",".join(m.label for m in model.modules() if isinstance(m, nastrain.Mutable))

    print(labels(Space()))
    with nastrain.label_scope():
        print(labels(Space()))
    """
)


def test_derived_labels_are_stable_from_process_to_process() -> None:
    runs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "NASTRAIN_PLUGINS": ""}
        runs.append(
            subprocess.Popen(
                [sys.executable, "-c", _LABELS_SNIPPET],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = []
    for proc in runs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        outputs.append(out.splitlines())
    expected = (
        "layerchoice_1,inputchoice_1,layerchoice_2,inputchoice_2,"
        "layerchoice_3,inputchoice_3,layerchoice_4"
    )
    assert outputs[0] == outputs[1] == [expected, expected]


def test_deepcopy_keeps_labels_and_consumes_no_label_numbers() -> None:
    with label_scope():
        first = nn.ModuleList(unlabeled_choices())
        copied = copy.deepcopy(first)
        second = nn.ModuleList(unlabeled_choices())
    assert [m.label for m in first] == ["layerchoice_1", "inputchoice_1", "layerchoice_2"]
    assert [m.label for m in copied] == [m.label for m in first]
    assert [m.label for m in second] == ["layerchoice_3", "inputchoice_2", "layerchoice_4"]


def test_deepcopy_of_a_choice_is_an_independent_equal_choice() -> None:
    choice = LayerChoice({"lin": nn.Linear(4, 4), "id": nn.Identity()}, label="op")
    copied = copy.deepcopy(choice)
    assert isinstance(copied, LayerChoice)
    assert copied.names == choice.names
    assert copied["lin"] is not choice["lin"]
    assert torch.equal(copied["lin"].weight, choice["lin"].weight)
    inputs = InputChoice(4, 2, reduction="mean", label="skip")
    inputs_copy = copy.deepcopy(inputs)
    assert (inputs_copy.label, inputs_copy.n_candidates, inputs_copy.n_chosen) == ("skip", 4, 2)
    assert inputs_copy.reduction == "mean"


# --- ChosenInputs and reductions --------------------------------------------------------------


@pytest.fixture
def three_inputs() -> list[torch.Tensor]:
    return [torch.randn(2, 3) for _ in range(3)]


def test_chosen_inputs_sum(three_inputs: list[torch.Tensor]) -> None:
    a, _, c = three_inputs
    out = ChosenInputs([0, 2], reduction="sum", n_candidates=3)(three_inputs)
    torch.testing.assert_close(out, a + c)


def test_chosen_inputs_sum_of_three(three_inputs: list[torch.Tensor]) -> None:
    out = ChosenInputs([0, 1, 2], reduction="sum", n_candidates=3)(three_inputs)
    torch.testing.assert_close(out, torch.stack(three_inputs).sum(0))


def test_chosen_inputs_mean(three_inputs: list[torch.Tensor]) -> None:
    _, b, c = three_inputs
    out = ChosenInputs([1, 2], reduction="mean", n_candidates=3)(three_inputs)
    torch.testing.assert_close(out, (b + c) / 2)


def test_chosen_inputs_concat_on_dim_1(three_inputs: list[torch.Tensor]) -> None:
    a, b, _ = three_inputs
    out = ChosenInputs([0, 1], reduction="concat", n_candidates=3)(three_inputs)
    assert out.shape == (2, 6)
    torch.testing.assert_close(out, torch.cat([a, b], dim=1))


def test_chosen_inputs_none_returns_the_selected_list(three_inputs: list[torch.Tensor]) -> None:
    a, _, c = three_inputs
    out = ChosenInputs([0, 2], reduction="none", n_candidates=3)(three_inputs)
    assert isinstance(out, list)
    assert len(out) == 2
    assert out[0] is a
    assert out[1] is c


@pytest.mark.parametrize("reduction", ["sum", "mean", "concat"])
def test_chosen_inputs_with_one_choice_returns_that_input(
    three_inputs: list[torch.Tensor], reduction: str
) -> None:
    out = ChosenInputs([1], reduction=reduction, n_candidates=3)(three_inputs)
    torch.testing.assert_close(out, three_inputs[1])


def test_chosen_inputs_with_the_wrong_number_of_inputs_is_a_value_error(
    three_inputs: list[torch.Tensor],
) -> None:
    with pytest.raises(ValueError, match="expected 3 inputs, got 2"):
        ChosenInputs([0], n_candidates=3)(three_inputs[:2])


def test_chosen_inputs_with_unknown_reduction_is_a_value_error(
    three_inputs: list[torch.Tensor],
) -> None:
    # reduce_tensors returns a single chosen input before looking at the reduction, so a
    # misspelt reduction must be caught at construction or at the latest when run.
    with pytest.raises(ValueError, match="'maxx'"):
        ChosenInputs([0], reduction="maxx", n_candidates=3)(three_inputs)


@pytest.mark.parametrize(
    ("reduction", "expected"),
    [
        ("sum", lambda a, b, c: a + c),
        ("mean", lambda a, b, c: (a + c) / 2),
        ("concat", lambda a, b, c: torch.cat([a, c], dim=1)),
    ],
)
def test_input_choice_under_fixed_arch_reduces_numerically(
    three_inputs: list[torch.Tensor], reduction: str, expected
) -> None:
    with fixed_arch({"skip": [2, 0]}):
        chosen = InputChoice(3, 2, reduction=reduction, label="skip")
    assert isinstance(chosen, ChosenInputs)
    assert chosen.chosen == [0, 2]
    torch.testing.assert_close(chosen(three_inputs), expected(*three_inputs))


def test_input_choice_none_reduction_under_fixed_arch_returns_the_list(
    three_inputs: list[torch.Tensor],
) -> None:
    with fixed_arch({"skip": [1]}):
        chosen = InputChoice(3, 1, reduction="none", label="skip")
    out = chosen(three_inputs)
    assert isinstance(out, list)
    assert len(out) == 1
    assert out[0] is three_inputs[1]


# --- fixed_arch -------------------------------------------------------------------------------


def test_fixed_arch_layer_choice_returns_the_chosen_candidate_itself() -> None:
    ident, lin = nn.Identity(), nn.Linear(4, 4)
    with fixed_arch({"op": "lin"}):
        got = LayerChoice({"id": ident, "lin": lin}, label="op")
    assert got is lin


def test_fixed_arch_list_candidates_are_chosen_by_position_name() -> None:
    first, second = nn.Identity(), nn.ReLU()
    with fixed_arch({"op": "1"}):
        got = LayerChoice([first, second], label="op")
    assert got is second


def test_fixed_arch_input_choice_returns_chosen_inputs_with_the_given_indices() -> None:
    with fixed_arch({"skip": [3, 1]}):
        got = InputChoice(4, 2, reduction="mean", label="skip")
    assert type(got) is ChosenInputs
    assert got.chosen == [1, 3]
    assert got.reduction == "mean"
    assert got.n_candidates == 4


def test_fixed_arch_yields_the_architecture() -> None:
    with fixed_arch({"op": "0"}) as arch:
        LayerChoice([nn.Identity()], label="op")
    assert arch == {"op": "0"}


def test_model_built_under_fixed_arch_has_no_choices_and_runs() -> None:
    with fixed_arch({"op1": "lin", "op2": "1", "skip": [0, 2]}):
        model = Net()
    assert mutables_of(model) == []
    assert isinstance(model.op1, nn.Linear)
    assert isinstance(model.op2, nn.Tanh)
    x = torch.randn(2, 4)
    expected = x + torch.tanh(model.op1(x))
    torch.testing.assert_close(model(x), expected)


def test_fixed_arch_accepts_derived_labels_of_unlabeled_choices() -> None:
    with label_scope():
        labels = [m.label for m in unlabeled_choices()]
    arch = dict(zip(labels, ["1", [0], "0"], strict=True))
    with fixed_arch(arch):
        relu, inputs, ident = unlabeled_choices()
    assert isinstance(relu, nn.ReLU)
    assert isinstance(inputs, ChosenInputs)
    assert inputs.chosen == [0]
    assert isinstance(ident, nn.Identity)


def test_fixed_arch_missing_a_label_used_in_the_block_names_it() -> None:
    with pytest.raises(ValueError, match="'op2'"), fixed_arch({"op1": "id", "skip": [0, 1]}):
        Net()


def test_fixed_arch_with_a_label_no_choice_uses_fails_at_exit_naming_it() -> None:
    built = []
    with (
        pytest.raises(ValueError, match="'ghost'"),
        fixed_arch({"op1": "id", "op2": "0", "skip": [0, 1], "ghost": "0"}),
    ):
        built.append(Net())  # building succeeds; the check is at the end of the block
    assert isinstance(built[0].op1, nn.Identity)


def test_fixed_arch_with_an_unknown_candidate_names_label_and_candidate() -> None:
    with (
        pytest.raises(ValueError, match=r"'op'.*'conv'") as info,
        fixed_arch({"op": "conv"}),
    ):
        LayerChoice({"id": nn.Identity(), "lin": nn.Linear(4, 4)}, label="op")
    assert "'id'" in str(info.value)


def test_fixed_arch_with_a_non_string_layer_value_names_the_label() -> None:
    with pytest.raises(ValueError, match="'op'"), fixed_arch({"op": 0}):
        LayerChoice([nn.Identity()], label="op")


@pytest.mark.parametrize("value", [[0], [0, 1, 2], [1, 1], [0, 3], "0"])
def test_fixed_arch_with_bad_input_indices_names_the_label(value: object) -> None:
    with pytest.raises(ValueError, match="'skip'"), fixed_arch({"skip": value}):
        InputChoice(3, 2, label="skip")


def test_fixed_arch_still_checks_input_choice_arguments() -> None:
    with (
        pytest.raises(ValueError, match=r"'skip'.*'max'"),
        fixed_arch({"skip": [0]}),
    ):
        InputChoice(3, reduction="max", label="skip")


def test_fixed_arch_resolves_a_choice_nested_in_a_candidate() -> None:
    with fixed_arch({"outer": "block", "inner": "relu"}):
        outer = LayerChoice(
            {
                "block": nn.Sequential(
                    nn.Linear(4, 4),
                    LayerChoice({"id": nn.Identity(), "relu": nn.ReLU()}, label="inner"),
                ),
                "id": nn.Identity(),
            },
            label="outer",
        )
    assert isinstance(outer, nn.Sequential)
    assert isinstance(outer[1], nn.ReLU)
    assert mutables_of(outer) == []
    assert (outer(torch.randn(3, 4)) >= 0).all()


def test_fixed_arch_rejects_incompatible_choices_sharing_a_label() -> None:
    # The contract: sharing a label between incompatible choices is a ValueError naming
    # the label. Here both choices have a candidate "a", so the arch value alone fits both.
    with pytest.raises(ValueError, match="'op'"), fixed_arch({"op": "a"}):
        LayerChoice({"a": nn.Identity(), "b": nn.ReLU()}, label="op")
        LayerChoice({"a": nn.Identity(), "c": nn.Tanh()}, label="op")


def test_fixed_arch_numbering_starts_at_one_and_outer_scope_is_restored() -> None:
    with label_scope():
        before = LayerChoice([nn.Identity()])
        with fixed_arch({"layerchoice_1": "0"}):
            LayerChoice([nn.Identity()])
        after = LayerChoice([nn.Identity()])
    assert [before.label, after.label] == ["layerchoice_1", "layerchoice_2"]


def test_choices_built_after_fixed_arch_are_choices_again() -> None:
    with fixed_arch({"op": "0"}):
        LayerChoice([nn.Identity()], label="op")
    again = LayerChoice([nn.Identity()], label="op")
    assert isinstance(again, LayerChoice)


def test_fixed_arch_rejects_a_non_mapping() -> None:
    with pytest.raises(TypeError, match="list"), fixed_arch([("op", "0")]):  # type: ignore[arg-type]
        pass


def test_public_names_are_exported_from_nastrain() -> None:
    assert nastrain.LayerChoice is LayerChoice
    assert nastrain.InputChoice is InputChoice
    assert nastrain.fixed_arch is fixed_arch
    assert nastrain.ChosenInputs is ChosenInputs
