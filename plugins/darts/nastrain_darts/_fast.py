"""The performance machinery of :mod:`nastrain_darts.trainer`: what makes its steps fast
and lean, kept apart so that the trainer reads as the algorithm.

- :class:`WeightedSum`: a mixed operation's sum as one autograd node;
- :func:`frozen`: leaves that a pass will not differentiate, not recorded;
- :func:`virtual_groups`, :func:`take_virtual_step`, :class:`UnrolledScratch`: the
  second-order step's virtual SGD step, exactly as the weights' SGD would take it, in
  storage allocated once;
- :func:`rng_state`, :func:`replayed_rng`: the same dropout masks in the finite
  difference's passes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch

__all__ = [
    "FlatTensors",
    "UnrolledScratch",
    "VirtualGroup",
    "WeightedSum",
    "frozen",
    "plain_sum",
    "replayed_rng",
    "rng_state",
    "take_virtual_step",
    "virtual_groups",
]


class WeightedSum(torch.autograd.Function):
    """sum_k weights[indices[k]] * outputs[k], as one autograd node.

    The mixed operation's sum: one node per edge instead of a product per
    candidate. The candidates' outputs are kept for the backward pass only when
    the weights need a gradient (an architecture pass); each weight's gradient is
    then one inner product. Its backward pass is differentiable again.
    """

    @staticmethod
    def forward(
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
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        weights, *outputs = ctx.saved_tensors
        indices = ctx.indices
        grad_weights = None
        if ctx.needs_input_grad[0]:
            flat_grad, order = flatten(grad)
            inner = [torch.dot(flat_grad, flatten(o, order)[0].to(grad.dtype)) for o in outputs]
            at = torch.tensor(indices, device=weights.device)
            grad_weights = torch.zeros_like(weights).index_put(
                (at,), torch.stack(inner).to(weights.dtype)
            )
        grad_outputs = [
            grad * weights[i] if needed else None
            for i, needed in zip(indices, ctx.needs_input_grad[2:])
        ]
        return (grad_weights, None, *grad_outputs)


def flatten(t: torch.Tensor, order: tuple[int, ...] | None = None) -> tuple[torch.Tensor, Any]:
    """``t`` as a vector, its elements in ``order`` of dimensions (by default the order they
    have in memory for a channels-last tensor, else the logical one): a view, no copy, when
    the layout allows. Two tensors flattened in one order pair up element by element."""
    if order is None:
        channels_last = t.dim() == 4 and not t.is_contiguous()
        channels_last = channels_last and t.is_contiguous(memory_format=torch.channels_last)
        order = (0, 2, 3, 1) if channels_last else tuple(range(t.dim()))
    return t.permute(order).reshape(-1), order


def plain_sum(inputs: Sequence[torch.Tensor], mean: bool = False) -> torch.Tensor:
    """The sum (or mean) of ``inputs``, in the inputs' memory layout; the added tensors
    are not kept for the backward pass."""
    if len(inputs) == 1:
        return inputs[0]
    out = inputs[0] + inputs[1]
    for t in inputs[2:]:
        out.add_(t)  # in place on a fresh sum: addition's backward does not need its output
    return out / len(inputs) if mean else out


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


class FlatTensors:
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


class VirtualGroup(NamedTuple):
    """Weights (indices into ``DartsTrainer.weights``) that SGD steps alike, and how."""

    indices: list[int]
    lr: float
    momentum: float
    dampening: float
    nesterov: bool
    weight_decay: float
    maximize: bool
    #: The optimizer's momentum buffers of these weights, or None before SGD's first step.
    buffers: list[torch.Tensor] | None

    @property
    def factor(self) -> float:
        """lr times the factor SGD's update gives the gradient now: w' = w - factor *
        dL_train/dw - (terms that do not depend on alpha)."""
        c = 1.0
        if self.momentum:
            if self.buffers is not None:
                c = (1 - self.dampening) * (self.momentum if self.nesterov else 1.0)
                c += 1.0 if self.nesterov else 0.0
            elif self.nesterov:
                c = 1.0 + self.momentum
        return self.lr * c * (-1.0 if self.maximize else 1.0)


def rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The state of torch's CPU generator and of ``device``'s (None on a CPU)."""
    cpu = torch.get_rng_state()
    if device.type == "cpu":
        return cpu, None
    return cpu, torch.get_device_module(device.type).get_rng_state(device)


