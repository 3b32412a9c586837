"""The classic trainers: they learn, report every epoch, travel as JSON, and refuse bad
arguments naming them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import nastrain
from nastrain_classic import ClassificationTrainer, RegressionTrainer


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def test_registered_by_the_plugin_under_their_contract_names() -> None:
    assert nastrain.get_trainer("classification") is ClassificationTrainer
    assert nastrain.get_trainer("regression") is RegressionTrainer
    classic = next(p for p in nastrain.plugins.loaded_plugins() if p.name == "classic")
    assert classic.distribution == "nastrain-classic"
    assert classic.trainers == ("classification", "regression")


def test_classification_on_digits_learns_and_reports_every_epoch() -> None:
    trainer = ClassificationTrainer(
        _mlp(),
        dataset="digits",
        optimizer="sgd",
        optimizer_kwargs={"lr": 0.1, "momentum": 0.9},
        lr_schedule="step",
        lr_schedule_kwargs={"step_size": 2, "gamma": 0.5},
        epochs=3,
        batch_size=32,
    )
    trainer.fit()
    results = trainer.intermediate_results
    assert len(results) == 3 and trainer.final_result == results[-1]
    assert [r["lr"] for r in results] == pytest.approx([0.1, 0.1, 0.05])
    assert set(results[0]) == {"default", "loss", "train_loss", "lr"}
    # Chance is 0.1; three epochs of an MLP reach about 0.95.
    assert trainer.final_result["default"] >= 0.85
    assert results[-1]["train_loss"] < results[0]["train_loss"]


def test_classification_is_reproducible_from_its_seed() -> None:
    def run(seed: int) -> float:
        torch.manual_seed(0)  # the same initial weights
        trainer = ClassificationTrainer(_mlp(), epochs=1, seed=seed)
        trainer.fit()
        return trainer.final_result["loss"]

    assert run(3) == run(3) and run(3) != run(4)


def test_seed_none_never_reseeds_torch_so_the_users_own_seed_reproduces_a_run() -> None:
    def run() -> tuple[float, int]:
        torch.manual_seed(123)  # the user's own seed: weights, data order, everything
        trainer = ClassificationTrainer(_mlp(), epochs=1)  # seed=None
        trainer.fit()
        return trainer.final_result["loss"], torch.initial_seed()

    first, second = run(), run()
    assert first == second
    assert first[1] == 123  # torch.seed() would have replaced it


def test_regression_on_diabetes_reports_r2() -> None:
    trainer = RegressionTrainer(
        nn.Linear(10, 1),
        dataset="diabetes",
        optimizer="sgd",
        optimizer_kwargs={"lr": 0.05},
        lr_schedule="cosine",
        epochs=15,
    )
    trainer.fit()
    final = trainer.final_result
    assert set(final) == {"default", "mse", "train_loss", "lr"}
    # A linear model explains about half the variance of the standardized target.
    assert 0.3 <= final["default"] <= 1.0
    assert final["mse"] == pytest.approx((1 - final["default"]) * _valid_variance(), rel=1e-4)


def _valid_variance() -> float:
    _, valid = nastrain.get_dataset("diabetes")()
    targets = valid.targets
    return float(((targets - targets.mean()) ** 2).mean())


def test_any_dataset_of_pairs_works(nastrain_plugin) -> None:
    def ones(*, n: int = 40):
        pairs = [(torch.full((4,), float(i % 2)), i % 2) for i in range(n)]
        return pairs, pairs[:10]

    class Plugin:
        @nastrain.hookimpl
        def nastrain_register_datasets(self, register):
            register(ones)

    nastrain_plugin(Plugin(), name="ones-plugin")
    trainer = ClassificationTrainer(
        nn.Linear(4, 2),
        dataset="ones",
        dataset_kwargs={"n": 48},
        epochs=6,
        batch_size=8,
        optimizer_kwargs={"lr": 0.1},
    )
    trainer.fit()
    assert trainer.final_result["default"] == 1.0


def test_the_spec_travels_as_json_and_builds_the_same_trainer() -> None:
    trainer = ClassificationTrainer(
        _mlp(), dataset="fake", dataset_kwargs={"size": 8, "image_size": [1, 8, 8]}, epochs=1
    )
    text = trainer.spec.to_json()
    spec = nastrain.TrainerSpec.from_json(text)
    assert spec.name == "classification"
    assert spec.kwargs["dataset_kwargs"] == {"size": 8, "image_size": [1, 8, 8]}
    rebuilt = spec.build(_mlp())
    assert type(rebuilt) is ClassificationTrainer and rebuilt.spec == trainer.spec
    rebuilt.fit()
    assert 0.0 <= rebuilt.final_result["default"] <= 1.0


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"dataset_kwargs": {"root": Path("data")}},
            TypeError,
            r"argument 'dataset_kwargs' of trainer ClassificationTrainer.*\['root'\] has type "
            "pathlib.PosixPath",
        ),
        ({"dataset": "imagenet"}, KeyError, r"unknown dataset 'imagenet'; known datasets: \["),
        ({"optimizer": "lion"}, ValueError, r"unknown optimizer 'lion'; known optimizers: \["),
        ({"optimizer_kwargs": {"lrr": 0.1}}, ValueError, "optimizer Adam rejects.*'lrr'"),
        ({"optimizer_kwargs": {"lr": -1.0}}, ValueError, "optimizer Adam rejects.*learning rate"),
        ({"lr_schedule": "warmup"}, ValueError, r"unknown lr_schedule 'warmup'; known .*cosine"),
        ({"lr_schedule": "step", "lr_schedule_kwargs": {"steps": 2}}, ValueError, "'steps'"),
        ({"lr_schedule_kwargs": {"gamma": 0.5}}, ValueError, "'constant' takes no"),
        ({"epochs": 0}, ValueError, "epochs must be an integer >= 1, got 0"),
        ({"batch_size": 2.5}, ValueError, "batch_size must be an integer >= 1, got 2.5"),
        ({"device": "gpu:zero"}, ValueError, "device 'gpu:zero' is not a device torch knows"),
        ({"seed": 1.5}, ValueError, "seed must be an integer or None, got 1.5"),
        ({"seed": True}, ValueError, "seed must be an integer or None, got True"),
        ({"seed": "0"}, ValueError, "seed must be an integer or None, got '0'"),
    ],
)
def test_bad_arguments_are_refused_when_the_trainer_is_built(kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        ClassificationTrainer(_mlp(), **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it_is_refused_when_the_trainer_is_built() -> None:
    with pytest.raises(ValueError, match=r"device 'cuda' asks for CUDA, but CUDA is not available"):
        ClassificationTrainer(_mlp(), device="cuda")


def test_a_diverging_loss_is_an_error_saying_what_to_do() -> None:
    trainer = RegressionTrainer(
        nn.Linear(10, 1), dataset="diabetes", optimizer="sgd", optimizer_kwargs={"lr": 1e6}
    )
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        trainer.fit()


def _pairs(labels: list[int], flip: bool = False) -> list:
    return [(torch.full((4,), float(y)), (1 - y) if flip else y) for y in labels]


def _plugin_dataset(nastrain_plugin, name: str, factory) -> None:
    class Plugin:
        @nastrain.hookimpl
        def nastrain_register_datasets(self, register):
            register(factory, name=name)

    nastrain_plugin(Plugin(), name=f"{name}-plugin")


def test_a_test_split_is_reported_apart_from_the_validation_metrics(nastrain_plugin) -> None:
    # The test split holds the validation inputs with every label flipped: a model that is
    # right on validation is wrong on all of test, so the two cannot be confused.
    def three(*, n: int = 48):
        labels = [i % 2 for i in range(n)]
        return _pairs(labels), _pairs(labels[:10]), _pairs(labels[:10], flip=True)

    _plugin_dataset(nastrain_plugin, "three", three)
    trainer = ClassificationTrainer(
        nn.Linear(4, 2), dataset="three", epochs=6, batch_size=8, optimizer_kwargs={"lr": 0.1}
    )
    trainer.fit()
    final = trainer.final_result
    assert final["default"] == 1.0 and final["test_accuracy"] == 0.0
    assert final["test_loss"] > final["loss"]
    assert all(not any(k.startswith("test_") for k in r) for r in trainer.intermediate_results)
    quiet = ClassificationTrainer(nn.Linear(4, 2), dataset="three", epochs=1, evaluate_test=False)
    quiet.fit()
    assert set(quiet.final_result) == {"default", "loss", "train_loss", "lr"}


@pytest.mark.parametrize(
    ("train", "valid", "message"),
    [
        (
            [0, 1, 5, 1],
            [0, 1],
            "dataset 'bad-labels': training class label 5 is outside the "
            "model's 2 outputs \\(labels must be 0 to 1\\)",
        ),
        ([0, 1, 1, 0], [0, -1], "validation class label -1 is outside the model's 2 outputs"),
        (
            [],
            [0, 1],
            r"dataset 'bad-labels' \(dataset_kwargs \{\}\): its training split is empty",
        ),
        ([0, 1], [], "its validation split is empty"),
    ],
)
def test_labels_outside_the_outputs_and_empty_splits_are_refused(
    nastrain_plugin, train, valid, message
) -> None:
    _plugin_dataset(nastrain_plugin, "bad-labels", lambda: (_pairs(train), _pairs(valid)))
    trainer = ClassificationTrainer(nn.Linear(4, 2), dataset="bad-labels", epochs=1)
    with pytest.raises(ValueError, match=message):
        trainer.fit()
