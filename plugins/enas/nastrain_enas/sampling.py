"""Single-path sampling, shared by ENAS and random one-shot (SPOS).

A sampling trainer replaces every ``LayerChoice`` with a :class:`SampledLayerChoice`
(runs only the sampled candidate) and every ``InputChoice`` with a
:class:`SampledInputChoice` (reduces exactly ``n_chosen`` distinct inputs), through
the ``nastrain_replace_module`` hook. Before each step the trainer picks one value
per decision (label) and hands it to every module of that label, so modules that
share a label always run the same choice. The weights are trained one sampled
path at a time: only the sampled candidates get gradients.

Architectures are scored with the shared weights (SPOS's and ENAS's ``export()``)
by :meth:`SamplingTrainer.score_arch`: each with its own BatchNorm statistics,
recalibrated on ``bn_batches`` batches of the weight half, the supernet's restored
afterwards (see :mod:`nastrain.calibration`).

The data, epoch loop, progress, reporting and checkpoints are the core's
:class:`nastrain.oneshot.SupernetTrainer`.
"""

from __future__ import annotations

import abc
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from nastrain import InputChoice, LayerChoice
from nastrain.calibration import preserved_bn_stats, recalibrate_bn
from nastrain.mutables import reduce_tensors
from nastrain.oneshot import SupernetTrainer
from nastrain.reporting import current_trainer
from nastrain.space import Architecture
from nastrain.utils import replace_choices

__all__ = ["SampledInputChoice", "SampledLayerChoice", "SamplingTrainer", "replace_for_sampling"]


class SampledLayerChoice(nn.Module):
    """A ``LayerChoice`` that runs only its sampled candidate.

    ``sampled`` is the candidate's name (as in an exported architecture); the
    trainer sets it before every step. The candidates stay submodules under
    ``ops``, so every one of them is in ``parameters()`` and the state dict.
    """

    def __init__(self, choice: LayerChoice) -> None:
        super().__init__()
        self.label = choice.label
        self.names = list(choice.names)
        self.ops = nn.ModuleList(list(choice))
        self._index = {name: i for i, name in enumerate(self.names)}
        self._chosen: int | None = None

    @property
    def sampled(self) -> str | None:
        """The name of the candidate that runs (``None`` until one is sampled)."""
        return None if self._chosen is None else self.names[self._chosen]

    @sampled.setter
    def sampled(self, name: str) -> None:
        index = self._index.get(name) if isinstance(name, str) else None
        if index is None:
            raise ValueError(
                f"LayerChoice {self.label!r} has no candidate {name!r}; "
                f"its candidates are {self.names}"
            )
        self._chosen = index

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self._chosen is None:
            raise RuntimeError(
                f"LayerChoice {self.label!r}: no candidate is sampled yet; set .sampled or "
                "run the model through its trainer"
            )
        return self.ops[self._chosen](*args, **kwargs)

    def extra_repr(self) -> str:
        return f"label={self.label!r}, sampled={self.sampled!r}"


class SampledInputChoice(nn.Module):
    """An ``InputChoice`` that reduces exactly ``n_chosen`` distinct sampled inputs.

    ``sampled`` is the sorted list of chosen input indices (as in an exported
    architecture); the trainer sets it before every step.
    """

    def __init__(self, choice: InputChoice) -> None:
        super().__init__()
        self.label = choice.label
        self.n_candidates = choice.n_candidates
        self.n_chosen = choice.n_chosen
        self.reduction = choice.reduction
        self._chosen: list[int] | None = None

    @property
    def sampled(self) -> list[int] | None:
        """The indices of the inputs that are reduced (``None`` until sampled)."""
        return None if self._chosen is None else list(self._chosen)

    @sampled.setter
    def sampled(self, indices: list[int]) -> None:
        chosen = sorted(indices) if isinstance(indices, (list, tuple)) else None
        if (
            chosen is None
            or len(chosen) != self.n_chosen
            or len(set(chosen)) != self.n_chosen
            or not all(isinstance(i, int) and 0 <= i < self.n_candidates for i in chosen)
        ):
            raise ValueError(
                f"InputChoice {self.label!r} takes {self.n_chosen} distinct input indices in "
                f"0..{self.n_candidates - 1}, got {indices!r}"
            )
        self._chosen = chosen

    def forward(self, inputs: list[torch.Tensor]) -> Any:
        if self._chosen is None:
            raise RuntimeError(
                f"InputChoice {self.label!r}: no inputs are sampled yet; set .sampled or run "
                "the model through its trainer"
            )
        if len(inputs) != self.n_candidates:
            raise ValueError(
                f"InputChoice {self.label!r} expects {self.n_candidates} inputs, got {len(inputs)}"
            )
        return reduce_tensors([inputs[i] for i in self._chosen], self.reduction)

    def extra_repr(self) -> str:
        return (
            f"label={self.label!r}, n_candidates={self.n_candidates}, n_chosen={self.n_chosen}, "
            f"sampled={self._chosen}"
        )


