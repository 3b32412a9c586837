"""DARTS: Differentiable Architecture Search (Liu, Simonyan & Yang, ICLR 2019).

Every choice is relaxed into a softmax-weighted mixture of its candidates
(``DartsLayerChoice``, ``DartsInputChoice``); the mixture weights, the
architecture parameters alpha, are trained by gradient descent on the
architecture half of the data while the supernet's weights w are trained on
the other half (the paper's eq. 3-4, alternating). ``unrolled=True`` is the
paper's second-order approximation (eq. 6-8): the architecture gradient is
taken at the weights after one virtual SGD step, with the Hessian-vector
product replaced by a finite difference.

The data, epoch loop, progress, reporting and checkpoints are the core's
:class:`nastrain.oneshot.SupernetTrainer`; this file is the algorithm.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from nastrain import InputChoice, LayerChoice
from nastrain.mutables import reduce_tensors
from nastrain.oneshot import SupernetTrainer, json_floats
from nastrain.reporting import current_trainer
from nastrain.utils import replace_choices

__all__ = ["ArchParameters", "DartsInputChoice", "DartsLayerChoice", "DartsTrainer"]


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


class _WeightedSum(torch.autograd.Function):
    """sum_k weights[indices[k]] * outputs[k], as one autograd node.

    The mixed operation's sum: one node per edge instead of a product per
    candidate. The candidates' outputs are kept for the backward pass only when
    the weights need a gradient (an architecture pass); each weight's gradient is
    then one inner product. Its backward pass is differentiable again.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, weights: torch.Tensor, indices: list[int], *outputs: torch.Tensor
    ) -> torch.Tensor:
        ctx.indices = indices
        if weights.requires_grad:
            ctx.save_for_backward(weights, *outputs)
        else:
            ctx.save_for_backward(weights)
        out = outputs[0] * weights[indices[0]]
        for i, output in zip(indices[1:], outputs[1:]):
            out.addcmul_(output, weights[i])  # in place on the sum: no product temporaries
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        weights, *outputs = ctx.saved_tensors
        indices = ctx.indices
        grad_weights = None
        if ctx.needs_input_grad[0]:
            flat_grad, order = _flatten(grad)
            inner = [torch.dot(flat_grad, _flatten(o, order)[0].to(grad.dtype)) for o in outputs]
            at = torch.tensor(indices, device=weights.device)
            grad_weights = torch.zeros_like(weights).index_put(
                (at,), torch.stack(inner).to(weights.dtype)
            )
        grad_outputs = [
            grad * weights[i] if needed else None
            for i, needed in zip(indices, ctx.needs_input_grad[2:])
        ]
        return (grad_weights, None, *grad_outputs)


def _flatten(t: torch.Tensor, order: tuple[int, ...] | None = None) -> tuple[torch.Tensor, Any]:
    """``t`` as a vector, its elements in ``order`` of dimensions (by default the order they
    have in memory for a channels-last tensor, else the logical one): a view, no copy, when
    the layout allows. Two tensors flattened in one order pair up element by element."""
    if order is None:
        channels_last = t.dim() == 4 and not t.is_contiguous()
        channels_last = channels_last and t.is_contiguous(memory_format=torch.channels_last)
        order = (0, 2, 3, 1) if channels_last else tuple(range(t.dim()))
    return t.permute(order).reshape(-1), order


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
        return _WeightedSum.apply(F.softmax(self.alpha, -1), self.computed, *outputs)

    def export(self, exclude: Iterable[str] = ()) -> str:
        """The name of the strongest candidate not in ``exclude``."""
        excluded = set(exclude)
        order = torch.argsort(self.alpha.detach(), descending=True).tolist()
        for i in order:
            if self.names[i] not in excluded:
                return self.names[i]
        return self.names[order[0]]  # everything excluded: the strongest anyway


