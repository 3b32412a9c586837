"""The plugin spine in-process: hook specs, registration, conflicts, NASTRAIN_PLUGINS."""

from __future__ import annotations

import inspect
from pathlib import Path

import pluggy
import pytest
import torch
from torch import nn

import nastrain
from nastrain import hookspecs, plugins

ROOT = Path(__file__).resolve().parents[2]
HOOKS = sorted(name for name in dir(hookspecs) if name.startswith("nastrain_"))


def test_the_contract_hooks_exist_with_their_arguments() -> None:
    expected = {
        "nastrain_register_trainers": ["register"],
        "nastrain_fit": ["trainer"],
        "nastrain_export": ["trainer"],
        "nastrain_replace_module": ["module", "trainer"],
        "nastrain_on_report": ["trainer", "metric", "final", "trial"],
        "nastrain_on_epoch": ["trainer", "record"],
    }
    for name, args in expected.items():
        params = list(inspect.signature(getattr(hookspecs, name)).parameters)
        assert params[: len(args)] == args, name
    pm = nastrain.plugin_manager()
    assert pm.project_name == "nastrain"
    assert pm.hook.nastrain_export.spec.opts["firstresult"]
    assert pm.hook.nastrain_replace_module.spec.opts["firstresult"]
    assert not pm.hook.nastrain_on_report.spec.opts["firstresult"]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_and_tested(hook: str) -> None:
    assert inspect.getdoc(getattr(hookspecs, hook)), f"{hook} has no docstring"
    assert hook in (ROOT / "docs" / "plugins.md").read_text(), f"{hook} missing from docs"
    tests = "".join(
        p.read_text() for p in (ROOT / "tests").rglob("*.py") if p.name != Path(__file__).name
    )
    assert f"def {hook}" in tests, f"no test implements {hook}"


def test_core_defaults_are_trylast_plugins_registered_like_any_other() -> None:
    infos = plugins.loaded_plugins(include_builtin=True)
    builtin = [info for info in infos if info.builtin]
    assert [info.name for info in builtin] == list(plugins.BUILTIN_PLUGINS)
    pm = nastrain.plugin_manager()
    module = pm.get_plugin("nastrain.builtin")
    impls = [i for i in pm.hook.nastrain_fit.get_hookimpls() if i.plugin is module]
    assert impls and impls[0].trylast


def test_a_misspelt_hook_is_refused(nastrain_plugin) -> None:
    class Misspelt:
        @nastrain.hookimpl
        def nastrain_exprot(self, trainer):
            return {}

    with pytest.raises(pluggy.PluginValidationError, match="nastrain_exprot"):
        nastrain_plugin(Misspelt(), name="misspelt")
    assert not nastrain.plugin_manager().has_plugin("misspelt")


def test_registration_names_aliases_and_conflicts(nastrain_plugin) -> None:
    class Alpha(nastrain.BaseOneShotTrainer):
        name = "alpha"

        def fit(self):
            pass

        def export(self):
            return {}

    class Beta(Alpha):
        name = "beta"

    class First:
        @nastrain.hookimpl
        def nastrain_register_trainers(self, register):
            register(Alpha)
            register(Alpha, name="alpha-alias")

    class Second:
        @nastrain.hookimpl
        def nastrain_register_trainers(self, register):
            register(Beta, name="alpha")

    info = nastrain_plugin(First(), name="first")
    assert info.trainers == ("alpha", "alpha-alias")
    assert nastrain.get_trainer("alpha-alias") is Alpha
    with pytest.warns(plugins.PluginWarning, match="'alpha' is provided by both"):
        nastrain_plugin(Second(), name="second")
    with pytest.raises(ValueError, match=r"'alpha'.*Alpha.*plugin 'first'.*Beta.*plugin 'second'"):
        nastrain.get_trainer("alpha")


def test_registering_a_non_trainer_fails_the_plugin(nastrain_plugin) -> None:
    class Bad:
        @nastrain.hookimpl
        def nastrain_register_trainers(self, register):
            register(dict)

    with pytest.raises(TypeError, match="plugin 'bad'.*BaseTrainer"):
        nastrain_plugin(Bad(), name="bad")
    assert not nastrain.plugin_manager().has_plugin("bad")


def test_empty_nastrain_plugins_loads_only_the_core(monkeypatch, nastrain_reload) -> None:
    monkeypatch.setenv("NASTRAIN_PLUGINS", "")
    pm = nastrain_reload()
    assert plugins.loaded_plugins() == [] and plugins.failed_plugins() == []
    assert pm.has_plugin("nastrain.builtin")


def test_a_prepare_model_answer_that_is_not_a_mapping_is_warned_about(nastrain_plugin) -> None:
    class Listing:
        @nastrain.hookimpl
        def nastrain_prepare_model(self, trainer, model, device, modules):
            return [("widgets", 2)]

    class Counting:
        @nastrain.hookimpl
        def nastrain_prepare_model(self, trainer, model, device, modules):
            return {"gadgets": 1}

    nastrain_plugin(Listing(), name="listing")
    nastrain_plugin(Counting(), name="counting")
    model = nn.Linear(2, 2)
    with pytest.warns(plugins.PluginWarning, match=r"'listing' returned .*not a name -> count"):
        done = plugins.call_prepare_model(None, model, torch.device("cpu"), [model])
    assert "listing" not in done
    assert done["counting"] == {"gadgets": 1}