class SamplingTrainer(SupernetTrainer):
    """Base of the single-path trainers: replaces the choices with sampling modules and
    trains the weights one sampled architecture per batch of the weight half.

    Its :meth:`search_step` is the weight step: one batch of the weight half, the path
    :meth:`sample_arch` draws (a subclass says how), the weights' optimizer on it. A
    subclass that learns from the architecture half does so in
    :meth:`~nastrain.oneshot.SupernetTrainer.architecture_step` (ENAS's controller). The
    one-shot options (``seed``, ``checkpoint_dir``, ``lr_scheduler``, ...) are passed on
    as ``**options``. A replacement that
    a third-party plugin supplies for a new kind of choice must take the sampled
    value through a ``sampled`` attribute, as :class:`SampledLayerChoice` does.
    """

    #: Single-path training walks the weight half alone: ``valid_batch`` is ``None``.
    pair_batches: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        loss: Callable[[Any, Any], torch.Tensor],
        metrics: Callable[[Any, Any], Mapping[str, float]] | None,
        optimizer: torch.optim.Optimizer | None,
        num_epochs: int,
        dataset: Dataset,
        batch_size: int = 64,
        workers: int = 0,
        device: Any = None,
        log_frequency: int | None = None,
        grad_clip: float = 5.0,
        *,
        valid_dataset: Dataset | None = None,
        **options: Any,
    ) -> None:
        super().__init__(
            model,
            loss=loss,
            metrics=metrics,
            num_epochs=num_epochs,
            dataset=dataset,
            valid_dataset=valid_dataset,
            batch_size=batch_size,
            workers=workers,
            device=device,
            log_frequency=log_frequency,
            **options,
        )
        if isinstance(grad_clip, bool) or not isinstance(grad_clip, (int, float)) or grad_clip < 0:
            raise ValueError(f"grad_clip must be a number >= 0 (0: no clipping), got {grad_clip!r}")
        self.grad_clip = float(grad_clip)
        self.nas_modules = replace_choices(
            self.model, trainer=self, init_fn=lambda choice: replace_for_sampling(choice, self)
        )
        #: The replaced modules of each label: one sampled value goes to all of them.
        self.modules_by_label: dict[str, list[nn.Module]] = {}
        for label, module in self.nas_modules:
            self.modules_by_label.setdefault(label, []).append(module)
        self.prepare_model()
        self.weights = [p for p in self.model.parameters() if p.requires_grad]
        if optimizer is None and self.weights:
            optimizer = torch.optim.SGD(self.weights, lr=0.05, momentum=0.9, weight_decay=1e-4)
        #: The weights' optimizer (``None`` for a space without weights).
        self.optimizer = optimizer
        #: The architecture the model runs now.
        self.current_arch: Architecture = {}
        #: Batches of the weight half each architecture's BatchNorm statistics are
        #: recalibrated on before it is scored (0: score with the supernet's pooled ones).
        self.bn_batches = 10

    @abc.abstractmethod
    def sample_arch(self) -> Architecture:
        """The architecture of the next weight step."""

    def set_arch(self, arch: Mapping[str, Any]) -> None:
        """Make the model run ``arch``: every module of a label gets that label's value."""
        for label, modules in self.modules_by_label.items():
            value = arch[label]
            for module in modules:
                module.sampled = value
        self.current_arch = dict(arch)

    def search_step(self, train_batch: Any, valid_batch: None) -> dict[str, float]:
        """One step of the shared weights on a sampled architecture (a batch of the weight
        half; single-path training takes no architecture batch: :attr:`pair_batches` is
        ``False``)."""
        x, y = train_batch
        self.set_arch(self.sample_arch())
        optimizer = self.optimizer
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            # Several processes: through DDP, whose backward averages the gradients of the
            # path's weights over the ranks (every rank runs the same path).
            logits = self.parallel_model(x)
            loss = self.loss(logits, y)
        if loss.requires_grad:  # a sampled path may have no weights at all
            self.backward(loss)
        if optimizer is not None:
            if self.grad_clip:
                self.unscale_(optimizer)
                nn.utils.clip_grad_norm_(self.weights, self.grad_clip)
            self.optimizer_step(optimizer)
        with torch.no_grad():
            return {"loss": loss.item(), **self.compute_metrics(logits.detach(), y)}

    # --- scoring architectures with the shared weights ---------------------------------------

    def fixed_loader(self, half: Literal["train", "valid"], num_batches: int | None) -> DataLoader:
        """One half of the data in a fixed order (``"train"``: the weight half, ``"valid"``:
        the architecture half), so that every architecture is scored or calibrated on the
        same batches; only ``num_batches`` batches of it, drawn once (seeded by ``seed``,
        else 0, on a generator of its own: the training data order is untouched), when
        that is set."""
        data = self.train_data if half == "train" else self.valid_data
        size = len(data)  # type: ignore[arg-type]
        if num_batches is not None and num_batches * self.batch_size < size:
            offset = 0 if half == "valid" else 1  # not the same draw for both halves
            generator = torch.Generator().manual_seed(
                (self.seed if self.seed is not None else 0) + offset
            )
            kept = torch.randperm(size, generator=generator)
            kept = kept[: num_batches * self.batch_size].sort().values
            data = Subset(data, kept.tolist())
        return DataLoader(
            data,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            # Iterating a loader draws a seed from its generator: not from torch's global one.
            generator=torch.Generator().manual_seed(0),
        )

    def calibration_batches(self) -> list[Any]:
        """:attr:`bn_batches` batches of the weight half, on the device, drawn once per call
        (the same for every architecture scored with them); empty when ``bn_batches`` is 0.
        A last batch of a single item is left out: BatchNorm takes no statistics over it."""
        if not self.bn_batches:
            return []
        batches = [self.to_device(b) for b in self.fixed_loader("train", self.bn_batches)]
        if len(batches) > 1 and getattr(batches[-1][1], "__len__", lambda: 2)() == 1:
            batches.pop()
        return batches

    @torch.no_grad()
    def score_arch(
        self,
        arch: Mapping[str, Any],
        batches: Iterable[Any],
        score: Callable[[Any, Any], Any],
        *,
        what: str,
        calibration: list[Any] | None = None,
    ) -> float:
        """The mean of ``score(logits, y)`` over ``batches`` (weighted by batch size) of
        ``arch`` run with the shared weights, the model in evaluation mode, its BatchNorm
        statistics recalibrated on ``calibration`` (default: :meth:`calibration_batches`)
        and the supernet's restored afterwards. ``what`` names ``score`` in errors."""
        self.model.eval()
        self.set_arch(arch)
        if calibration is None:
            calibration = self.calibration_batches()
        total = count = 0.0
        with preserved_bn_stats(self.model):
            with self.autocast():  # the statistics of the arithmetic it is scored in
                recalibrate_bn(self.model, calibration)
            for batch in batches:
                x, y = self.to_device(batch)
                with self.autocast():
                    logits = self.model(x)
                n = float(len(y)) if hasattr(y, "__len__") else 1.0
                total += as_number(score(logits, y), what, arch) * n
                count += n
        return total / max(count, 1.0)

    def checkpointables(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer} if self.optimizer is not None else {}


