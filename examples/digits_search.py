"""A small, real architecture search on scikit-learn's bundled digits (no downloads).

This is nastrain's main job from end to end, the way a user writes it after
reading the trainer guide:

1. a model space for 8x8 one-channel images, built from
   :class:`nastrain.LayerChoice` and :class:`nastrain.InputChoice`;
2. a DARTS-style one-shot trainer (first order) written on
   :class:`nastrain.BaseOneShotTrainer` with :mod:`nastrain.utils`' module
   replacement, which searches the space and exports the best architecture;
3. a classic trainer registered with :func:`nastrain.register_trainer`, rebuilt
   from its JSON spec, which trains the exported architecture from scratch and
   reports the test accuracy.

Run it with ``python examples/digits_search.py`` (``--help`` for the options).
It needs scikit-learn (``pip install 'nastrain[examples]'``) and takes well
under a minute on two CPU cores.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import nastrain
from nastrain.utils import replace_input_choice, replace_layer_choice

#: Images kept for testing; the other 1200 of the 1797 digits are for training.
TEST_SIZE = 597
NUM_CLASSES = 10

# --- data -----------------------------------------------------------------------------------


def load_data(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The digits as ``(train_x, train_y, test_x, test_y)``, split reproducibly by ``seed``.

    The split is stratified (1200 train / 597 test); images are ``(N, 1, 8, 8)``
    float tensors standardized with the training set's mean and standard deviation.
    """
    digits = load_digits()
    images = digits.images.astype(np.float32)
    train_x, test_x, train_y, test_y = train_test_split(
        images, digits.target, test_size=TEST_SIZE, stratify=digits.target, random_state=seed
    )
    mean, std = train_x.mean(), train_x.std()

    def to_tensor(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((x - mean) / std).unsqueeze(1)

    return (
        to_tensor(train_x),
        torch.from_numpy(train_y).long(),
        to_tensor(test_x),
        torch.from_numpy(test_y).long(),
    )


def batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled mini-batches of ``(x, y)`` for one epoch (the tensors fit in memory)."""
    order = torch.randperm(len(x), generator=generator)
    for start in range(0, len(x), batch_size):
        index = order[start : start + batch_size]
        yield x[index], y[index]


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The fraction of ``x`` that ``model`` (put in eval mode) classifies as ``y``."""
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's random number generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --- the model space -------------------------------------------------------------------------


def conv_bn_relu(
    c_in: int, c_out: int, kernel_size: int, *, stride: int = 1, dilation: int = 1
) -> nn.Sequential:
    """Convolution, batch norm and ReLU, padded so that stride 1 keeps the image size."""
    padding = dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size, stride, padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


def candidate_ops(channels: int) -> dict[str, nn.Module]:
    """The operations a searchable layer chooses among; each keeps shape ``(N, C, H, W)``."""
    return {
        "conv3x3": conv_bn_relu(channels, channels, 3),
        "conv5x5": conv_bn_relu(channels, channels, 5),
        "dilconv3x3": conv_bn_relu(channels, channels, 3, dilation=2),
        "maxpool3x3": nn.MaxPool2d(3, stride=1, padding=1),
        "skip": nn.Identity(),
    }


class DigitsSpace(nn.Module):
    """A small CNN space for 8x8 digits: three searchable layers and a searchable skip.

    ``stem`` (8x8) -> ``layer1`` -> ``layer2`` + ``skip`` (the stem's or
    ``layer1``'s output) -> ``reduce`` (to 4x4, twice the channels) -> ``layer3``
    -> linear classifier. Every layer chooses among :func:`candidate_ops`, so the
    space holds 5 * 5 * 2 * 5 = 250 architectures.
    """

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        self.stem = conv_bn_relu(1, channels, 3)
        self.layer1 = nastrain.LayerChoice(candidate_ops(channels), label="layer1")
        self.layer2 = nastrain.LayerChoice(candidate_ops(channels), label="layer2")
        self.skip = nastrain.InputChoice(2, 1, label="skip")
        self.reduce = conv_bn_relu(channels, 2 * channels, 3, stride=2)
        self.layer3 = nastrain.LayerChoice(candidate_ops(2 * channels), label="layer3")
        self.classifier = nn.Linear(2 * channels * 4 * 4, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch of ``(N, 1, 8, 8)`` images."""
        x0 = self.stem(x)
        x1 = self.layer1(x0)
        x2 = self.layer2(x1) + self.skip([x0, x1])
        x3 = self.layer3(self.reduce(x2))
        return self.classifier(x3.flatten(1))


# --- a DARTS-style one-shot trainer, written as the trainer guide shows --------------------


class DartsLayerChoice(nn.Module):
    """A ``LayerChoice`` relaxed as in DARTS: the softmax(alpha)-weighted sum of its candidates."""

    def __init__(self, layer_choice: nastrain.LayerChoice) -> None:
        super().__init__()
        self.name = layer_choice.label
        self.op_choices = nn.ModuleDict(layer_choice.named_children())
        self.alpha = nn.Parameter(torch.randn(len(self.op_choices)) * 1e-3)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Every candidate's output, mixed by the architecture weights."""
        op_results = torch.stack([op(*args, **kwargs) for op in self.op_choices.values()])
        alpha_shape = [-1] + [1] * (op_results.dim() - 1)
        return torch.sum(op_results * F.softmax(self.alpha, -1).view(*alpha_shape), 0)

    def export(self) -> str:
        """The name of the candidate with the largest architecture weight."""
        return list(self.op_choices)[int(self.alpha.argmax())]


class DartsInputChoice(nn.Module):
    """An ``InputChoice`` relaxed as in DARTS: the softmax(alpha)-weighted sum of its inputs."""

    def __init__(self, input_choice: nastrain.InputChoice) -> None:
        super().__init__()
        if input_choice.reduction not in ("sum", "mean"):
            raise ValueError(
                f"DartsInputChoice relaxes InputChoice {input_choice.label!r} as a weighted "
                f"sum, which stands in for reduction 'sum' or 'mean', not "
                f"{input_choice.reduction!r}"
            )
        self.name = input_choice.label
        self.n_chosen = input_choice.n_chosen
        self.alpha = nn.Parameter(torch.randn(input_choice.n_candidates) * 1e-3)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """The candidate inputs, mixed by the architecture weights."""
        stacked = torch.stack(inputs)
        alpha_shape = [-1] + [1] * (stacked.dim() - 1)
        return torch.sum(stacked * F.softmax(self.alpha, -1).view(*alpha_shape), 0)

    def export(self) -> list[int]:
        """The sorted indices of the ``n_chosen`` inputs with the largest weights."""
        return sorted(int(i) for i in torch.topk(self.alpha, self.n_chosen).indices)


class DigitsDartsTrainer(nastrain.BaseOneShotTrainer):
    """First-order DARTS on in-memory tensors.

    The training data is split in two halves: one trains the supernet's
    weights (SGD with momentum), the other the architecture weights ``alpha``
    (Adam, as in the DARTS paper). Each step first updates ``alpha`` on a batch
    of the architecture half, then the weights on a batch of the weight half.
    After each epoch the supernet's accuracy on the architecture half is
    reported with :func:`nastrain.report_intermediate_result`. Choices that
    share a label share their ``alpha``.
    """

    def __init__(
        self,
        model: nn.Module,
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        *,
        epochs: int = 10,
        batch_size: int = 64,
        learning_rate: float = 0.05,
        arc_learning_rate: float = 3e-3,
        seed: int = 0,
        log: bool = True,
    ) -> None:
        self.model = model
        self.epochs = epochs
        self.batch_size = batch_size
        self.log = log
        self.generator = torch.Generator().manual_seed(seed)

        self.nas_modules: list[tuple[str, nn.Module]] = []
        replace_layer_choice(self.model, DartsLayerChoice, self.nas_modules)
        replace_input_choice(self.model, DartsInputChoice, self.nas_modules)
        shared: dict[str, nn.Parameter] = {}
        for label, module in self.nas_modules:
            module.alpha = shared.setdefault(label, module.alpha)
        arch_params = list(shared.values())
        arch_ids = {id(p) for p in arch_params}
        self.weights = [p for p in self.model.parameters() if id(p) not in arch_ids]

        half = len(train_x) // 2
        order = torch.randperm(len(train_x), generator=self.generator)
        self.weight_data = (train_x[order[:half]], train_y[order[:half]])
        self.arch_data = (train_x[order[half:]], train_y[order[half:]])

        self.loss = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(
            self.weights, lr=learning_rate, momentum=0.9, weight_decay=3e-4
        )
        self.ctrl_optim = torch.optim.Adam(
            arch_params, lr=arc_learning_rate, betas=(0.5, 0.999), weight_decay=1e-3
        )

    def train_architecture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One Adam step on the architecture weights (first order: weights held fixed)."""
        self.model.train()
        self.ctrl_optim.zero_grad()
        self.loss(self.model(x), y).backward()
        self.ctrl_optim.step()

    def train_model_weight(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One SGD step on the supernet's weights (architecture weights held fixed)."""
        self.model.train()
        self.optimizer.zero_grad()
        self.loss(self.model(x), y).backward()
        nn.utils.clip_grad_norm_(self.weights, 5.0)
        self.optimizer.step()

    def fit(self) -> None:
        """Search: alternate architecture and weight steps for ``epochs`` epochs."""
        for epoch in range(self.epochs):
            for (trn_x, trn_y), (val_x, val_y) in zip(
                batches(*self.weight_data, self.batch_size, self.generator),
                batches(*self.arch_data, self.batch_size, self.generator),
            ):
                self.train_architecture(val_x, val_y)
                self.train_model_weight(trn_x, trn_y)
            valid_accuracy = accuracy(self.model, *self.arch_data)
            nastrain.report_intermediate_result(valid_accuracy)
            if self.log:
                print(
                    f"search epoch {epoch + 1}/{self.epochs}: supernet accuracy on the "
                    f"architecture half {valid_accuracy:.3f}; current choice {self.current_arch()}"
                )

    @torch.no_grad()
    def current_arch(self) -> dict[str, Any]:
        """The architecture the weights ``alpha`` favour now; each shared label once."""
        result: dict[str, Any] = {}
        for label, module in self.nas_modules:
            if label not in result:
                result[label] = module.export()
        return result

    def export(self) -> dict[str, Any]:
        """The best architecture: label -> strongest candidate name / sorted input indices."""
        return self.current_arch()


# --- a classic trainer, registered so that its spec can travel ------------------------------


@nastrain.register_trainer
class DigitsTrainer(nastrain.BaseTrainer):
    """Train one fixed model on the digits from scratch and report its test accuracy.

    Every argument after the model is JSON-ready, so ``trainer.spec`` rebuilds
    the same trainer in another process. The data are loaded (and split with
    ``seed``) here rather than passed in, as the trainer guide asks. The test
    accuracy is reported after every epoch, and at the end as the final result.
    """

    def __init__(
        self,
        model: nn.Module,
        epochs: int = 20,
        learning_rate: float = 0.05,
        batch_size: int = 64,
        seed: int = 0,
        log: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.seed = seed
        self.log = log
        self.train_x, self.train_y, self.test_x, self.test_y = load_data(seed)
        #: The test accuracy after the last epoch (also the reported final result).
        self.test_accuracy: float | None = None

    def fit(self) -> None:
        """Train with SGD and a cosine learning-rate schedule; report the test accuracy."""
        generator = torch.Generator().manual_seed(self.seed)
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(
            self.model.parameters(), lr=self.learning_rate, momentum=0.9, weight_decay=5e-4
        )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.epochs)
        test_accuracy = accuracy(self.model, self.test_x, self.test_y)
        for epoch in range(self.epochs):
            self.model.train()
            for x, y in batches(self.train_x, self.train_y, self.batch_size, generator):
                optimizer.zero_grad()
                loss_fn(self.model(x), y).backward()
                optimizer.step()
            scheduler.step()
            test_accuracy = accuracy(self.model, self.test_x, self.test_y)
            nastrain.report_intermediate_result(test_accuracy)
            if self.log:
                print(f"retrain epoch {epoch + 1}/{self.epochs}: test accuracy {test_accuracy:.3f}")
        self.test_accuracy = test_accuracy
        nastrain.report_final_result(test_accuracy)


# --- the main job ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of this example."""
    parser = argparse.ArgumentParser(
        description=(
            "Search a small CNN space on scikit-learn's digits with a first-order DARTS "
            "one-shot trainer, then train the exported architecture from scratch with a "
            "registered classic trainer and print its test accuracy."
        )
    )
    parser.add_argument(
        "--search-epochs",
        type=int,
        default=15,
        help="epochs of the one-shot (DARTS) search (default: %(default)s)",
    )
    parser.add_argument(
        "--retrain-epochs",
        type=int,
        default=20,
        help="epochs of training the exported architecture from scratch (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the train/test split, the weight initialisation and the batch order "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads while the job runs; the tensors are tiny, so one thread is "
        "as fast as more and does not slow down on a busy machine (default: %(default)s)",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="print only the architecture and the result"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Search, export, retrain and evaluate; returns what a test needs to check the run.

    The result has ``arch`` (the exported architecture), ``test_accuracy``,
    ``seconds`` (wall time of the whole job), ``search_history`` (the
    supernet's accuracy per search epoch) and ``spec`` (the classic trainer's
    spec as JSON).
    """
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The job :func:`main` describes, for parsed arguments."""
    started = time.perf_counter()
    seed_everything(args.seed)
    train_x, train_y, _, _ = load_data(args.seed)  # the search never sees the test set

    space = DigitsSpace()
    # The one-shot trainer replaces the choices in place, so it gets a copy of the space.
    search = DigitsDartsTrainer(
        copy.deepcopy(space),
        train_x,
        train_y,
        epochs=args.search_epochs,
        seed=args.seed,
        log=not args.quiet,
    )
    search.fit()
    arch = search.export()
    search_seconds = time.perf_counter() - started
    print(f"exported architecture ({search_seconds:.1f} s): {json.dumps(arch)}")

    model = nastrain.apply_arch(space, arch)
    trainer = DigitsTrainer(model, epochs=args.retrain_epochs, seed=args.seed, log=not args.quiet)
    # The spec is what an experiment sends to a trial process; rebuild the trainer from it.
    spec_json = trainer.spec.to_json()
    trainer = nastrain.TrainerSpec.from_json(spec_json).build(model)
    trainer.fit()
    test_accuracy = trainer.test_accuracy
    seconds = time.perf_counter() - started
    print(f"test accuracy {test_accuracy:.4f}; wall time {seconds:.1f} s")
    return {
        "arch": arch,
        "test_accuracy": test_accuracy,
        "seconds": seconds,
        "search_history": list(search.intermediate_results),
        "spec": spec_json,
    }


if __name__ == "__main__":
    main()