class DartsInputChoice(nn.Module):
    """An ``InputChoice`` relaxed as DARTS does: the softmax(alpha)-weighted sum of its inputs.

    Stands in for reductions ``sum`` and ``mean`` (the weights sum to one);
    ``concat`` and ``none`` cannot be mixed unless every input is chosen.
    """

    def __init__(self, choice: InputChoice, alpha: nn.Parameter) -> None:
        super().__init__()
        if choice.reduction not in ("sum", "mean") and choice.n_chosen != choice.n_candidates:
            raise ValueError(
                f"DARTS cannot relax InputChoice {choice.label!r} with reduction "
                f"{choice.reduction!r}: use 'sum' or 'mean', or choose every input"
            )
        self.label = choice.label
        self.n_candidates = choice.n_candidates
        self.n_chosen = choice.n_chosen
        self.reduction = choice.reduction
        self.indices = list(range(self.n_candidates))
        self._alpha = [alpha]

    @property
    def alpha(self) -> nn.Parameter:
        """This choice's architecture parameters."""
        return self._alpha[0]

    def forward(self, inputs: list[torch.Tensor]) -> Any:
        if len(inputs) != self.n_candidates:
            raise ValueError(
                f"InputChoice {self.label!r} expects {self.n_candidates} inputs, got {len(inputs)}"
            )
        if self.reduction not in ("sum", "mean"):  # every input chosen: nothing to mix
            return reduce_tensors(list(inputs), self.reduction)
        return _WeightedSum.apply(F.softmax(self.alpha, -1), self.indices, *inputs)

    def export(self) -> list[int]:
        """The sorted indices of the ``n_chosen`` strongest inputs."""
        return sorted(torch.topk(self.alpha.detach(), self.n_chosen).indices.tolist())


@contextmanager
def frozen(tensors: Iterable[torch.Tensor]) -> Iterator[None]:
    """Turn ``requires_grad`` off for ``tensors`` during the block (and back on after).

    A forward pass that will not be differentiated with respect to some leaves
    should not record them: autograd then saves less for the backward pass
    (a convolution whose weight needs no gradient does not keep its input; a
    mixed op whose alpha needs none does not keep its candidates' outputs) and
    computes less in it.
    """
    tensors = [t for t in tensors if t.requires_grad]
    for t in tensors:
        t.requires_grad_(False)
    try:
        yield
    finally:
        for t in tensors:
            t.requires_grad_(True)


class _FlatTensors:
    """A tensor of each given shape, dtype and layout (``views``), allocated once, in one
    flat block where they share a dtype and device."""

    def __init__(self, like: list[torch.Tensor]) -> None:
        kinds = {(t.dtype, t.device) for t in like}
        #: The one block behind the views (None when their dtypes or devices differ).
        self.flat: torch.Tensor | None = None
        if len(kinds) != 1:
            self.views = [torch.zeros_like(t) for t in like]
            return
        (dtype, device), offset = kinds.pop(), 0
        flat = self.flat = torch.zeros(sum(t.numel() for t in like), dtype=dtype, device=device)
        self.views = []
        for t in like:
            # The tensor's own strides (channels-last weights stay channels-last), so that
            # autograd accumulates a gradient into the view in place.
            view = flat[offset : offset + t.numel()].as_strided(t.shape, t.stride())
            self.views.append(view)
            offset += t.numel()

    def attach_as_grad(self, tensors: list[torch.Tensor]) -> None:
        """Zero the views and make them the ``.grad`` of ``tensors``."""
        if self.flat is not None:
            self.flat.zero_()  # each view covers its own span of the block exactly
        else:
            torch._foreach_zero_(self.views)
        for t, view in zip(tensors, self.views):
            t.grad = view

    def norm(self) -> torch.Tensor:
        """The 2-norm of all views together."""
        if self.flat is not None:
            return self.flat.norm()
        return torch.stack(torch._foreach_norm(self.views)).norm()


