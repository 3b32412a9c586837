"""NNI 2.x model-space code runs with only its imports switched to nastrain.

What NNI 2.x's ``nni.retiarii.nn.pytorch`` choices and ``fixed_arch`` accept is
accepted here (a JSON file's path, a positional reduction, ``n_chosen=None``,
``prior=``, the legacy ``key=`` / ``return_mask=False`` / ``choose_from=``), and what
cannot mean the same here is refused with a message saying what to write instead.
docs/migration.md describes each case.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

import nastrain
from nastrain import InputChoice, LayerChoice, SearchSpace, apply_arch, fixed_arch
from nastrain.mutables import ChosenInputs, InputSwitches, ZeroInput, load_arch
from nastrain.serialization import dumps, loads
from nastrain.space import Choice


class Cell(nn.Module):
    """NNI's DARTS example in miniature: an op per edge, then a node picking two edges."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = nn.ModuleList(
            LayerChoice({"id": nn.Identity(), "relu": nn.ReLU()}, label=f"edge{i}")
            for i in range(3)
        )
        self.node = InputChoice(3, 2, "sum", label="node")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.node([op(x) for op in self.ops])


ARCH = {"edge0": "relu", "edge1": "id", "edge2": "relu", "node": [0, 2]}


def inputs(n: int) -> list[torch.Tensor]:
    """Input j is the constant 2**j, so a sum tells which inputs were picked."""
    return [torch.full((2, 3), float(2**j)) for j in range(n)]


# --- fixed_arch with a path --------------------------------------------------------------------


@pytest.mark.parametrize("as_path", [str, Path], ids=["str", "Path"])
def test_fixed_arch_reads_the_architecture_from_a_json_file(tmp_path: Path, as_path) -> None:
    file = tmp_path / "checkpoint.json"
    file.write_text(json.dumps(ARCH))  # what NNI's examples write: json.dump(trainer.export())
    with fixed_arch(as_path(file)) as arch:
        model = Cell()
    assert arch == ARCH
    x = torch.randn(4, 5)
    assert torch.equal(model(x), apply_arch(Cell(), ARCH)(x))
    assert not any(isinstance(m, nastrain.Mutable) for m in model.modules())


def test_fixed_arch_names_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json"), fixed_arch(missing):
        Cell()


def test_fixed_arch_names_a_file_that_is_not_json(tmp_path: Path) -> None:
    file = tmp_path / "arch.json"
    file.write_text("{'edge0': 'relu'}")
    with pytest.raises(ValueError, match=r"arch\.json.*not JSON.*line 1"), fixed_arch(file):
        Cell()


def test_fixed_arch_names_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    file = tmp_path / "arch.json"
    file.write_bytes(b'{"edge0": "\xff"}')
    with pytest.raises(ValueError, match=r"arch\.json.*UTF-8"), fixed_arch(file):
        Cell()


@pytest.mark.parametrize(
    ("content", "kind"), [("[1, 2]", "an array"), ('"relu"', "a string"), ("null", "null")]
)
def test_fixed_arch_names_a_file_that_holds_no_object(tmp_path: Path, content, kind) -> None:
    file = tmp_path / "arch.json"
    file.write_text(content)
    with pytest.raises(ValueError, match=rf"arch\.json.*holds {kind}, not a JSON object"):
        load_arch(file)


def test_fixed_arch_names_a_folder_given_as_the_file(tmp_path: Path) -> None:
    with pytest.raises(OSError, match=str(tmp_path.name)), fixed_arch(tmp_path):
        Cell()


def test_fixed_arch_still_refuses_what_is_neither_a_dict_nor_a_path() -> None:
    with pytest.raises(TypeError, match="path of a JSON file"), fixed_arch(3):  # type: ignore[arg-type]
        pass


def test_fixed_arch_logs_the_architecture_unless_told_not_to(caplog, tmp_path: Path) -> None:
    file = tmp_path / "arch.json"
    file.write_text(json.dumps(ARCH))
    with caplog.at_level(logging.INFO, logger="nastrain"):
        with fixed_arch(file):
            Cell()
        assert [r.levelno for r in caplog.records] == [logging.INFO]
        assert "arch.json" in caplog.text and "'edge0': 'relu'" in caplog.text
        caplog.clear()
        with fixed_arch(ARCH, verbose=False):
            Cell()
        assert caplog.records == []


