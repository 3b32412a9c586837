"""DARTS: Differentiable Architecture Search (Liu, Simonyan & Yang, ICLR 2019).

Every choice is relaxed into a softmax-weighted mixture of its candidates
(section 2.2; ``DartsLayerChoice``, ``DartsInputChoice``), except, in the paper's
formulation (the default), an input choice that names the edges feeding it: that node
is the plain sum of its mixed edges. The mixture weights, the architecture parameters
alpha, are trained by gradient descent on the architecture half of the data while the
supernet's weights w are trained on the other half (section 2.2, eq. 3-4, alternating:
:meth:`DartsTrainer.search_step`). ``unrolled=True`` is the paper's second-order
approximation (eq. 6-8): the architecture gradient is taken at the weights after one
virtual SGD step, with the Hessian-vector product replaced by a finite difference.
``export()`` derives the discrete architecture (section 2.4).

The file reads in that order: the trainer and its step, the second-order gradient, the
derivation, then the relaxed modules. The data, epoch loop, progress, reporting and
checkpoints are the core's :class:`nastrain.oneshot.SupernetTrainer`; what makes the
steps fast and lean (the mixed sum as one autograd node, the virtual step's storage,
replayed dropout masks) is :mod:`nastrain_darts._fast`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from nastrain import InputChoice, LayerChoice, distributed
from nastrain.mutables import reduce_tensors
from nastrain.oneshot import SupernetTrainer, json_floats
from nastrain.reporting import current_trainer
from nastrain.utils import replace_choices
from nastrain_darts._fast import (
    UnrolledScratch,
    WeightedSum,
    frozen,
    plain_sum,
    replayed_rng,
    rng_state,
    take_virtual_step,
    virtual_groups,
)

__all__ = ["ArchParameters", "DartsInputChoice", "DartsLayerChoice", "DartsTrainer"]

#: The formulations of the DARTS cell :class:`DartsTrainer` knows (its ``formulation``).
FORMULATIONS = ("paper", "nni")


class DartsTrainer(SupernetTrainer):
    """DARTS, first order or (``unrolled=True``) second order.

    Takes the arguments of NNI's legacy ``DartsTrainer``, in its order (an NNI user
    switches by changing the import), plus nastrain's own:

    - ``model``: a model space; its choices are replaced in place.
    - ``loss(logits, y)``, ``metrics(logits, y) -> dict``.
    - ``optimizer``: the weights' optimizer (on ``model.parameters()``), or
      ``None`` for SGD(``learning_rate``, momentum 0.9, weight decay 3e-4).
    - ``num_epochs``, ``dataset`` (split into a weight half and an architecture
      half unless ``valid_dataset`` is given), ``batch_size``, ``workers``,
      ``device``, ``log_frequency`` (a line of running means every that many steps).
    - ``grad_clip``: the weights' gradient norm is clipped to it.
    - ``arc_learning_rate``: Adam on alpha, betas (0.5, 0.999), weight decay 1e-3.
    - ``unrolled``: the second-order approximation. Its virtual step is SGD's, so the
      weights' optimizer must be a ``torch.optim.SGD`` (another one is refused here).
    - ``export_exclude``: candidate names ``export`` never picks (the paper excludes
      ``none``).
    - ``formulation``: ``"paper"`` (the default): an ``InputChoice`` whose
      ``edge_labels`` attribute names the LayerChoice feeding each of its inputs, as
      :class:`~nastrain_darts.DartsSpace`'s nodes do, is the plain sum of those mixed
      edges and exports the ``n_chosen`` inputs whose edge's strongest operation not in
      ``export_exclude`` has the largest softmax weight, as Liu et al. derive cells;
      ``"nni"``: every InputChoice has softmax weights of its own that mix and select its
      inputs, as in NNI.
    - ``**options``: the one-shot options of :class:`nastrain.oneshot.OneShotOptions`
      (``seed``, ``checkpoint_dir``, ``progress``, ``channels_last``, ``rewrite_model``,
      ``lr_scheduler``, ``log_dir``) as keywords, or ``options=OneShotOptions(...)``.

    After ``fit``, :attr:`history` holds each epoch's mean metrics and
    ``alphas`` (softmax weights per label), for plotting.
    """

    name = "darts"
    #: Every candidate of every choice runs in every forward pass of the supernet (the
    #: mixtures weigh them all), so a plugin may compute alike candidates reading one input
    #: together (nastrain-cpu's ``group_separables``).
    runs_every_candidate = True
    #: For the same reason every weight has a gradient in every step: the supernet's DDP on
    #: several processes need not look for unused ones (option ``find_unused_parameters``).
    find_unused_parameters = False

    def __init__(
        self,
        model: nn.Module,
        loss: Callable[[Any, Any], torch.Tensor],
        metrics: Callable[[Any, Any], Mapping[str, float]] | None,
        optimizer: torch.optim.Optimizer | None,
        num_epochs: int,
        dataset: Dataset,
        grad_clip: float = 5.0,
        learning_rate: float = 2.5e-3,
        batch_size: int = 64,
        workers: int = 0,
        device: Any = None,
        log_frequency: int | None = None,
        arc_learning_rate: float = 3.0e-4,
        unrolled: bool = False,
        *,
        valid_dataset: Dataset | None = None,
        export_exclude: Iterable[str] = ("none",),
        formulation: str = "paper",
        **options: Any,
    ) -> None:
        if formulation not in FORMULATIONS:
            raise ValueError(
                f"DartsTrainer: formulation must be one of {list(FORMULATIONS)}, "
                f"got {formulation!r}"
            )
        if unrolled and optimizer is not None and not isinstance(optimizer, torch.optim.SGD):
            raise ValueError(
                f"DartsTrainer: unrolled=True takes its virtual step (eq. 6) as "
                f"torch.optim.SGD would, but the weights' optimizer is "
                f"{type(optimizer).__name__}; use SGD, or unrolled=False"
            )
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
        self.grad_clip = grad_clip
        self.unrolled = unrolled
        self.export_exclude = tuple(export_exclude)
        self.formulation = formulation
        # The continuous relaxation (section 2.2): every choice a softmax-weighted mixture.
        self.arch = ArchParameters(self.device)
        self.nas_modules = replace_choices(
            self.model, trainer=self, init_fn=lambda choice: relax(choice, self)
        )
        self._check_edges()
        self.prepare_model()
        # A relaxation may register its alpha as a module attribute (a plugin's may): alpha
        # is still not a weight.
        arch_ids = {id(alpha) for alpha in self.arch.parameters()}
        self.weights: list[torch.Tensor] = [
            p for p in self.model.parameters() if p.requires_grad and id(p) not in arch_ids
        ]
        self.optimizer = optimizer or torch.optim.SGD(
            self.weights, lr=learning_rate, momentum=0.9, weight_decay=3e-4
        )
        self.arch_optimizer = torch.optim.Adam(
            self.arch.parameters(), lr=arc_learning_rate, betas=(0.5, 0.999), weight_decay=1e-3
        )

    def arch_parameters(self) -> list[nn.Parameter]:
        """alpha, one vector per label (not among ``model.parameters()``)."""
        return self.arch.parameters()

    # --- one step (section 2.2): eq. (3)/(6) for alpha, then an ordinary step for w ---------

    def search_step(self, train_batch: Any, valid_batch: Any) -> dict[str, float]:
        """alpha steps on the architecture batch (dL_val/dalpha at w, or at the virtual step's
        w' with ``unrolled``), then w on the weight batch (dL_train/dw, alpha held fixed)."""
        trn_x, trn_y = train_batch
        val_x, val_y = valid_batch
        self.arch_optimizer.zero_grad(set_to_none=True)
        if self.unrolled and self.weights:  # without weights, w' = w: the first order
            self._unrolled_arch_gradient(trn_x, trn_y, val_x, val_y)
        else:
            # First order: d L_val(w, alpha) / d alpha; nothing recorded for the weights.
            self._alpha_grad(val_x, val_y, accumulate=True)
        # alpha lives outside any DDP module and its gradient may come from autograd.grad:
        # averaged over the ranks here, or the ranks' alphas drift apart. (Under "16-mixed"
        # the gradients are scaled: an overflow on one rank is an overflow on all.)
        distributed.all_reduce_mean(a.grad for a in self.arch.parameters())
        self.optimizer_step(self.arch_optimizer)

        self.optimizer.zero_grad(set_to_none=True)
        with frozen(self.arch.parameters()):  # the weights' step: alpha is a constant here
            with self.autocast():
                # Several processes: through DDP, whose backward averages the weights'
                # gradients over the ranks.
                logits = self.parallel_model(trn_x)
                loss = self.loss(logits, trn_y)
            if self.weights:  # a space of parameter-free candidates has none
                self.backward(loss, inputs=self.weights)
        if self.grad_clip:
            self.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.weights, self.grad_clip)
        self.optimizer_step(self.optimizer)
        with torch.no_grad():
            return {"loss": loss.item(), **self.compute_metrics(logits.detach(), trn_y)}

    def _alpha_grad(self, x: Any, y: Any, accumulate: bool = False) -> list[torch.Tensor]:
        """dL(w, alpha)/dalpha on one batch, the weights held constant (not recorded).

        With ``accumulate`` added to each alpha's ``.grad``, in ``precision``'s arithmetic
        (the first-order step; scaled under "16-mixed", as :meth:`backward` scales); else
        returned, computed in float32 without loss scaling (the finite difference's passes,
        whose difference of nearby gradients a lower precision would round away).
        """
        alphas = self.arch.parameters()
        with frozen(self.weights):
            with self.autocast(enabled=accumulate):
                loss = self.loss(self.model(x), y)
            if accumulate:
                self.backward(loss, inputs=alphas)
                return []
            found = torch.autograd.grad(loss, alphas, allow_unused=True)
        return [torch.zeros_like(a) if g is None else g for a, g in zip(alphas, found)]

    # --- the second-order approximation (section 2.3, eq. 6-8) -------------------------------

    def _unrolled_arch_gradient(self, trn_x: Any, trn_y: Any, val_x: Any, val_y: Any) -> None:
        """Set alpha.grad to the second-order DARTS gradient (eq. 7-8).

        The virtual step is the one the weights' SGD would take now, per parameter group
        (lr, momentum with the optimizer's momentum buffers, dampening, nesterov, weight
        decay, maximize): w' = w - lr * c * dL_train(w, alpha)/dw - (terms constant in
        alpha), where c is the factor SGD's update gives the gradient (1 without momentum;
        1 - dampening with a momentum buffer, 1 + momentum * (1 - dampening) with nesterov;
        1, or 1 + momentum with nesterov, before the first step). Then, with
        v = dL_val(w', alpha)/dw' and u = lr * c * v per weight,

            grad = dL_val(w', alpha)/dalpha - (dL_train(w+, alpha)/dalpha -
                   dL_train(w-, alpha)/dalpha) / (2 eps),  w+- = w +- eps * u,

        eps = 0.01 / ||u||: with one learning rate xi and plain SGD this is the paper's
        eq. 8 (the same w+- and the factor xi). The passes on the training batch (the
        virtual step's, at w+ and at w-) run with torch's generators (CPU and the device's)
        at one state, so dropout or drop-path draws the same masks in all three; without
        that the finite difference measures mask noise. The weights, the model's buffers
        (e.g. BatchNorm statistics) and the optimizer's state are as before afterwards;
        torch's generators are where the virtual step and the validation pass left them.
        """
        weights, alphas = self.weights, self.arch.parameters()
        groups = virtual_groups(self.optimizer, weights)
        buffers = list(self.model.buffers())
        scratch = self._scratch(buffers)
        backup, grads, dw = scratch.backup, scratch.grads, scratch.dw
        with torch.no_grad():
            torch._foreach_copy_(backup.views, weights)
            if buffers:
                torch._foreach_copy_(scratch.buffers, buffers)
        train_rng = rng_state(self.device)

        # w' = w - lr * (SGD's update direction) (eq. 6). The gradients accumulate into
        # preallocated storage (weights with none get zeros).
        grads.attach_as_grad(weights)
        with frozen(alphas):
            with self.autocast():
                train_loss = self.loss(self.model(trn_x), trn_y)
            self.backward(train_loss, inputs=weights)
        # Several processes: w' is the step on the whole batch, as one process takes it (each
        # rank's w' from its own share would make a different, nonlinear, estimate).
        distributed.all_reduce_mean(grads.views)
        if self.grad_scaler is not None:  # the virtual step takes the true gradient
            with torch.no_grad():
                torch._foreach_div_(grads.views, self.loss_scale)
        take_virtual_step(groups, weights, grads.views, backup.views)

        # dL_val(w', alpha) with respect to w' and alpha (both scaled under "16-mixed", by
        # the loss scale S; the rest of the step keeps that scale, see below).
        dw.attach_as_grad(weights)
        for a in alphas:
            a.grad = None
        with self.autocast():
            val_loss = self.loss(self.model(val_x), val_y)
        self.backward(val_loss, inputs=[*weights, *alphas])
        dalpha = [torch.zeros_like(a) if a.grad is None else a.grad for a in alphas]
        distributed.all_reduce_mean(dw.views)  # the whole batch's v, so every rank's w+- agree

        # u = lr * c * v per group: the direction w' moves in as alpha changes.
        with torch.no_grad():
            for g in groups:
                torch._foreach_mul_([dw.views[i] for i in g.indices], g.factor)
        # Finite-difference Hessian-vector product at the original w, with the virtual
        # step's dropout masks, its two passes in float32 (_alpha_grad). Scaled by S, u gives
        # eps = 0.01 / ||S u|| and the same w+- (eps * S u = 0.01 u / ||u||), and the quotient
        # below is S times the unscaled one: alpha's gradient stays scaled by S, as a
        # backward under the scaler leaves it, and optimizer_step unscales it (skipping the
        # step if an overflow made it infinite or NaN).
        eps = float(0.01 / dw.norm().clamp_min(1e-12))
        with torch.no_grad():
            torch._foreach_copy_(weights, backup.views)
            torch._foreach_add_(weights, dw.views, alpha=eps)
        with replayed_rng(self.device, train_rng):
            d_pos = self._alpha_grad(trn_x, trn_y)
        with torch.no_grad():
            torch._foreach_copy_(weights, backup.views)
            torch._foreach_sub_(weights, dw.views, alpha=eps)
        with replayed_rng(self.device, train_rng):
            d_neg = self._alpha_grad(trn_x, trn_y)

        with torch.no_grad():
            torch._foreach_copy_(weights, backup.views)
            if buffers:
                torch._foreach_copy_(buffers, scratch.buffers)
            for w in weights:
                w.grad = None
            for a, d_val, gp, gn in zip(alphas, dalpha, d_pos, d_neg):
                a.grad = d_val - (gp - gn) / (2 * eps)

    # --- deriving the architecture (section 2.4) ---------------------------------------------

    @torch.no_grad()
    def export(self) -> dict[str, Any]:
        """The strongest candidate per LayerChoice (never one of ``export_exclude``) and the
        ``n_chosen`` strongest inputs per InputChoice, in the CONTRACT format: in the paper's
        formulation the inputs whose edges have the largest :meth:`edge_strength`, else those
        of largest alpha."""
        result: dict[str, Any] = {}
        for label, module in self.nas_modules:
            if label in result:
                continue
            if isinstance(module, DartsLayerChoice):
                result[label] = module.export(self.export_exclude)
            elif isinstance(module, DartsInputChoice) and module.edge_labels is not None:
                # The paper's derivation: the inputs whose edges are strongest.
                strengths = [self.edge_strength(edge) for edge in module.edge_labels]
                result[label] = module.export(strengths)
            else:  # DartsInputChoice, or a relaxation a third-party plugin supplied
                result[label] = cast(Any, module).export()
        return result

    def edge_strength(self, label: str) -> float:
        """The paper's strength of the edge ``label``: the largest softmax weight among its
        operations not in ``export_exclude`` (among all of them if every one is excluded)."""
        edge = self._layer_choices()[label]
        weights = F.softmax(edge.alpha.detach(), -1).tolist()
        kept = [w for w, name in zip(weights, edge.names) if name not in self.export_exclude]
        return max(kept or weights)

    # --- bookkeeping: records, checkpoints, the relaxed modules -------------------------------

    def epoch_record(self) -> dict[str, Any]:
        return {"alphas": self.arch.softmax()}

    def architecture_probabilities(self) -> dict[str, list[float]]:
        """softmax(alpha) per label that has alpha, for the run record: every LayerChoice's
        (over its candidates) and, in NNI's formulation, every InputChoice's (over its
        inputs: the weights that mix them, the ``n_chosen`` largest exported). In the
        paper's formulation an InputChoice has no alpha of its own and is left out: its
        inputs are those of the strongest edges (:meth:`edge_strength`). The entropy the
        record gives is that of this softmax."""
        return self.arch.softmax()

    def current_architecture(self) -> dict[str, Any]:
        """:meth:`export`'s architecture (cheap: it reads alpha, no data)."""
        return self.export()

    @property
    def alpha_history(self) -> list[dict[str, list[float]]]:
        """softmax(alpha) per label after each epoch: ``alpha_history[epoch][label]``."""
        return [record["alphas"] for record in self.history]

    def checkpointables(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "optimizer": self.optimizer,
            "arch_optimizer": self.arch_optimizer,
        }

    def _scratch(self, buffers: list[torch.Tensor]) -> UnrolledScratch:
        """The unrolled step's storage, allocated once (see :class:`UnrolledScratch`)."""
        scratch = getattr(self, "_unrolled_scratch", None)
        if scratch is None or not scratch.fits(self.weights, buffers):
            scratch = UnrolledScratch(self.weights, buffers)
            self._unrolled_scratch = scratch
        return scratch

    def _layer_choices(self) -> dict[str, DartsLayerChoice]:
        """The first relaxed LayerChoice of each label."""
        found: dict[str, DartsLayerChoice] = {}
        for label, module in self.nas_modules:
            if isinstance(module, DartsLayerChoice):
                found.setdefault(label, module)
        return found

    def _check_edges(self) -> None:
        """Every input choice of the paper's formulation names one edge per input, and each
        edge is a LayerChoice of the model."""
        layers = self._layer_choices()
        for _, module in self.nas_modules:
            if not isinstance(module, DartsInputChoice) or module.edge_labels is None:
                continue
            if len(module.edge_labels) != module.n_candidates:
                raise ValueError(
                    f"InputChoice {module.label!r}: edge_labels names "
                    f"{len(module.edge_labels)} edges for {module.n_candidates} inputs"
                )
            missing = [label for label in module.edge_labels if label not in layers]
            if missing:
                raise ValueError(
                    f"InputChoice {module.label!r}: its edge_labels {missing} are not "
                    "LayerChoices of the model"
                )