class _UnrolledScratch:
    """Storage for the unrolled step, allocated once for a search.

    The step keeps a copy of the weights and two weight-sized gradients alive
    across its passes; allocated afresh each step, their many small pieces land
    between the activations of the passes and fragment the heap, so that each
    pass needs new memory (measured: 35% more peak memory).
    """

    def __init__(self, weights: list[torch.Tensor], buffers: list[torch.Tensor]) -> None:
        self.backup = _FlatTensors(weights)
        self.grads = _FlatTensors(weights)
        self.dw = _FlatTensors(weights)
        self.buffers = [b.detach().clone() for b in buffers]
        self._shapes = [(t.shape, t.stride(), t.dtype) for t in (*weights, *buffers)]

    def fits(self, weights: list[torch.Tensor], buffers: list[torch.Tensor]) -> bool:
        return self._shapes == [(t.shape, t.stride(), t.dtype) for t in (*weights, *buffers)]


def relax(module: nn.Module, trainer: DartsTrainer) -> nn.Module | None:
    """The DARTS relaxation of a choice, or ``None`` for a choice type DARTS does not know."""
    if isinstance(module, LayerChoice):
        return DartsLayerChoice(module, trainer.arch.get(module.label, len(module.names)))
    if isinstance(module, InputChoice):
        return DartsInputChoice(module, trainer.arch.get(module.label, module.n_candidates))
    return None


