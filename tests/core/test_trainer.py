"""Trainers: abstract methods, register_trainer and TrainerSpec, and the fit/export hooks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import nastrain
from nastrain import BaseOneShotTrainer, BaseTrainer, TrainerSpec, register_trainer


def test_trainer_without_fit_fails_at_instantiation_naming_fit() -> None:
    class NoFit(BaseTrainer):
        pass

    with pytest.raises(TypeError, match=r"NoFit .*fit\(\)"):
        NoFit()


def test_one_shot_trainer_without_export_fails_naming_export() -> None:
    class NoExport(BaseOneShotTrainer):
        def fit(self) -> None:
            pass

    with pytest.raises(TypeError, match=r"NoExport .*export\(\)"):
        NoExport()


@register_trainer
class SpecTrainer(BaseTrainer):
    def __init__(self, model: nn.Module, lr: float = 0.1, optimizer: str = "SGD", **extra) -> None:
        self.model = model
        self.lr = lr
        self.optimizer = optimizer
        self.extra = extra

    def fit(self) -> str:
        nastrain.report_final_result(self.lr)
        return "fitted"


def test_register_trainer_records_named_arguments_with_defaults() -> None:
    trainer = SpecTrainer(nn.Identity(), lr=0.5, layers=[1, 2])
    assert trainer.spec == TrainerSpec(
        name="SpecTrainer", kwargs={"lr": 0.5, "optimizer": "SGD", "layers": [1, 2]}
    )
    assert "SpecTrainer" in nastrain.trainer_names()
    assert nastrain.get_trainer("SpecTrainer") is SpecTrainer


def test_spec_round_trip_builds_the_same_trainer() -> None:
    trainer = SpecTrainer(nn.Identity(), lr=0.25)
    text = trainer.spec.to_json()
    rebuilt = TrainerSpec.from_json(text).build(nn.Linear(2, 2))
    assert isinstance(rebuilt, SpecTrainer)
    assert (rebuilt.lr, rebuilt.optimizer) == (0.25, "SGD")
    assert rebuilt.spec == trainer.spec


def test_register_trainer_with_a_name_and_nested_registered_classes() -> None:
    @register_trainer(name="spec-child")
    class Child(SpecTrainer):
        def __init__(self, model: nn.Module, depth: int = 3) -> None:
            super().__init__(model, lr=0.9)
            self.depth = depth

    child = Child(nn.Identity(), depth=4)
    # The outermost registered class records its own arguments, not its parent's.
    assert child.spec == TrainerSpec(name="spec-child", kwargs={"depth": 4})
    assert nastrain.get_trainer("spec-child") is Child


def test_non_json_argument_is_a_type_error_naming_argument_and_type() -> None:
    with pytest.raises(TypeError, match=r"argument 'lr' .*torch\.Tensor"):
        SpecTrainer(nn.Identity(), lr=torch.tensor(0.1))
    with pytest.raises(TypeError, match=r"argument 'optimizer' .*type"):
        SpecTrainer(nn.Identity(), optimizer=torch.optim.SGD)
    with pytest.raises(TypeError, match=r"argument 'lr' .*nan"):
        SpecTrainer(nn.Identity(), lr=float("nan"))


def test_register_trainer_rejects_star_args_and_non_trainers() -> None:
    with pytest.raises(TypeError, match="'args'"):

        @register_trainer
        class StarArgs(BaseTrainer):
            def __init__(self, model, *args):
                pass

            def fit(self):
                pass

    with pytest.raises(TypeError, match="BaseTrainer"):
        register_trainer(dict)


def test_two_classes_under_one_name_is_an_error_naming_both() -> None:
    @register_trainer(name="taken-name")
    class First(BaseTrainer):
        def __init__(self, model):
            pass

        def fit(self):
            pass

    with pytest.raises(ValueError, match=r"'taken-name'.*First"):

        @register_trainer(name="taken-name")
        class Second(BaseTrainer):
            def __init__(self, model):
                pass

            def fit(self):
                pass

    assert nastrain.get_trainer("taken-name") is First


def test_unknown_trainer_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match=r"'no-such-trainer'.*SpecTrainer"):
        nastrain.get_trainer("no-such-trainer")


def test_spec_from_bad_json_names_the_bad_key() -> None:
    with pytest.raises(ValueError, match="kwargz"):
        TrainerSpec.from_json('{"name": "SpecTrainer", "kwargz": {}}')
    with pytest.raises(ValueError, match="not JSON"):
        TrainerSpec.from_json("{not json")
    with pytest.raises(ValueError, match="schema_version"):
        TrainerSpec(name="x", schema_version=99)


def test_spec_travels_to_another_process(tmp_path) -> None:
    module = tmp_path / "usertrainers.py"
    module.write_text(
        textwrap.dedent(
            """
            import nastrain
            from torch import nn

            @nastrain.register_trainer(name="remote")
            class RemoteTrainer(nastrain.BaseTrainer):
                def __init__(self, model, width=2, tag="a"):
                    self.model, self.width, self.tag = model, width, tag

                def fit(self):
                    nastrain.report_final_result(self.width)
            """
        )
    )
    sys.path.insert(0, str(tmp_path))
    try:
        import usertrainers

        spec_json = usertrainers.RemoteTrainer(nn.Identity(), width=7, tag="b").spec.to_json()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("usertrainers", None)
    script = textwrap.dedent(
        f"""
        import json, usertrainers, nastrain
        from torch import nn
        trainer = nastrain.TrainerSpec.from_json({spec_json!r}).build(nn.Identity())
        trainer.fit()
        print(json.dumps([type(trainer).__name__, trainer.width, trainer.tag,
                          trainer.final_result]))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == ["RemoteTrainer", 7, "b", 7.0]


