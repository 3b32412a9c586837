"""The nastrain command line."""

from __future__ import annotations

import json
import os
import shlex
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


# --- a command line that feels finished -------------------------------------------------------

# Every --help, and --version, in one fresh process: then which torch modules it imported.
_NO_TORCH_SCRIPT = """
import sys
from nastrain.cli import main
for argv in ARGVS:
    try:
        main(argv)
    except SystemExit:
        pass
print([name for name in sys.modules if name == "torch" or name.startswith("torch.")])
"""

_HELP_ARGVS = [
    ["--help"],
    ["--version"],
    *(
        [command, "--help"]
        for command in (
            "plugins",
            "trainers",
            "strategies",
            "datasets",
            "run",
            "report",
            "new-plugin",
        )
    ),
]


def test_help_and_version_import_no_torch() -> None:
    script = _NO_TORCH_SCRIPT.replace("ARGVS", repr(_HELP_ARGVS))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "usage: nastrain report" in result.stdout and "nastrain 0." in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"
    # And as the installed command runs it (python -m nastrain, through __main__).
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "nastrain", "--version"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and result.stdout.startswith("nastrain ")
    imported = {line.rpartition("|")[2].strip() for line in result.stderr.splitlines()}
    assert "nastrain.cli" in imported and "torch" not in imported


def test_every_command_lists_debug_in_its_help(capsys) -> None:
    for argv in _HELP_ARGVS[2:]:
        with pytest.raises(SystemExit):
            main(argv)
        assert "--debug" in capsys.readouterr().out, argv


def _closed_pipe_run(*args: str, unbuffered: bool = False) -> subprocess.CompletedProcess:
    """``python -m nastrain ARGS`` writing into a pipe whose reader has gone (as with
    ``| head -1`` once head has read its line)."""
    reader, writer = os.pipe()
    os.close(reader)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    try:
        return subprocess.run(
            [sys.executable, "-m", "nastrain", *args],
            stdout=writer,
            stderr=subprocess.PIPE,
            env=env,
        )
    finally:
        os.close(writer)


def test_output_into_a_closed_pipe_ends_quietly(trials, tmp_path) -> None:
    store = tmp_path / "s.sqlite"
    nastrain.Experiment(
        trials.SmallSpace(),
        trials.ScoreTrainer(None),
        "grid",
        max_trials=3,
        executor="inline",
        store=store,
        progress=False,
    ).run()
    commands = (
        ["report", str(store)],
        ["report", str(store), "--json"],
        ["plugins", "--json"],
        ["--version"],  # argparse's own output too
        ["--help"],
    )
    for args in commands:
        for unbuffered in (False, True):  # the same whatever the buffering
            result = _closed_pipe_run(*args, unbuffered=unbuffered)
            # No "[Errno 32] Broken pipe", no "Exception ignored" at exit: 128 + SIGPIPE.
            assert (result.returncode, result.stderr) == (141, b""), (args, unbuffered)


def test_a_real_head_gets_its_line_and_the_pipeline_succeeds(trials, tmp_path) -> None:
    store = tmp_path / "s.sqlite"
    nastrain.Experiment(
        trials.SmallSpace(),
        trials.ScoreTrainer(None),
        "grid",
        max_trials=18,
        executor="inline",
        store=store,
        progress=False,
    ).run()
    result = subprocess.run(
        f"{shlex.quote(sys.executable)} -m nastrain report {shlex.quote(str(store))} | head -1",
        shell=True,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith(f"{store}: 18 trials (18 succeeded)")


def test_debug_shows_the_traceback_of_an_error(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("NASTRAIN_DEBUG", raising=False)
    missing = str(tmp_path / "none.sqlite")
    assert main(["report", missing]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nastrain: error: no experiment store at ")
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    for argv in (["--debug", "report", missing], ["report", missing, "--debug"]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("Traceback (most recent call last):"), argv
        assert "nastrain.experiments.store.StoreError: no experiment store at" in err
        assert 'nastrain/experiments/store.py", line' in err
    monkeypatch.setenv("NASTRAIN_DEBUG", "1")
    assert main(["report", missing]) == 1
    assert "Traceback (most recent call last):" in capsys.readouterr().err
    monkeypatch.setenv("NASTRAIN_DEBUG", "0")
    assert main(["report", missing]) == 1
    assert "Traceback" not in capsys.readouterr().err
