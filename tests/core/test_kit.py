"""The plugin author's kit: ``nastrain new-plugin`` and the contract checks of
``nastrain.testing``, run against the rendered templates, first-party trainers (each skipped
when its plugin is not installed, as in the ``core`` tox env) and deliberately broken plugins.

The rendered template's own ``tox`` run (the plugin built as a wheel and installed beside
nastrain's wheel in a fresh env) runs only in the tox env ``template``, which sets
``NASTRAIN_TEMPLATE_TOX=1``: once per CI run, reusing that run's torch layer.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import nastrain
from nastrain import kit, testing
from nastrain.cli import main

ROOT = Path(__file__).resolve().parents[2]


def render(tmp_path: Path, kind: str, name: str | None = None) -> tuple[Path, kit.PluginNames]:
    name = name or f"nastrain-kit-{kind}"
    target = tmp_path / kind
    assert main(["new-plugin", name, "--kind", kind, "--dir", str(target)]) == 0
    return target, kit.plugin_names(name, kind)


@pytest.fixture
def import_rendered(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """Import a rendered plugin's hook module from its folder (not installed)."""
    imported: list[str] = []

    def load(folder: Path, names: kit.PluginNames) -> object:
        monkeypatch.syspath_prepend(str(folder))
        imported.append(names.module)
        return importlib.import_module(f"{names.module}.plugin")

    yield load
    for module in imported:
        for key in [k for k in sys.modules if k == module or k.startswith(module + ".")]:
            del sys.modules[key]


# --- nastrain new-plugin ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", kit.KINDS)
def test_new_plugin_writes_a_distribution_with_its_entry_point(tmp_path: Path, kind: str) -> None:
    target, names = render(tmp_path, kind, "nastrain-my-algo")
    files = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "nastrain_my_algo/__init__.py",
        "nastrain_my_algo/plugin.py",
        "nastrain_my_algo/py.typed",
        "pyproject.toml",
        "tests/test_contract.py",
        "tests/test_installed.py",
        "tox.ini",
    ]
    import tomllib

    project = tomllib.loads((target / "pyproject.toml").read_text())
    assert project["project"]["name"] == "nastrain-my-algo"
    assert project["project"]["entry-points"]["nastrain"] == {"my-algo": "nastrain_my_algo.plugin"}
    assert project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == ["nastrain_my_algo"]
    tox_ini = (target / "tox.ini").read_text()
    assert "package = wheel" in tox_ini and "--find-links {env:NASTRAIN_WHEELS" in tox_ini
    assert "NASTRAIN_TORCH_LAYER" in tox_ini
    assert names.entry_point == "my-algo"
    assert names.class_name == {"dataset": "my_algo", "strategy": "MyAlgoStrategy"}.get(
        kind, "MyAlgoTrainer"
    )
    assert f'"{names.entry_point}" in plugin["' in (target / "tests/test_installed.py").read_text()