def test_a_one_input_choice_takes_nni_s_bare_index() -> None:
    # NNI 2.x's one-shot exports write a one-input choice as its index, not a list.
    with fixed_arch({"skip": 2}):
        chosen = InputChoice(3, 1, label="skip")
    assert isinstance(chosen, ChosenInputs) and chosen.chosen == [2]
    space = SearchSpace.from_model(InputChoice(3, label="skip"))
    assert space.validate({"skip": 1}) == {"skip": [1]}
    assert apply_arch(InputChoice(3, label="skip"), {"skip": 1})(inputs(3)).eq(2).all()
    assert ChosenInputs(1, n_candidates=3).chosen == [1]


def test_a_bare_index_is_refused_where_two_inputs_are_chosen() -> None:
    with pytest.raises(ValueError, match="'node'.*2 input indices"):
        SearchSpace.from_model(Cell()).validate({**ARCH, "node": 1})


def test_a_layer_choice_value_given_as_an_index_says_to_write_the_name() -> None:
    with (
        pytest.raises(ValueError, match=r"'op' has no candidate 1.*write '1'"),
        fixed_arch({"op": 1}),
    ):
        LayerChoice([nn.Identity(), nn.ReLU()], label="op")
    space = SearchSpace.from_model(LayerChoice([nn.Identity(), nn.ReLU()], label="op"))
    with pytest.raises(ValueError, match="write '0'"):
        space.validate({"op": 0})


# --- InputChoice's positional reduction ----------------------------------------------------------


def test_input_choice_takes_its_reduction_by_position() -> None:
    choice = InputChoice(3, 2, "mean", label="skip")
    assert (choice.n_candidates, choice.n_chosen, choice.reduction) == (3, 2, "mean")
    out = apply_arch(choice, {"skip": [0, 2]})(inputs(3))
    assert out.eq(2.5).all()  # the mean of 1 and 4


def test_a_bad_positional_reduction_names_the_label() -> None:
    with pytest.raises(ValueError, match=r"'skip'.*unknown reduction 'max'"):
        InputChoice(3, 1, "max", label="skip")


# --- n_chosen=None: any number of the inputs ------------------------------------------------


class Macro(nn.Module):
    """ENAS's macro space in miniature: a layer that may read any of the earlier ones."""

    def __init__(self, n: int = 3) -> None:
        super().__init__()
        self.skip = InputChoice(n_candidates=n, n_chosen=None, label="skip")

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return self.skip(xs)


def test_n_chosen_none_is_one_on_off_decision_per_input() -> None:
    model = Macro()
    assert isinstance(model.skip, InputSwitches)
    space = SearchSpace.from_model(model)
    assert space.labels == ["skip/0", "skip/1", "skip/2"]
    assert all(c.kind == "layer" and c.names == ("off", "on") for c in space)
    assert space.size == 2**3
    picks = {tuple(j for j in range(3) if a[f"skip/{j}"] == "on") for a in space.enumerate()}
    assert len(picks) == 8 and () in picks  # every subset, the empty one too (as in NNI)


@pytest.mark.parametrize("chosen", [[], [1], [0, 2], [0, 1, 2]])
def test_n_chosen_none_sums_the_inputs_switched_on(chosen: list[int]) -> None:
    arch = {f"skip/{j}": "on" if j in chosen else "off" for j in range(3)}
    expected = sum(2**j for j in chosen)
    assert apply_arch(Macro(), arch)(inputs(3)).eq(expected).all()
    with fixed_arch(arch):
        built = Macro()
    assert built(inputs(3)).eq(expected).all()
    # NNI's own form of the same architecture: the label and the chosen indices.
    with fixed_arch({"skip": chosen}):
        nni_form = Macro()
    assert nni_form(inputs(3)).eq(expected).all()
    assert not any(isinstance(m, nastrain.Mutable) for m in nni_form.modules())


@pytest.mark.parametrize("value", [[0, 2], (2, 0), 1, []])
def test_apply_arch_takes_nni_s_form_of_n_chosen_none_too(value) -> None:
    chosen = [value] if isinstance(value, int) else list(value)
    expected = sum(2**j for j in chosen)
    assert apply_arch(Macro(), {"skip": value})(inputs(3)).eq(expected).all()