class DartsTrainer(SupernetTrainer):
    """DARTS, first order or (``unrolled=True``) second order.

    Takes the arguments of NNI's legacy ``DartsTrainer`` (an NNI user switches
    by changing the import) plus nastrain's own:

    - ``model``: a model space; its choices are replaced in place.
    - ``loss(logits, y)``, ``metrics(logits, y) -> dict``.
    - ``optimizer``: the weights' optimizer (on ``model.parameters()``), or
      ``None`` for SGD(``learning_rate``, momentum 0.9, weight decay 3e-4).
    - ``num_epochs``, ``dataset`` (split into a weight half and an architecture
      half unless ``valid_dataset`` is given), ``batch_size``, ``workers``,
      ``device``, ``log_frequency``.
    - ``grad_clip``: the weights' gradient norm is clipped to it.
    - ``arc_learning_rate``: Adam on alpha, betas (0.5, 0.999), weight decay 1e-3.
    - ``unrolled``: the second-order approximation.
    - ``seed`` (seeds torch, Python and NumPy when the trainer is built: alpha's
      initialisation, the data order, dropout; seed before building the model
      too for a fully reproducible run), ``checkpoint_dir`` (a checkpoint per
      epoch; ``fit`` resumes from one), ``progress`` (a progress bar; default:
      when stderr is a terminal), ``lr_scheduler`` (stepped once per epoch and checkpointed),
      ``export_exclude`` (candidate names ``export`` never picks; the paper
      excludes ``none``), ``channels_last`` (the channels-last memory format and, on a
      CPU, the faster layers of :mod:`nastrain.kernels`; default: on for a CPU and a
      model with convolutions).

    After ``fit``, :attr:`history` holds each epoch's mean metrics and
    ``alphas`` (softmax weights per label), for plotting.
    """

    name = "darts"

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
        seed: int | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        progress: bool | None = None,
        lr_scheduler: Any = None,
        export_exclude: Iterable[str] = ("none",),
        channels_last: bool | None = None,
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
            seed=seed,
            checkpoint_dir=checkpoint_dir,
            progress=progress,
            channels_last=channels_last,
        )
        self.grad_clip = grad_clip
        self.unrolled = unrolled
        self.export_exclude = tuple(export_exclude)
        self.arch = ArchParameters(self.device)
        self.nas_modules = replace_choices(
            self.model, trainer=self, init_fn=lambda choice: relax(choice, self)
        )
        self.prepare_model()
        # A relaxation may register its alpha as a module attribute (a plugin's may): alpha
        # is still not a weight.
        arch_ids = {id(alpha) for alpha in self.arch.parameters()}
        self.weights = [
            p for p in self.model.parameters() if p.requires_grad and id(p) not in arch_ids
        ]
        self.optimizer = optimizer or torch.optim.SGD(
            self.weights, lr=learning_rate, momentum=0.9, weight_decay=3e-4
        )
        self.lr_scheduler = lr_scheduler
        self.arch_optimizer = torch.optim.Adam(
            self.arch.parameters(), lr=arc_learning_rate, betas=(0.5, 0.999), weight_decay=1e-3
        )

    # --- one step: eq. (3)/(6) for alpha, then an ordinary step for w ----------------------

    def search_step(self, train_batch: Any, valid_batch: Any) -> dict[str, float]:
        trn_x, trn_y = train_batch
        val_x, val_y = valid_batch
        self.arch_optimizer.zero_grad(set_to_none=True)
        if self.unrolled and self.weights:  # without weights, w' = w: the first order
            self._unrolled_arch_gradient(trn_x, trn_y, val_x, val_y)
        else:
            # First order: d L_val(w, alpha) / d alpha; nothing recorded for the weights.
            self._alpha_grad(val_x, val_y, accumulate=True)
        self.arch_optimizer.step()

        self.optimizer.zero_grad(set_to_none=True)
        with frozen(self.arch.parameters()):  # the weights' step: alpha is a constant here
            logits = self.model(trn_x)
            loss = self.loss(logits, trn_y)
            if self.weights:  # a space of parameter-free candidates has none
                loss.backward(inputs=self.weights)
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.weights, self.grad_clip)
        self.optimizer.step()
        with torch.no_grad():
            return {"loss": loss.item(), **self.compute_metrics(logits.detach(), trn_y)}

    def _virtual_step_size(self) -> float:
        """xi of eq. (6): the weights' current learning rate."""
        return float(self.optimizer.param_groups[0]["lr"])

    def _unrolled_arch_gradient(self, trn_x: Any, trn_y: Any, val_x: Any, val_y: Any) -> None:
        """Set alpha.grad to the second-order DARTS gradient (eq. 7-8).

        grad = dL_val(w', alpha)/dalpha - xi * (dL_train(w+, alpha)/dalpha -
        dL_train(w-, alpha)/dalpha) / (2 eps), where w' = w - xi * dL_train(w,
        alpha)/dw (plus the optimizer's momentum and weight decay, as the
        real step would apply), w+- = w +- eps * dL_val(w', alpha)/dw' and
        eps = 0.01 / ||dL_val/dw'||. The weights (and buffers such as BatchNorm
        statistics) are restored afterwards.
        """
        weights, alphas = self.weights, self.arch.parameters()
        xi = self._virtual_step_size()
        buffers = list(self.model.buffers())
        scratch = self._scratch(buffers)
        backup, grads, dw = scratch.backup, scratch.grads, scratch.dw
        with torch.no_grad():
            torch._foreach_copy_(backup.views, weights)
            if buffers:
                torch._foreach_copy_(scratch.buffers, buffers)

        # w' = w - xi * (dL_train/dw + momentum buffer + weight decay), in place. The gradients
        # accumulate into preallocated storage (weights with none get zeros).
        grads.attach_as_grad(weights)
        with frozen(alphas):
            self.loss(self.model(trn_x), trn_y).backward(inputs=weights)
        group = self.optimizer.param_groups[0]
        momentum, decay = group.get("momentum", 0.0), group.get("weight_decay", 0.0)
        with torch.no_grad():
            if decay:
                torch._foreach_add_(grads.views, backup.views, alpha=decay)
            if momentum:
                state = self.optimizer.state
                pairs = [
                    (step, state[w]["momentum_buffer"])
                    for w, step in zip(weights, grads.views)
                    if state.get(w, {}).get("momentum_buffer") is not None
                ]
                if pairs:
                    steps, bufs = zip(*pairs)
                    torch._foreach_add_(list(steps), list(bufs), alpha=momentum)
            torch._foreach_sub_(weights, grads.views, alpha=xi)

        # dL_val(w', alpha) with respect to w' and alpha.
        dw.attach_as_grad(weights)
        for a in alphas:
            a.grad = None
        self.loss(self.model(val_x), val_y).backward(inputs=[*weights, *alphas])
        dalpha = [torch.zeros_like(a) if a.grad is None else a.grad for a in alphas]

        # Finite-difference Hessian-vector product at the original w.
        eps = float(0.01 / dw.norm().clamp_min(1e-12))
        with torch.no_grad():
            torch._foreach_copy_(weights, backup.views)
            torch._foreach_add_(weights, dw.views, alpha=eps)
        d_pos = self._alpha_grad(trn_x, trn_y)
        with torch.no_grad():
            torch._foreach_copy_(weights, backup.views)
            torch._foreach_sub_(weights, dw.views, alpha=eps)
        d_neg = self._alpha_grad(trn_x, trn_y)

        with torch.no_grad():
            torch._foreach_copy_(weights, backup.views)
            if buffers:
                torch._foreach_copy_(buffers, scratch.buffers)
            for w in weights:
                w.grad = None
            for a, g, gp, gn in zip(alphas, dalpha, d_pos, d_neg):
                a.grad = g - xi * (gp - gn) / (2 * eps)

    def _scratch(self, buffers: list[torch.Tensor]) -> _UnrolledScratch:
        """The unrolled step's storage, allocated once (see :class:`_UnrolledScratch`)."""
        scratch = getattr(self, "_unrolled_scratch", None)
        if scratch is None or not scratch.fits(self.weights, buffers):
            scratch = _UnrolledScratch(self.weights, buffers)
            self._unrolled_scratch = scratch
        return scratch

    def _alpha_grad(self, x: Any, y: Any, accumulate: bool = False) -> list[torch.Tensor]:
        """dL(w, alpha)/dalpha on one batch, the weights held constant (not recorded).

        Returned, or with ``accumulate`` added to each alpha's ``.grad``.
        """
        alphas = self.arch.parameters()
        with frozen(self.weights):
            loss = self.loss(self.model(x), y)
            if accumulate:
                loss.backward(inputs=alphas)
                return []
            found = torch.autograd.grad(loss, alphas, allow_unused=True)
        return [torch.zeros_like(a) if g is None else g for a, g in zip(alphas, found)]

    # --- epochs, checkpoints, export ---------------------------------------------------------

    def after_epoch(self) -> None:
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()

    def epoch_record(self) -> dict[str, Any]:
        return {"alphas": self.arch.softmax()}

    @property
    def alpha_history(self) -> list[dict[str, list[float]]]:
        """softmax(alpha) per label after each epoch: ``alpha_history[epoch][label]``."""
        return [record["alphas"] for record in self.history]

    def checkpointables(self) -> dict[str, Any]:
        items: dict[str, Any] = {
            "arch": self.arch,
            "optimizer": self.optimizer,
            "arch_optimizer": self.arch_optimizer,
        }
        if self.lr_scheduler is not None:
            items["lr_scheduler"] = self.lr_scheduler
        return items

    @torch.no_grad()
    def export(self) -> dict[str, Any]:
        """The strongest candidate per LayerChoice (never one of ``export_exclude``) and the
        ``n_chosen`` strongest inputs per InputChoice, in the CONTRACT format."""
        result: dict[str, Any] = {}
        for label, module in self.nas_modules:
            if label in result:
                continue
            if isinstance(module, DartsLayerChoice):
                result[label] = module.export(self.export_exclude)
            else:  # DartsInputChoice, or a relaxation a third-party plugin supplied
                result[label] = module.export()
        return result


def replace_for_darts(module: nn.Module, trainer: Any) -> nn.Module | None:
    """The hook's answer: DARTS relaxations for DARTS trainers (the current one by default)."""
    trainer = trainer if trainer is not None else current_trainer()
    if isinstance(trainer, DartsTrainer):
        return relax(module, trainer)
    return None