# --- the continuous relaxation (section 2.2) ---------------------------------------------------


class DartsLayerChoice(nn.Module):
    """A ``LayerChoice`` relaxed as DARTS does: sum_i softmax(alpha)_i * candidate_i(x).

    Candidates marked ``nastrain_zero = True`` (the ``none`` op) output zeros,
    so they are not computed; their weight still takes part in the softmax,
    which leaves the result exactly as if they had been.
    """

    def __init__(self, choice: LayerChoice, alpha: nn.Parameter) -> None:
        super().__init__()
        self.label = choice.label
        self.names = list(choice.names)
        self.ops = nn.ModuleList(list(choice))
        self._alpha = [alpha]  # a list, so it is not registered as this module's parameter
        self.computed = [
            i for i, op in enumerate(self.ops) if not getattr(op, "nastrain_zero", False)
        ]
        if not self.computed:  # every candidate is zero: run one for the output's shape
            self.computed = [0]

    @property
    def alpha(self) -> nn.Parameter:
        """This choice's architecture parameters (shared by every choice with its label)."""
        return self._alpha[0]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        outputs = [self.ops[i](*args, **kwargs) for i in self.computed]
        return WeightedSum.apply(F.softmax(self.alpha, -1), self.computed, *outputs)

    def export(self, exclude: Iterable[str] = ()) -> str:
        """The name of the strongest candidate not in ``exclude``."""
        excluded = set(exclude)
        order = torch.argsort(self.alpha.detach(), descending=True).tolist()
        for i in order:
            if self.names[i] not in excluded:
                return self.names[i]
        return self.names[order[0]]  # everything excluded: the strongest anyway


