"""Shared mechanics of one-shot trainers: the supernet's data, epoch loop, progress,
logging, reporting, checkpoints and seeding, written once for every one-shot plugin.

An algorithm (DARTS, ENAS, SPOS, GDAS, ...) subclasses :class:`SupernetTrainer` and
writes only what is its own:

- ``search_step(train_batch, valid_batch)``: one step of the search. An epoch is one
  walk over the weight half, a step per batch, each paired with a batch of the
  architecture half (``pair_batches = False``: the weight half alone, as single-path
  training does);
- optionally ``architecture_step(valid_batch)``: a second phase of each epoch, one step
  per batch of the architecture half (ENAS trains its controller there);
- ``arch_parameters()``, ``checkpointables()`` (what else to save),
  ``epoch_record()`` (what to remember per epoch), ``after_epoch()`` and ``export()``.

The nastrain-only keyword options every such trainer takes (seed, checkpoint folder,
progress bar, memory format, model rewrites, learning-rate scheduler) are one record,
:class:`OneShotOptions`; ``docs/writing-a-one-shot-algorithm.md`` builds a complete
trainer on this class.
"""

from __future__ import annotations

import abc
import contextlib
import datetime
import difflib
import inspect
import json
import logging
import math
import numbers
import os
import pickle
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import attrs
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from nastrain import __version__, distributed, plugins
from nastrain._files import fsync_directory
from nastrain.mutables import LayerChoice
from nastrain.reporting import report_intermediate_result
from nastrain.runrecord import FORMAT as RECORD_FORMAT
from nastrain.runrecord import RunRecordWriter
from nastrain.seeding import rng_state, seed_everything, set_rng_state
from nastrain.serialization import SCHEMA_VERSION, dumps, loads
from nastrain.space import Choice, SearchSpace
from nastrain.trainer import BaseOneShotTrainer
from nastrain.utils import REWRITE_MARK, resolve_device

__all__ = [
    "CheckpointMeta",
    "OneShotOptions",
    "SupernetTrainer",
    "read_checkpoint",
]

logger = logging.getLogger("nastrain")
#: Where ``log_frequency``'s lines go when logging is configured (see ``SupernetTrainer``).
step_logger = logging.getLogger("nastrain.steps")

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
#: The split of a checkpoint without one (older releases): the first half to the weights.
_OLD_SPLIT: dict[str, Any] = {"split": "ordered", "seed": 0, "fraction": 0.5}
#: The ways ``dataset`` is split into the weight and the architecture half (``split=``).
SPLITS = ("shuffled", "ordered")
#: The names ``precision=`` takes (Lightning's) and the autocast dtype of each (``None``:
#: float32, no autocast).
PRECISIONS: dict[str, torch.dtype | None] = {
    "32": None,
    "16-mixed": torch.float16,
    "bf16-mixed": torch.bfloat16,
}
#: The device types whose float16 autocast ``precision="16-mixed"`` uses.
FLOAT16_DEVICE_TYPES = ("cuda",)


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


def _optional_int(value: Any) -> int | None:
    """``value`` as an int (a NumPy integer included), or ``None``; anything else is refused
    by the validator below."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return value


def _check_optional_int(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(f"{attribute.name} must be an int or None, got {value!r}")


def _check_optional_bool(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be True, False or None, got {value!r}")


def _check_bool(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be True or False, got {value!r}")


def _check_optional_callable(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"{attribute.name} must be a callable or None, got {value!r}")


def _check_optional_positive_int(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    _check_optional_int(instance, attribute, value)
    if value is not None and value < 1:
        raise ValueError(f"{attribute.name} must be an int >= 1 or None, got {value!r}")


def _check_split(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))}, got {value!r}")


def _check_precision(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, str) or value not in PRECISIONS:
        raise ValueError(
            f"precision must be one of {', '.join(map(repr, PRECISIONS))} (Lightning's "
            f"names), got {value!r}"
        )


def _check_split_fraction(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"split_fraction must be a number, got {value!r}")
    if not 0.0 < float(value) < 1.0:
        raise ValueError(
            f"split_fraction must be strictly between 0 and 1 (the weight half's share of "
            f"dataset), got {value!r}"
        )


def _optional_path(value: Any, name: str) -> Path | None:
    """The folder option ``name``'s ``value`` as a path: a str or os.PathLike, or None."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(
            f"{name} must be a path (str or os.PathLike) or None, got {type(value).__name__}"
        )
    return Path(value)


def _to_checkpoint_dir(value: Any) -> Path | None:
    return _optional_path(value, "checkpoint_dir")


def _to_log_dir(value: Any) -> Path | None:
    return _optional_path(value, "log_dir")


