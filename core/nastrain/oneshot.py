"""Shared mechanics of one-shot trainers: the supernet's data, epoch loop, progress,
reporting, checkpoints and seeding, written once for every one-shot plugin.

An algorithm (DARTS, ENAS, SPOS, ...) subclasses :class:`SupernetTrainer` and
writes only what is its own: ``search_step`` (one step on a batch of the weight
half and one of the architecture half), ``checkpointables`` (what else to save),
``epoch_record`` (what to remember per epoch) and ``export``. An algorithm whose
epoch is not a walk over (weight batch, architecture batch) pairs (ENAS trains the
weights over the weight half, then its controller over the architecture half)
overrides ``epoch_steps`` and ``steps_per_epoch`` instead of ``search_step``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, SubsetRandomSampler

from nastrain import plugins
from nastrain.mutables import LayerChoice
from nastrain.reporting import report_intermediate_result
from nastrain.seeding import rng_state, seed_everything, set_rng_state
from nastrain.serialization import SCHEMA_VERSION, dumps, loads
from nastrain.space import SearchSpace
from nastrain.trainer import BaseOneShotTrainer
from nastrain.utils import REWRITE_MARK

__all__ = ["CheckpointMeta", "SupernetTrainer", "read_checkpoint", "rng_state", "set_rng_state"]

logger = logging.getLogger("nastrain")

#: Set to ``0`` to keep plugins from rewriting supernets (``nastrain_prepare_model``).
REWRITE_ENV = "NASTRAIN_REWRITE"

#: The one file of a checkpoint, in the checkpoint directory.
CHECKPOINT_FILE = "checkpoint.pt"
#: What ``save_checkpoint`` writes before it atomically renames the file into place.
CHECKPOINT_TMP = CHECKPOINT_FILE + ".tmp"
#: The JSON half of the two-file checkpoints of earlier releases (refused, not resumed).
LEGACY_CHECKPOINT_META = "checkpoint.json"
#: The ``"format"`` entry that marks a torch file as a nastrain checkpoint.
CHECKPOINT_FORMAT = "nastrain.oneshot-checkpoint"
_CHECKPOINT_KEYS = ("format", "epoch", "meta", "model", "extra", "rng")


@attrs.frozen(kw_only=True)
class CheckpointMeta:
    """The JSON-ready part of a checkpoint (epoch, trainer, space, Python's and NumPy's RNG
    states, history), stored as a JSON string under ``"meta"`` in ``checkpoint.pt``."""

    trainer: str
    epoch: int
    space: SearchSpace
    python_rng: list[Any]
    numpy_rng: list[Any] | None = None
    history: list[dict[str, Any]] = attrs.field(factory=list)
    schema_version: int = SCHEMA_VERSION


def _resolve_device(device: Any) -> torch.device:
    """``device`` as a ``torch.device`` (``None``: CUDA when available, else the CPU); a device
    this machine does not have is refused here, when the trainer is built."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(f"device {device!r} is not a device torch knows: {exc}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            built = "with" if torch.backends.cuda.is_built() else "without"
            raise ValueError(
                f"device {device!r} asks for CUDA, but CUDA is not available on this machine "
                f"(torch {torch.__version__}, built {built} CUDA); pass device='cpu' or leave "
                "device unset"
            )
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(
                f"device {device!r} does not exist: this machine has {count} CUDA device(s)"
            )
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} asks for MPS, which is not available on this machine")
    return resolved


def _rewritable_modules(model: nn.Module) -> list[nn.Module]:
    """The candidates of ``model``'s layer choices and the modules marked rewritable."""
    found: dict[int, nn.Module] = {}
    for module in model.modules():
        if isinstance(module, LayerChoice):
            for candidate in module.candidates:
                found.setdefault(id(candidate), candidate)
        elif getattr(module, REWRITE_MARK, False):
            found.setdefault(id(module), module)
    return list(found.values())