@contextmanager
def replayed_rng(
    device: torch.device, state: tuple[torch.Tensor, torch.Tensor | None]
) -> Iterator[None]:
    """Run the block with torch's generators at ``state`` (from :func:`rng_state`), and put
    them back where they were after it: the block draws the random numbers (dropout
    masks) that a block started at ``state`` drew."""
    current = rng_state(device)
    cpu, on_device = state
    torch.set_rng_state(cpu)
    if on_device is not None:
        torch.get_device_module(device.type).set_rng_state(on_device, device)
    try:
        yield
    finally:
        torch.set_rng_state(current[0])
        if current[1] is not None:
            torch.get_device_module(device.type).set_rng_state(current[1], device)


class UnrolledScratch:
    """Storage for the unrolled step, allocated once for a search.

    The step keeps a copy of the weights and two weight-sized gradients alive
    across its passes; allocated afresh each step, their many small pieces land
    between the activations of the passes and fragment the heap, so that each
    pass needs new memory (measured: 35% more peak memory).
    """

    def __init__(self, weights: list[torch.Tensor], buffers: list[torch.Tensor]) -> None:
        self.backup = FlatTensors(weights)
        self.grads = FlatTensors(weights)
        self.dw = FlatTensors(weights)
        self.buffers = [b.detach().clone() for b in buffers]
        self._shapes = [(t.shape, t.stride(), t.dtype) for t in (*weights, *buffers)]

    def fits(self, weights: list[torch.Tensor], buffers: list[torch.Tensor]) -> bool:
        return self._shapes == [(t.shape, t.stride(), t.dtype) for t in (*weights, *buffers)]


def virtual_groups(
    optimizer: torch.optim.Optimizer, weights: list[torch.Tensor]
) -> list[VirtualGroup]:
    """The weights by how SGD steps them now: each parameter group's hyperparameters,
    split by whether a weight has a momentum buffer yet (a weight in no group: lr 0)."""
    index = {id(w): i for i, w in enumerate(weights)}
    placed: set[int] = set()
    groups: list[VirtualGroup] = []
    state = optimizer.state
    for group in optimizer.param_groups:
        momentum = float(group.get("momentum", 0.0))
        with_buffer: list[int] = []
        without: list[int] = []
        for p in group["params"]:
            i = index.get(id(p))
            if i is None or i in placed:
                continue
            placed.add(i)
            has_buffer = momentum and state.get(p, {}).get("momentum_buffer") is not None
            (with_buffer if has_buffer else without).append(i)
        for indices, has_buffer in ((with_buffer, True), (without, False)):
            if indices:
                groups.append(
                    VirtualGroup(
                        indices=indices,
                        lr=float(group["lr"]),
                        momentum=momentum,
                        dampening=float(group.get("dampening", 0.0)),
                        nesterov=bool(group.get("nesterov", False)),
                        weight_decay=float(group.get("weight_decay", 0.0)),
                        maximize=bool(group.get("maximize", False)),
                        buffers=[state[weights[i]]["momentum_buffer"] for i in indices]
                        if has_buffer
                        else None,
                    )
                )
    rest = [i for i in range(len(weights)) if i not in placed]
    if rest:  # not optimised: the virtual step leaves them where they are
        groups.append(VirtualGroup(rest, 0.0, 0.0, 0.0, False, 0.0, False, None))
    return groups


@torch.no_grad()
def take_virtual_step(
    groups: list[VirtualGroup],
    weights: list[torch.Tensor],
    grads: list[torch.Tensor],
    original: list[torch.Tensor],
) -> None:
    """w' = w - lr * (SGD's update direction), in place, per group: the step the weights'
    SGD would take now with the gradients ``grads`` (overwritten: they become the update
    directions) at the weights ``original`` (a copy of ``weights`` before the step)."""
    for g in groups:
        steps = [grads[i] for i in g.indices]
        if g.maximize:
            torch._foreach_neg_(steps)
        if g.weight_decay:
            torch._foreach_add_(steps, [original[i] for i in g.indices], alpha=g.weight_decay)
        if g.momentum:
            # buf' = momentum * buf + (1 - dampening) * d (buf' = d on the first step); the
            # update is buf', or d + momentum * buf' with nesterov.
            if g.buffers is not None:
                scale = (1 - g.dampening) * (g.momentum if g.nesterov else 1.0)
                scale += 1.0 if g.nesterov else 0.0
                if scale != 1.0:
                    torch._foreach_mul_(steps, scale)
                momentum = g.momentum * (g.momentum if g.nesterov else 1.0)
                torch._foreach_add_(steps, g.buffers, alpha=momentum)
            elif g.nesterov:
                torch._foreach_mul_(steps, 1.0 + g.momentum)
        if g.lr:
            torch._foreach_sub_([weights[i] for i in g.indices], steps, alpha=g.lr)