def _check_scheduler(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    missing = [
        m
        for m in ("step", "state_dict", "load_state_dict")
        if not callable(getattr(value, m, None))
    ]
    if missing:
        raise TypeError(
            f"lr_scheduler must be a learning-rate scheduler (torch.optim.lr_scheduler.*), with "
            f"step(), state_dict() and load_state_dict(); a {type(value).__name__} lacks "
            f"{', '.join(m + '()' for m in missing)}"
        )


@attrs.frozen(kw_only=True)
class OneShotOptions:
    """nastrain's own keyword options of every one-shot trainer built on
    :class:`SupernetTrainer`, beyond the NNI-compatible arguments each trainer declares.

    Give them as keywords (``DartsTrainer(..., seed=0, checkpoint_dir="runs/x")``: the
    trainer collects them into this record) or as one record
    (``DartsTrainer(..., options=OneShotOptions(seed=0))``; keywords given beside it
    replace its fields). A misspelt option is a ``TypeError`` naming the trainer and the
    key. The trainer keeps the record as ``trainer.options``; change one with
    ``attrs.evolve``.
    """

    seed: int | None = attrs.field(
        default=None, converter=_optional_int, validator=_check_optional_int
    )
    """Seeds torch, Python and NumPy when the trainer is built (the architecture parameters'
    initialisation, the data order, dropout); seed before building the model too for a fully
    reproducible run. ``None``: torch's global generator is never reseeded and the data
    order is drawn from it, so the user's own ``torch.manual_seed`` reproduces the search
    (on several processes, under torchrun, rank 0 draws a seed that seeds every rank)."""

    checkpoint_dir: Path | None = attrs.field(default=None, converter=_to_checkpoint_dir)
    """A folder to write a checkpoint into after every epoch (one file, replaced atomically);
    ``fit()`` resumes from the checkpoint there. ``None``: no checkpoints. A folder that
    cannot be written is refused when the trainer is built."""

    progress: bool | None = attrs.field(default=None, validator=_check_optional_bool)
    """A progress bar per epoch on stderr; ``None``: when stderr is a terminal."""

    channels_last: bool | None = attrs.field(default=None, validator=_check_optional_bool)
    """The channels-last memory format for inputs and the supernet; ``None``: on a CPU for a
    model with convolutions, unless a strided 1x1 convolution is left after the rewrites (see
    :meth:`SupernetTrainer.prepare_model`)."""

    rewrite_model: bool = attrs.field(default=True, validator=_check_bool)
    """Let plugins rewrite the supernet's candidates before training (the
    ``nastrain_prepare_model`` hook, e.g. the CPU kernels of ``nastrain-cpu``);
    ``NASTRAIN_REWRITE=0`` in the environment turns it off too."""

    lr_scheduler: Any = attrs.field(default=None, validator=_check_scheduler)
    """A scheduler of the weights' optimizer (so pass that optimizer too), stepped once after
    every epoch and saved in the checkpoints under ``"lr_scheduler"``."""

    log_dir: Path | None = attrs.field(default=None, converter=_to_log_dir)
    """A folder for the run record, ``run.jsonl`` (:mod:`nastrain.runrecord`: per epoch the
    metrics, each label's architecture probabilities and entropy, the architecture that
    would be exported), which ``nastrain report DIR`` draws. ``None``: the record goes to
    ``checkpoint_dir``; with neither, no record is written. A folder that cannot be written
    is refused when the trainer is built."""

    drop_last: bool = attrs.field(default=False, validator=_check_bool)
    """Drop the last batch of each half when it is smaller than ``batch_size`` (the
    ``DataLoader`` option), e.g. for batch normalisation on tiny last batches."""

    collate_fn: Callable[[list[Any]], Any] | None = attrs.field(
        default=None, validator=_check_optional_callable
    )
    """How a list of items becomes a batch (the ``DataLoader`` option); ``None``: torch's
    default collation. The batches must still be ``(input, target)`` pairs."""

    prefetch_factor: int | None = attrs.field(
        default=None, converter=_optional_int, validator=_check_optional_positive_int
    )
    """Batches each worker loads ahead (the ``DataLoader`` option); only with ``workers > 0``
    (refused otherwise). ``None``: torch's default (2 with workers)."""

    persistent_workers: bool | None = attrs.field(default=None, validator=_check_optional_bool)
    """Keep the loaders' worker processes alive from one epoch to the next instead of
    starting them afresh each epoch; ``None``: when ``workers > 0``. ``True`` needs
    ``workers > 0``."""

    split: Literal["shuffled", "ordered"] = attrs.field(default="shuffled", validator=_check_split)
    """How ``dataset`` is split into the weight half and the architecture half when no
    ``valid_dataset`` is given. ``"shuffled"``: a seeded random permutation (from ``seed``,
    or the drawn data seed, which checkpoints keep, so a resumed search has the same halves),
    so a dataset sorted by class gives halves that both hold every class. ``"ordered"``: the
    first part of the dataset and the rest, as DARTS, ENAS and NNI split."""

    split_fraction: float = attrs.field(default=0.5, validator=_check_split_fraction)
    """The share of ``dataset`` in the weight half (the rest is the architecture half),
    strictly between 0 and 1; each half gets at least one item."""

    precision: str = attrs.field(default="32", validator=_check_precision)
    """The arithmetic of the search's forward and backward passes, with Lightning's names:
    ``"32"`` (float32), ``"bf16-mixed"`` (``torch.autocast`` to bfloat16: on CPUs and on GPUs
    that support it) or ``"16-mixed"`` (autocast to float16 with a ``torch.amp.GradScaler``:
    GPUs only). Parameters, optimizer states and architecture parameters stay float32; each
    algorithm says which of its passes run in the lower precision."""

    find_unused_parameters: bool | None = attrs.field(default=None, validator=_check_optional_bool)
    """On several processes (torchrun), whether the supernet's ``DistributedDataParallel``
    looks for the weights a step left unused (torch's option of that name), which it must
    where a step runs one path of the supernet. ``None``: the algorithm's
    :attr:`SupernetTrainer.find_unused_parameters` (``True``; DARTS, whose every step runs
    every candidate, ``False``). ``True`` for a space whose forward pass leaves weights
    unused (DDP's error then says so). No effect in one process."""

    @classmethod
    def names(cls) -> list[str]:
        """The options' names, in declaration order."""
        return [field.name for field in attrs.fields(cls)]


def resolve_options(
    trainer: type, options: OneShotOptions | None, kwargs: Mapping[str, Any]
) -> OneShotOptions:
    """The options of a ``trainer`` built with ``options=`` and/or option keywords
    ``kwargs``; an unknown keyword is a ``TypeError`` naming the trainer and the key and
    listing what the trainer takes."""
    names = OneShotOptions.names()
    unknown = [key for key in kwargs if key not in names]
    if unknown:
        key = unknown[0]
        own = _own_arguments(trainer)
        close = difflib.get_close_matches(key, [*own, *names], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TypeError(
            f"{trainer.__qualname__}() got an unexpected keyword argument {key!r}{hint}; it "
            f"takes {', '.join(own)}, and the one-shot options {', '.join(names)} "
            "(nastrain.oneshot.OneShotOptions)"
        )
    if options is None:
        return OneShotOptions(**kwargs)
    if not isinstance(options, OneShotOptions):
        raise TypeError(
            f"{trainer.__qualname__}: options must be a nastrain.oneshot.OneShotOptions, got "
            f"{type(options).__name__}"
        )
    return attrs.evolve(options, **kwargs) if kwargs else options


def _own_arguments(trainer: type[Any]) -> list[str]:
    """The named arguments of ``trainer``'s constructor after the model."""
    try:
        # __init__'s, not the class's: on Python 3.10 that is BaseTrainer.__new__'s (*args).
        parameters = list(inspect.signature(trainer.__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        return []
    return [
        p.name
        for p in parameters[1:]
        if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device``; a pairing that cannot work is
    refused here, when the trainer is built."""
    dtype = PRECISIONS[precision]
    if precision == "16-mixed" and device.type not in FLOAT16_DEVICE_TYPES:
        raise ValueError(
            f"precision='16-mixed' on device {str(device)!r}: float16 autocast with a loss "
            "scaler is for GPUs (cuda); on a CPU use precision='bf16-mixed' (bfloat16 needs "
            "no loss scaling) or '32'"
        )
    if (
        precision == "bf16-mixed"
        and device.type == "cuda"
        and not torch.cuda.is_bf16_supported(including_emulation=False)
    ):
        raise ValueError(
            f"precision='bf16-mixed' on device {str(device)!r}: this GPU has no bfloat16 "
            "arithmetic; use precision='16-mixed' or '32'"
        )
    return dtype


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
    a CPU: see :meth:`SupernetTrainer.prepare_model`), but for those whose
    ``channels_last_safe`` attribute is true: a replacement that never runs the library's
    strided convolution (``nastrain-cpu``'s), or a weight holder its owner computes with
    otherwise (the DARTS space's ``FactorizedReduce``)."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d)
        and module.kernel_size == (1, 1)
        and module.stride != (1, 1)
        and not getattr(module, "channels_last_safe", False)
    ]


def _rewrites_allowed() -> bool:
    """Whether ``NASTRAIN_REWRITE`` lets plugins rewrite supernets (unset: yes)."""
    value = os.environ.get(REWRITE_ENV, "1").strip().lower()
    if value in ("0", "", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(
        f"{REWRITE_ENV}={os.environ[REWRITE_ENV]!r}: expected 0/false/no/off to turn the "
        "supernet rewrites off, or 1/true/yes/on"
    )


def _check_checkpoint_dir(directory: Path, option: str = "checkpoint_dir") -> None:
    """Refuse, without creating anything, a ``checkpoint_dir`` (or ``log_dir``: ``option``)
    that cannot become a writable folder: a file, a path under a file, or a folder (or
    nearest existing parent) not writable."""
    written = "checkpoints" if option == "checkpoint_dir" else "the run record"
    existing = directory
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == directory else f"lies under {existing}, which is a file"
        raise NotADirectoryError(
            f"{option} {directory} {where}, not a folder; pass a folder to write {written} into"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is" if existing == directory else f"would be created in {existing}, which is"
        could = "could not be saved" if option == "checkpoint_dir" else "could not be written"
        raise PermissionError(f"{option} {directory} {what} not writable; {written} {could}")


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
    data instead; both are :attr:`train_data` and :attr:`valid_data`), and runs
    ``num_epochs`` epochs. An epoch is :meth:`search_step` on each batch of the
    weight half, paired with a batch of the architecture half (``pair_batches =
    False``: ``valid_batch`` is ``None`` and only the weight half is walked), then,
    for a trainer that defines it, :meth:`architecture_step` on each batch of the
    architecture half. Each epoch's mean step metrics are reported with
    ``report_intermediate_result`` and kept in :attr:`history`, with a progress bar
    (``progress``) and, every ``log_frequency`` steps, a line of the running means
    (through the ``nastrain.steps`` logger when logging is configured, else printed to
    stderr). After every epoch a checkpoint is written to ``checkpoint_dir`` (one
    file, replaced atomically: see :meth:`save_checkpoint`); a trainer built with a
    ``checkpoint_dir`` that holds one resumes from it in :meth:`fit`, ending where an
    uninterrupted run ends. Each epoch also gets a line in the run record, ``run.jsonl``
    in ``log_dir`` or else ``checkpoint_dir`` (:mod:`nastrain.runrecord`: metrics,
    architecture probabilities and entropy, the architecture that would be exported, from
    :meth:`architecture_probabilities`, :meth:`architecture_entropy`,
    :meth:`current_architecture` and :meth:`architecture_graph`), and every plugin's
    ``nastrain_on_epoch`` hears it once the epoch's checkpoint is written.

    The arguments are the NNI-compatible ones (``loss``, ``metrics``, ``num_epochs``,
    ``dataset``, ``batch_size``, ``workers``, ``device``, ``log_frequency``) and
    ``valid_dataset``; every other keyword is one of the :class:`OneShotOptions`
    (``seed``, ``checkpoint_dir``, ``progress``, ``channels_last``, ``rewrite_model``,
    ``lr_scheduler``, ``log_dir``), or ``options=`` gives them as one record. A subclass takes
    ``**options`` and passes them on. A ``device`` this machine lacks and a
    ``checkpoint_dir`` or ``log_dir`` that cannot be written are refused when the trainer
    is built.

    A subclass calls ``super().__init__`` first, then replaces the choices
    (:func:`nastrain.utils.replace_choices` or ``replace_layer_choice``), calls
    :meth:`prepare_model`, builds its optimizers, and implements
    :meth:`search_step` and ``export``; :meth:`arch_parameters`,
    :meth:`checkpointables`, :meth:`epoch_record` and :meth:`after_epoch` as it needs.
    """

    #: The registered name, recorded in checkpoints.
    name = "supernet"

    #: Whether each :meth:`search_step` gets a batch of the architecture half beside its
    #: batch of the weight half (DARTS-style alternation). ``False``: the steps walk the
    #: weight half alone and ``valid_batch`` is ``None`` (single-path training, which
    #: leaves the architecture half to :meth:`architecture_step` or ``export()``).
    pair_batches: ClassVar[bool] = True

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
        options: OneShotOptions | None = None,
        **kwargs: Any,
    ) -> None:
        #: The :class:`OneShotOptions` this trainer was built with.
        self.options = resolve_options(type(self), options, kwargs)
        if isinstance(num_epochs, bool) or not isinstance(num_epochs, int) or num_epochs < 1:
            raise ValueError(f"num_epochs must be an int >= 1, got {num_epochs!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be an int >= 0, got {workers!r}")
        if log_frequency is not None and (
            isinstance(log_frequency, bool)
            or not isinstance(log_frequency, int)
            or log_frequency < 1
        ):
            raise ValueError(
                f"log_frequency must be an int >= 1 (a line every that many steps) or None, "
                f"got {log_frequency!r}"
            )
        self.space = SearchSpace.from_model(model)
        if not self.space.choices:
            raise ValueError(
                f"{type(self).__name__}: the model has no LayerChoice or InputChoice, so there "
                "is nothing to search; train it with a classic trainer instead"
            )
        self.device = resolve_device(device)
        # torchrun's environment (WORLD_SIZE > 1) asks for one search on several processes:
        # the process group is started here, and each process takes its own GPU.
        distributed.init_from_env(self.device)
        #: The number of processes searching together (torchrun's ``WORLD_SIZE``; 1 alone)
        #: and this one's rank; files, progress and reports are rank 0's.
        self.world_size, self.rank = distributed.world_size(), distributed.rank()
        if self.world_size > 1:
            if self.device.type == "cuda" and self.device.index is None:
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            if batch_size % self.world_size:
                below = batch_size - batch_size % self.world_size
                raise ValueError(
                    f"batch_size={batch_size} is the global batch, split evenly over the "
                    f"{self.world_size} processes, which do not divide it; use a multiple of "
                    f"{self.world_size} (e.g. {below or self.world_size} or "
                    f"{below + self.world_size})"
                )
            labels = [f"{c.label}:{c.kind}:{'|'.join(_candidates(c))}" for c in self.space.choices]
            distributed.check_same_labels(labels, what="search space")
        #: The dtype the forward passes autocast to (``None``: float32, ``precision="32"``).
        self.autocast_dtype = _autocast_dtype(self.options.precision, self.device)
        #: The loss scaler of ``precision="16-mixed"`` (``None`` otherwise); checkpointed.
        self.grad_scaler: torch.amp.GradScaler | None = None
        if self.options.precision == "16-mixed":
            self.grad_scaler = torch.amp.GradScaler(self.device.type)
        self._scaler_stepped = False
        self._autocast_called = False
        self._ddp: nn.Module | None = None  # parallel_model, once built
        if self.checkpoint_dir is not None:
            _check_checkpoint_dir(self.checkpoint_dir)
        if self.options.log_dir is not None:
            _check_checkpoint_dir(self.options.log_dir, "log_dir")
        seed = self.seed
        if self.world_size > 1:
            # Every rank must draw the same halves, data order and paths: rank 0's seed (its
            # own, or one it draws) seeds every rank's generators.
            drawn = seed if seed is not None else int(torch.randint(0, 2**62, ()).item())
            seed = distributed.agree(drawn)
            if self.seed is not None and seed != self.seed:
                logger.warning(
                    "rank %d was given seed=%d, rank 0 seed=%d: every rank uses rank 0's",
                    self.rank, self.seed, seed,
                )  # fmt: skip
            seed_everything(seed)
        elif seed is not None:
            seed_everything(seed)
        self.model = model
        self.loss = loss
        self.metrics = metrics
        self.num_epochs = num_epochs
        self.batch_size = batch_size
        self.workers = workers
        self.log_frequency = log_frequency
        #: Whether inputs and the model are in the channels-last memory format (set by
        #: :meth:`prepare_model`).
        self.channels_last = bool(self.options.channels_last)
        #: The modules plugins may rewrite: the candidates of every ``LayerChoice``, plus the
        #: modules their owner marked with :func:`nastrain.utils.allow_rewrite`.
        self.rewritable_modules: list[nn.Module] = _rewritable_modules(model)
        #: One record per finished epoch: ``epoch``, ``metrics`` and what the algorithm adds.
        self.history: list[dict[str, Any]] = []
        self.epoch = 0  # epochs completed
        self._record: RunRecordWriter | None = None  # the run record, while fit() runs
        # Without a seed, the data order is drawn from torch's global generator (never reseeded
        # here), so a user's own torch.manual_seed() still makes the run reproducible.
        if seed is None:
            seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
        self.data_generator = torch.Generator()
        self.data_generator.manual_seed(seed)
        self._check_loader_options()
        self._valid_name = "dataset" if valid_dataset is None else "valid_dataset"
        self._dataset, self._valid_dataset = dataset, valid_dataset
        #: How ``dataset`` was split into the halves (saved in checkpoints, so a resumed
        #: search has the same halves): ``{"split": "shuffled" | "ordered", "seed": the
        #: permutation's seed, "fraction": split_fraction}``; ``None`` with a
        #: ``valid_dataset``, which is the architecture half instead.
        self.split_state: dict[str, Any] | None = None
        if valid_dataset is None:
            self.split_state = {
                "split": self.options.split,
                "seed": seed,
                "fraction": float(self.options.split_fraction),
            }
        self._build_data()

    # --- the options, as attributes ----------------------------------------------------------

    @property
    def seed(self) -> int | None:
        """``options.seed``."""
        return self.options.seed

    @property
    def checkpoint_dir(self) -> Path | None:
        """``options.checkpoint_dir``."""
        return self.options.checkpoint_dir

    @property
    def progress(self) -> bool | None:
        """``options.progress``."""
        return self.options.progress

    @property
    def channels_last_requested(self) -> bool | None:
        """``options.channels_last``: what the user asked for (``None``: chosen in
        :meth:`prepare_model`, whose choice is :attr:`channels_last`)."""
        return self.options.channels_last

    @property
    def rewrite_model(self) -> bool:
        """``options.rewrite_model``."""
        return self.options.rewrite_model

    @property
    def lr_scheduler(self) -> Any:
        """``options.lr_scheduler``."""
        return self.options.lr_scheduler

    @property
    def log_dir(self) -> Path | None:
        """``options.log_dir``."""
        return self.options.log_dir

    @property
    def record_dir(self) -> Path | None:
        """Where the run record (``run.jsonl``, :mod:`nastrain.runrecord`) is written:
        ``log_dir``, else ``checkpoint_dir``; ``None``: nowhere."""
        return self.options.log_dir or self.options.checkpoint_dir

    # --- what an algorithm writes -----------------------------------------------------------

    @abc.abstractmethod
    def search_step(self, train_batch: Any, valid_batch: Any) -> dict[str, float]:
        """One step of the search on a batch of the weight half and one of the architecture
        half (``None`` when :attr:`pair_batches` is ``False``), each an ``(input, target)``
        pair already on :attr:`device`, the model in training mode. Returns the step's
        metrics, at least ``"loss"`` (checked to be finite); they are averaged over the
        epoch, logged and reported."""

    def architecture_step(self, valid_batch: Any) -> dict[str, float]:
        """One step of an epoch's second phase, for algorithms that have one: after the
        search steps, this runs on every batch of the architecture half, the model in
        evaluation mode (ENAS trains its controller here). Returns metrics, as
        :meth:`search_step` does. Without an override an epoch has no second phase."""
        raise NotImplementedError  # never called: the loop runs only an override

    # --- the arithmetic of ``precision`` (what an algorithm's steps call) ----------------------

    #: Whether a weight step may leave weights unused (one path of the supernet), so that the
    #: supernet's ``DistributedDataParallel`` looks for them after each forward pass (see
    #: :attr:`parallel_model`); a trainer whose every step runs every candidate sets
    #: ``False`` and saves DDP that search. The option ``find_unused_parameters`` overrides.
    find_unused_parameters: ClassVar[bool] = True

    @property
    def parallel_model(self) -> nn.Module:
        """The module a weight step runs its forward pass through: on several processes the
        supernet in torch's ``DistributedDataParallel``, whose backward pass averages the
        weights' gradients over the ranks (in buckets, overlapping the backward pass); in
        one process, or with no weights, :attr:`model` itself.

        Built at its first use, on every rank at once (it broadcasts rank 0's weights).
        Architecture parameters are not DDP's (also those a relaxation registered in the
        model), and what an algorithm computes outside a weight step's backward pass
        (alpha's gradient, a second-order step's, a controller's) runs through :attr:`model`
        and is averaged by the algorithm (:func:`nastrain.distributed.all_reduce_mean`).
        Buffers are not synchronised per step: the loop gives every rank rank 0's after each
        epoch."""
        if self.world_size == 1:
            return self.model
        if self._ddp is None:
            self._ddp = self._wrap_ddp()
        return self._ddp

    def _wrap_ddp(self) -> nn.Module:
        arch = {id(p) for p in self.arch_parameters()}
        ignored = [name for name, p in self.model.named_parameters() if id(p) in arch]
        if not any(p.requires_grad and id(p) not in arch for p in self.model.parameters()):
            return self.model  # nothing to average (DDP refuses such a module)
        if ignored:
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.model, ignored)
        find_unused = self.options.find_unused_parameters
        return DistributedDataParallel(
            self.model,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=(
                type(self).find_unused_parameters if find_unused is None else find_unused
            ),
            forward_sync_buffers=False,
        )

    def autocast(self, enabled: bool = True) -> Any:
        """A context for a forward pass in the ``precision`` asked for: ``torch.autocast`` to
        :attr:`autocast_dtype` on :attr:`device` (``"bf16-mixed"``, ``"16-mixed"``), else
        (``"32"``, or ``enabled=False``: a pass that must stay float32) float32 arithmetic.
        Use it around the model's forward and the loss; call ``backward`` outside it."""
        self._autocast_called = True
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=enabled)

    @property
    def loss_scale(self) -> float:
        """The factor :meth:`backward` multiplies losses by (``precision="16-mixed"``'s loss
        scale; 1.0 otherwise): a gradient taken from such a backward, and not handed to
        :meth:`optimizer_step`, is divided by it before use."""
        return float(self.grad_scaler.get_scale()) if self.grad_scaler is not None else 1.0

    def backward(self, loss: torch.Tensor, inputs: Any = None) -> None:
        """``loss.backward(inputs=inputs)``, the loss scaled first under ``"16-mixed"`` (so that
        float16 gradients do not underflow); the gradients are then scaled too, until
        :meth:`unscale_` or :meth:`optimizer_step` divides them back."""
        if self.grad_scaler is not None:
            loss = self.grad_scaler.scale(loss)
        loss.backward(inputs=inputs)

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients of ``optimizer``'s parameters by the loss scale, in place (before
        clipping them); nothing unless ``"16-mixed"``. At most once per step and optimizer."""
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(optimizer)

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()`` on gradients from :meth:`backward`: under ``"16-mixed"`` the
        loss scaler's step, which unscales them (unless :meth:`unscale_` did) and skips the
        step when one of them is infinite or NaN; the loop then updates the scale once per
        search step."""
        if self.grad_scaler is None:
            optimizer.step()
            return
        self.grad_scaler.step(optimizer)
        self._scaler_stepped = True

    def _update_scaler(self) -> None:
        """After a step: the loss scaler's update (lower the scale after an overflow, raise it
        after enough clean steps), once per step that stepped an optimizer through it. After
        the first step of a mixed-precision search, a warning if the algorithm never asked
        for :meth:`autocast` (its passes then ran in float32 whatever ``precision`` says)."""
        if self.autocast_dtype is not None and not self._autocast_called:
            self._autocast_called = True  # warned once
            logger.warning(
                "%s: precision=%r has no effect: its steps never call self.autocast() (see "
                "nastrain.oneshot.SupernetTrainer.autocast), so they ran in float32",
                type(self).__name__,
                self.options.precision,
            )
        if self.grad_scaler is not None and self._scaler_stepped:
            self.grad_scaler.update()
            self._scaler_stepped = False

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture parameters the search learns (DARTS' alphas, a controller's
        weights), outside ``model.parameters()``; empty for an algorithm that learns none
        (uniform sampling)."""
        return []

    def checkpointables(self) -> dict[str, Any]:
        """Objects with ``state_dict``/``load_state_dict`` to checkpoint beyond the model
        (optimizers, architecture parameters, controllers), by a key of their own; the
        ``lr_scheduler`` option is saved under ``"lr_scheduler"`` without being listed."""
        return {}

    def epoch_record(self) -> dict[str, Any]:
        """JSON-ready extras for this epoch's :attr:`history` record."""
        return {}

    def after_epoch(self) -> None:
        """Runs after each epoch's steps, before the ``lr_scheduler`` steps and the epoch's
        record and checkpoint are written (e.g. a temperature schedule)."""

    # --- what the run record says of the architecture (nastrain.runrecord) -------------------
    # Called once per epoch, after after_epoch(), for the epoch's line of the run record and
    # the nastrain_on_epoch hook. Keep them cheap and free of random draws: a resumed search
    # writes what an uninterrupted one writes.

    def architecture_probabilities(self) -> dict[str, list[float]] | None:
        """What the search believes now of each decision: per label, one number per
        candidate of the record header's ``candidates`` (a layer choice's names in order,
        an input choice's inputs), e.g. DARTS' softmax of alpha. A label the search keeps
        no distribution of is left out. This default: ``None`` (nothing known)."""
        return None

    def architecture_entropy(self) -> dict[str, float] | None:
        """The entropy, in nats, of each decision's distribution. This default computes it
        from :meth:`architecture_probabilities`, each label's numbers normalised to sum to
        1 (exact where they are a distribution over the candidates)."""
        probabilities = self.architecture_probabilities()
        if probabilities is None:
            return None
        return {label: _entropy(values) for label, values in probabilities.items()}

    def current_architecture(self) -> dict[str, Any] | None:
        """The architecture that would be exported now, derived cheaply (an ``export()`` that
        scores candidates on data is too slow for every epoch): this default takes the most
        likely one under :meth:`architecture_probabilities` (each layer choice's most probable
        candidate, each input choice's ``n_chosen`` most probable inputs; ties to the first)
        when it covers every label, else ``None``."""
        probabilities = self.architecture_probabilities()
        if probabilities is None:
            return None
        arch: dict[str, Any] = {}
        for choice in self.space.choices:
            values = probabilities.get(choice.label)
            if values is None:
                return None
            order = sorted(range(len(values)), key=lambda i: (-values[i], i))
            if choice.kind == "layer":
                arch[choice.label] = choice.names[order[0]]
            else:
                arch[choice.label] = sorted(order[: choice.n_chosen])
        return arch

    def architecture_graph(self, architecture: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """``architecture`` drawn as cells of nodes and edges, for the report's diagrams:
        ``{"cells": {name: {"nodes": [id, ...], "edges": [[source, target, op], ...]}}}``
        (``op`` a candidate's name, or ``None`` for a plain connection), or ``None``. This
        default asks the model: the first of its modules (the model itself first) with a
        callable ``architecture_graph(architecture)`` answers (``DartsSpace`` has one); a
        module that raises is skipped with a warning, once."""
        if architecture is None:
            return None
        for module in self.model.modules():
            method = getattr(module, "architecture_graph", None)
            if not callable(method):
                continue
            try:
                graph = method(architecture)
            except Exception as exc:
                if not getattr(self, "_graph_warned", False):
                    self._graph_warned = True
                    logger.warning(
                        "%s.architecture_graph failed (%s: %s); the run record has no diagram",
                        type(module).__name__,
                        type(exc).__name__,
                        exc,
                    )
                return None
            return dict(graph) if graph is not None else None
        return None

    # --- what an algorithm calls -------------------------------------------------------------

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
        if self.rewrite_model and _rewrites_allowed():
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
            logger.warning(
                "%s trains in the contiguous memory format, slower on a CPU: %s are strided 1x1 "
                "convolutions outside the candidates, whose channels-last backward aborts the "
                "process in torch; mark the modules holding them with "
                "nastrain.utils.allow_rewrite(module) to let a plugin (nastrain-cpu) rewrite "
                "them, or pass channels_last=False to keep this format without this message",
                type(self).__name__,
                hazards,
            )
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

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

    def compute_metrics(self, logits: Any, target: Any) -> dict[str, float]:
        """The user's ``metrics(logits, target)`` as a dict of floats (empty without one)."""
        if self.metrics is None:
            return {}
        result = self.metrics(logits, target)
        if not isinstance(result, Mapping):
            result = {"metric": result}
        return {key: float(value) for key, value in result.items()}

    def steps_per_epoch(self) -> int:
        """How many steps an epoch has: search steps, plus the architecture phase's (the
        progress bar's total)."""
        train, valid = len(self.train_loader), len(self.valid_loader)
        steps = min(train, valid) if self.pair_batches else train
        return steps + (valid if self._has_architecture_phase() else 0)

    # --- data ---------------------------------------------------------------------------

    def _check_loader_options(self) -> None:
        """Refuse the DataLoader options that need worker processes when ``workers`` is 0,
        naming the option (torch's own errors do not say which trainer option is wrong)."""
        if self.workers == 0:
            for name in ("prefetch_factor", "persistent_workers"):
                if getattr(self.options, name):
                    raise ValueError(
                        f"{name}={getattr(self.options, name)!r} needs worker processes, but "
                        f"workers=0 loads the data in the main process; pass workers >= 1 or "
                        f"leave {name} unset"
                    )

    def _split_indices(self, n: int) -> tuple[list[int], list[int]]:
        """The indices of ``dataset`` (``n`` items) in the weight half and in the
        architecture half, as :attr:`split_state` says: a permutation seeded by its
        ``"seed"`` (``"shuffled"``) or the dataset's order (``"ordered"``), cut at
        ``int(n * fraction)``."""
        assert self.split_state is not None
        cut = int(n * self.split_state["fraction"])
        if n < 2 or not 0 < cut < n:
            raise ValueError(
                f"dataset has {n} item(s); it is split into a weight half and an "
                f"architecture half (split_fraction={self.split_state['fraction']}), so it "
                "needs 2+ items, enough for each half to get one"
            )
        if self.split_state["split"] == "ordered":
            order = list(range(n))
        else:
            generator = torch.Generator().manual_seed(int(self.split_state["seed"]))
            order = torch.randperm(n, generator=generator).tolist()
        return order[:cut], order[cut:]

    def _build_data(self) -> None:
        """Set :attr:`train_data`, :attr:`valid_data` and their loaders from the datasets and
        :attr:`split_state` (again after a checkpoint whose split differs is loaded)."""
        dataset, valid_dataset = self._dataset, self._valid_dataset
        for what, data in (("dataset", dataset), ("valid_dataset", valid_dataset)):
            if data is not None and not hasattr(data, "__getitem__"):
                raise TypeError(f"{what} must be a torch Dataset, got {type(data).__name__}")
        if valid_dataset is None:
            n = len(dataset)  # type: ignore[arg-type]
            train_indices, valid_indices = self._split_indices(n)
            #: The weight half and the architecture half of the data, as datasets
            #: (``Subset``s of ``dataset``, see ``split``; or ``dataset`` and
            #: ``valid_dataset``); :attr:`train_loader` and :attr:`valid_loader` walk them in
            #: a fresh random order each epoch.
            self.train_data: Dataset = Subset(dataset, train_indices)
            self.valid_data: Dataset = Subset(dataset, valid_indices)
        else:
            self.train_data, self.valid_data = dataset, valid_dataset
        self.train_loader = self._loader(self.train_data)
        self.valid_loader = self._loader(self.valid_data)

    def _loader(self, data: Dataset) -> DataLoader:
        """The ``DataLoader`` of one half: ``data`` through a ``DistributedSampler`` (this
        rank's share, in a fresh order each epoch: :meth:`_set_epoch`), in batches of this
        rank's share of ``batch_size``, with the trainer's workers and DataLoader options.

        One process is a world of one: the same sampler, whose permutation is then walked
        whole. So N processes step on the same global batches as one process does (rank r's
        k-th batch holds items r, r+N, ... of the global batch), and a search resumes on
        another number of processes. A half that N does not divide gets up to N-1 items
        repeated in its epoch's last batch (``DistributedSampler``'s padding)."""
        options = self.options
        persistent = options.persistent_workers
        extra: dict[str, Any] = {}
        if options.prefetch_factor is not None:
            extra["prefetch_factor"] = options.prefetch_factor
        sampler: DistributedSampler[Any] = DistributedSampler(
            data, num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=0
        )
        return DataLoader(
            data,
            sampler=sampler,
            batch_size=self.batch_size // self.world_size,
            drop_last=options.drop_last,
            num_workers=self.workers,
            # Seeds the workers (DataLoader draws their base seed from it).
            generator=self.data_generator,
            persistent_workers=self.workers > 0 if persistent is None else persistent,
            pin_memory=self.device.type == "cuda",
            collate_fn=options.collate_fn,
            **extra,
        )

    def _set_epoch(self) -> None:
        """Give each half's sampler this epoch's order: a seed drawn from
        :attr:`data_generator` (checkpointed, the same on every rank) and the epoch number
        (``DistributedSampler.set_epoch``)."""
        for loader in (self.train_loader, self.valid_loader):
            sampler = loader.sampler
            assert isinstance(sampler, DistributedSampler)
            sampler.seed = int(torch.randint(0, 2**62, (), generator=self.data_generator))
            sampler.set_epoch(self.epoch)

    def _batches(self, half: Literal["train", "valid"]) -> Iterator[Any]:
        """The batches of one half for one pass, each checked to be an (input, target) pair
        and moved to :attr:`device`. The loader's iterator is created at once, as ``zip``
        over the loaders would."""
        if half == "train":
            return self._checked(iter(self.train_loader), "dataset")
        return self._checked(iter(self.valid_loader), self._valid_name)

    def _checked(self, batches: Iterator[Any], what: str) -> Iterator[Any]:
        for i, batch in enumerate(batches):
            if i == 0:
                _check_batch(batch, what)
            yield self.to_device(batch)

    # --- the loop ----------------------------------------------------------------------------

    def _has_architecture_phase(self) -> bool:
        return type(self).architecture_step is not SupernetTrainer.architecture_step

    def _epoch_steps(self) -> Iterator[dict[str, float]]:
        """Run one epoch's steps, yielding each step's metrics."""
        self._set_epoch()
        self.model.train()
        if self.pair_batches:
            for train_batch, valid_batch in zip(self._batches("train"), self._batches("valid")):
                metrics = self.search_step(train_batch, valid_batch)
                self._update_scaler()
                yield metrics
        else:
            for train_batch in self._batches("train"):
                metrics = self.search_step(train_batch, None)
                self._update_scaler()
                yield metrics
        if self._has_architecture_phase():
            self.model.eval()
            for valid_batch in self._batches("valid"):
                metrics = self.architecture_step(valid_batch)
                self._update_scaler()
                yield metrics

    def _progress_enabled(self) -> bool:
        if self.rank != 0:  # one progress bar for the processes of a search: rank 0's
            return False
        if self.progress is not None:
            return bool(self.progress)
        return sys.stderr.isatty()

    def fit(self) -> None:
        """Search for ``num_epochs`` epochs, resuming from ``checkpoint_dir`` if it holds a
        checkpoint (a half-written one is ignored with a warning: the last whole one is used).

        A ``checkpoint_dir`` that cannot be written, and an ``lr_scheduler`` that schedules
        none of the trainer's optimizers, are reported here, before any training.
        """
        self._check_scheduled_optimizer()
        if self.checkpoint_dir is not None:
            self._prepare_checkpoint_dir(self.checkpoint_dir)
            self._resume(self.checkpoint_dir)  # every rank reads the same checkpoint
        self._optimizer_states_to_device()
        if self.world_size > 1:
            # Every rank starts from rank 0's model and architecture parameters (as DDP starts
            # from rank 0's module), whatever each process's own initialisation drew.
            distributed.broadcast_tensors(self._shared_state())
        self._record = None
        if self.record_dir is not None and self.rank == 0:
            self._record = RunRecordWriter(self.record_dir)
            self._record.start(self._record_header(), epoch=self.epoch)
        progress = None
        if self._progress_enabled():
            # rich's progress bar only when one is shown (a non-interactive run never loads it).
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
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            self._end_record(status, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if progress is not None:
                progress.stop()
        self._end_record("completed")

    # --- the run record ----------------------------------------------------------------------

    def _record_header(self) -> dict[str, Any]:
        """The run record's first line (see :mod:`nastrain.runrecord`)."""
        options: dict[str, Any] = {}
        for field in attrs.fields(OneShotOptions):
            value = getattr(self.options, field.name)
            if isinstance(value, Path):
                value = str(value)
            elif value is not None and not isinstance(value, (bool, int, float, str)):
                value = type(value).__name__  # e.g. the lr_scheduler's class
            options[field.name] = value
        now = time.time()
        return {
            "format": RECORD_FORMAT,
            "schema_version": SCHEMA_VERSION,
            "type": "header",
            "trainer": self.name,
            "trainer_class": f"{type(self).__module__}.{type(self).__qualname__}",
            "choices": [
                {
                    "label": choice.label,
                    "kind": choice.kind,
                    "candidates": _candidates(choice),
                    "n_chosen": choice.n_chosen,
                }
                for choice in self.space.choices
            ],
            "num_epochs": self.num_epochs,
            "batch_size": self.batch_size,
            "device": str(self.device),
            "options": options,
            "nastrain_version": __version__,
            "started": datetime.datetime.fromtimestamp(now, datetime.timezone.utc).isoformat(
                timespec="seconds"
            ),
            "time": round(now, 3),
        }

    def _epoch_entry(self, metrics: Mapping[str, float], seconds: float) -> dict[str, Any]:
        """The epoch's line of the run record, from the architecture hooks (checked)."""
        choices = {choice.label: choice for choice in self.space.choices}
        who = type(self).__name__
        probabilities: dict[str, list[float]] = {}
        for label, values in (self.architecture_probabilities() or {}).items():
            choice = choices.get(label)
            if choice is None:
                raise ValueError(
                    f"{who}.architecture_probabilities() gives label {label!r}, which the space "
                    f"lacks (its labels: {list(choices)})"
                )
            numbers = [float(v) for v in values]
            if len(numbers) != len(_candidates(choice)):
                raise ValueError(
                    f"{who}.architecture_probabilities() gives {len(numbers)} numbers for "
                    f"{label!r}, which has {len(_candidates(choice))} candidates"
                )
            probabilities[label] = json_floats(numbers)
        entropy = {
            label: json_floats([float(value)])[0]
            for label, value in (self.architecture_entropy() or {}).items()
        }
        architecture = self.current_architecture()
        if architecture is not None:
            architecture = self.space.validate(architecture)
        return {
            "type": "epoch",
            "epoch": self.epoch,
            "time": round(time.time(), 3),
            "seconds": round(seconds, 3),
            "metrics": dict(metrics),
            "probabilities": probabilities,
            "entropy": entropy,
            "architecture": architecture,
            "graph": self.architecture_graph(architecture),
        }

    def _end_record(self, status: str, error: str | None = None) -> None:
        record = self._record
        if record is None:
            return
        entry: dict[str, Any] = {
            "type": "end",
            "time": round(time.time(), 3),
            "epochs": self.epoch,
            "status": status,
        }
        if error is not None:
            entry["error"] = error
        try:
            record.write(entry, sync=True)
        except OSError as exc:
            if status == "completed":
                raise
            # The run's own error is the one to see; the record simply has no end line.
            logger.warning("could not end the run record %s: %s", record.path, exc)

    def _check_scheduled_optimizer(self) -> None:
        """Refuse an ``lr_scheduler`` built on an optimizer this trainer does not step (it
        would change nothing, silently): e.g. one built before the trainer made its own."""
        scheduled = getattr(self.lr_scheduler, "optimizer", None)
        if scheduled is None:
            return
        ours = {
            key: obj
            for key, obj in self.checkpointables().items()
            if isinstance(obj, torch.optim.Optimizer)
        }
        if not any(obj is scheduled for obj in ours.values()):
            raise ValueError(
                f"{type(self).__name__}: lr_scheduler schedules a {type(scheduled).__name__} "
                f"that this trainer does not step (its optimizers: {sorted(ours) or 'none'}); "
                "build the scheduler on the optimizer you pass to the trainer"
            )

    def _run_epoch(self, progress: Any) -> None:
        epoch = self.epoch
        started = time.monotonic()
        meter = _Meter()
        steps = self.steps_per_epoch()
        task = None
        if progress is not None:
            task = progress.add_task(f"epoch {epoch + 1}/{self.num_epochs}", total=steps, status="")
        for step, metrics in enumerate(self._epoch_steps()):
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
            if self.log_frequency and (step + 1) % self.log_frequency == 0 and self.rank == 0:
                self._log_step(progress, epoch + 1, step + 1, steps, status)
        self.after_epoch()
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        means = meter.means()
        if self.world_size > 1:
            means = distributed.mean_of(means)  # the whole batches', not this rank's share
            # Buffers (BatchNorm's running statistics) took each rank's share: rank 0's for
            # all, as DDP broadcasts them, so every rank holds the state the checkpoint holds.
            distributed.broadcast_tensors(list(self.model.buffers()))
        record = {"epoch": epoch + 1, "metrics": means, **self.epoch_record()}
        self.history.append(record)
        self.epoch = epoch + 1
        # The run record's line before the checkpoint: a search killed between the two
        # resumes from the previous checkpoint and drops this line (see RunRecordWriter).
        entry = self._epoch_entry(means, time.monotonic() - started)
        if self._record is not None:
            self._record.write(entry, sync=True)
        if self.rank != 0:  # rank 0 reports, writes the checkpoint and tells the plugins
            distributed.barrier()  # until the checkpoint is written
            return
        if means:
            default = next((v for k, v in means.items() if k != "loss"), means.get("loss", 0.0))
            report_intermediate_result({"default": default, **means})
        if self.checkpoint_dir is not None:
            self.save_checkpoint(self.checkpoint_dir)
        distributed.barrier()
        plugins.call_on_epoch(self, entry)

    def _log_step(self, progress: Any, epoch: int, step: int, steps: int, status: str) -> None:
        """The ``log_frequency`` line: through the ``nastrain.steps`` logger when logging is
        configured (a handler on it or an ancestor: the user's levels and format apply), else
        printed to stderr, as NNI users expect to see it, above the progress bar if one runs.
        Decided per line, so a user who configures logging later is never printed to twice."""
        if step_logger.hasHandlers():
            step_logger.info(
                "%s: epoch %d/%d step %d/%d: %s",
                self.name,
                epoch,
                self.num_epochs,
                step,
                steps,
                status,
            )
            return
        line = f"{self.name}: epoch {epoch}/{self.num_epochs} step {step}/{steps}: {status}"
        if progress is not None:
            progress.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=sys.stderr, flush=True)

    # --- checkpoints -------------------------------------------------------------------------

    def _optimizer_states_to_device(self) -> None:
        """Move each checkpointed optimizer's state tensors (momentum buffers, Adam's moments)
        to the device of the parameter they belong to: an optimizer the user stepped before
        handing it over keeps them where they were made, which the first step would refuse."""
        for obj in self._checkpointables().values():
            if not isinstance(obj, torch.optim.Optimizer):
                continue
            for param, state in obj.state.items():
                for key, value in state.items():
                    if isinstance(value, torch.Tensor) and value.device != param.device:
                        # Adam's "step" counter stays on the CPU where torch keeps it.
                        if key == "step" and value.dim() == 0 and value.device.type == "cpu":
                            continue
                        state[key] = value.to(param.device, non_blocking=True)

    def _shared_state(self) -> list[torch.Tensor]:
        """What every rank of a search must hold alike: the model's parameters and buffers
        and the architecture parameters."""
        seen: set[int] = set()
        tensors = []
        for t in [*self.model.parameters(), *self.model.buffers(), *self.arch_parameters()]:
            if id(t) not in seen:
                seen.add(id(t))
                tensors.append(t)
        return tensors

    def _checkpointables(self) -> dict[str, Any]:
        items = dict(self.checkpointables())
        if self.lr_scheduler is not None:
            items["lr_scheduler"] = self.lr_scheduler
        if self.grad_scaler is not None:
            items["grad_scaler"] = self.grad_scaler
        return items

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
            "extra": {key: obj.state_dict() for key, obj in self._checkpointables().items()},
            "rng": {**torch_rng, "data": self.data_generator.get_state()},
            "split": self.split_state,
        }
        tmp = directory / CHECKPOINT_TMP
        with open(tmp, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, directory / CHECKPOINT_FILE)
        fsync_directory(directory)
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
        checkpointables = self._checkpointables()
        if "grad_scaler" in checkpointables and "grad_scaler" not in state["extra"]:
            # Written with another precision: a "16-mixed" search resumes with a fresh scale.
            del checkpointables["grad_scaler"]
        missing = sorted(set(checkpointables) - set(state["extra"]))
        if missing:
            raise ValueError(
                f"{path} lacks the state of {', '.join(map(repr, missing))}; it was written by "
                "a trainer configured otherwise"
            )
        rng = {k: v.cpu() for k, v in state["rng"].items()}
        if "torch" not in rng or "data" not in rng:
            raise ValueError(f"{path} lacks the RNG states ('torch', 'data') of a checkpoint")
        self._restore_split(state.get("split", _OLD_SPLIT), path)
        what = "the model"
        try:
            self.model.load_state_dict(state["model"])
            for key, obj in checkpointables.items():
                what = repr(key)
                obj.load_state_dict(state["extra"][key])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ValueError(f"{path}: the saved state of {what} does not fit: {exc}") from None
        self.data_generator.set_state(rng.pop("data"))
        if any(key.startswith("cuda") for key in rng) and not torch.cuda.is_available():
            logger.info(
                "%s holds CUDA RNG states, but CUDA is not available here: they are ignored "
                "(the CPU's RNG states are restored)",
                path,
            )
        set_rng_state(rng, meta.python_rng, meta.numpy_rng)
        self.history = list(meta.history)
        self.epoch = meta.epoch

    def _restore_split(self, saved: Any, path: Path) -> None:
        """Use the halves a checkpoint was written with (``saved``, its ``"split"``) when
        they differ from this trainer's, so that a resumed search trains on the same
        halves; a checkpoint of a trainer with a ``valid_dataset`` keeps this one's."""
        if saved is None or self.split_state is None or saved == self.split_state:
            return
        if (
            not isinstance(saved, dict)
            or saved.get("split") not in SPLITS
            or not isinstance(saved.get("seed"), int)
            or not isinstance(saved.get("fraction"), float)
        ):
            raise ValueError(f"{path}: its 'split' is not a split of the data: {saved!r}")
        if (saved["split"], saved["fraction"]) != (
            self.split_state["split"],
            self.split_state["fraction"],
        ):
            logger.warning(
                "%s was written with split=%r, split_fraction=%r; the resumed search keeps "
                "those halves, not split=%r, split_fraction=%r",
                path,
                saved["split"],
                saved["fraction"],
                self.split_state["split"],
                self.split_state["fraction"],
            )
        self.split_state = dict(saved)
        self._build_data()


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


def _candidates(choice: Choice) -> list[str]:
    """A choice's candidates as the run record names them: a layer choice's names, an input
    choice's inputs ``"0"``, ``"1"``, ..."""
    if choice.kind == "layer":
        return list(choice.names)
    return [str(i) for i in range(choice.n_candidates)]


def _entropy(values: Iterable[float]) -> float:
    """The entropy (nats) of ``values`` normalised to sum to 1 (0 for all zeros)."""
    numbers = [max(float(v), 0.0) for v in values]
    total = sum(numbers)
    if total <= 0 or not math.isfinite(total):
        return 0.0
    return -sum(p / total * math.log(p / total) for p in numbers if p > 0)


def json_floats(values: Iterable[float]) -> list[float]:
    """Round floats for JSON records (6 significant digits are plenty to plot)."""
    return [float(f"{v:.6g}") for v in values]
