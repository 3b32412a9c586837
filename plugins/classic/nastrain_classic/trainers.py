"""The classic trainers: train one fixed model and report how good it is.

Every argument is JSON (a dataset, an optimizer and a learning-rate schedule
are named, with keyword arguments), so an experiment can send the trainer's
spec to a worker process and build it there. Each epoch ends with an
intermediate result on the validation set; the last epoch's is also the final
result, with the test split's metrics added under ``test_*`` keys when the
dataset has one (no strategy ranks by those). Names are checked when the
trainer is built, so a typo fails at once, not in a worker.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import nastrain
from nastrain.utils import resolve_device

__all__ = ["OPTIMIZERS", "SCHEDULES", "ClassificationTrainer", "RegressionTrainer"]

#: Optimizers by name (case-insensitive; torch's class names work too).
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
}


def _cosine(optimizer: torch.optim.Optimizer, epochs: int, **kwargs: Any) -> Any:
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, **{"T_max": epochs, **kwargs})


def _step(optimizer: torch.optim.Optimizer, epochs: int, **kwargs: Any) -> Any:
    return torch.optim.lr_scheduler.StepLR(
        optimizer, **{"step_size": max(1, epochs // 3), "gamma": 0.1, **kwargs}
    )


def _multistep(optimizer: torch.optim.Optimizer, epochs: int, **kwargs: Any) -> Any:
    milestones = [max(1, epochs // 2), max(1, epochs * 3 // 4)]
    return torch.optim.lr_scheduler.MultiStepLR(
        optimizer, **{"milestones": milestones, "gamma": 0.1, **kwargs}
    )


def _exponential(optimizer: torch.optim.Optimizer, epochs: int, **kwargs: Any) -> Any:
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, **{"gamma": 0.9, **kwargs})


#: Learning-rate schedules by name, stepped once per epoch; ``None`` keeps the rate.
SCHEDULES: dict[str, Callable[..., Any] | None] = {
    "constant": None,
    "cosine": _cosine,
    "step": _step,
    "multistep": _multistep,
    "exponential": _exponential,
}


def _lookup(table: dict[str, Any], name: str, what: str) -> Any:
    if not isinstance(name, str) or name.lower() not in table:
        raise ValueError(f"unknown {what} {name!r}; known {what}s: {sorted(table)}")
    return table[name.lower()]


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _batches(
    dataset: Dataset, batch_size: int, *, shuffle: bool, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    batch = getattr(dataset, "batch", None)
    if batch is None:  # any map-style dataset of (input, target) pairs
        yield from DataLoader(dataset, batch_size, shuffle=shuffle, generator=generator)
        return
    n = len(dataset)  # type: ignore[arg-type]
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        yield batch(order[start : start + batch_size])


class _SupervisedTrainer(nastrain.BaseTrainer):
    """The loop both trainers share: epochs of minibatch training, then validation."""

    def __init__(
        self,
        model: nn.Module,
        dataset: str = "digits",
        dataset_kwargs: dict[str, Any] | None = None,
        optimizer: str = "adam",
        optimizer_kwargs: dict[str, Any] | None = None,
        lr_schedule: str = "constant",
        lr_schedule_kwargs: dict[str, Any] | None = None,
        epochs: int = 10,
        batch_size: int = 64,
        seed: int | None = None,
        device: str = "cpu",
        evaluate_test: bool = True,
    ) -> None:
        self.model = model
        self.dataset = dataset
        self.dataset_kwargs = dict(dataset_kwargs or {})
        self.load_dataset = nastrain.get_dataset(dataset)
        self.optimizer_cls = _lookup(OPTIMIZERS, optimizer, "optimizer")
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        self.schedule = _lookup(SCHEDULES, lr_schedule, "lr_schedule")
        self.lr_schedule_kwargs = dict(lr_schedule_kwargs or {})
        self.epochs = _positive("epochs", epochs)
        self.batch_size = _positive("batch_size", batch_size)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an integer or None, got {seed!r}")
        self.seed = seed
        self.evaluate_test = bool(evaluate_test)
        # "auto", torch's forms; a device this machine lacks is refused here, naming it.
        self.device = resolve_device(device)
        # Build the optimizer and schedule once on a stand-in parameter: a misspelt keyword
        # argument fails here, where the trainer is made, naming what it belongs to.
        probe = self._make_optimizer([nn.Parameter(torch.zeros(1))])
        self._make_schedule(probe)

    def _make_optimizer(self, parameters: Any) -> torch.optim.Optimizer:
        try:
            return self.optimizer_cls(parameters, **self.optimizer_kwargs)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"optimizer {self.optimizer_cls.__name__} rejects optimizer_kwargs "
                f"{self.optimizer_kwargs}: {exc}"
            ) from None

    def _make_schedule(self, optimizer: torch.optim.Optimizer) -> Any:
        if self.schedule is None:
            if self.lr_schedule_kwargs:
                raise ValueError("lr_schedule 'constant' takes no lr_schedule_kwargs")
            return None
        try:
            return self.schedule(optimizer, self.epochs, **self.lr_schedule_kwargs)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"lr_schedule rejects lr_schedule_kwargs {self.lr_schedule_kwargs}: {exc}"
            ) from None

    @abc.abstractmethod
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The training loss of a batch."""

    #: What ``"default"`` is called among the final result's ``test_*`` keys.
    default_name = "default"

    @abc.abstractmethod
    def evaluate(self, valid: Dataset, what: str = "validation") -> dict[str, float]:
        """The metrics on ``valid`` (the validation split, or ``what`` names another);
        ``"default"`` is what strategies compare."""

    def fit(self) -> None:
        """Train for ``epochs`` epochs; report the validation metrics after each, and the
        last ones as the final result, with the test split's (``test_*`` keys) when the
        dataset has one and ``evaluate_test`` is on."""
        if self.seed is not None:
            torch.manual_seed(self.seed)
            generator = torch.Generator().manual_seed(self.seed)
        else:
            # The data order follows torch's global generator, which an experiment seeds with
            # the trial's seed: trials with different seeds see different orders.
            generator = torch.Generator().manual_seed(
                int(torch.randint(0, 2**62, (), dtype=torch.int64))
            )
        train, valid, test = self._splits()
        model = self.model.to(self.device)
        optimizer = self._make_optimizer(model.parameters())
        schedule = self._make_schedule(optimizer)
        metrics: dict[str, float] = {}
        for epoch in range(self.epochs):
            model.train()
            total, count = 0.0, 0
            lr = optimizer.param_groups[0]["lr"]
            for inputs, targets in _batches(
                train, self.batch_size, shuffle=True, generator=generator
            ):
                inputs, targets = inputs.to(self.device), targets.to(self.device)
                optimizer.zero_grad(set_to_none=True)
                output = model(inputs)
                if epoch == 0:  # the labels do not change: checked once
                    self.check_targets(output, targets, "training")
                loss = self.loss(output, targets)
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(
                        f"{type(self).__name__}: the training loss became {loss.item()}; "
                        "lower the learning rate (optimizer_kwargs) or check the data"
                    )
                loss.backward()
                optimizer.step()
                total += loss.item() * len(targets)
                count += len(targets)
            if schedule is not None:
                schedule.step()
            metrics = {**self.evaluate(valid), "train_loss": total / max(count, 1), "lr": lr}
            nastrain.report_intermediate_result(metrics)
        if test is not None and self.evaluate_test:
            # Reported beside the validation metrics, under keys no strategy ranks by.
            test_metrics = self.evaluate(test, what="test")
            test_metrics[self.default_name] = test_metrics.pop("default")
            metrics = {**metrics, **{f"test_{k}": v for k, v in test_metrics.items()}}
        nastrain.report_final_result(metrics)

    def _splits(self) -> tuple[Dataset, Dataset, Dataset | None]:
        """The dataset's ``(train, valid, test)``, ``test`` ``None`` when it has none."""
        splits = self.load_dataset(**self.dataset_kwargs)
        if not isinstance(splits, (tuple, list)) or len(splits) not in (2, 3):
            raise TypeError(
                f"dataset {self.dataset!r} returned {type(splits).__name__}, not (train, valid) "
                "or (train, valid, test)"
            )
        train, valid, test = (*splits, None)[:3]
        for split, data in (("training", train), ("validation", valid), ("test", test)):
            if data is not None and len(data) == 0:
                raise ValueError(
                    f"dataset {self.dataset!r} (dataset_kwargs {self.dataset_kwargs}): its "
                    f"{split} split is empty"
                )
        return train, valid, test

    def check_targets(self, output: torch.Tensor, target: torch.Tensor, split: str) -> None:
        """Refuse targets the model's ``output`` cannot score (the default accepts all)."""

    @torch.no_grad()
    def _predictions(self, valid: Dataset) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.model.eval()
        generator = torch.Generator()
        for inputs, targets in _batches(valid, 1024, shuffle=False, generator=generator):
            yield self.model(inputs.to(self.device)), targets.to(self.device)