def test_apply_arch_refuses_both_forms_of_n_chosen_none_at_once() -> None:
    with pytest.raises(ValueError, match=r"'skip' \(n_chosen=None\) twice.*\['skip/1'\]"):
        apply_arch(Macro(), {"skip": [0], "skip/1": "on"})
    with pytest.raises(ValueError, match=r"'skip' \(n_chosen=None\).*0\.\.2, got \[5\]"):
        apply_arch(Macro(), {"skip": [5]})


def test_n_chosen_none_under_fixed_arch_takes_nni_s_bare_index() -> None:
    with fixed_arch({"skip": 1}):
        model = Macro()
    assert model(inputs(3)).eq(2).all()


@pytest.mark.parametrize("value", [[0, 0], [3], [-1], "0", [True], None])
def test_n_chosen_none_under_fixed_arch_refuses_bad_indices(value: object) -> None:
    with (
        pytest.raises(ValueError, match=r"'skip' \(n_chosen=None\).*0\.\.2"),
        fixed_arch({"skip": value}),
    ):
        Macro()


def test_n_chosen_none_switches_are_searched_like_any_layer_choice() -> None:
    model = Macro()
    copied = copy.deepcopy(model)
    assert SearchSpace.from_model(copied) == SearchSpace.from_model(model)
    arch = SearchSpace.from_model(model).sample(0)
    assert set(arch.values()) <= {"off", "on"}
    assert isinstance(apply_arch(model, arch).skip.switches[0], (ZeroInput, nn.Identity))
    with pytest.raises(ValueError, match="expects 3 inputs, got 2"):
        apply_arch(model, arch)(inputs(2))


def test_n_chosen_none_with_another_reduction_says_what_to_write() -> None:
    with pytest.raises(ValueError, match=r"'skip'.*n_chosen=None.*'mean'.*n_chosen=k"):
        InputChoice(3, None, "mean", label="skip")


def test_n_chosen_none_with_a_prior_says_what_to_write() -> None:
    with pytest.raises(ValueError, match=r"'skip'.*prior=.*remove prior"):
        InputChoice(3, None, prior=[0.2, 0.3, 0.5], label="skip")


def test_n_chosen_none_checks_n_candidates() -> None:
    with pytest.raises(ValueError, match=r"'skip'.*n_candidates is 0"):
        InputChoice(0, None, label="skip")


# --- prior= -------------------------------------------------------------------------------------


def test_prior_is_kept_on_the_choice_and_in_the_space() -> None:
    op = LayerChoice([nn.Identity(), nn.ReLU()], prior=[0.25, 0.75], label="op")
    skip = InputChoice(3, 1, prior=(0.5, 0.25, 0.25), label="skip")
    assert op.prior == (0.25, 0.75) and skip.prior == (0.5, 0.25, 0.25)
    assert LayerChoice([nn.Identity()], label="plain").prior is None
    space = SearchSpace.from_model(nn.ModuleList([op, skip]))
    assert space["op"].prior == (0.25, 0.75) and space["skip"].prior == (0.5, 0.25, 0.25)
    assert SearchSpace.from_json(space.to_json()) == space


def test_sampling_follows_the_prior() -> None:
    op = LayerChoice({"a": nn.Identity(), "b": nn.ReLU(), "c": nn.Tanh()}, prior=[0.02, 0.18, 0.8])
    skip = InputChoice(4, 2, prior=[0.01, 0.09, 0.1, 0.8], label="skip")
    space = SearchSpace.from_model(nn.ModuleList([op, skip]))
    draws = [space.sample(seed) for seed in range(2000)]
    ops = Counter(d[op.label] for d in draws)
    assert ops["a"] < 100 and 0.75 < ops["c"] / 2000 < 0.85
    assert all(len(set(d["skip"])) == 2 for d in draws)
    assert sum(3 in d["skip"] for d in draws) / 2000 > 0.9
    assert sum(0 in d["skip"] for d in draws) < 160  # about 5%; uniform draws give 50%


def test_without_a_prior_sampling_is_the_uniform_draw_it_always_was() -> None:
    space = SearchSpace.from_model(Cell())
    rng = random.Random(7)
    expected = {f"edge{i}": rng.choice(("id", "relu")) for i in range(3)}
    expected["node"] = sorted(rng.sample(range(3), 2))
    assert space.sample(7) == expected


