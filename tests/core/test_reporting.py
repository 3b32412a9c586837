"""Reporting: what a metric may be, and where reported results go."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nastrain
from nastrain.reporting import check_metric


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        (1, 1.0),
        (0.5, 0.5),
        (np.float32(0.25), 0.25),
        (torch.tensor([0.75]), 0.75),
        ({"default": 0.9, "loss": torch.tensor(0.1)}, {"default": 0.9, "loss": pytest.approx(0.1)}),
    ],
)
def test_valid_metrics_are_normalized_to_floats(metric, expected) -> None:
    assert check_metric(metric) == expected


@pytest.mark.parametrize(
    ("metric", "error", "message"),
    [
        (float("nan"), ValueError, "nan"),
        (float("inf"), ValueError, "inf"),
        (True, TypeError, "bool"),
        ("0.9", TypeError, "str"),
        (torch.tensor([0.1, 0.2]), TypeError, "2 elements"),
        ({"acc": 0.9}, ValueError, "'default'"),
        ({"default": 0.9, "loss": float("nan")}, ValueError, r"metric\['loss'\]"),
        ({"default": "high"}, TypeError, r"metric\['default'\]"),
    ],
)
def test_bad_metrics_are_clear_errors(metric, error, message) -> None:
    with pytest.raises(error, match=message):
        nastrain.report_final_result(metric)


class Listener:
    def __init__(self) -> None:
        self.heard: list[tuple[str | None, object, bool]] = []

    @nastrain.hookimpl
    def nastrain_on_report(self, trainer, metric, final):
        self.heard.append((type(trainer).__name__ if trainer else None, metric, final))


class Counting(nastrain.BaseTrainer):
    def fit(self) -> None:
        for epoch in range(3):
            nastrain.report_intermediate_result(epoch / 10)
        nastrain.report_final_result({"default": 0.5, "epochs": 3})


def test_results_stay_on_the_trainer_and_reach_the_hook(nastrain_plugin) -> None:
    listener = Listener()
    nastrain_plugin(listener, name="listener")
    trainer = Counting()
    trainer.fit()
    assert trainer.intermediate_results == [0.0, 0.1, 0.2]
    assert trainer.final_result == {"default": 0.5, "epochs": 3.0}
    assert listener.heard[-1] == ("Counting", {"default": 0.5, "epochs": 3.0}, True)
    assert [final for _, _, final in listener.heard] == [False, False, False, True]
    nastrain.report_intermediate_result(1)  # outside any fit: no trainer, still heard
    assert listener.heard[-1] == (None, 1.0, False)


def test_reports_are_logged(caplog) -> None:
    with caplog.at_level("INFO", logger="nastrain"):
        Counting().fit()
    assert "final result (Counting): {'default': 0.5, 'epochs': 3.0}" in caplog.text


def test_inside_an_experiment_results_go_to_its_reporter() -> None:
    class Channel:
        def __init__(self) -> None:
            self.received: list[tuple[object, bool]] = []

        def report(self, trainer, metric, final) -> None:
            self.received.append((metric, final))

    channel = Channel()
    trainer = Counting()
    with nastrain.use_reporter(channel):
        trainer.fit()
    assert channel.received == [
        (0.0, False),
        (0.1, False),
        (0.2, False),
        ({"default": 0.5, "epochs": 3.0}, True),
    ]
    assert trainer.intermediate_results == []  # the channel, not the trainer, got them


class TrialListener:
    """A logger as a plugin writes one: it takes only the arguments it needs."""

    def __init__(self) -> None:
        self.heard: list[tuple[int | None, bool]] = []

    @nastrain.hookimpl
    def nastrain_on_report(self, final, trial):
        self.heard.append((trial, final))


def test_the_hook_hears_which_trial_a_result_belongs_to(nastrain_plugin, trials, tmp_path):
    listener = TrialListener()
    nastrain_plugin(listener, name="trial-listener")
    nastrain.Experiment(
        trials.SmallSpace(),
        trials.ScoreTrainer(None, epochs=2),
        max_trials=2,
        executor="inline",
        store=tmp_path / "s.sqlite",
    ).run()
    # Two intermediate results and a final one per trial, each tagged with its trial.
    assert listener.heard == [(0, False), (0, False), (0, True), (1, False), (1, False), (1, True)]
    listener.heard.clear()
    Counting().fit()  # outside an experiment: no trial
    assert {trial for trial, _ in listener.heard} == {None}


def test_a_result_that_stops_the_trial_is_still_heard(nastrain_plugin) -> None:
    class Stop(Exception):
        pass

    class Stopping:
        """A reporter that stops the trial at its second result, as an early stop does."""

        def __init__(self) -> None:
            self.stored: list[object] = []

        def report(self, trainer, metric, final) -> None:
            self.stored.append(metric)
            if len(self.stored) == 2:
                raise Stop

    listener = Listener()
    nastrain_plugin(listener, name="listener")
    reporter = Stopping()
    with nastrain.use_reporter(reporter), pytest.raises(Stop):
        Counting().fit()
    assert reporter.stored == [0.0, 0.1]
    assert [metric for _, metric, _ in listener.heard] == [0.0, 0.1]  # the stopping one too


def test_a_failing_logger_does_not_hide_an_early_stop(nastrain_plugin) -> None:
    class Stop(Exception):
        pass

    class StopAtOnce:
        def report(self, trainer, metric, final) -> None:
            raise Stop

    class Broken:
        @nastrain.hookimpl
        def nastrain_on_report(self, metric):
            raise RuntimeError("logger down")

    nastrain_plugin(Broken(), name="broken-logger")
    with (
        nastrain.use_reporter(StopAtOnce()),
        pytest.warns(nastrain.plugins.PluginWarning, match="logger down"),
        pytest.raises(Stop),
    ):
        Counting().fit()