@nastrain.register_trainer(name="classification")
class ClassificationTrainer(_SupervisedTrainer):
    """Trains a classifier with cross-entropy; reports validation ``accuracy`` as
    ``"default"``, with the validation ``loss``, the ``train_loss`` and the ``lr``.

    Args:
        model: the model, whose output is one logit per class.
        dataset: a registered dataset name (``nastrain datasets`` lists them):
            ``digits``, ``mnist``, ``fashion_mnist``, ``cifar10``, ``fake`` here.
        dataset_kwargs: its keyword arguments, e.g. ``{"root": "data"}``.
        optimizer: ``sgd``, ``adam``, ``adamw``, ``rmsprop`` or ``adagrad``.
        optimizer_kwargs: e.g. ``{"lr": 0.05, "momentum": 0.9}``.
        lr_schedule: ``constant``, ``cosine``, ``step``, ``multistep`` or
            ``exponential``, stepped after every epoch.
        lr_schedule_kwargs: its keyword arguments (torch's names).
        epochs, batch_size: the training length and minibatch size.
        seed: ``None`` (the default): the data order and everything random in
            training (dropout) follow torch's global generator, which an experiment
            seeds with each trial's seed (and from which it initialises the trial's
            weights), so trials with different seeds differ and a rerun repeats them.
            An integer reseeds torch's global generator and the data order when
            ``fit`` starts: then every trial sees the same data order and dropout.
        device: a torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``) or ``"auto"``.
        evaluate_test: when the dataset has a test split (``mnist``,
            ``fashion_mnist``, ``cifar10``), evaluate it once after the last epoch
            and add ``test_accuracy`` and ``test_loss`` to the final result. No
            strategy ranks by them: they are kept apart from the validation metrics
            that select architectures.

    Class labels outside ``0 .. outputs - 1`` and an empty split are refused, naming
    the dataset.
    """

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(output, target)

    default_name = "accuracy"

    def check_targets(self, output: torch.Tensor, target: torch.Tensor, split: str) -> None:
        """Class labels must be integers ``0 .. outputs - 1`` of the model's outputs."""
        if target.dtype.is_floating_point or target.dtype == torch.bool or target.ndim != 1:
            raise ValueError(
                f"dataset {self.dataset!r}: the {split} targets must be a 1-D tensor of integer "
                f"class labels, got {target.dtype} of shape {tuple(target.shape)}"
            )
        if output.ndim != 2:
            raise ValueError(
                f"{type(self).__name__}: the model's output must be (batch, classes), got "
                f"shape {tuple(output.shape)}"
            )
        classes = output.shape[1]
        low, high = int(target.min()), int(target.max())
        if low < 0 or high >= classes:
            bad = low if low < 0 else high
            raise ValueError(
                f"dataset {self.dataset!r}: {split} class label {bad} is outside the model's "
                f"{classes} outputs (labels must be 0 to {classes - 1})"
            )

    def evaluate(self, valid: Dataset, what: str = "validation") -> dict[str, float]:
        correct, loss, count = 0, 0.0, 0
        for output, target in self._predictions(valid):
            self.check_targets(output, target, what)
            correct += int((output.argmax(1) == target).sum())
            loss += float(nn.functional.cross_entropy(output, target, reduction="sum"))
            count += len(target)
        return {"default": correct / max(count, 1), "loss": loss / max(count, 1)}


@nastrain.register_trainer(name="regression")
class RegressionTrainer(_SupervisedTrainer):
    """Trains a regressor with mean squared error; reports the validation coefficient of
    determination (R², 1 is perfect, larger is better) as ``"default"``, with the
    validation ``mse``, the ``train_loss`` and the ``lr``. Takes the arguments of
    :class:`ClassificationTrainer`; its datasets have float targets (``diabetes`` here).
    A test split is reported as ``test_r2`` and ``test_mse``.
    """

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(output, target.view_as(output).to(output.dtype))

    default_name = "r2"

    def evaluate(self, valid: Dataset, what: str = "validation") -> dict[str, float]:
        outputs, targets = [], []
        for output, target in self._predictions(valid):
            outputs.append(output.reshape(len(target), -1).float())
            targets.append(target.reshape(len(target), -1).float())
        output, target = torch.cat(outputs), torch.cat(targets)
        mse = float(nn.functional.mse_loss(output, target))
        variance = float(((target - target.mean(0)) ** 2).mean())
        r2 = 1.0 - mse / variance if variance > 0 else 0.0
        return {"default": r2, "mse": mse}