class DartsInputChoice(nn.Module):
    """An ``InputChoice`` relaxed for DARTS, in one of two formulations.

    - With ``alpha`` (NNI's formulation, and every input choice that does not name
      the edges feeding it): the softmax(alpha)-weighted sum of the inputs, exported
      as the ``n_chosen`` inputs of largest alpha.
    - With ``alpha=None`` (the paper's formulation, for an input choice that names the
      edges feeding it in ``edge_labels``): the plain sum (or mean) of the inputs, no
      weights of its own; :meth:`export` then keeps the inputs whose edges are strongest,
      given their strengths.

    Stands in for reductions ``sum`` and ``mean`` (the weights sum to one);
    ``concat`` and ``none`` cannot be mixed unless every input is chosen.
    """

    def __init__(
        self,
        choice: InputChoice,
        alpha: nn.Parameter | None,
        edge_labels: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if choice.reduction not in ("sum", "mean") and choice.n_chosen != choice.n_candidates:
            raise ValueError(
                f"DARTS cannot relax InputChoice {choice.label!r} with reduction "
                f"{choice.reduction!r}: use 'sum' or 'mean', or choose every input"
            )
        if alpha is None and edge_labels is None:
            raise ValueError(
                f"InputChoice {choice.label!r}: without architecture weights (the paper's "
                "formulation) the labels of the edges feeding its inputs are needed"
            )
        self.label = choice.label
        self.n_candidates = choice.n_candidates
        self.n_chosen = choice.n_chosen
        self.reduction = choice.reduction
        self.indices = list(range(self.n_candidates))
        #: The label of the LayerChoice computing each input (the paper's formulation), or None.
        self.edge_labels = list(edge_labels) if edge_labels is not None else None
        self._alpha = [alpha]

    @property
    def alpha(self) -> nn.Parameter | None:
        """This choice's architecture parameters (None in the paper's formulation)."""
        return self._alpha[0]

    def forward(self, inputs: list[torch.Tensor]) -> Any:
        if len(inputs) != self.n_candidates:
            raise ValueError(
                f"InputChoice {self.label!r} expects {self.n_candidates} inputs, got {len(inputs)}"
            )
        if self.reduction not in ("sum", "mean"):  # every input chosen: nothing to mix
            return reduce_tensors(list(inputs), self.reduction)
        if self.alpha is None:  # the paper's node: the plain sum of its mixed edges
            return plain_sum(inputs, mean=self.reduction == "mean")
        return WeightedSum.apply(F.softmax(self.alpha, -1), self.indices, *inputs)

    def export(self, strengths: Sequence[float] | None = None) -> list[int]:
        """The sorted indices of the ``n_chosen`` strongest inputs.

        ``strengths`` ranks the inputs (one number per input; the paper's formulation
        passes each edge's strongest softmax weight); by default alpha does. Ties go to
        the lower index.
        """
        if strengths is None:
            if self.alpha is None:
                raise ValueError(
                    f"InputChoice {self.label!r} has no architecture weights: pass the "
                    "strengths of its edges"
                )
            strengths = self.alpha.detach().tolist()
        if len(strengths) != self.n_candidates:
            raise ValueError(
                f"InputChoice {self.label!r}: {len(strengths)} strengths for "
                f"{self.n_candidates} inputs"
            )
        order = sorted(range(self.n_candidates), key=lambda i: (-strengths[i], i))
        return sorted(order[: self.n_chosen])


class ArchParameters:
    """The architecture parameters alpha, one vector per label (shared labels share it).

    Kept outside ``model.parameters()`` on purpose, so that the weights'
    optimizer, gradient clipping and the unrolled step's backup never touch
    alpha. ``state_dict``/``load_state_dict`` make it checkpointable.
    """

    def __init__(self, device: torch.device, init_scale: float = 1e-3) -> None:
        self.device = device
        self.init_scale = init_scale
        self.alphas: dict[str, nn.Parameter] = {}

    def get(self, label: str, size: int) -> nn.Parameter:
        """alpha for ``label``, created (small random values, as in the paper) on first use."""
        alpha = self.alphas.get(label)
        if alpha is None:
            alpha = nn.Parameter(torch.randn(size, device=self.device) * self.init_scale)
            self.alphas[label] = alpha
        elif alpha.numel() != size:
            raise ValueError(
                f"label {label!r} needs {size} architecture weights, has {alpha.numel()}"
            )
        return alpha

    def parameters(self) -> list[nn.Parameter]:
        """Every alpha, in the order the labels were first seen."""
        return list(self.alphas.values())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {label: alpha.detach().clone() for label, alpha in self.alphas.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        missing = sorted(set(self.alphas) - set(state))
        if missing:
            raise ValueError(f"architecture parameters for {missing} are missing from the state")
        with torch.no_grad():
            for label, alpha in self.alphas.items():
                alpha.copy_(state[label])

    def softmax(self) -> dict[str, list[float]]:
        """softmax(alpha) per label, JSON-ready: what a user plots over epochs."""
        with torch.no_grad():
            return {
                label: json_floats(F.softmax(a, -1).tolist()) for label, a in self.alphas.items()
            }


def relax(module: nn.Module, trainer: DartsTrainer) -> nn.Module | None:
    """The DARTS relaxation of a choice, or ``None`` for a choice type DARTS does not know."""
    if isinstance(module, LayerChoice):
        return DartsLayerChoice(module, trainer.arch.get(module.label, len(module.names)))
    if isinstance(module, InputChoice):
        edges = getattr(module, "edge_labels", None)
        if edges is not None and trainer.formulation == "paper":
            return DartsInputChoice(module, None, edges)
        return DartsInputChoice(module, trainer.arch.get(module.label, module.n_candidates))
    return None


def replace_for_darts(module: nn.Module, trainer: Any) -> nn.Module | None:
    """The hook's answer: DARTS relaxations for DARTS trainers (the current one by default)."""
    trainer = trainer if trainer is not None else current_trainer()
    if isinstance(trainer, DartsTrainer):
        return relax(module, trainer)
    return None
