"""Entry-point discovery, for real: throwaway plugin distributions are pip-installed into a
temporary virtual environment, then found, listed and used from fresh processes.

The temporary environment sees this environment's packages (torch, nastrain) through a
``.pth`` file, so torch is not installed again; the fixture plugins are installed into
it by pip from their ``pyproject.toml`` (tests/fixtures/), entry points and all.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


class Venv:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.python = root / "bin" / "python"

    def run(
        self, *args: str, plugins: str | None = None, **env: str
    ) -> subprocess.CompletedProcess:
        environ = {k: v for k, v in os.environ.items() if k != "NASTRAIN_PLUGINS"}
        if plugins is not None:
            environ["NASTRAIN_PLUGINS"] = plugins
        environ.update(env)
        return subprocess.run(
            [str(self.python), *args], capture_output=True, text=True, env=environ, timeout=300
        )

    def nastrain(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return self.run("-m", "nastrain", *args, **kwargs)


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Venv:
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    env = Venv(root)
    purelib = subprocess.run(
        [str(env.python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    outer = dict.fromkeys([sysconfig.get_path("purelib"), *site.getsitepackages()])
    lines = [f"import site; site.addsitedir({path!r})" for path in outer if Path(path).is_dir()]
    Path(purelib, "_outer_env.pth").write_text("\n".join(lines) + "\n")
    for fixture in ("nastrain-hello", "nastrain-broken"):
        result = env.run(
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-index",
            "--no-build-isolation",
            str(FIXTURES / fixture),
        )
        assert result.returncode == 0, result.stderr
    return env


def test_installed_plugins_are_listed_with_their_distributions(venv: Venv) -> None:
    result = venv.nastrain("plugins", "--json")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    plugins = {p["name"]: p for p in listing["plugins"]}
    assert plugins["hello"] == {
        "name": "hello",
        "distribution": "nastrain-hello",
        "version": "1.2.3",
        "module": "nastrain_hello.plugin",
        "trainers": ["hello", "hi", "echo"],
        "builtin": False,
        "strategies": [],
        "datasets": [],
    }
    assert plugins["duplicate"]["distribution"] == "nastrain-broken"
    failed = {f["name"]: f for f in listing["failed"]}
    assert set(failed) == {"missing", "misspelt", "badregister", "exits"}
    assert all(f["distribution"] == "nastrain-broken" for f in failed.values())
    assert "ModuleNotFoundError" in failed["missing"]["error"]
    assert "nastrain_fitt" in failed["misspelt"]["error"]
    assert "registration exploded on purpose" in failed["badregister"]["error"]
    assert failed["exits"]["error"] == "SystemExit: this plugin exits at import on purpose"


def test_broken_plugins_warn_naming_distribution_and_error_and_the_rest_works(venv: Venv) -> None:
    result = venv.nastrain("plugins")
    assert result.returncode == 0
    assert "hello  nastrain-hello 1.2.3" in result.stdout
    warning = next(line for line in result.stderr.splitlines() if "'badregister'" in line)
    assert "nastrain-broken" in warning and "registration exploded on purpose" in warning
    assert "FAILED missing  nastrain-broken 0.0.1  ModuleNotFoundError" in result.stdout
    # A plugin that calls sys.exit() at import is one more failure, not the end of the program.
    assert "FAILED exits  nastrain-broken 0.0.1  SystemExit: this plugin exits" in result.stdout


def test_two_plugins_providing_one_name_is_an_error_naming_both(venv: Venv) -> None:
    listing = venv.nastrain("trainers")
    assert "hello  CONFLICT" in listing.stdout
    result = venv.run("-c", "import nastrain; nastrain.get_trainer('hello')")
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert "nastrain_hello.plugin.HelloTrainer" in message
    assert "nastrain_broken.duplicate.OtherHello" in message
    assert "nastrain-hello" in message and "nastrain-broken" in message


def test_nastrain_plugins_env_var_selects_what_loads(venv: Venv) -> None:
    only = json.loads(venv.nastrain("plugins", "--json", plugins="hello").stdout)
    assert [p["name"] for p in only["plugins"]] == ["hello"] and only["failed"] == []
    none = venv.nastrain("plugins", "--json", plugins="")
    assert json.loads(none.stdout) == {"plugins": [], "failed": []} and none.stderr == ""
    unknown = venv.nastrain("plugins", plugins="hello,nosuch")
    assert "NASTRAIN_PLUGINS names ['nosuch']" in unknown.stderr


def test_a_third_party_plugin_is_used_like_a_first_party_one(venv: Venv, tmp_path: Path) -> None:
    log = tmp_path / "fits.log"
    script = textwrap.dedent(
        """
        import json, torch
        from torch import nn
        import nastrain

        class Space(nn.Module):
            def __init__(self):
                super().__init__()
                self.op = nastrain.LayerChoice({"double": nn.Identity(), "zero": nn.Identity()},
                                               label="op")
            def forward(self, x):
                return self.op(x)

        class MyTrainer(nastrain.BaseTrainer):      # a user's classic trainer
            def fit(self):
                nastrain.report_final_result(0.5)

        hello = nastrain.get_trainer("hi")(Space(), inputs=torch.ones(1, 4))
        hello.fit()
        MyTrainer().fit()
        echo = nastrain.get_trainer("echo")(nn.Identity(), value=2.0)
        echo.fit()
        print(json.dumps({"arch": hello.export(), "final": hello.final_result,
                          "echo": echo.final_result, "names": nastrain.trainer_names()}))
        """
    )
    result = venv.run("-c", script, plugins="hello", NASTRAIN_HELLO_LOG=str(log))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out == {
        "arch": {"op": "double"},
        "final": 4.0,
        "echo": 2.0,
        "names": ["echo", "hello", "hi"],
    }
    # The plugin's fit wrapper saw every fit: its own trainers' and the user's.
    assert log.read_text().split() == ["HelloTrainer", "MyTrainer", "EchoTrainer"]