def test_new_plugin_defaults_to_a_one_shot_plugin_in_a_folder_named_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["new-plugin", "gumbel"]) == 0
    assert "SupernetTrainer" in (tmp_path / "gumbel" / "gumbel" / "plugin.py").read_text()
    out = capsys.readouterr().out
    assert "wrote gumbel (one-shot; module gumbel, entry point 'gumbel')" in out


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("my plugin", "not a valid distribution name"),
        ("dash-", "not a valid distribution name"),
        ("3d-nas", "not a Python identifier"),
        ("class", "not a Python identifier"),
        ("json", "already taken by the standard library"),
        ("nastrain", "already taken by a package"),
    ],
)
def test_new_plugin_refuses_a_bad_name_writing_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, says: str
) -> None:
    target = tmp_path / "out"
    assert main(["new-plugin", name, "--dir", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nastrain new-plugin: error: ") and says in err and repr(name) in err
    assert not target.exists()


@pytest.mark.parametrize(
    "name",
    [
        "nastrain-cpu",
        "nastrain-darts",
        "nastrain_enas",
        "darts",
        "cpu",
        "Classic",
        "ray",
        "nastrain-tensorboard",
        "nastrain-nastrain",
    ],
)
def test_new_plugin_refuses_a_first_party_plugins_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    target = tmp_path / "out"
    assert main(["new-plugin", name, "--dir", str(target)]) == 2
    err = capsys.readouterr().err
    assert f"{name!r} (entry point " in err and "nastrain's first-party plugins" in err, err
    entry = kit.plugin_names(name).entry_point
    assert f"(e.g. nastrain-my-{entry})" in err  # what to pick instead, itself free
    assert main(["new-plugin", f"nastrain-my-{entry}", "--dir", str(tmp_path / "ok")]) == 0
    assert not target.exists()


def test_new_plugin_refuses_the_name_of_an_installed_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    installed = SimpleNamespace(name="gumbel", dist=SimpleNamespace(name="gumbel-nas"))
    seen = []

    def entry_points(group: str) -> list[SimpleNamespace]:
        seen.append(group)
        return [installed]

    monkeypatch.setattr(kit.importlib.metadata, "entry_points", entry_points)
    for name in ("nastrain-gumbel", "gumbel_nas"):  # its entry point; its distribution
        assert main(["new-plugin", name, "--dir", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert "is taken here: gumbel-nas is installed with the nastrain entry point " in err
        assert not (tmp_path / name).exists()
    assert set(seen) == {"nastrain"}
    assert main(["new-plugin", "nastrain-gumbel-2", "--dir", str(tmp_path / "ok")]) == 0


def test_new_plugin_refuses_a_folder_that_is_not_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["new-plugin", "nastrain-x", "--dir", str(tmp_path)]) == 2
    assert f"{tmp_path} is not empty" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    assert main(["new-plugin", "nastrain-x", "--dir", str(tmp_path / "notes.txt")]) == 2
    assert "is a file" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["new-plugin", "nastrain-x", "--dir", str(empty)]) == 0  # empty is fine


def test_new_plugin_refuses_an_unknown_kind(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["new-plugin", "nastrain-x", "--kind", "bayesian"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'bayesian'" in capsys.readouterr().err
    with pytest.raises(kit.NewPluginError, match="unknown kind 'bayesian'"):
        kit.plugin_names("nastrain-x", "bayesian")
    # The command line offers exactly the kit's kinds (it names them without importing it).
    with pytest.raises(SystemExit):
        main(["new-plugin", "--help"])
    assert "{" + ",".join(kit.KINDS) + "}" in capsys.readouterr().out


def test_the_template_installs_nastrain_and_the_torch_layer_from_the_wheels_folder_only(
    tmp_path: Path,
) -> None:
    target, _ = render(tmp_path, "one-shot", "nastrain-my-algo")
    import tomllib

    project = tomllib.loads((target / "pyproject.toml").read_text())
    # Pinned to this release series: a later "nastrain" on an index is not taken for it.
    assert project["project"]["dependencies"] == [f"nastrain~={nastrain.__version__}"]
    deps = [
        line.partition("=")[2].strip()
        for line in (target / "tox.ini").read_text().splitlines()
        if line.startswith("deps")
    ]
    # The torch layer's wheel by its path in the wheels folder: never looked up on an index.
    assert deps == ["{env:NASTRAIN_WHEELS:{tox_root}{/}wheels}{/}" + kit.TORCH_LAYER_WHEEL]
    layer = tomllib.loads((ROOT / "tools" / "torch-layer-pth" / "pyproject.toml").read_text())
    name, version = layer["project"]["name"], layer["project"]["version"]
    assert kit.TORCH_LAYER_WHEEL.startswith(f"{name.replace('-', '_')}-{version}-")
    readme = (target / "README.md").read_text()
    first = next(line for line in readme.splitlines() if line.startswith("$ pip install"))
    assert first.startswith("$ pip install --find-links ~/nastrain-wheels .")
    assert "PIP_NO_INDEX=1" in readme and kit.TORCH_LAYER_WHEEL in readme


def test_every_wheel_recipe_builds_every_first_party_plugin(tmp_path: Path) -> None:
    plugins = sorted(
        f"plugins/{p.parent.name}" for p in (ROOT / "plugins").glob("*/pyproject.toml")
    )
    assert "plugins/cpu" in plugins
    target, _ = render(tmp_path, "strategy")
    pages = {
        "README.md": (ROOT / "README.md").read_text(),
        "docs/plugins.md": (ROOT / "docs" / "plugins.md").read_text(),
        "the template's README.md": (target / "README.md").read_text(),
    }
    for page, text in pages.items():
        recipes = re.findall(r"pip wheel --no-deps -w ~/nastrain-wheels (.+?)tools/", text, re.S)
        assert recipes, f"{page} has no wheel recipe"
        for recipe in recipes:
            listed = sorted(w for w in recipe.split() if w.startswith("plugins/"))
            assert listed == plugins, f"{page}'s recipe builds {listed}, not {plugins}"


def test_the_kit_writes_a_plugin_without_importing_torch(tmp_path: Path) -> None:
    code = (
        "import sys\nfrom nastrain import kit\n"
        f"kit.new_plugin('nastrain-quick', kind='classic', directory={str(tmp_path / 'q')!r})\n"
        "print(sorted(m for m in ('torch', 'nastrain.plugins') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]"]
    assert (tmp_path / "q" / "nastrain_quick" / "plugin.py").is_file()


@pytest.mark.parametrize("kind", kit.KINDS)
def test_rendered_code_is_ruff_clean(tmp_path: Path, kind: str) -> None:
    ruff = shutil.which("ruff") or shutil.which("ruff", path=str(Path(sys.executable).parent))
    if ruff is None:
        pytest.skip("ruff is not installed here (the lint env has it, but runs no tests)")
    target, _ = render(tmp_path, kind)
    for args in (["check", "--select", "E,F,W,I,UP,B,SIM,RUF"], ["format", "--check"]):
        result = subprocess.run(
            [ruff, *args, "--isolated", "--line-length", "100", str(target)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


# --- the rendered plugins keep their contracts (registered in-process, not installed) ------


def test_the_rendered_one_shot_trainer_keeps_the_contract_and_finds_the_planted_op(
    tmp_path: Path, import_rendered
) -> None:
    target, names = render(tmp_path, "one-shot")
    plugin = import_rendered(target, names)
    report = testing.check_trainer_plugin(names.entry_point, plugin=plugin)
    assert report.kind == "one-shot" and report.target.endswith(names.class_name)
    assert len(report.checks) == 2 and "resumed" in report.checks[1]
    # The template's own planted test, run here against the rendered module.
    with testing.registered(plugin):
        torch.manual_seed(0)
        model = testing.PlantedOp()
        trainer = getattr(plugin, names.class_name)(
            model,
            nn.CrossEntropyLoss(),
            None,
            torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
            num_epochs=10,
            dataset=testing.tiny_data(n=256),
            arc_learning_rate=0.05,
            batch_size=32,
            seed=0,
            progress=False,
        )
        trainer.fit()
    assert trainer.export() == testing.PlantedOp.PLANTED


def test_the_rendered_classic_trainer_keeps_the_contract(tmp_path: Path, import_rendered) -> None:
    target, names = render(tmp_path, "classic")
    plugin = import_rendered(target, names)
    report = testing.check_trainer_plugin(names.entry_point, plugin=plugin, epochs=1)
    assert report.kind == "classic"
    assert "rebuilt the same trainer in a fresh process" in report.checks[1]


def test_the_rendered_strategy_and_dataset_keep_their_contracts(
    tmp_path: Path, import_rendered
) -> None:
    target, names = render(tmp_path, "strategy")
    report = testing.check_strategy_plugin(
        names.entry_point, plugin=import_rendered(target, names), explore=2
    )
    assert len(report.archs) == 6 and len({json.dumps(a) for a in report.archs}) == 6
    target, names = render(tmp_path, "dataset")
    report = testing.check_dataset_plugin(
        names.entry_point, plugin=import_rendered(target, names), size=64
    )
    assert report.sizes == (48, 16)


# --- the checks on the first-party plugins ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "distribution"),
    [("darts", "nastrain_darts"), ("enas", "nastrain_enas"), ("random", "nastrain_enas")],
)
def test_first_party_one_shot_trainers_keep_the_contract(name: str, distribution: str) -> None:
    pytest.importorskip(distribution)
    report = testing.check_trainer_plugin(name)
    assert report.kind == "one-shot"
    assert nastrain.SearchSpace.from_model(testing.TinyCell()).validate(report.arch) == report.arch


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("classification", {"epochs": 1}),
        ("regression", {"epochs": 1, "dataset": testing.TINY_REGRESSION_DATASET}),
    ],
)
def test_first_party_classic_trainers_keep_the_contract(name: str, kwargs: dict) -> None:
    pytest.importorskip("nastrain_classic")
    report = testing.check_trainer_plugin(name, **kwargs)
    assert report.kind == "classic"


@pytest.mark.parametrize("name", ["random", "grid", "evolution"])
def test_the_core_strategies_keep_the_contract(name: str) -> None:
    report = testing.check_strategy_plugin(name)
    assert len(report.archs) == 6


# --- what the checks catch ----------------------------------------------------------------------


def test_an_unregistered_name_lists_the_known_ones() -> None:
    with pytest.raises(KeyError) as info:
        testing.check_trainer_plugin("no-such-trainer")
    message = str(info.value)
    assert message.startswith("check_trainer_plugin: unknown trainer 'no-such-trainer'")
    assert f"known trainers: {nastrain.trainer_names()}" in message
    with pytest.raises(KeyError, match="known strategies: .*'random'"):
        testing.check_strategy_plugin("no-such-strategy")
    with pytest.raises(KeyError, match="unknown dataset 'no-such-dataset'"):
        testing.check_dataset_plugin("no-such-dataset")


def _one_shot_plugin(**overrides):
    """A plugin registering ``kit-broken``: the rendered one-shot trainer's code with
    ``overrides`` (methods) patched into a subclass."""
    from nastrain.oneshot import SupernetTrainer
    from nastrain.utils import replace_choices

    class Ops(nn.Module):
        def __init__(self, choice, trainer):
            super().__init__()
            self.names = list(choice.names)
            self.ops = nn.ModuleList(list(choice))
            self._alpha = [trainer.alpha(choice.label, len(self.names))]

        def forward(self, x):
            weights = torch.softmax(self._alpha[0], -1)
            return sum(w * op(x) for w, op in zip(weights, self.ops, strict=True))

    class Broken(SupernetTrainer):
        name = "kit-broken"

        def __init__(self, model, loss, optimizer, num_epochs, dataset, **options):
            super().__init__(
                model, loss=loss, metrics=None, num_epochs=num_epochs, dataset=dataset, **options
            )
            self.alphas = nn.ParameterDict()
            self.relaxed = replace_choices(self.model)
            self.optimizer = optimizer
            self.arch_optimizer = torch.optim.Adam(self.alphas.values(), lr=0.01)

        def alpha(self, label, size):
            if label not in self.alphas:
                self.alphas[label] = nn.Parameter(torch.zeros(size))
            return self.alphas[label]

        def arch_parameters(self):
            return list(self.alphas.values())

        def search_step(self, train_batch, valid_batch):
            for batch, optimizer in ((valid_batch, self.arch_optimizer), (train_batch, None)):
                optimizer = optimizer or self.optimizer
                optimizer.zero_grad()
                loss = self.loss(self.model(batch[0]), batch[1])
                loss.backward()
                optimizer.step()
            return {"loss": loss.item()}

        def checkpointables(self):
            return {
                "optimizer": self.optimizer,
                "arch_optimizer": self.arch_optimizer,
                "alphas": self.alphas,
            }

        def export(self):
            return {label: m.names[int(self.alphas[label].argmax())] for label, m in self.relaxed}

    for key, value in overrides.items():
        setattr(Broken, key, value)

    class Plugin:
        @nastrain.hookimpl
        def nastrain_register_trainers(self, register):
            register(Broken)

        @nastrain.hookimpl
        def nastrain_replace_module(self, module, trainer):
            if isinstance(trainer, Broken) and isinstance(module, nastrain.LayerChoice):
                return Ops(module, trainer)
            return None

    return Plugin()


def test_a_one_shot_trainer_that_keeps_the_contract_passes() -> None:
    report = testing.check_trainer_plugin(
        "kit-broken", plugin=_one_shot_plugin(), space=testing.PlantedOp
    )
    assert set(report.arch) == {"op"}


def test_an_export_outside_the_space_is_caught() -> None:
    plugin = _one_shot_plugin(export=lambda self: {"op": "conv9"})
    with pytest.raises(testing.ContractError, match="not of the space: choice 'op' has no"):
        testing.check_trainer_plugin("kit-broken", plugin=plugin, space=testing.PlantedOp)
    plugin = _one_shot_plugin(export=lambda self: {"op": torch.tensor(1)})
    with pytest.raises(testing.ContractError, match="not JSON-ready"):
        testing.check_trainer_plugin("kit-broken", plugin=plugin, space=testing.PlantedOp)


def test_architecture_weights_left_out_of_the_checkpoint_are_caught() -> None:
    # checkpointables() saves the optimizers but not alpha: resumed, alpha starts over.
    plugin = _one_shot_plugin(
        checkpointables=lambda self: {"optimizer": self.optimizer, "arch": self.arch_optimizer}
    )
    with pytest.raises(
        testing.ContractError,
        match=r"stopped after epoch 1 and resumed, (it exported|its arch_parameters\(\)\[0\])",
    ):
        testing.check_trainer_plugin("kit-broken", plugin=plugin, space=testing.PlantedOp)


def test_a_trainer_that_ignores_its_checkpoint_is_caught() -> None:
    plugin = _one_shot_plugin(load_checkpoint=lambda self, directory: None)
    with pytest.raises(testing.ContractError, match="did not resume from its checkpoint_dir"):
        testing.check_trainer_plugin("kit-broken", plugin=plugin, space=testing.PlantedOp)


def test_a_one_shot_trainer_without_checkpoints_needs_resume_false() -> None:
    class NoCheckpoints(nastrain.BaseOneShotTrainer):
        name = "kit-no-checkpoints"

        def __init__(self, model, dataset):
            self.model = model

        def fit(self):
            nastrain.report_intermediate_result(0.5)

        def export(self):
            return {"op": "relu"}

    class Plugin:
        @nastrain.hookimpl
        def nastrain_register_trainers(self, register):
            register(NoCheckpoints)

    with pytest.raises(testing.ContractError, match="takes no checkpoint_dir.*resume=False"):
        testing.check_trainer_plugin("kit-no-checkpoints", plugin=Plugin(), space=testing.PlantedOp)
    report = testing.check_trainer_plugin(
        "kit-no-checkpoints", plugin=Plugin(), space=testing.PlantedOp, resume=False
    )
    assert report.arch == {"op": "relu"}
    # It takes no epoch count, so the report claims none.
    assert report.checks == (
        "fitted PlantedOp (the trainer takes no num_epochs or epochs); exported {'op': 'relu'}",
    )


def test_the_report_says_how_many_epochs_ran() -> None:
    plugin = _one_shot_plugin()
    report = testing.check_trainer_plugin("kit-broken", plugin=plugin, space=testing.PlantedOp)
    assert report.checks[0].startswith("fitted 2 epochs of PlantedOp; exported ")
    report = testing.check_trainer_plugin(
        "kit-broken", plugin=plugin, space=testing.PlantedOp, num_epochs=3
    )
    assert report.checks[0].startswith("fitted 3 epochs of PlantedOp; exported ")
    assert report.checks[1].startswith("stopped after epoch 1 and resumed: the same")
    report = testing.check_trainer_plugin(
        "kit-broken", plugin=plugin, space=testing.PlantedOp, num_epochs=1, resume=False
    )
    assert report.checks[0].startswith("fitted 1 epoch of PlantedOp; exported ")
    with pytest.raises(ValueError, match="an epoch count of 1 leaves no epoch to resume"):
        testing.check_trainer_plugin(
            "kit-broken", plugin=plugin, space=testing.PlantedOp, num_epochs=1
        )


def test_resuming_a_trainer_without_an_epoch_count_is_refused() -> None:
    class Unstoppable(nastrain.BaseOneShotTrainer):
        name = "kit-unstoppable"

        def __init__(self, model, dataset, checkpoint_dir=None):
            self.model = model

        def fit(self):
            nastrain.report_intermediate_result(0.5)

        def export(self):
            return {"op": "relu"}

    class Plugin:
        @nastrain.hookimpl
        def nastrain_register_trainers(self, register):
            register(Unstoppable)

    with pytest.raises(testing.ContractError, match="takes neither num_epochs nor epochs"):
        testing.check_trainer_plugin("kit-unstoppable", plugin=Plugin(), space=testing.PlantedOp)


def test_arguments_the_kit_cannot_guess_are_named() -> None:
    plugin = _one_shot_plugin()
    with testing.registered(plugin):
        cls = nastrain.get_trainer("kit-broken")

    class NeedsTemperature(cls):
        name = "kit-needs-temperature"

        def __init__(self, model, loss, optimizer, num_epochs, dataset, temperature, **options):
            super().__init__(model, loss, optimizer, num_epochs, dataset, **options)

    class Plugin:
        @nastrain.hookimpl
        def nastrain_register_trainers(self, register):
            register(NeedsTemperature)

        nastrain_replace_module = plugin.nastrain_replace_module

    with pytest.raises(testing.ContractError, match="requires 'temperature'"):
        testing.check_trainer_plugin(
            "kit-needs-temperature", plugin=Plugin(), space=testing.PlantedOp
        )
    seen = []
    report = testing.check_trainer_plugin(
        "kit-needs-temperature",
        plugin=Plugin(),
        space=testing.PlantedOp,
        temperature=testing.from_model(lambda model: seen.append(model) or 1.0),
    )
    assert report.kind == "one-shot" and len(seen) == 3  # whole, stopped, resumed


def test_a_classic_trainer_without_spec_or_final_result_is_caught() -> None:
    class NoSpec(nastrain.BaseTrainer):
        name = "kit-no-spec"

        def __init__(self, model, epochs=1):
            self.model = model

        def fit(self):
            nastrain.report_final_result(1.0)

    class Silent(nastrain.BaseTrainer):
        name = "kit-silent"

        def __init__(self, model, epochs=1):
            self.model = model

        def fit(self):
            pass

    class Plugin:
        @nastrain.hookimpl
        def nastrain_register_trainers(self, register):
            register(NoSpec)
            register(Silent)

    with pytest.raises(testing.ContractError, match="has no spec: decorate it with"):
        testing.check_trainer_plugin("kit-no-spec", plugin=Plugin())
    nastrain.register_trainer(Silent)
    try:
        with pytest.raises(testing.ContractError, match="reported no final result"):
            testing.check_trainer_plugin("kit-silent", plugin=Plugin())
    finally:
        from nastrain import plugins

        plugins._decorated.remove_provider(f"@register_trainer in {Silent.__module__}")


def test_a_classic_trainer_a_fresh_process_cannot_find_is_caught() -> None:
    # Defined in a function: registered here, but no fresh process can import it by name.
    @nastrain.register_trainer(name="kit-local")
    class Local(nastrain.BaseTrainer):
        def __init__(self, model, epochs=1):
            self.model = model

        def fit(self):
            nastrain.report_final_result(1.0)

    try:
        with pytest.raises(testing.ContractError, match="not registered in a fresh process"):
            testing.check_trainer_plugin("kit-local")
    finally:
        from nastrain import plugins

        plugins._decorated.remove_provider(f"@register_trainer in {Local.__module__}")


def test_a_strategy_with_hidden_state_is_caught() -> None:
    class Counting(nastrain.Strategy):
        name = "kit-counting"

        def __init__(self):
            self.proposed = 0  # state no trial history rebuilds

        def propose(self, index, history):
            self.proposed += 1
            return self.space.sample(self.proposed)

    class Plugin:
        @nastrain.hookimpl
        def nastrain_register_strategies(self, register):
            register(Counting)

    with pytest.raises(testing.ContractError, match="stopped after 3 trials and resumed"):
        testing.check_strategy_plugin("kit-counting", plugin=Plugin())


def test_a_dataset_that_is_not_the_same_twice_or_not_pairs_is_caught() -> None:
    def unseeded():
        return testing.tiny_data(8, seed=int(torch.randint(0, 1000, ()))), testing.tiny_data(4)

    def triples():
        return [(torch.zeros(2), 0, 0)], [(torch.zeros(2), 0, 0)]

    class Plugin:
        @nastrain.hookimpl
        def nastrain_register_datasets(self, register):
            register(unseeded, name="kit-unseeded")
            register(triples, name="kit-triples")

    with pytest.raises(testing.ContractError, match="differs between two calls"):
        testing.check_dataset_plugin("kit-unseeded", plugin=Plugin())
    with pytest.raises(testing.ContractError, match="not an \\(input, target\\) pair"):
        testing.check_dataset_plugin("kit-triples", plugin=Plugin())


# --- fixtures and tiny spaces --------------------------------------------------------------------


def test_builtin_plugins_only_hides_every_other_plugin_for_the_test(
    nastrain_builtin_plugins,
) -> None:
    from nastrain import plugins

    assert all(info.builtin for info in plugins.loaded_plugins(include_builtin=True))
    assert nastrain.trainer_names() == []
    assert "random" in nastrain.strategy_names()  # the core's own strategies stay
    assert nastrain_builtin_plugins is nastrain.plugin_manager()


def test_builtin_plugins_only_puts_the_plugins_back_afterwards() -> None:
    before = nastrain.trainer_names()
    with testing.builtin_plugins_only():
        assert nastrain.trainer_names() == []
    assert nastrain.trainer_names() == before


def test_the_tiny_spaces_are_spaces_of_the_tiny_data() -> None:
    x, y = testing.tiny_data(12)[:]
    assert x.shape == (12, testing.TINY_FEATURES) and y.dtype == torch.long
    for space, size in ((testing.PlantedOp, 3), (testing.PlantedInput, 3), (testing.TinyCell, 128)):
        model = space()
        record = nastrain.SearchSpace.from_model(model)
        assert record.size == size
        fixed = nastrain.apply_arch(model, record.sample(seed=1))
        assert fixed(x).shape == (12, testing.TINY_CLASSES)
    assert testing.PlantedOp.PLANTED == {"op": "relu"}
    assert torch.equal(testing.tiny_data(5, seed=3)[:][0], testing.tiny_data(5, seed=3)[:][0])


# --- the rendered template's own tox run ----------------------------------------------------------


@pytest.mark.skipif(
    not os.environ.get("NASTRAIN_TEMPLATE_TOX"),
    reason="runs in the tox env 'template' only (NASTRAIN_TEMPLATE_TOX=1), once per CI run",
)
def test_the_rendered_template_passes_its_own_tox_run(tmp_path: Path) -> None:
    pytest.importorskip("tox")
    layer = os.environ.get("NASTRAIN_TORCH_LAYER")
    assert layer and Path(layer, "torch").is_dir(), (
        f"NASTRAIN_TORCH_LAYER={layer!r} holds no torch; the template env shares the torch "
        "layer of the project's tox run (tox -e torch-layer,template)"
    )
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"),
            *("-w", str(wheels), str(ROOT), str(ROOT / "tools" / "torch-layer-pth")),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    assert (wheels / kit.TORCH_LAYER_WHEEL).is_file(), sorted(p.name for p in wheels.iterdir())
    target, names = render(tmp_path, "one-shot", "nastrain-kit-template")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TOX_", "NASTRAIN_")) and key not in ("VIRTUAL_ENV", "PYTHONPATH")
    }
    env.update(NASTRAIN_WHEELS=str(wheels), NASTRAIN_TORCH_LAYER=layer)
    result = subprocess.run(
        [sys.executable, "-m", "tox", "run", "-e", "py", "--workdir", str(tmp_path / ".tox")],
        cwd=target,
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "3 passed" in output, output[-3000:]
    # The plugin ran from its wheel (not an editable install), nastrain from the wheels folder.
    installs = [line for line in output.splitlines() if "install_package>" in line]
    assert any(f"{names.module}-0.1.0-py3-none-any.whl" in line for line in installs), installs
    assert f"--find-links {wheels}" in output