@pytest.mark.parametrize(
    ("prior", "error", "match"),
    [
        ([0.4, 0.3, 0.3], ValueError, "3 probabilities for 2 candidates"),
        ([1.5, -0.5], ValueError, r"prior\[1\] is -0.5"),
        ([math.nan, 1.0], ValueError, r"prior\[0\] is nan"),
        ([0.4, 0.4], ValueError, "sums to 0.8, not 1"),
        ([1.0, 0.0], ValueError, r"prior\[1\] is 0.0; each candidate needs.*> 0"),
        (["0.5", "0.5"], TypeError, r"prior\[0\] is a str"),
        ([True, False], TypeError, r"prior\[0\] is a bool"),
        ("uniform", TypeError, "list of probabilities"),
        ({"a": 1.0}, TypeError, "list of probabilities"),
    ],
)
def test_a_bad_prior_names_the_choice_and_what_is_wrong(prior, error, match) -> None:
    with pytest.raises(error, match=rf"LayerChoice 'op': .*{match}"):
        LayerChoice([nn.Identity(), nn.ReLU()], prior=prior, label="op")


def test_an_input_prior_gives_every_input_a_chance() -> None:
    # NNI takes zeros; here a candidate no draw can reach would make the samplers that
    # look for distinct architectures look forever.
    with pytest.raises(ValueError, match=r"InputChoice 'skip': prior\[3\] is 0.0.*leave out"):
        InputChoice(4, 2, prior=[0.4, 0.3, 0.3, 0.0], label="skip")
    assert InputChoice(2, 2, prior=[0.5, 0.5], label="all").prior == (0.5, 0.5)


def test_choices_sharing_a_label_with_different_priors_are_refused() -> None:
    def make(prior: list[float]) -> LayerChoice:
        return LayerChoice([nn.Identity(), nn.ReLU()], prior=prior, label="op")

    with pytest.raises(ValueError, match=r"'op'.*prior \[0.5, 0.5\]"):
        SearchSpace.from_model(nn.ModuleList([make([0.5, 0.5]), make([0.1, 0.9])]))
    with pytest.raises(ValueError, match="'op'"), fixed_arch({"op": "0"}):
        make([0.5, 0.5])
        make([0.1, 0.9])


def test_a_space_document_with_a_bad_prior_names_it() -> None:
    data = json.loads(SearchSpace.from_model(Cell()).to_json())
    data["choices"][0]["prior"] = [0.5, 0.6]
    with pytest.raises(ValueError, match=r"'edge0': prior sums to 1.1.*choices\[0\]"):
        SearchSpace.from_json(json.dumps(data))


def test_a_space_without_priors_is_written_as_before_priors_existed() -> None:
    # Stores and checkpoints written before prior existed record no such key, and a space
    # without priors writes none, so earlier releases still read it.
    space = SearchSpace.from_model(Cell())
    data = json.loads(space.to_json())
    assert all("prior" not in choice for choice in data["choices"])
    assert SearchSpace.from_json(json.dumps(data)) == space
    weighed = Choice(label="c", kind="layer", names=("x", "y"), n_candidates=2, prior=(0.2, 0.8))
    assert json.loads(dumps(weighed))["prior"] == [0.2, 0.8]
    assert loads(dumps(weighed), Choice) == weighed


def test_a_plugin_choice_without_prior_is_uniform() -> None:
    choice = Choice(label="c", kind="layer", names=("x", "y"), n_candidates=2)
    assert choice.prior is None and choice.sample(random.Random(0)) in ("x", "y")


# --- NNI's legacy keywords -----------------------------------------------------------------------


def test_key_is_the_label() -> None:
    op = LayerChoice([nn.Identity()], key="op")
    skip = InputChoice(2, 1, key="skip", label="skip")
    assert (op.label, op.key, skip.label) == ("op", "op", "skip")
    with pytest.raises(ValueError, match=r"key='a' and label='b' disagree"):
        LayerChoice([nn.Identity()], key="a", label="b")


def test_return_mask_false_is_accepted_and_true_is_refused() -> None:
    assert LayerChoice([nn.Identity()], return_mask=False, label="op").names == ["0"]
    assert InputChoice(2, return_mask=False, label="skip").n_candidates == 2
    for build in (
        lambda: LayerChoice([nn.Identity()], return_mask=True, label="op"),
        lambda: InputChoice(2, return_mask=True, label="skip"),
    ):
        with pytest.raises(ValueError, match="return_mask=True is not supported.*remove"):
            build()


