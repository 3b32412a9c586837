"""DartsTrainer: registration, relaxation through the hook, export, history, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import nastrain
from nastrain_darts import DartsInputChoice, DartsLayerChoice, DartsTrainer


class Exploding(nn.Module):
    """A zero op that fails if run: DARTS must not compute it."""

    nastrain_zero = True

    def forward(self, x):
        raise AssertionError("the none op was computed")


class Space(nn.Module):
    def __init__(self, none_op: nn.Module | None = None) -> None:
        super().__init__()
        ops = {"none": none_op or Exploding(), "linear": nn.Linear(4, 4), "tanh": nn.Tanh()}
        self.op = nastrain.LayerChoice(ops, label="op")
        self.again = nastrain.LayerChoice(
            {"none": Exploding(), "linear": nn.Linear(4, 4), "tanh": nn.Tanh()}, label="op"
        )
        self.pick = nastrain.InputChoice(2, 1, label="pick")
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.pick([self.again(self.op(x)), x]))


def data(n: int = 64) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=generator)
    return TensorDataset(x, (x[:, 0] > 0).long())


def accuracy(logits, y):
    return {"acc": (logits.argmax(1) == y).float().mean()}


def make(model=None, **kwargs) -> DartsTrainer:
    kwargs.setdefault("num_epochs", 2)
    kwargs.setdefault("dataset", data())
    kwargs.setdefault("progress", False)
    return DartsTrainer(
        model or Space(), nn.CrossEntropyLoss(), accuracy, None, batch_size=16, seed=0, **kwargs
    )


def test_registered_as_darts_through_the_entry_point() -> None:
    assert nastrain.get_trainer("darts") is DartsTrainer
    info = next(p for p in nastrain.plugins.loaded_plugins() if p.name == "darts")
    assert info.distribution == "nastrain-darts" and info.trainers == ("darts",)


def test_choices_are_relaxed_and_shared_labels_share_alpha() -> None:
    trainer = make()
    kinds = [(label, type(module)) for label, module in trainer.nas_modules]
    assert kinds == [("op", DartsLayerChoice), ("op", DartsLayerChoice), ("pick", DartsInputChoice)]
    assert trainer.nas_modules[0][1].alpha is trainer.nas_modules[1][1].alpha
    alpha_ids = {id(a) for a in trainer.arch.parameters()}
    assert not alpha_ids & {id(p) for p in trainer.model.parameters()}  # alphas are not weights


def test_the_none_op_is_skipped_but_keeps_its_softmax_weight() -> None:
    class CountingZero(nn.Module):
        nastrain_zero = True

        def forward(self, x):
            return torch.zeros_like(x)

    choice = nastrain.LayerChoice({"none": Exploding(), "a": nn.Linear(4, 4), "b": nn.Tanh()})
    alpha = nn.Parameter(torch.tensor([2.0, 0.5, -1.0]))
    relaxed = DartsLayerChoice(choice, alpha)
    x = torch.randn(3, 4)
    weights = torch.softmax(alpha, -1)
    expected = (
        weights[0] * torch.zeros_like(x) + weights[1] * choice["a"](x) + weights[2] * choice["b"](x)
    )
    assert torch.allclose(relaxed(x), expected)
    assert relaxed.computed == [1, 2]


@pytest.mark.parametrize(
    "layouts", [("contiguous", "contiguous"), ("cl", "cl"), ("cl", "contiguous")]
)
def test_the_mixed_sum_has_the_gradients_of_the_plain_weighted_sum(layouts) -> None:
    """The relaxed choice's sum (one autograd node) against sum_i w_i * o_i written out: outputs,
    gradients for the weights and every output (in any memory layout), and second derivatives
    (the exact second-order test differentiates through it)."""
    from nastrain_darts._fast import WeightedSum as _WeightedSum

    def layout(t, name):
        return t.contiguous(memory_format=torch.channels_last) if name == "cl" else t

    generator = torch.Generator().manual_seed(0)
    weights = torch.softmax(torch.randn(4, dtype=torch.double, generator=generator), -1)
    weights.requires_grad_(True)
    outputs = [
        layout(torch.randn(2, 3, 4, 5, dtype=torch.double, generator=generator), name)
        .detach()
        .requires_grad_(True)
        for name in layouts
    ]
    indices = [1, 3]  # candidates 0 and 2 are `none`: weighted, never computed

    def ours(w, *outs):
        return _WeightedSum.apply(w, indices, *outs)

    def plain(w, *outs):
        return sum(w[i] * o for i, o in zip(indices, outs))

    torch.testing.assert_close(ours(weights, *outputs), plain(weights, *outputs))
    grad = torch.randn(2, 3, 4, 5, dtype=torch.double, generator=generator)
    ours_grads = torch.autograd.grad(ours(weights, *outputs), [weights, *outputs], grad)
    plain_grads = torch.autograd.grad(plain(weights, *outputs), [weights, *outputs], grad)
    for a, b in zip(ours_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b)
    assert ours_grads[0][[0, 2]].eq(0).all()
    assert torch.autograd.gradgradcheck(ours, (weights, *outputs))
    # With the weights frozen (a weight pass) only the outputs get gradients.
    frozen = weights.detach()
    ours(frozen, *outputs).backward(grad)
    torch.testing.assert_close(outputs[0].grad, grad * frozen[1])


def test_fit_exports_a_runnable_architecture_and_keeps_history() -> None:
    space = Space(none_op=nn.Identity())  # an ordinary op named none, to test the exclusion
    trainer = make(Space(), num_epochs=3)
    trainer.fit()
    arch = trainer.export()
    assert arch["op"] in ("linear", "tanh") and len(arch["pick"]) == 1
    fixed = nastrain.apply_arch(space, arch)
    assert fixed(torch.randn(5, 4)).shape == (5, 2)
    assert [record["epoch"] for record in trainer.history] == [1, 2, 3]
    assert len(trainer.alpha_history) == 3
    assert set(trainer.alpha_history[-1]) == {"op", "pick"}
    assert sum(trainer.alpha_history[-1]["op"]) == pytest.approx(1.0, abs=1e-4)
    assert [set(r) for r in trainer.intermediate_results] == [{"default", "loss", "acc"}] * 3


def test_export_excludes_named_candidates() -> None:
    trainer = make()
    with torch.no_grad():
        trainer.arch.alphas["op"].copy_(torch.tensor([5.0, 1.0, 0.0]))
    assert trainer.export()["op"] == "linear"
    trainer.export_exclude = ()
    assert trainer.export()["op"] == "none"


def test_a_third_party_plugin_relaxes_a_new_choice_for_darts(nastrain_plugin) -> None:
    class Width(nastrain.Mutable):
        def __init__(self, label):
            super().__init__()
            self.label = label

        def describe(self):
            return nastrain.Choice(label=self.label, kind="layer", names=("2", "4"), n_candidates=2)

    class RelaxedWidth(nn.Module):
        def __init__(self, choice, alpha):
            super().__init__()
            self.alpha = alpha

        def forward(self, x):
            w = torch.softmax(self.alpha, -1)
            return x * (2 * w[0] + 4 * w[1])

        def export(self):
            return ["2", "4"][int(self.alpha.argmax())]

    class WidthPlugin:
        @nastrain.hookimpl
        def nastrain_replace_module(self, module, trainer):
            if isinstance(module, Width) and isinstance(trainer, DartsTrainer):
                return RelaxedWidth(module, trainer.arch.get(module.label, 2))
            return None

    nastrain_plugin(WidthPlugin(), name="width")
    model = nn.Sequential(Width("scale"), nn.Linear(4, 2))
    trainer = make(model)
    trainer.fit()
    assert trainer.export()["scale"] in ("2", "4")


def test_bad_input_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="nothing to search"):
        make(nn.Linear(4, 2))
    with pytest.raises(ValueError, match="num_epochs"):
        make(num_epochs=0)

    class Triples(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return torch.zeros(4), 0, "extra"

    with pytest.raises(TypeError, match=r"dataset must yield \(input, target\) pairs.*length 3"):
        make(dataset=Triples()).fit()


def test_a_nan_loss_names_epoch_and_step_and_keeps_the_last_checkpoint(tmp_path) -> None:
    class Poisoned(Space):
        def forward(self, x):
            out = super().forward(x)
            return out * float("nan") if self.poison else out

    model = Poisoned()
    trainer = make(model, num_epochs=3, checkpoint_dir=tmp_path)
    original = trainer.search_step

    def step(train, valid):
        model.poison = trainer.epoch == 1  # from the second epoch on
        return original(train, valid)

    trainer.search_step = step
    with pytest.raises(FloatingPointError, match=r"epoch 2, step 1.*after epoch 1 is kept"):
        trainer.fit()
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1


@pytest.mark.parametrize("progress", [True, False])
def test_progress_bar_per_epoch_shows_loss_and_metrics_unless_off(progress, capsys) -> None:
    make(progress=progress).fit()
    err = capsys.readouterr().err
    if progress:
        assert "epoch 1/2" in err and "epoch 2/2" in err and "loss" in err and "acc" in err
    else:
        assert err == ""


def test_works_imported_directly_with_its_plugin_left_out(monkeypatch, nastrain_reload) -> None:
    monkeypatch.setenv("NASTRAIN_PLUGINS", "")
    nastrain_reload()
    trainer = make()
    trainer.fit()
    assert set(trainer.export()) == {"op", "pick"}


@pytest.mark.parametrize("unrolled", [False, True], ids=["first-order", "second-order"])
def test_a_space_of_parameter_free_candidates_is_searched(unrolled) -> None:
    class Activation(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.act = nastrain.LayerChoice(
                {"identity": nn.Identity(), "tanh": nn.Tanh(), "relu": nn.ReLU()}, label="act"
            )

        def forward(self, x):
            return self.act(x)

    x = torch.randn(128, 4, generator=torch.Generator().manual_seed(0)) * 2
    spare = torch.zeros(1, requires_grad=True)  # the model has no weights to optimise
    trainer = DartsTrainer(
        Activation(),
        nn.MSELoss(),
        None,
        torch.optim.SGD([spare], lr=0.1),
        num_epochs=30,
        dataset=TensorDataset(x, torch.tanh(x)),
        batch_size=32,
        arc_learning_rate=0.05,
        unrolled=unrolled,
        seed=0,
        progress=False,
    )
    assert trainer.weights == []
    trainer.fit()
    assert trainer.export() == {"act": "tanh"}


def test_the_one_shot_options_go_to_the_record_and_a_misspelt_one_names_darts(tmp_path) -> None:
    from nastrain.oneshot import OneShotOptions

    trainer = make(options=OneShotOptions(seed=1, checkpoint_dir=tmp_path), progress=None)
    # make()'s seed=0 keyword replaces the record's seed; the rest is the record's.
    assert trainer.options == OneShotOptions(seed=0, checkpoint_dir=tmp_path)
    with pytest.raises(
        TypeError,
        match=r"DartsTrainer\(\) got an unexpected keyword argument "
        r"'checkpoint_dri' \(did you mean 'checkpoint_dir'\?\).*unrolled",
    ):
        make(checkpoint_dri=tmp_path)


def test_arch_parameters_are_the_alphas_one_per_label_not_weights() -> None:
    trainer = make()
    alphas = trainer.arch_parameters()
    assert [a.numel() for a in alphas] == [3, 2]  # "op" (shared by two choices), "pick"
    assert alphas == trainer.arch.parameters()
    weights = {id(p) for p in trainer.model.parameters()}
    assert not any(id(a) in weights for a in alphas)
