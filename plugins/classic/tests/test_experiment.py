"""A real multi-trial experiment: six architectures trained on digits, two at a time."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import pytest

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


def _finals(spaces, store: Path) -> list:
    import torch

    # A user's script that built its space without seeding torch (on a generator of its
    # own, so that the tests after this one keep theirs).
    with torch.random.fork_rng(devices=[]):
        torch.seed()
        space = spaces.DigitsSpace()
    trainer = ClassificationTrainer(space, dataset="digits", epochs=1)
    experiment = nastrain.Experiment(
        space, trainer, "random", max_trials=3, concurrency=2, store=store
    )
    return [(t.arch, t.seed, t.final) for t in experiment.run().trials]


def test_the_same_experiment_run_twice_gives_the_same_results_trial_by_trial(
    spaces, tmp_path
) -> None:
    # Each run's space object starts from other random weights; every trial's weights are
    # drawn again from the trial's seed, and the trainer's data order follows that seed, so
    # two runs agree bit for bit, trial by trial.
    import torch

    state = torch.random.get_rng_state()
    first = _finals(spaces, tmp_path / "first.sqlite")
    again = _finals(spaces, tmp_path / "again.sqlite")
    assert first == again
    assert len({seed for _, seed, _ in first}) == 3
    # torch's global generator is this process's, as the later tests find it.
    assert torch.equal(torch.random.get_rng_state(), state)


def _trial(space, spec, seed: int) -> dict:
    from nastrain.experiments.executor import TrialJob, run_trial

    arch = {"body": "mlp", "act": "relu"}
    job = TrialJob(index=0, attempt=1, arch=arch, seed=seed, trainer=spec)
    results: list = []
    run_trial(space, job, lambda metric, final: results.append(metric) and False)
    return results[-1]


def test_trials_of_one_architecture_with_different_seeds_differ(spaces) -> None:
    space = spaces.DigitsSpace()
    spec = ClassificationTrainer(space, dataset="digits", epochs=1).spec
    finals = [_trial(space, spec, seed) for seed in range(6)]
    # Six seeds, six different trainings (initial weights and data order)...
    assert len({final["train_loss"] for final in finals}) == 6
    assert len({final["loss"] for final in finals}) == 6
    # ... and a seed repeats its trial exactly, also from another copy of the space.
    assert _trial(spaces.DigitsSpace(), spec, 3) == finals[3]


@pytest.mark.parametrize(
    "where", [{"concurrency": 2}, {"executor": "inline"}], ids=["local", "inline"]
)
def test_a_named_space_function_keeps_its_own_initialisation(spaces, tmp_path, where) -> None:
    # A space named as module:function is built again for every trial under the trial's
    # seed, by either executor: its custom initialisation (a zero head) is what the trial
    # starts from. With a learning rate of 0 the validation loss is that of the initial
    # model: ln 10.
    trainer = ClassificationTrainer(
        spaces.zero_head_space(), epochs=1, optimizer="sgd", optimizer_kwargs={"lr": 0.0}
    )
    result = nastrain.Experiment(
        "classic_spaces:zero_head_space",
        trainer,
        "random",
        max_trials=2,
        store=tmp_path / "zero.sqlite",
        **where,
    ).run()
    assert [t.status for t in result.trials] == ["succeeded"] * 2
    for trial in result.trials:
        assert trial.final["loss"] == pytest.approx(math.log(10), abs=1e-6)