def test_a_layer_choice_reduction_is_ignored_with_a_warning_at_the_caller() -> None:
    with pytest.warns(UserWarning, match=r"'op': reduction='mean' is ignored") as record:
        op = LayerChoice([nn.Identity(), nn.ReLU()], reduction="mean", label="op")
    assert record[0].filename == __file__
    assert isinstance(op, LayerChoice)


def test_choose_from_gives_the_number_of_inputs() -> None:
    # The legacy ENAS macro space: InputChoice(choose_from=prev_labels, n_chosen=None).
    skip = InputChoice(choose_from=["layer_0", "layer_1"], n_chosen=None, label="skip")
    assert isinstance(skip, InputSwitches) and skip.n_candidates == 2
    node = InputChoice(choose_from=["a", InputChoice.NO_KEY, "c"], n_chosen=1, key="node")
    assert (node.label, node.n_candidates) == ("node", 3)
    with pytest.raises(ValueError, match="n_candidates is 2 but choose_from has 3"):
        InputChoice(2, choose_from=["a", "b", "c"], label="x")
    with pytest.raises(TypeError, match="choose_from must be a list"):
        InputChoice(choose_from="abc", label="x")


def test_unknown_keywords_are_named() -> None:
    with pytest.raises(TypeError, match=r"LayerChoice\(\) got an unexpected keyword.*'weights'"):
        LayerChoice([nn.Identity()], weights=[1.0])
    with pytest.raises(TypeError, match=r"InputChoice\(\) got an unexpected keyword.*'n_chose'"):
        InputChoice(3, n_chose=2)


def test_a_second_positional_layer_choice_argument_says_to_use_keywords() -> None:
    # The legacy LayerChoice(op_candidates, reduction, return_mask, key) order.
    with pytest.raises(TypeError, match=r"one positional argument.*by keyword"):
        LayerChoice([nn.Identity()], "sum")


def test_an_input_choice_without_n_candidates_says_so() -> None:
    with pytest.raises(TypeError, match="needs n_candidates"):
        InputChoice(n_chosen=1)
    with pytest.raises(TypeError, match="needs n_candidates"):
        InputChoice()


# --- the first-party one-shot trainers search these spaces (when installed) -----------------


class Ported(nn.Module):
    """Everything above at once: a prior, a positional reduction, n_chosen=None, key=."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.ModuleList(nn.Linear(8 if i == 0 else 16, 16) for i in range(3))
        self.act = LayerChoice([nn.ReLU(), nn.Tanh()], prior=[0.3, 0.7], key="act")
        self.read = InputChoice(2, 1, "sum", label="read")
        self.skip = InputChoice(2, None, label="skip")
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h0 = self.act(self.fc[0](x))
        h1 = self.fc[1](h0)
        h2 = self.fc[2](h1)
        return self.head(self.read([h1, h2]) + self.skip([h0, h1]))


@pytest.mark.parametrize("kind", ["darts", "enas", "random"])
def test_one_shot_trainers_search_a_ported_space(kind: str) -> None:
    from torch.utils.data import TensorDataset

    def accuracy(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        return {"acc": (logits.argmax(1) == y).float().mean().item()}

    torch.manual_seed(0)
    x = torch.randn(128, 8)
    common = dict(
        num_epochs=1, dataset=TensorDataset(x, (x[:, 0] > 0).long()), batch_size=32, seed=0
    )
    loss = nn.CrossEntropyLoss()
    if kind == "darts":
        darts = pytest.importorskip("nastrain_darts")
        trainer = darts.DartsTrainer(Ported(), loss, accuracy, None, **common)
    elif kind == "enas":
        enas = pytest.importorskip("nastrain_enas")
        trainer = enas.EnasTrainer(
            Ported(), loss, accuracy, lambda o, y: accuracy(o, y)["acc"], None, **common
        )
    else:
        enas = pytest.importorskip("nastrain_enas")
        trainer = enas.RandomOneShotTrainer(Ported(), loss, accuracy, None, **common)
    trainer.fit()
    arch = trainer.export()
    assert set(arch) == {"act", "read", "skip/0", "skip/1"}
    assert SearchSpace.from_model(Ported()).validate(arch) == arch
    with fixed_arch(arch):
        model = Ported()
    assert not any(isinstance(m, nastrain.Mutable) for m in model.modules())
    assert model(x[:4]).shape == (4, 2)
