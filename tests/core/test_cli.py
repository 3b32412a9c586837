"""The nastrain command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import nastrain
from nastrain.cli import main


def test_plugins_json_is_machine_readable(capsys) -> None:
    assert main(["plugins", "--json", "--all"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert set(listing) == {"plugins", "failed"}
    core = next(p for p in listing["plugins"] if p["name"] == "nastrain.builtin")
    assert core["distribution"] == "nastrain" and core["builtin"] is True


def test_trainers_lists_registered_trainers(capsys) -> None:
    @nastrain.register_trainer(name="cli-listed")
    class Listed(nastrain.BaseTrainer):
        def __init__(self, model):
            pass

        def fit(self):
            pass

    assert main(["trainers"]) == 0
    out = capsys.readouterr().out
    assert "cli-listed  " in out and "Listed" in out and "[classic]" in out
    assert main(["trainers", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["cli-listed"][0]["one_shot"] is False


@pytest.mark.parametrize("argv", [["--help"], ["plugins", "--help"], ["trainers", "--help"]])
def test_help_everywhere(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert "usage: nastrain" in capsys.readouterr().out


def test_errors_are_one_line_and_non_zero() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nastrain", "plugins", "--bogus"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "nastrain: error: unrecognized arguments: --bogus (see nastrain --help)"
    ]


def test_no_command_prints_help_and_fails(capsys) -> None:
    assert main([]) == 2
    assert "plugins" in capsys.readouterr().out
