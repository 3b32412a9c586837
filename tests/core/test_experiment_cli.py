"""``nastrain run CONFIG`` and ``nastrain report STORE``, and configs with bad keys."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from nastrain.cli import main
from nastrain.experiments.experiment import load_config

FIXTURE = str(Path(__file__).resolve().parents[1] / "fixtures" / "trials")

CONFIG = """\
space = "nastrain_test_trials:SmallSpace"
max_trials = 6
concurrency = 2
seed = 1
strategy = {name = "evolution", kwargs = {population_size = 3, sample_size = 2}}

[trainer]
name = "test-score"
kwargs = {epochs = 2}
"""


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_run_a_toml_config_then_report_its_store(trials, tmp_path, capsys) -> None:
    config = tmp_path / "search.toml"
    config.write_text(CONFIG)
    code, out, err = _run(["run", str(config), "--app-dir", FIXTURE], capsys)
    assert code == 0, err
    store = tmp_path / "search.sqlite"  # beside the config, named after it
    assert f"6 trials (6 succeeded); store {store}" in out
    assert "stopped after" not in out  # it ran its max_trials
    assert out.splitlines()[-1].startswith("best: trial ")
    # Progress: a line per finished trial on stderr (it is not a terminal here).
    assert sum(line.startswith("nastrain: trial ") for line in err.splitlines()) == 6

    code, out, _ = _run(["report", str(store)], capsys)
    assert code == 0
    lines = out.splitlines()
    assert "6 trials (6 succeeded); strategy evolution, trainer test-score" in lines[0]
    assert lines[1].split()[:4] == ["rank", "trial", "status", "metric"]
    metrics = [float(line.split()[3]) for line in lines[2:]]
    assert len(metrics) == 6 and metrics == sorted(metrics, reverse=True)

    code, out, _ = _run(["report", str(store), "--json", "--top", "2"], capsys)
    document = json.loads(out)
    assert document["experiment"]["strategy"]["kwargs"] == {"population_size": 3, "sample_size": 2}
    assert [t["rank"] for t in document["trials"]] == [1, 2]
    assert document["trials"][0]["arch"] == document["best_arch"]
    assert document["trials"][0]["final"]["default"] == metrics[0]

    # Run again: it resumes, and nothing is left to do.
    code, out, err = _run(["run", str(config), "--app-dir", FIXTURE], capsys)
    assert code == 0 and "6 trials (6 succeeded)" in out and "nastrain: trial" not in err
    # More trials on the command line: only the new ones run.
    code, out, err = _run(
        ["run", str(config), "--app-dir", FIXTURE, "--max-trials", "8", "--quiet"], capsys
    )
    assert code == 0 and "8 trials (8 succeeded)" in out and err == ""


def test_run_a_json_config_with_its_own_store(trials, tmp_path, capsys) -> None:
    config = tmp_path / "search.json"
    config.write_text(
        json.dumps(
            {
                "space": "nastrain_test_trials:SyntheticSpace",
                "space_kwargs": {"n": 2, "k": 3},
                "trainer": {"name": "test-score"},
                "strategy": "grid",
                "max_trials": 20,
                "executor": "inline",
                "store": "runs/grid.sqlite",
            }
        )
    )
    code, out, _ = _run(["run", str(config), "--app-dir", FIXTURE, "--quiet"], capsys)
    assert code == 0
    assert "9 trials (9 succeeded)" in out and (tmp_path / "runs" / "grid.sqlite").exists()
    # It ended before max_trials, and says why.
    assert out.splitlines()[1] == (
        "stopped after 9 trials (max_trials is 20): the search space has only 9 "
        "architectures (grid exhausted)"
    )
    assert 'best: trial 8, 4, {"c0": "2", "c1": "2"}' in out


def test_a_run_where_every_trial_fails_exits_non_zero(trials, tmp_path, capsys) -> None:
    config = tmp_path / "fail.toml"
    config.write_text(
        textwrap.dedent(
            """
            space = "nastrain_test_trials:SmallSpace"
            max_trials = 2
            executor = "inline"
            trainer = {name = "test-silent"}
            """
        )
    )
    code, out, _ = _run(["run", str(config), "--app-dir", FIXTURE, "--quiet"], capsys)
    assert code == 1 and "2 trials (2 failed)" in out and "no trial succeeded" in out
    code, out, _ = _run(["report", str(tmp_path / "fail.sqlite")], capsys)
    assert "without reporting a final result" in out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'space = "m:S"\nmax_trial = 3\ntrainer = {name = "t"}\n',
            r"required field missing @ \$.max_trials.*extra fields found \(max_trial\)",
        ),
        (
            'space = "m:S"\nmax_trials = 3\nconcurrency = "two"\ntrainer = {name = "t"}\n',
            r"expected int, got str 'two'\) @ \$.concurrency",
        ),
        (
            'space = "m:S"\nmax_trials = 2.5\ntrainer = {name = "t"}\n',
            r"expected int, got float 2.5\) @ \$.max_trials",
        ),
        (
            'space = "m:S"\nmax_trials = 3\ntrainer = {name = "t", kwarg = {}}\n',
            r"extra fields found \(kwarg\) @ \$.trainer",
        ),
        (
            'space = "m:S"\nmax_trials = 3\nstrategy = {name = "grid", size = 2}\n'
            'trainer = {name = "t"}\n',
            r"extra fields found \(size\) @ \$.strategy",
        ),
        (
            'space = "m:S"\nmax_trials = 3\nmode = "maximize"\ntrainer = {name = "t"}\n',
            r"@ \$.mode",
        ),
        (
            'space = "m:S"\nmax_trials = 3\n[trainer]\nname = "t"\nkwargs = {when = 2024-01-01}\n',
            r"argument 'when' of trainer 't' has type datetime.date.*@ \$.trainer",
        ),
        ('space = "m:S"\nmax_trials = 3\ntrainer = \n', "is not valid TOML"),
    ],
)
def test_a_bad_config_names_its_bad_key(tmp_path, text, message) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(config)


def test_bad_configs_and_stores_are_one_line_errors(trials, tmp_path, capsys) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        'space = "nastrain_test_trials:SmallSpace"\nmax_trials = 3\n'
        'strategy = "annealing"\ntrainer = {name = "test-score"}\n'
    )
    code, _, err = _run(["run", str(config), "--app-dir", FIXTURE], capsys)
    assert code == 1
    assert err.startswith("nastrain: error: unknown strategy 'annealing'; known strategies: [")
    assert len(err.strip().splitlines()) == 1
    yaml = tmp_path / "search.yaml"
    yaml.write_text("space: x\n")
    code, _, err = _run(["run", str(yaml)], capsys)
    assert code == 1 and "must be a .toml or .json file" in err
    code, _, err = _run(["run", str(tmp_path / "missing.toml")], capsys)
    assert code == 1 and "no config file at" in err
    code, _, err = _run(["report", str(config)], capsys)
    assert code == 1 and "is not an SQLite database" in err
    code, _, err = _run(["report", str(tmp_path / "none.sqlite")], capsys)
    assert code == 1 and "no experiment store at" in err


def test_a_misspelt_trainer_argument_names_the_trainer_and_the_key(trials, tmp_path, capsys):
    log = tmp_path / "fits.log"
    config = tmp_path / "typo.toml"
    config.write_text(
        'space = "nastrain_test_trials:SmallSpace"\nmax_trials = 3\n'
        f'[trainer]\nname = "test-score"\nkwargs = {{epoch = 3, log = {json.dumps(str(log))}}}\n'
    )
    code, out, err = _run(["run", str(config), "--app-dir", FIXTURE], capsys)
    assert code == 1 and out == ""
    assert err.splitlines() == [
        "nastrain: error: trainer 'test-score' (nastrain_test_trials.ScoreTrainer) got an "
        "unexpected keyword argument 'epoch' (did you mean 'epochs'?); it takes: epochs, "
        "sleep, fail, kill, hang, log"
    ]
    # Refused before anything ran: no trial trained, no store made.
    assert not log.exists() and not (tmp_path / "typo.sqlite").exists()


def test_strategies_and_datasets_are_listed(capsys) -> None:
    code, out, _ = _run(["strategies"], capsys)
    assert code == 0
    assert (
        "evolution  nastrain.experiments.strategies.RegularizedEvolution "
        "(from plugin 'nastrain.experiments.builtin'" in out
    )
    code, out, _ = _run(["strategies", "--json"], capsys)
    assert json.loads(out)["grid"][0]["object"] == "nastrain.experiments.strategies.GridSearch"
    code, out, _ = _run(["datasets", "--json"], capsys)
    assert code == 0 and isinstance(json.loads(out), dict)