def strided_pointwise_convolutions(model: nn.Module) -> list[str]:
    """The names of ``model``'s strided 1x1 ``nn.Conv2d`` modules (unsafe in channels-last on
    a CPU: see :meth:`SupernetTrainer.prepare_model`)."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d)
        and module.kernel_size == (1, 1)
        and module.stride != (1, 1)
    ]


def _check_checkpoint_dir(directory: Path) -> None:
    """Refuse, without creating anything, a ``checkpoint_dir`` that cannot become a writable
    folder: a file, a path under a file, or a folder (or nearest existing parent) not writable."""
    existing = directory
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == directory else f"lies under {existing}, which is a file"
        raise NotADirectoryError(
            f"checkpoint_dir {directory} {where}, not a folder; pass a folder to write "
            "checkpoints into"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is" if existing == directory else f"would be created in {existing}, which is"
        raise PermissionError(
            f"checkpoint_dir {directory} {what} not writable; checkpoints could not be saved"
        )


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; elsewhere a no-op)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_batch(batch: Any, what: str) -> None:
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        got = type(batch).__name__ + (
            f" of length {len(batch)}" if hasattr(batch, "__len__") else ""
        )
        raise TypeError(
            f"{what} must yield (input, target) pairs, but a batch is a {got}; wrap the data in "
            "a Dataset whose items are (x, y)"
        )


class _Meter:
    """Running means of the step metrics of one epoch, each over the steps that report it
    (the steps of one epoch may report different metrics, e.g. ENAS's two phases)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def update(self, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
            self.counts[key] = self.counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        return {key: total / self.counts[key] for key, total in self.sums.items()}


class SupernetTrainer(BaseOneShotTrainer):
    """Base class of one-shot trainers that train a supernet epoch by epoch.

    It reads the search space off ``model`` (a model without choices is an
    error), splits ``dataset`` into a weight half and an architecture half (as
    in DARTS and ENAS; ``valid_dataset``, when given, is the architecture
    data instead), runs ``num_epochs`` epochs of :meth:`search_step` over
    ``zip(weight batches, architecture batches)`` with a progress bar, reports
    each epoch's mean metrics with ``report_intermediate_result``, keeps them in
    :attr:`history`, and writes a checkpoint to ``checkpoint_dir`` after every
    epoch (one file, replaced atomically: see :meth:`save_checkpoint`). A
    trainer built with a ``checkpoint_dir`` that holds a checkpoint resumes from
    it in :meth:`fit`: same seed, same result as a run that was never
    interrupted. ``seed=None`` leaves torch's global generator as the user
    seeded it (the data order is drawn from it); a ``device`` this machine lacks
    and a ``checkpoint_dir`` that cannot be written are refused when the trainer
    is built.

    Subclasses call ``super().__init__`` first, then replace the choices,
    build their optimizers, and implement :meth:`search_step` (or, for an epoch
    of another shape, :meth:`epoch_steps` and :meth:`steps_per_epoch`),
    :meth:`checkpointables` and ``export``.
    """

    #: The registered name, recorded in checkpoints.
    name = "supernet"

    def __init__(
        self,
        model: nn.Module,
        *,
        loss: Callable[[Any, Any], torch.Tensor],
        metrics: Callable[[Any, Any], Mapping[str, float]] | None,
        num_epochs: int,
        dataset: Dataset,
        valid_dataset: Dataset | None = None,
        batch_size: int = 64,
        workers: int = 0,
        device: Any = None,
        log_frequency: int | None = None,
        seed: int | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        progress: bool | None = None,
        channels_last: bool | None = None,
        rewrite_model: bool = True,
    ) -> None:
        cls = type(self)
        if (
            cls.search_step is SupernetTrainer.search_step
            and cls.epoch_steps is SupernetTrainer.epoch_steps
        ):
            raise TypeError(
                f"{cls.__qualname__} cannot be instantiated: it implements neither search_step() "
                "nor epoch_steps(), one of which a SupernetTrainer requires"
            )
        if isinstance(num_epochs, bool) or not isinstance(num_epochs, int) or num_epochs < 1:
            raise ValueError(f"num_epochs must be an int >= 1, got {num_epochs!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.space = SearchSpace.from_model(model)
        if not self.space.choices:
            raise ValueError(
                f"{type(self).__name__}: the model has no LayerChoice or InputChoice, so there "
                "is nothing to search; train it with a classic trainer instead"
            )
        self.device = _resolve_device(device)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        if self.checkpoint_dir is not None:
            _check_checkpoint_dir(self.checkpoint_dir)
        self.seed = seed
        if seed is not None:
            seed_everything(seed)
        self.model = model
        self.loss = loss
        self.metrics = metrics
        self.num_epochs = num_epochs
        self.batch_size = batch_size
        self.workers = workers
        self.log_frequency = log_frequency
        self.progress = progress
        if channels_last not in (None, True, False):
            raise ValueError(f"channels_last must be None, True or False, got {channels_last!r}")
        #: What the user asked for (``None``: chosen in :meth:`prepare_model`).
        self.channels_last_requested = channels_last
        #: Whether inputs and the model are in the channels-last memory format (set by
        #: :meth:`prepare_model`).
        self.channels_last = bool(channels_last)
        #: Whether :meth:`prepare_model` lets plugins rewrite the supernet
        #: (``nastrain_prepare_model``); ``NASTRAIN_REWRITE=0`` turns it off too.
        self.rewrite_model = rewrite_model
        #: The modules plugins may rewrite: the candidates of every ``LayerChoice``, plus the
        #: modules their owner marked with :func:`nastrain.utils.allow_rewrite`.
        self.rewritable_modules: list[nn.Module] = _rewritable_modules(model)
        #: One record per finished epoch: ``epoch``, ``metrics`` and what the algorithm adds.
        self.history: list[dict[str, Any]] = []
        self.epoch = 0  # epochs completed
        # Without a seed, the data order is drawn from torch's global generator (never reseeded
        # here), so a user's own torch.manual_seed() still makes the run reproducible.
        if seed is None:
            seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
        self.data_generator = torch.Generator()
        self.data_generator.manual_seed(seed)
        self.train_loader, self.valid_loader = self._loaders(dataset, valid_dataset)

    # --- data ---------------------------------------------------------------------------

    def _loaders(
        self, dataset: Dataset, valid_dataset: Dataset | None
    ) -> tuple[DataLoader, DataLoader]:
        for what, data in (("dataset", dataset), ("valid_dataset", valid_dataset)):
            if data is not None and not hasattr(data, "__getitem__"):
                raise TypeError(f"{what} must be a torch Dataset, got {type(data).__name__}")
        common = {
            "batch_size": self.batch_size,
            "num_workers": self.workers,
            "generator": self.data_generator,
            "persistent_workers": self.workers > 0,
            "pin_memory": self.device.type == "cuda",
        }
        self._valid_name = "dataset" if valid_dataset is None else "valid_dataset"
        if valid_dataset is None:
            n = len(dataset)  # type: ignore[arg-type]
            if n < 2:
                raise ValueError(f"dataset has {n} item(s); it is split in halves, so it needs 2+")
            split = n // 2
            train = DataLoader(
                dataset, sampler=SubsetRandomSampler(range(split), self.data_generator), **common
            )
            valid = DataLoader(
                dataset,
                sampler=SubsetRandomSampler(range(split, n), self.data_generator),
                **common,
            )
        else:
            train = DataLoader(dataset, shuffle=True, **common)
            valid = DataLoader(valid_dataset, shuffle=True, **common)
        return train, valid

    def batches(self, half: Literal["train", "valid"]) -> Iterator[Any]:
        """The batches of one half of the data for one pass (``"train"``: the weight half,
        ``"valid"``: the architecture half), each checked to be an (input, target) pair and
        moved to :attr:`device`.

        The loader's iterator is created at once, as ``zip`` over the loaders would.
        """
        if half == "train":
            return self._checked(iter(self.train_loader), "dataset")
        if half == "valid":
            return self._checked(iter(self.valid_loader), self._valid_name)
        raise ValueError(f"half must be 'train' or 'valid', got {half!r}")

    def _checked(self, batches: Iterator[Any], what: str) -> Iterator[Any]:
        for i, batch in enumerate(batches):
            if i == 0:
                _check_batch(batch, what)
            yield self.to_device(batch)

    def to_device(self, batch: Any) -> Any:
        """Move a batch (tensors, or tuples/lists/dicts of them) to :attr:`device`."""
        if isinstance(batch, torch.Tensor):
            batch = batch.to(self.device, non_blocking=True)
            if self.channels_last and batch.dim() == 4:
                batch = batch.contiguous(memory_format=torch.channels_last)
            return batch
        if isinstance(batch, (tuple, list)):
            return type(batch)(self.to_device(item) for item in batch)
        if isinstance(batch, dict):
            return {key: self.to_device(value) for key, value in batch.items()}
        return batch

    def prepare_model(self) -> None:
        """Move the (relaxed) model to :attr:`device`, let plugins rewrite it
        (``nastrain_prepare_model``, e.g. the CPU kernels of ``nastrain-cpu``), and choose
        and apply the memory format.

        ``channels_last=None`` picks the channels-last format on a CPU for a model with
        convolutions (the library's NAS convolutions are much faster in it), unless a strided
        1x1 convolution is left after the rewrites: torch's CPU channels-last backward of one
        aborts the process on some input sizes (torch 2.14.1, e.g. an 8x10 input), so such a
        model trains in the contiguous format, and ``channels_last=True`` is refused for it.
        Parameters keep their identity, so optimizers built on them stay valid.
        Subclasses call this once their choices are replaced.
        """
        self.model.to(self.device)
        on_cpu = self.device.type == "cpu"
        requested = self.channels_last_requested
        self.channels_last = (
            bool(requested)
            if requested is not None
            else on_cpu and any(isinstance(m, nn.Conv2d) for m in self.model.modules())
        )
        if self.rewrite_model and os.environ.get(REWRITE_ENV, "1").strip() not in ("0", ""):
            done = plugins.call_prepare_model(
                self, self.model, self.device, tuple(self.rewritable_modules)
            )
            for plugin, counts in done.items():
                rewritten = {key: n for key, n in counts.items() if n}
                if rewritten:
                    logger.info("%s rewrote the supernet: %s", plugin, rewritten)
        hazards = strided_pointwise_convolutions(self.model) if on_cpu else []
        if hazards and self.channels_last:
            if requested:
                raise ValueError(
                    f"channels_last=True on a CPU: torch's channels-last backward of a strided 1x1 "
                    f"convolution aborts the process on some input sizes, and {hazards} are "
                    "strided 1x1 convolutions no plugin rewrote; pass channels_last=False"
                )
            self.channels_last = False
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def compute_metrics(self, logits: Any, target: Any) -> dict[str, float]:
        """The user's ``metrics(logits, target)`` as a dict of floats (empty without one)."""
        if self.metrics is None:
            return {}
        result = self.metrics(logits, target)
        if not isinstance(result, Mapping):
            result = {"metric": result}
        return {key: float(value) for key, value in result.items()}

    # --- what an algorithm writes -----------------------------------------------------------

    def search_step(self, train_batch: Any, valid_batch: Any) -> dict[str, float]:
        """One search step on a batch of each half; returns metrics, at least ``"loss"``
        (checked to be finite). What the default :meth:`epoch_steps` runs."""
        raise TypeError(
            f"{type(self).__qualname__} overrides epoch_steps(), which does not call search_step()"
        )

    def epoch_steps(self) -> Iterator[dict[str, float]]:
        """Run one epoch's steps, yielding each step's metrics (a ``"loss"`` among them is
        checked to be finite; metrics are averaged over the steps that report them).

        The default is :meth:`search_step` over ``zip(weight batches, architecture
        batches)``. An algorithm with an epoch of another shape overrides this and
        :meth:`steps_per_epoch`, and draws its batches from :meth:`batches`.
        """
        for train_batch, valid_batch in zip(self.batches("train"), self.batches("valid")):
            yield self.search_step(train_batch, valid_batch)

    def steps_per_epoch(self) -> int:
        """How many steps :meth:`epoch_steps` yields per epoch (the progress bar's total)."""
        return min(len(self.train_loader), len(self.valid_loader))

    def checkpointables(self) -> dict[str, Any]:
        """Objects with ``state_dict``/``load_state_dict`` to checkpoint beyond the model
        (optimizers, schedulers, architecture parameters, controllers)."""
        return {}

    def epoch_record(self) -> dict[str, Any]:
        """JSON-ready extras for this epoch's :attr:`history` record."""
        return {}

    # --- the loop ----------------------------------------------------------------------------

    def _progress_enabled(self) -> bool:
        if self.progress is not None:
            return bool(self.progress)
        return sys.stderr.isatty()

    def fit(self) -> None:
        """Search for ``num_epochs`` epochs, resuming from ``checkpoint_dir`` if it holds a
        checkpoint (a half-written one is ignored with a warning: the last whole one is used).

        A ``checkpoint_dir`` that cannot be written is reported here, before any training.
        """
        if self.checkpoint_dir is not None:
            self._prepare_checkpoint_dir(self.checkpoint_dir)
            self._resume(self.checkpoint_dir)
        progress = None
        if self._progress_enabled():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[status]}"),
                console=Console(stderr=True),
            )
            progress.start()
        try:
            while self.epoch < self.num_epochs:
                self._run_epoch(progress)
        finally:
            if progress is not None:
                progress.stop()

    def _run_epoch(self, progress: Any) -> None:
        epoch = self.epoch
        meter = _Meter()
        steps = self.steps_per_epoch()
        task = None
        if progress is not None:
            task = progress.add_task(f"epoch {epoch + 1}/{self.num_epochs}", total=steps, status="")
        self.model.train()
        for step, metrics in enumerate(self.epoch_steps()):
            loss = metrics.get("loss")
            if loss is not None and not math.isfinite(loss):
                kept = ""
                if self.checkpoint_dir is not None and epoch > 0:
                    kept = f"; the checkpoint after epoch {epoch} is kept in {self.checkpoint_dir}"
                raise FloatingPointError(
                    f"{type(self).__name__}: the loss became {loss} at epoch {epoch + 1}, step "
                    f"{step + 1}{kept}; lower the learning rate or check the data"
                )
            meter.update(metrics)
            status = "  ".join(f"{k} {v:.4g}" for k, v in meter.means().items())
            if task is not None:
                progress.update(task, advance=1, status=status)
            if self.log_frequency and (step + 1) % self.log_frequency == 0:
                logger.info(
                    "epoch %d/%d step %d/%d: %s",
                    epoch + 1,
                    self.num_epochs,
                    step + 1,
                    steps,
                    status,
                )
        self.after_epoch()
        means = meter.means()
        record = {"epoch": epoch + 1, "metrics": means, **self.epoch_record()}
        self.history.append(record)
        self.epoch = epoch + 1
        if means:
            default = next((v for k, v in means.items() if k != "loss"), means.get("loss", 0.0))
            report_intermediate_result({"default": default, **means})
        if self.checkpoint_dir is not None:
            self.save_checkpoint(self.checkpoint_dir)

    def after_epoch(self) -> None:
        """Runs after each epoch's steps, before its record and checkpoint (e.g. schedulers)."""

    # --- checkpoints -------------------------------------------------------------------------

    @staticmethod
    def _prepare_checkpoint_dir(directory: Path) -> None:
        """Create ``directory`` and check a file can be written there (read-only file
        systems and permissions alike), naming the folder when not."""
        _check_checkpoint_dir(directory)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=directory, prefix=".write-test-"):
                pass
        except OSError as exc:
            raise PermissionError(
                f"checkpoint_dir {directory} is not writable ({exc.strerror or exc}); "
                "checkpoints could not be saved"
            ) from None

    def _resume(self, directory: Path) -> None:
        path = directory / CHECKPOINT_FILE
        half_written = directory / CHECKPOINT_TMP
        if half_written.exists():
            if path.exists():
                self.load_checkpoint(directory)
                logger.warning(
                    "%s: ignored %s, a checkpoint whose writing was interrupted; resumed %s "
                    "from the last whole checkpoint, %s, after epoch %d",
                    directory,
                    half_written.name,
                    self.name,
                    path.name,
                    self.epoch,
                )
            else:
                logger.warning(
                    "%s: ignored %s, a checkpoint whose writing was interrupted; there is no "
                    "whole checkpoint, so %s starts from the first epoch",
                    directory,
                    half_written.name,
                    self.name,
                )
            half_written.unlink(missing_ok=True)
        elif path.exists():
            self.load_checkpoint(directory)
            logger.info("resumed %s from %s after epoch %d", self.name, directory, self.epoch)
        elif (directory / LEGACY_CHECKPOINT_META).exists():
            raise ValueError(_legacy_message(directory / LEGACY_CHECKPOINT_META))

    def save_checkpoint(self, directory: str | os.PathLike[str]) -> Path:
        """Write the trainer's state after :attr:`epoch` epochs into ``directory``, atomically.

        One file, ``checkpoint.pt``, written by ``torch.save`` and readable with
        ``weights_only=True``: the tensors (model, :meth:`checkpointables`, torch's
        and the data order's RNG states) and, as a JSON string, a
        :class:`CheckpointMeta` (epoch, trainer, space, Python's and NumPy's RNG
        states, history). It is written to ``checkpoint.pt.tmp``, flushed to disk
        (``fsync``), renamed over the previous checkpoint in one ``os.replace`` and
        the folder is synced, so a crash at any moment leaves either the previous
        checkpoint or the new one whole, never a mix.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch_rng, python_rng, numpy_rng = rng_state()
        meta = CheckpointMeta(
            trainer=self.name,
            epoch=self.epoch,
            space=self.space,
            python_rng=python_rng,
            numpy_rng=numpy_rng,
            history=self.history,
        )
        state = {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "meta": dumps(meta),
            "model": self.model.state_dict(),
            "extra": {key: obj.state_dict() for key, obj in self.checkpointables().items()},
            "rng": {**torch_rng, "data": self.data_generator.get_state()},
        }
        tmp = directory / CHECKPOINT_TMP
        with open(tmp, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, directory / CHECKPOINT_FILE)
        _fsync_directory(directory)
        return directory

    def load_checkpoint(self, directory: str | os.PathLike[str]) -> None:
        """Restore what :meth:`save_checkpoint` wrote into ``directory``.

        Refuses, with a ``ValueError`` naming the file and what is wrong with it, a
        checkpoint of another trainer or space and a file that is not a whole
        nastrain checkpoint (empty, truncated, foreign, of the older two-file
        format, or holding pickled objects, which are never unpickled). The file's
        structure, trainer and space are checked before the trainer is changed.
        """
        directory = Path(directory)
        path = directory / CHECKPOINT_FILE
        state, meta = _read_checkpoint(path, map_location=self.device)
        if meta.trainer != self.name:
            raise ValueError(
                f"{directory} holds a checkpoint of trainer {meta.trainer!r}, not {self.name!r}"
            )
        _check_same_space(meta.space, self.space, directory)
        if state["epoch"] != meta.epoch:
            raise ValueError(
                f"{path}: its tensors are from epoch {state['epoch']} but its metadata from "
                f"epoch {meta.epoch}; the file is not one checkpoint"
            )
        checkpointables = self.checkpointables()
        missing = sorted(set(checkpointables) - set(state["extra"]))
        if missing:
            raise ValueError(
                f"{path} lacks the state of {', '.join(map(repr, missing))}; it was written by "
                "a trainer configured otherwise"
            )
        rng = {k: v.cpu() for k, v in state["rng"].items()}
        if "torch" not in rng or "data" not in rng:
            raise ValueError(f"{path} lacks the RNG states ('torch', 'data') of a checkpoint")
        what = "the model"
        try:
            self.model.load_state_dict(state["model"])
            for key, obj in checkpointables.items():
                what = repr(key)
                obj.load_state_dict(state["extra"][key])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ValueError(f"{path}: the saved state of {what} does not fit: {exc}") from None
        self.data_generator.set_state(rng.pop("data"))
        set_rng_state(rng, meta.python_rng, meta.numpy_rng)
        self.history = list(meta.history)
        self.epoch = meta.epoch


def read_checkpoint(path: str | os.PathLike[str], *, map_location: Any = "cpu") -> dict[str, Any]:
    """The contents of a one-shot checkpoint file, read with ``weights_only=True``.

    A ``ValueError`` naming ``path`` says what is wrong with a file that is not a
    whole nastrain checkpoint: empty, truncated or corrupt, holding pickled
    objects (refused unread: unpickling can run code), foreign (a torch file
    without nastrain's keys), of the older two-file format, or with metadata
    that is not a JSON object of :class:`CheckpointMeta`'s fields.
    """
    return _read_checkpoint(path, map_location=map_location)[0]


def _read_checkpoint(
    path: str | os.PathLike[str], *, map_location: Any
) -> tuple[dict[str, Any], CheckpointMeta]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint file there")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty, not a checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = next(
            (line.strip() for line in str(exc).splitlines() if "WeightsUnpickler" in line),
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
        )
        raise ValueError(
            f"{path} is not a checkpoint torch can read safely: it holds pickled objects "
            f"beyond tensors and plain containers, or is no torch file; it was not unpickled, "
            f"since that could run code ({detail})"
        ) from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, KeyError, ...
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ValueError(
            f"{path} is truncated or corrupt, not a whole torch file "
            f"({type(exc).__name__}: {first[:200]})"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(
            f"{path} is not a nastrain checkpoint: it holds a {type(state).__name__}, not the "
            "dict of a checkpoint"
        )
    if "format" not in state and {"epoch", "model", "extra", "rng"} <= set(state):
        raise ValueError(_legacy_message(path))
    missing = [key for key in _CHECKPOINT_KEYS if key not in state]
    if missing:
        raise ValueError(
            f"{path} is not a nastrain checkpoint: it is a torch file without the key(s) "
            f"{', '.join(map(repr, missing))}"
        )
    if state["format"] != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a nastrain one-shot checkpoint: its format is {state['format']!r}, "
            f"not {CHECKPOINT_FORMAT!r}"
        )
    for key, kind in (("epoch", int), ("meta", str), ("model", dict), ("extra", dict)):
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise ValueError(
                f"{path} is not a whole nastrain checkpoint: {key!r} is a "
                f"{type(state[key]).__name__}, not a {kind.__name__}"
            )
    if not isinstance(state["rng"], dict) or not all(
        isinstance(v, torch.Tensor) for v in state["rng"].values()
    ):
        raise ValueError(f"{path} is not a whole nastrain checkpoint: 'rng' is not tensors")
    return state, _checkpoint_meta(state["meta"], path)


def _checkpoint_meta(text: str, path: Path) -> CheckpointMeta:
    what = f"checkpoint metadata in {path}"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid {what}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"invalid {what}: a JSON {type(data).__name__} where an object was expected"
        )
    return loads(text, CheckpointMeta, what=what)


def _legacy_message(path: Path) -> str:
    return (
        f"{path} is a checkpoint of the older two-file format (checkpoint.pt beside "
        "checkpoint.json), which this nastrain does not resume; finish that search with the "
        "nastrain that started it, or delete the folder's checkpoint files to start again"
    )


def _check_same_space(saved: SearchSpace, current: SearchSpace, directory: Path) -> None:
    by_label = {choice.label: choice for choice in saved.choices}
    for choice in current.choices:
        other = by_label.pop(choice.label, None)
        if other is None:
            raise ValueError(
                f"{directory} is a checkpoint of another search space: it has no choice "
                f"{choice.label!r}"
            )
        if other != choice:
            raise ValueError(
                f"{directory} is a checkpoint of another search space: choice {choice.label!r} "
                f"differs ({other} there, {choice} here)"
            )
    if by_label:
        raise ValueError(
            f"{directory} is a checkpoint of another search space: it has choice "
            f"{next(iter(by_label))!r}, which this model lacks"
        )


def json_floats(values: Iterable[float]) -> list[float]:
    """Round floats for JSON records (6 significant digits are plenty to plot)."""
    return [float(f"{v:.6g}") for v in values]