class Recorder:
    """A plugin that wraps every fit and export."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    @nastrain.hookimpl(wrapper=True)
    def nastrain_fit(self, trainer):
        self.calls.append(("fit", type(trainer).__name__))
        return (yield)

    @nastrain.hookimpl(wrapper=True)
    def nastrain_export(self, trainer):
        result = yield
        self.calls.append(("export", json.dumps(result)))
        return result


def test_every_fit_and_export_goes_through_the_hooks(nastrain_plugin) -> None:
    recorder = Recorder()
    nastrain_plugin(recorder, name="recorder")

    class Base(BaseOneShotTrainer):
        def __init__(self) -> None:
            self.ran: list[str] = []

        def fit(self) -> None:
            self.ran.append("base")

        def export(self) -> dict:
            return {"op": "conv"}

    class Sub(Base):  # overrides fit, as the trainer guide's examples do
        def fit(self, epochs: int = 1) -> int:
            super().fit()
            self.ran.append(f"sub{epochs}")
            return epochs

    trainer = Sub()
    assert trainer.fit(epochs=3) == 3
    assert trainer.ran == ["base", "sub3"]  # super().fit() ran once, inside the one hooked call
    assert trainer.export() == {"op": "conv"}
    assert recorder.calls == [("fit", "Sub"), ("export", '{"op": "conv"}')]


def test_a_plugin_can_replace_fit_and_a_non_dict_export_is_an_error(nastrain_plugin) -> None:
    class Remote:
        @nastrain.hookimpl
        def nastrain_fit(self, trainer):
            trainer.where = "remote"
            return True

    class Local(BaseOneShotTrainer):
        def fit(self) -> None:
            self.where = "local"

        def export(self):
            return ["not", "a", "dict"]

    nastrain_plugin(Remote(), name="remote")
    trainer = Local()
    trainer.fit()
    assert trainer.where == "remote"
    with pytest.raises(TypeError, match=r"Local\.export\(\) returned list"):
        trainer.export()


def test_spec_is_only_on_registered_trainers() -> None:
    class Plain(BaseTrainer):
        def fit(self) -> None:
            pass

    with pytest.raises(AttributeError, match="register_trainer"):
        _ = Plain().spec
