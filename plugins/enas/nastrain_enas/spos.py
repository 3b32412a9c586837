"""Random one-shot: single-path one-shot search with uniform sampling (SPOS; Guo et al.,
ECCV 2020, and Li & Talwalkar's random search with weight sharing, UAI 2019).

Training samples one path uniformly per batch of the weight half: every
architecture is trained equally often in expectation, so the shared weights rank
architectures without favouring any. The search itself happens in ``export()``:
architectures are evaluated with the shared weights on the architecture half, each
with its BatchNorm statistics recalibrated on a few batches of the weight half (as
SPOS does), and the best is returned. A space with no more architectures than ``export_budget``
is evaluated whole, every architecture once; a larger one by ``export_budget``
distinct uniformly sampled architectures.

The data, epoch loop, progress, reporting and checkpoints are the core's
:class:`nastrain.oneshot.SupernetTrainer`; single-path sampling is
:mod:`nastrain_enas.sampling`.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nastrain.space import Architecture
from nastrain_enas.sampling import SamplingTrainer, as_number, check_bn_batches

__all__ = ["RandomOneShotTrainer"]


class RandomOneShotTrainer(SamplingTrainer):
    """Single-path one-shot with uniform sampling; ``export()`` evaluates architectures
    with the shared weights and returns the best.

    Takes the one-shot trainers' common arguments (``model, loss, metrics,
    optimizer, num_epochs, dataset, batch_size, workers, device, log_frequency,
    grad_clip``; ``optimizer=None`` is SGD(lr 0.05, momentum 0.9, weight decay
    1e-4)), ``valid_dataset`` and the one-shot options (``**options``: ``seed``,
    ``checkpoint_dir``, ``progress``, ``lr_scheduler``, ... of
    :class:`nastrain.oneshot.OneShotOptions`) as ``DartsTrainer`` does, plus:

    - ``export_budget``: how many architectures ``export()`` evaluates at most.
    - ``export_batches``: how many batches of the architecture half each
      architecture is evaluated on (the same batches, drawn once, for all); ``None``:
      all of it.
    - ``score_function(logits, y) -> number``: an architecture's score on a batch,
      higher is better; ``None``: minus ``loss``. The score of an architecture is
      the mean over its evaluation batches, weighted by batch size.
    - ``bn_batches``: before it is scored, each architecture's BatchNorm statistics
      are re-estimated on this many batches of the weight half (the same batches for
      all; SPOS's recalibration), and the supernet's put back afterwards. The
      supernet's own statistics are pooled over every path it sampled, so scored with
      them an architecture ranks by how close its activations sit to that pool, not
      by what it computes (a candidate with outputs ten times smaller than the
      others' is normalised to nearly a constant). The default, 10, is a few
      batches' forward passes per candidate, enough for these averages; ``0`` scores
      with the pooled statistics.

    Training uses only the weight half (sampling draws from Python's ``random``,
    which ``seed`` seeds and checkpoints restore). After ``export()``,
    :attr:`ranking` holds every evaluated architecture with its score, best first,
    and :attr:`best_score` the exported one's score; the model is left in eval mode
    running the exported architecture, with the supernet's BatchNorm statistics (so
    that training can go on as if ``export()`` had not run).
    """

    name = "random"

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
        export_budget: int = 100,
        export_batches: int | None = None,
        score_function: Callable[[Any, Any], Any] | None = None,
        bn_batches: int = 10,
        **options: Any,
    ) -> None:
        check_bn_batches(bn_batches)
        for name, value, allow_none in (
            ("export_budget", export_budget, False),
            ("export_batches", export_batches, True),
        ):
            if value is None and allow_none:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if score_function is not None and not callable(score_function):
            raise TypeError(
                "score_function must be a callable (logits, y) -> number or None, got "
                f"{type(score_function).__name__}"
            )
        super().__init__(
            model,
            loss,
            metrics,
            optimizer,
            num_epochs,
            dataset,
            batch_size,
            workers,
            device,
            log_frequency,
            grad_clip,
            valid_dataset=valid_dataset,
            **options,
        )
        self.export_budget = export_budget
        self.export_batches = export_batches
        self.bn_batches = bn_batches
        self.score_function = score_function
        #: Every architecture ``export()`` evaluated, with its score, best first.
        self.ranking: list[tuple[Architecture, float]] = []
        #: The score of the architecture ``export()`` returned.
        self.best_score: float | None = None

    # --- training: one uniformly sampled path per batch of the weight half ------------------
    # (the step is SamplingTrainer.search_step: the weights on the path sample_arch draws)

    def sample_arch(self) -> Architecture:
        """A uniformly random architecture (from Python's global ``random``)."""
        arch: Architecture = {}
        for choice in self.space.choices:
            if choice.kind == "layer":
                arch[choice.label] = choice.names[random.randrange(len(choice.names))]
            else:
                arch[choice.label] = sorted(
                    random.sample(range(choice.n_candidates), choice.n_chosen)
                )
        return arch

    def arch_parameters(self) -> list[nn.Parameter]:
        """Empty: uniform sampling learns no architecture parameters (the search is
        ``export()``'s evaluation), so this is an empty list."""
        return []

    def architecture_probabilities(self) -> dict[str, list[float]]:
        """The sampling distribution, for the run record, the same every epoch: uniform, each
        candidate of a LayerChoice ``1 / len(candidates)``, each input of an InputChoice
        its probability of being among the chosen, ``n_chosen / n_candidates``."""
        found: dict[str, list[float]] = {}
        for choice in self.space.choices:
            if choice.kind == "layer":
                found[choice.label] = [1.0 / len(choice.names)] * len(choice.names)
            else:
                share = choice.n_chosen / choice.n_candidates
                found[choice.label] = [share] * choice.n_candidates
        return found

    def architecture_entropy(self) -> dict[str, float]:
        """The entropy (nats) of the uniform distribution over each decision's values
        (``log`` of their number: for an InputChoice, of its sets of ``n_chosen`` inputs)."""
        return {choice.label: math.log(choice.size) for choice in self.space.choices}

    def current_architecture(self) -> None:
        """``None``: uniform sampling prefers no architecture; only :meth:`export` chooses
        one, by scoring candidates on the architecture half, too slow for every epoch."""
        return None

    # --- export: evaluate architectures with the shared weights -----------------------------

    def candidates(self) -> list[Architecture]:
        """What ``export()`` evaluates: every architecture of a space no larger than
        ``export_budget``, else that many distinct uniformly sampled ones (seeded by
        ``seed``)."""
        if self.space.size <= self.export_budget:
            return list(self.space.enumerate())
        rng = random.Random(self.seed)
        seen: set[str] = set()
        archs: list[Architecture] = []
        while len(archs) < self.export_budget:
            arch = self.space.sample(rng)
            key = json.dumps(arch, sort_keys=True)
            if key not in seen:
                seen.add(key)
                archs.append(arch)
        return archs

    def evaluation_loader(self) -> DataLoader:
        """The architecture half in a fixed order, so that every architecture is scored on
        the same batches (ties stay ties); only ``export_batches`` batches of it, drawn once
        (seeded by ``seed``), when that is set."""
        return self.fixed_loader("valid", self.export_batches)

    def evaluate(
        self,
        arch: Mapping[str, Any],
        batches: Iterable[Any] | None = None,
        *,
        calibration: list[Any] | None = None,
    ) -> float:
        """The score of ``arch`` with the shared weights (the model in eval mode) on
        ``batches`` (default: :meth:`evaluation_loader`), its BatchNorm statistics first
        recalibrated on ``calibration`` (default: :meth:`calibration_batches`, ``bn_batches``
        batches of the weight half); the supernet's statistics are restored afterwards."""
        arch = self.space.validate(arch)
        score: Callable[[Any, Any], Any]
        if self.score_function is None:
            loss = self.loss

            def minus_loss(logits: Any, y: Any) -> float:
                return -as_number(loss(logits, y), "loss", arch)

            score, what = minus_loss, "loss"
        else:
            score = self.score_function
            what = f"score_function {getattr(self.score_function, '__qualname__', '?')}"
        return self.score_arch(
            arch,
            batches if batches is not None else self.evaluation_loader(),
            score,
            what=what,
            calibration=calibration,
        )

    def export(self) -> dict[str, Any]:
        """The best of :meth:`candidates` by score, each scored with its own BatchNorm
        statistics (see :meth:`evaluate`), in the CONTRACT format; the ranking of all of
        them is kept in :attr:`ranking`."""
        loader = self.evaluation_loader()
        calibration = self.calibration_batches()  # the same batches for every candidate
        scored = [
            (arch, self.evaluate(arch, loader, calibration=calibration))
            for arch in self.candidates()
        ]
        # sorted() is stable: ties keep the enumeration order.
        self.ranking = sorted(scored, key=lambda item: -item[1])
        best, self.best_score = self.ranking[0]
        self.set_arch(best)
        return dict(best)