def real_number(value: Any) -> float | None:
    """``value`` as a float when it is a real number or a one-element real tensor, else None."""
    if isinstance(value, torch.Tensor):
        if value.numel() == 1 and not value.is_complex() and value.dtype != torch.bool:
            return float(value.item())
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return None


def as_number(value: Any, what: str, arch: Mapping[str, Any]) -> float:
    """``value`` (a real number or a one-element tensor) as a finite float; ``what`` and
    ``arch`` name it in the error otherwise."""
    number = real_number(value)
    if number is None:
        raise TypeError(
            f"{what} returned a {type(value).__name__}; it must return a number: a float "
            "or a one-element tensor"
        )
    if not math.isfinite(number):
        raise ValueError(f"{what} is {number} for architecture {dict(arch)}")
    return number


def check_bn_batches(value: Any) -> int:
    """``bn_batches`` checked: an int >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"bn_batches must be an int >= 0 (batches to recalibrate BatchNorm on; 0: "
            f"none), got {value!r}"
        )
    return value


def replace_for_sampling(module: nn.Module, trainer: Any) -> nn.Module | None:
    """The hook's answer: sampling modules for this plugin's trainers, ``None`` otherwise."""
    trainer = trainer if trainer is not None else current_trainer()
    if not isinstance(trainer, SamplingTrainer):
        return None
    if isinstance(module, LayerChoice):
        return SampledLayerChoice(module)
    if isinstance(module, InputChoice):
        return SampledInputChoice(module)
    return None
