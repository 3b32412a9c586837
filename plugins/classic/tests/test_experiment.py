"""A real multi-trial experiment: six architectures trained on digits, two at a time."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import nastrain
from nastrain.cli import main
from nastrain_classic import ClassificationTrainer


def test_digits_with_six_trials_two_at_a_time_records_every_result(spaces, tmp_path) -> None:
    store = tmp_path / "digits.sqlite"
    trainer = ClassificationTrainer(
        spaces.DigitsSpace(), dataset="digits", epochs=2, optimizer_kwargs={"lr": 0.01}
    )
    experiment = nastrain.Experiment(
        spaces.DigitsSpace(), trainer, "random", max_trials=6, concurrency=2, store=store
    )
    result = experiment.run()

    space = nastrain.SearchSpace.from_model(spaces.DigitsSpace())
    assert sorted(map(str, (t.arch for t in result.trials))) == sorted(
        map(str, space.enumerate())
    )  # the space's six architectures, each once
    for trial in result.trials:
        assert trial.status == "succeeded", trial.reason
        assert len(trial.intermediate) == 2 and trial.final == trial.intermediate[-1]
        assert set(trial.final) == {"default", "loss", "train_loss", "lr"}
        # Chance is 0.1: every one of these learns something in two epochs.
        assert trial.value >= 0.5
    assert result.best_trial.value >= 0.85
    assert experiment.export_top_models(2)[0] == result.best_arch

    connection = sqlite3.connect(store)
    rows = connection.execute("SELECT trial, final FROM results ORDER BY trial").fetchall()
    assert [trial for trial, _ in rows] == [i for i in range(6) for _ in range(3)]
    assert [final for _, final in rows] == [0, 0, 1] * 6
    statuses = connection.execute("SELECT status, attempts FROM trials").fetchall()
    assert statuses == [("succeeded", 1)] * 6


def test_a_config_naming_an_unknown_dataset_fails_before_any_trial(spaces, tmp_path, capsys):
    config = tmp_path / "search.toml"
    config.write_text(
        'space = "classic_spaces:DigitsSpace"\nmax_trials = 2\n'
        '[trainer]\nname = "classification"\nkwargs = {dataset = "digitz"}\n'
    )
    code = main(["run", str(config), "--app-dir", str(Path(__file__).parent)])
    err = capsys.readouterr().err
    assert code == 1
    assert "unknown dataset 'digitz'; known datasets: ['cifar10', 'diabetes', 'digits'" in err
    assert not (tmp_path / "search.sqlite").exists()
