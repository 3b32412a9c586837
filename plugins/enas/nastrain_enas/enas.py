"""ENAS: Efficient Neural Architecture Search via Parameter Sharing (Pham et al., ICML 2018).

An LSTM controller samples an architecture, one decision after another; the
supernet's shared weights are trained on the sampled architectures (the
weight half of the data), then the controller is trained with REINFORCE on the
architecture half: the reward of a sampled architecture is
``reward_function(logits, y)`` of the supernet running it, plus an entropy
bonus, against a moving-average baseline (§2.2 of the paper). Each epoch is
first the weight phase over the whole weight half, then the controller phase over
the whole architecture half, as in the paper and NNI.

Where this differs from NNI's legacy ``EnasTrainer``, on purpose:

- The controller takes one step per decision (label), not per choice module:
  choices that share a label are one decision and get one sampled value.
- An ``InputChoice`` with ``n_chosen = k`` samples exactly ``k`` distinct inputs.
  Each input has a logit, as in the paper's skip connections, and a set ``S`` of
  ``k`` inputs has probability proportional to ``exp(sum of its logits)`` (the
  paper's independent per-input gates conditioned on exactly ``k`` being open);
  the controller samples the set as one categorical over the ``C(n, k)`` sets.
- The skip penalty (§2.3 of the paper) is the KL divergence of each input's
  probability of being chosen from ``skip_target``, summed, for ``InputChoice``\\s
  with ``1 < n_chosen < n_candidates`` (NNI penalises exactly the multi-input
  choices). With exactly ``k`` of ``n`` chosen the mean density is fixed at
  ``k / n``, so the penalty keeps the per-input probabilities from collapsing onto
  a few inputs (their closest point to ``skip_target`` is the uniform choice); set
  ``skip_weight=0`` to let the controller commit to inputs.
- The controller's gradient is accumulated over ``ctrl_steps_aggregate`` samples
  and that accumulation carries over epoch ends (and checkpoints), so a small
  architecture half still trains it.
- ``export()`` derives the architecture as Pham et al. do: it samples
  ``export_samples`` architectures from the trained controller, scores each distinct
  one with ``reward_function`` on the architecture half and keeps the best
  (``export_mode="greedy"``: the greedy decoding instead, each decision's most likely
  value given the ones before it, which is not in general the most likely
  architecture). NNI's returns the greedy decoding.
- An ``InputChoice``'s inputs are scored with the paper's attention over earlier
  decisions' hidden states (anchors, see :class:`Controller`), with parameters shared
  by every input choice, not with a readout of its own.
- Rewards are computed with each architecture's own BatchNorm statistics: in the
  controller phase the reward batch's (the supernet's pooled running statistics
  are neither used nor changed), in ``export()`` statistics recalibrated on
  ``bn_batches`` batches of the weight half (see :mod:`nastrain.calibration`).
- The baseline starts at the first reward, not at 0: with the default decay of
  0.999 a zero start gives every advantage the sign of the reward for thousands of
  samples, and Adam turns that into full-size steps in one direction.
- The controller lives on the trainer's device, and draws all its random numbers for
  an architecture in one call (the Gumbel-max trick), not one sampler call per decision.

The data, epoch loop, progress, reporting and checkpoints are the core's
:class:`nastrain.oneshot.SupernetTrainer`; single-path sampling (the weight step) is
:mod:`nastrain_enas.sampling`; the controller, with its fast sampling, is
:mod:`nastrain_enas.controller`; this file is the algorithm: the trainer, its controller
step (REINFORCE) and the derivation of the architecture.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import Dataset

from nastrain import distributed
from nastrain.calibration import batch_statistics, batchnorms
from nastrain.oneshot import json_floats
from nastrain.space import Architecture
from nastrain_enas.controller import CONTROLLER_KWARGS, Controller
from nastrain_enas.sampling import SamplingTrainer, check_bn_batches, real_number

__all__ = ["EnasTrainer"]


class EnasTrainer(SamplingTrainer):
    """ENAS: shared weights trained on architectures an LSTM controller samples; the
    controller trained with REINFORCE on the architecture half.

    Takes the arguments of NNI's legacy ``EnasTrainer`` (an NNI user switches by
    changing the import) plus nastrain's own:

    - ``model``: a model space; its choices are replaced in place by sampling modules.
    - ``loss(logits, y)``, ``metrics(logits, y) -> dict`` (or ``None``).
    - ``reward_function(logits, y) -> number``: the reward of the sampled
      architecture on a batch of the architecture half (e.g. accuracy); a float or
      a one-element tensor, finite.
    - ``optimizer``: the weights' optimizer, or ``None`` for SGD(lr 0.05, momentum
      0.9, weight decay 1e-4).
    - ``num_epochs``, ``dataset`` (split into a weight half and an architecture
      half unless ``valid_dataset`` is given), ``batch_size``, ``workers``,
      ``device``, ``log_frequency``.
    - ``grad_clip``: the gradient norm of the weights and of the controller is
      clipped to it (0: no clipping).
    - ``entropy_weight``: the entropy bonus added to the reward.
    - ``skip_weight``: weight of the skip penalty (see :mod:`nastrain_enas.enas`).
    - ``baseline_decay``: the baseline follows ``b = decay * b + (1 - decay) * reward``,
      starting at the first reward (NNI and the paper start at 0).
    - ``ctrl_lr``: Adam's learning rate for the controller.
    - ``ctrl_steps_aggregate``: samples whose gradients are summed into one controller
      update (across epoch ends).
    - ``ctrl_kwargs``: :class:`Controller` options: ``lstm_size`` (64),
      ``lstm_num_layers`` (1), ``tanh_constant`` (1.5), ``temperature`` (None),
      ``skip_target`` (0.4).
    - ``valid_dataset`` and the one-shot options (``**options``: ``seed``,
      ``checkpoint_dir``, ``progress``, ``lr_scheduler``, ... of
      :class:`nastrain.oneshot.OneShotOptions`): as for ``DartsTrainer``; the checkpoint
      holds the controller, its optimizer, the baseline and the pending controller
      gradient too.
    - ``export_mode``: ``"sample"`` (default, the paper's derivation: see
      :meth:`export`) or ``"greedy"`` (the controller's greedy decoding).
    - ``export_samples`` (100): architectures ``export()`` draws from the controller.
    - ``export_batches``: batches of the architecture half each sampled architecture
      is scored on (the same for all); ``None`` (default): all of it, the least noisy
      ranking, at one forward pass over the half per distinct sample (the paper scores
      each on a single minibatch: ``export_batches=1``).
    - ``bn_batches`` (10): batches of the weight half each sampled architecture's
      BatchNorm statistics are recalibrated on in ``export()`` (0: the supernet's).

    The defaults work at NNI's controller settings even on a small problem: the
    controller there barely moves from uniform, but 100 samples from it cover a small
    space and ``export()`` keeps the best by reward (``tests/test_planted*.py``).

    After ``fit``, :attr:`history` holds each epoch's mean metrics (weight phase:
    ``loss`` and the user's metrics; controller phase: ``reward``, ``baseline``,
    ``ctrl_loss``, ``entropy`` and the user's metrics as ``val_*``), the controller's
    greedy decoding (``arch``) and its probability (``arch_prob``). After
    ``export()``, :attr:`ranking` and :attr:`best_score` are as for
    ``RandomOneShotTrainer``.
    """

    name = "enas"

    def __init__(
        self,
        model: nn.Module,
        loss: Callable[[Any, Any], torch.Tensor],
        metrics: Callable[[Any, Any], Mapping[str, float]] | None,
        reward_function: Callable[[Any, Any], Any],
        optimizer: torch.optim.Optimizer | None,
        num_epochs: int,
        dataset: Dataset,
        batch_size: int = 64,
        workers: int = 0,
        device: Any = None,
        log_frequency: int | None = None,
        grad_clip: float = 5.0,
        entropy_weight: float = 1e-4,
        skip_weight: float = 0.8,
        baseline_decay: float = 0.999,
        ctrl_lr: float = 3.5e-4,
        ctrl_steps_aggregate: int = 20,
        ctrl_kwargs: Mapping[str, Any] | None = None,
        *,
        valid_dataset: Dataset | None = None,
        export_mode: Literal["sample", "greedy"] = "sample",
        export_samples: int = 100,
        export_batches: int | None = None,
        bn_batches: int = 10,
        **options: Any,
    ) -> None:
        if export_mode not in ("sample", "greedy"):
            raise ValueError(f"export_mode must be 'sample' or 'greedy', got {export_mode!r}")
        for name, value, allow_none in (
            ("export_samples", export_samples, False),
            ("export_batches", export_batches, True),
        ):
            if value is None and allow_none:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        check_bn_batches(bn_batches)
        if not callable(reward_function):
            raise TypeError(
                "reward_function must be a callable (logits, y) -> number, got "
                f"{type(reward_function).__name__}"
            )
        if (
            isinstance(ctrl_steps_aggregate, bool)
            or not isinstance(ctrl_steps_aggregate, int)
            or ctrl_steps_aggregate < 1
        ):
            raise ValueError(
                f"ctrl_steps_aggregate must be an int >= 1 (samples per controller update), "
                f"got {ctrl_steps_aggregate!r}"
            )
        for name, number in (
            ("entropy_weight", entropy_weight),
            ("skip_weight", skip_weight),
            ("ctrl_lr", ctrl_lr),
        ):
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not number >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {number!r}")
        if not isinstance(baseline_decay, (int, float)) or not 0 <= baseline_decay < 1:
            raise ValueError(f"baseline_decay must be in [0, 1), got {baseline_decay!r}")
        ctrl_kwargs = dict(ctrl_kwargs or {})
        unknown = sorted(set(ctrl_kwargs) - set(CONTROLLER_KWARGS))
        if unknown:
            raise TypeError(
                f"ctrl_kwargs has unknown option(s) {unknown}; the controller takes "
                f"{list(CONTROLLER_KWARGS)}"
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
        self.reward_function = reward_function
        self.export_mode = export_mode
        self.export_samples = export_samples
        self.export_batches = export_batches
        self.bn_batches = bn_batches
        #: Every distinct architecture ``export()`` sampled, with its score, best first
        #: (empty with ``export_mode="greedy"``).
        self.ranking: list[tuple[Architecture, float]] = []
        #: The score of the architecture ``export()`` returned (``None`` when greedy).
        self.best_score: float | None = None
        self._norms: Sequence[nn.Module] | None = None  # the supernet's BatchNorms, once listed
        self.entropy_weight = float(entropy_weight)
        self.skip_weight = float(skip_weight)
        self.baseline_decay = float(baseline_decay)
        self.ctrl_steps_aggregate = ctrl_steps_aggregate
        self.controller = Controller(self.space.choices, **ctrl_kwargs).to(self.device)
        self.ctrl_optim = torch.optim.Adam(self.controller.parameters(), lr=ctrl_lr)
        #: The moving-average baseline of the reward (``None`` before the first reward).
        self.baseline: float | None = None
        #: Samples in the controller's pending (not yet applied) gradient.
        self.pending_samples = 0
        self._ctrl_step = 0  # controller steps in this epoch, for error messages

    # --- one epoch (section 2.2): the shared weights, then the controller -------------------
    # The weight phase is SamplingTrainer.search_step on every batch of the weight half, on
    # the paths the controller samples (sample_arch); the controller phase is
    # architecture_step on every batch of the architecture half, the supernet in eval mode.

    def sample_arch(self) -> Architecture:
        """An architecture drawn from the controller (no gradient), for a weight step."""
        with torch.no_grad():
            return self.controller.sample(stats=False).arch

    def architecture_step(self, valid_batch: Any) -> dict[str, float]:
        """The controller's step, one REINFORCE sample: draw an architecture, reward it on
        ``valid_batch``, accumulate -log P(arch) * (reward - baseline) + skip_weight * skip
        penalty, and update the controller once ``ctrl_steps_aggregate`` samples are
        accumulated.

        The sampled architecture runs with BatchNorm normalising by ``batch``'s own
        statistics (the supernet's running statistics neither used nor changed): the
        supernet's are pooled over every path it trained, and a reward computed with them
        measures how close the path's activations sit to that pool, not the path. This
        is the per-architecture recalibration of ``export()`` at no extra forward pass.
        (A batch of a single item, over which BatchNorm takes no statistics, runs with
        the supernet's.)"""
        x, y = valid_batch
        self._ctrl_step += 1
        sample = self.controller.sample(skip_penalty=self.skip_weight > 0)
        self.set_arch(sample.arch)
        if self._norms is None:
            self._norms = batchnorms(self.model)
        # BatchNorm takes no statistics over a single item: that batch uses the supernet's.
        norms = self._norms if getattr(y, "__len__", lambda: 2)() != 1 else []
        with torch.no_grad(), batch_statistics(self.model, norms), self.autocast():
            logits = self.model(x)  # the controller itself runs in float32
        reward = self._reward(logits, y)
        if distributed.is_distributed():
            # Each rank rewarded the (same) sample on its share of the batch: the whole
            # batch's reward, as one process computes it, so the baselines agree too.
            reward = distributed.mean_of({"reward": reward})["reward"]
        entropy = sample.entropy.item()
        if self.entropy_weight:
            reward += self.entropy_weight * entropy
        if self.baseline is None:
            self.baseline = reward
        decay = self.baseline_decay
        self.baseline = decay * self.baseline + (1 - decay) * reward
        loss = -sample.log_prob * (reward - self.baseline)
        if self.skip_weight:
            loss = loss + self.skip_weight * sample.skip_penalty
        (loss / self.ctrl_steps_aggregate).backward()
        self.pending_samples += 1
        if self.pending_samples >= self.ctrl_steps_aggregate:
            # The ranks' rewards differ (each its own share of the batch): the controller's
            # gradient is averaged, or the ranks' controllers drift apart.
            # On one process nothing changes: a parameter without a gradient keeps None (a
            # zero gradient would still move it under Adam's momentum).
            if distributed.is_distributed():
                params = list(self.controller.parameters())
                for p in params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                distributed.all_reduce_mean(p.grad for p in params)
            if self.grad_clip:
                nn.utils.clip_grad_norm_(self.controller.parameters(), self.grad_clip)
            self.ctrl_optim.step()
            self.ctrl_optim.zero_grad(set_to_none=True)
            self.pending_samples = 0
        metrics = {
            "reward": reward,
            "baseline": self.baseline,
            "ctrl_loss": loss.item(),
            "entropy": entropy,
        }
        for key, value in self.compute_metrics(logits, y).items():
            metrics[f"val_{key}"] = value
        return metrics

    def _reward(self, logits: Any, y: Any) -> float:
        value = self.reward_function(logits, y)
        number = real_number(value)
        name = _callable_name(self.reward_function)
        if number is None:
            shown = repr(value)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise TypeError(
                f"reward_function {name} returned a {type(value).__name__} ({shown}); it must "
                "return a number: a float or a one-element tensor"
            )
        if not math.isfinite(number):
            raise ValueError(
                f"reward_function {name} returned {number} at epoch {self.epoch + 1}, "
                f"controller step {self._ctrl_step}; a reward must be a finite number"
            )
        return number

    def after_epoch(self) -> None:
        self._ctrl_step = 0

    def arch_parameters(self) -> list[nn.Parameter]:
        """The controller's parameters: what the search learns about architectures."""
        return list(self.controller.parameters())

    # --- records, checkpoints, export --------------------------------------------------------

    def greedy_arch(self) -> tuple[Architecture, float]:
        """The controller's greedy decoding (at each decision its most likely value given
        the values already taken) and the probability the controller gives it. Not in
        general the controller's most likely architecture."""
        with torch.no_grad():
            sample = self.controller.sample(greedy=True)
        return sample.arch, math.exp(sample.log_prob.item())

    def epoch_record(self) -> dict[str, Any]:
        arch, prob = self.greedy_arch()
        return {"arch": arch, "arch_prob": json_floats([prob])[0]}

    def architecture_probabilities(self) -> dict[str, list[float]]:
        """For the run record, each decision's distribution along the controller's greedy
        path (:meth:`Controller.greedy_distributions`: the distribution the controller gives
        a decision when every earlier one took its most likely value; not marginals over
        its samples): a LayerChoice's over its candidates, an InputChoice's as each input's
        probability of being among the chosen (they sum to ``n_chosen``)."""
        return {
            label: probs for label, (probs, _) in self.controller.greedy_distributions().items()
        }

    def architecture_entropy(self) -> dict[str, float]:
        """The entropy (nats) of each decision's distribution along the greedy path, over the
        decision's values (for an InputChoice of ``n_chosen = k``, over its ``C(n, k)``
        sets): the terms of the controller's own entropy bonus."""
        return {label: h for label, (_, h) in self.controller.greedy_distributions().items()}

    def current_architecture(self) -> dict[str, Any]:
        """The controller's greedy decoding (:meth:`greedy_arch`), not :meth:`export`'s
        sampled-and-scored architecture, which runs the architecture half for every sample:
        too slow for every epoch (``export_mode="greedy"`` exports this one)."""
        return self.greedy_arch()[0]

    def checkpointables(self) -> dict[str, Any]:
        return {
            **super().checkpointables(),
            "controller": self.controller,
            "ctrl_optim": self.ctrl_optim,
            "reinforce": _ReinforceState(self),
        }

    def sampled_archs(self) -> list[Architecture]:
        """``export_samples`` architectures drawn from the controller, the distinct ones in
        the order first drawn. The draws come from a generator of their own, seeded by
        ``seed`` (torch's global generator when ``seed`` is ``None``), so they neither
        depend on nor disturb the training's random numbers."""
        generator = None
        if self.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(self.seed)
        seen: set[str] = set()
        archs: list[Architecture] = []
        with torch.no_grad():
            for _ in range(self.export_samples):
                arch = self.controller.sample(stats=False, generator=generator).arch
                key = json.dumps(arch, sort_keys=True)
                if key not in seen:
                    seen.add(key)
                    archs.append(arch)
        return archs

    def export(self) -> dict[str, Any]:
        """The architecture the search found, in the CONTRACT format.

        With ``export_mode="sample"`` (the default), as Pham et al. derive it: draw
        ``export_samples`` architectures from the trained controller
        (:meth:`sampled_archs`), score each distinct one with ``reward_function`` on the
        same batches of the architecture half (``export_batches`` of them, all when
        ``None``), each with its BatchNorm statistics recalibrated on ``bn_batches``
        batches of the weight half (the supernet's restored afterwards), and return the
        best; :attr:`ranking` keeps them all with their scores, best first. With
        ``export_mode="greedy"``: the controller's greedy decoding (:meth:`greedy_arch`),
        no data seen.
        """
        if self.export_mode == "greedy":
            self.ranking, self.best_score = [], None
            return self.greedy_arch()[0]
        loader = self.fixed_loader("valid", self.export_batches)
        calibration = self.calibration_batches()  # the same batches for every candidate
        what = f"reward_function {_callable_name(self.reward_function)}"
        scored = [
            (
                arch,
                self.score_arch(
                    arch, loader, self.reward_function, what=what, calibration=calibration
                ),
            )
            for arch in self.sampled_archs()
        ]
        # sorted() is stable: ties go to the architecture drawn first.
        self.ranking = sorted(scored, key=lambda item: -item[1])
        best, self.best_score = self.ranking[0]
        self.set_arch(best)
        return dict(best)


class _ReinforceState:
    """The REINFORCE state beyond the controller's weights and optimizer, checkpointable:
    the moving-average baseline, how many samples the pending gradient holds, and that
    pending gradient itself (it carries over epoch ends)."""

    def __init__(self, trainer: EnasTrainer) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        trainer = self.trainer
        return {
            # NaN: no reward seen yet.
            "baseline": torch.tensor(
                math.nan if trainer.baseline is None else trainer.baseline, dtype=torch.float64
            ),
            "pending": trainer.pending_samples,
            "grads": {
                name: p.grad.detach().clone()
                for name, p in trainer.controller.named_parameters()
                if p.grad is not None
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        trainer = self.trainer
        baseline = float(state["baseline"])
        trainer.baseline = None if math.isnan(baseline) else baseline
        trainer.pending_samples = int(state["pending"])
        grads = state["grads"]
        for name, p in trainer.controller.named_parameters():
            p.grad = grads[name].to(p.device).clone() if name in grads else None


def _callable_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__qualname__
