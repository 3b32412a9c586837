"""Faster CPU paths for the small layers a NAS supernet is made of.

A supernet runs hundreds of small depthwise and 1x1 convolutions and
BatchNorms per step. On CPUs, with the channels-last memory format, the
library's default kernels for some of them are several times slower than the
arithmetic needs (measured on the project's 2-core AVX-512 machines, batch 32,
8-32 channels, 4x4 to 16x16 maps):

* the backward pass of a depthwise convolution that is dilated or strided: the
  input gradient is up to 15x slower than the forward convolution it mirrors,
  and the weight gradient of a dilated one up to 7x slower than an undilated one;
* a channels-last BatchNorm over fewer than 16 channels (one AVX-512 vector),
  about 2x slower than the same arithmetic as column sums and products on the
  (pixels, channels) matrix of the layout;
* a 1x1 convolution over a small map, where the convolution library's per-call
  overhead dominates (a matrix product over the channels is faster), while over a
  large map the convolution is the faster one.

Three rewrites save memory and calls as well: the candidate operations that read
one state share one ReLU of it (:class:`SharedReLU`) and one result of a pooling
followed by a BatchNorm without affine parameters (:class:`SharedPoolNorm`: the
edges of a DARTS cell that read one state all compute the same one), and a
training-mode BatchNorm without affine parameters keeps its output rather than
its input for the backward pass (:class:`LeanBatchNorm2d`).

:func:`optimize_for_cpu` rewrites a model in place to take the faster path in each
case, only inside the modules it is given (the plugin gives it the supernet's
candidates and the modules marked with :func:`nastrain.utils.allow_rewrite`). The
results are the same up to float rounding (the tests hold them to 1e-5 of PyTorch's
own), in either memory format and under ``torch.autocast``; parameters and buffers
keep their identity and their ``state_dict`` names, so optimizers, checkpoints and
``apply_arch`` are unaffected. The convolutions' replacements are ``nn.Conv2d``
subclasses with the original's settings (``out_channels``, ``stride``, ...): only
their ``forward`` differs. The custom autograd functions compute correct second
derivatives (the depthwise convolution, the strided subsampling) or refuse a double
backward loudly (the lean BatchNorm: ``once_differentiable``).
"""

from __future__ import annotations

import copy
import itertools
import weakref
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, NamedTuple, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.utils import _pair
from torch.nn.utils import parametrize

__all__ = [
    "DepthwiseConv",
    "LeanBatchNorm2d",
    "PointwiseConv",
    "SeparableGroup",
    "SharedPoolNorm",
    "SharedReLU",
    "StridedPointwiseConv",
    "depthwise_weight_grad",
    "optimize_for_cpu",
    "pointwise_as_matmul",
    "pointwise_conv",
    "share_pool_norms",
    "share_relus_before_depthwise",
]

#: A 1x1 convolution over at most this many input elements runs as a matrix product.
MATMUL_MAX_ELEMENTS = 32 * 1024
#: A channels-last BatchNorm over fewer channels than this runs on the (pixels, channels)
#: matrix (training) or the contiguous layout (evaluation).
SMALL_CHANNELS = 16

_M = TypeVar("_M", bound=nn.Module)


#: The settings of a convolution its computation depends on. Setting one on a replacement
#: (:class:`PointwiseConv`, :class:`StridedPointwiseConv`, :class:`DepthwiseConv`) checks
#: that the replacement can still compute that convolution, and re-plans a DepthwiseConv.
_GEOMETRY = frozenset({"kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"})
#: What ``nn.Module.__init__`` sets on every module (hook tables, parameter tables, mode):
#: not the convolution's own settings, so not copied from it.
_MODULE_STATE = frozenset(vars(nn.Module()))


class _ConvReplacement(nn.Conv2d):
    """An ``nn.Conv2d`` that takes over a convolution's settings, parameters and buffers;
    only ``forward`` differs.

    It is a true ``nn.Conv2d`` (``isinstance`` checks, FLOP counters and init code see
    one): ``in_channels``, ``out_channels``, ``kernel_size``, ``stride``, ``padding``,
    ``dilation``, ``groups``, ``padding_mode`` and the other attributes are the
    original's, ``weight`` and ``bias`` the same Parameter objects (optimizers stay
    valid, ``state_dict`` keys and shapes are the original's), and ``repr`` names the
    replacement. Setting one of the settings its computation depends on afterwards is
    checked: one it cannot compute raises ``ValueError`` and leaves it as it was.
    """

    #: It never runs the library's strided 1x1 convolution in channels-last (see
    #: ``nastrain.oneshot.strided_pointwise_convolutions``).
    channels_last_safe: ClassVar[bool] = True

    def __init__(self, conv: nn.Conv2d) -> None:
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(
                f"{type(self).__name__} replaces an nn.Conv2d, got {type(conv).__name__}"
            )
        nn.Module.__init__(self)
        for name, value in vars(conv).items():
            if name not in _MODULE_STATE and name != "channels_last_safe":
                # Straight into __dict__: plain settings (and any attribute a user added),
                # a container copied so that the two modules share none.
                mutable = isinstance(value, list | dict | set)
                self.__dict__[name] = copy.copy(value) if mutable else value
        self._parameters.update(conv._parameters)
        self._buffers.update(conv._buffers)
        self._non_persistent_buffers_set.update(conv._non_persistent_buffers_set)
        self._modules.update(conv._modules)
        self.training = conv.training
        self._settle()

    def _mismatch(self) -> str | None:
        """Why this replacement cannot compute its convolution's settings, or ``None``."""
        raise NotImplementedError

    def _settle(self) -> None:
        """Check the settings (and work out what depends on them); raise ``ValueError``
        naming the setting it cannot compute."""
        reason = self._mismatch()
        if reason is not None:
            raise ValueError(f"{type(self).__name__} cannot compute {reason}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in _GEOMETRY or name not in self.__dict__:
            super().__setattr__(name, value)
            return
        if name in ("kernel_size", "stride", "dilation") or (
            name == "padding" and not isinstance(value, str)
        ):
            value = _pair(value)  # as nn.Conv2d's constructor takes them
        old = self.__dict__[name]
        super().__setattr__(name, value)
        try:
            self._settle()
        except ValueError:
            super().__setattr__(name, old)
            raise


def _pointwise_mismatch(conv: nn.Conv2d) -> str | None:
    """Why ``conv`` is not a 1x1 convolution without padding in one group (any stride), or
    ``None``."""
    if conv.kernel_size != (1, 1):
        return f"kernel_size={conv.kernel_size!r} (1x1 only)"
    if conv.padding not in ((0, 0), "valid"):
        return f"padding={conv.padding!r} (none only)"
    if conv.dilation != (1, 1):
        return f"dilation={conv.dilation!r} (1 only)"
    if conv.groups != 1:
        return f"groups={conv.groups!r} (one group only)"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r} ('zeros' only)"
    return None


class PointwiseConv(_ConvReplacement):
    """A 1x1 ``nn.Conv2d`` (stride 1, no padding, one group) that runs as a matrix product
    over the channels of a channels-last tensor when the tensor is small.

    Each of the many small 1x1 convolutions of a NAS supernet costs more in the
    convolution library's per-call overhead than in arithmetic; on the
    channels-last layout the same product is one ``linear`` over a contiguous
    (N, H, W, C) view. Above :data:`MATMUL_MAX_ELEMENTS` input elements the
    convolution is the faster of the two and is used. It is the convolution it
    replaces in all but ``forward`` (same settings, same ``weight`` and ``bias``
    Parameter objects, same state_dict keys: see :class:`_ConvReplacement`).
    """

    def _mismatch(self) -> str | None:
        if self.stride != (1, 1):
            return f"stride={self.stride!r} (1 only: StridedPointwiseConv takes strides)"
        return _pointwise_mismatch(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pointwise_conv(x, self.weight, self.bias)


def pointwise_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias)`` for a 1x1 ``weight`` (``(out, in, 1, 1)`` or
    ``(out, in)``), as a matrix product over the channels when ``x`` is a small
    channels-last tensor (see :class:`PointwiseConv`)."""
    if x.numel() > MATMUL_MAX_ELEMENTS or not x.is_contiguous(memory_format=torch.channels_last):
        return F.conv2d(x, weight.view(*weight.shape[:2], 1, 1), bias)
    out = F.linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias)
    return out.permute(0, 3, 1, 2)


class _Subsample(torch.autograd.Function):
    """``x[:, :, ::s, ::t]`` as a dense channels-last tensor; the backward pass writes the
    gradient straight into zeros laid out like ``x`` (autograd's strided-slice backward
    builds them in the contiguous layout and converts)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
        ctx.shape, ctx.stride = x.shape, stride
        ctx.memory_format = (
            torch.channels_last
            if x.is_contiguous(memory_format=torch.channels_last) or not x.is_contiguous()
            else torch.contiguous_format
        )
        return x[:, :, :: stride[0], :: stride[1]].contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        grad_x = torch.empty(
            ctx.shape, dtype=grad.dtype, device=grad.device, memory_format=ctx.memory_format
        ).zero_()
        grad_x[:, :, :: ctx.stride[0], :: ctx.stride[1]] = grad
        return grad_x, None


class StridedPointwiseConv(_ConvReplacement):
    """A strided 1x1 ``nn.Conv2d`` (no padding, one group) computed as the subsampled
    input's :func:`pointwise_conv`.

    It reads every ``stride``-th pixel only: the convolution library's strided
    1x1 kernels, and autograd's backward of a strided slice, are several times
    slower than gathering those pixels once and multiplying (a reduction cell's
    ``FactorizedReduce``, a ResNet shortcut). It never runs the library's strided
    convolution, whose channels-last backward aborts the process on some sizes
    (``channels_last_safe``). It is the convolution it replaces in all but
    ``forward`` (see :class:`_ConvReplacement`).
    """

    def _mismatch(self) -> str | None:
        return _pointwise_mismatch(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pointwise_conv(_Subsample.apply(x, self.stride), self.weight, self.bias)


def _is_strided_pointwise(module: nn.Module) -> bool:
    return (
        type(module) is nn.Conv2d
        and module.stride != (1, 1)
        and _pointwise_mismatch(module) is None
    )


def _is_pointwise(module: nn.Module) -> bool:
    return (
        type(module) is nn.Conv2d
        and module.stride == (1, 1)
        and _pointwise_mismatch(module) is None
    )


_CONV_BACKWARD = torch.ops.aten.convolution_backward.default
_THRESHOLD_BACKWARD = torch.ops.aten.threshold_backward.default
_BATCH_NORM_BACKWARD = torch.ops.aten.native_batch_norm_backward.default


class _DepthwisePlan(NamedTuple):
    """How one depthwise convolution computes its gradients, worked out once."""

    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    #: The padding of the flipped-kernel convolution that gives the input gradient.
    grad_padding: tuple[int, int]
    #: "subsample" (stride = dilation), "polyphase" (stride 1, dilated) or "library".
    weight_grad: str
    #: The padding of the undilated convolution the weight gradient is computed as.
    undilated_padding: tuple[int, int]

    @classmethod
    def of(cls, conv: nn.Conv2d) -> _DepthwisePlan:
        stride: tuple[int, int] = tuple(conv.stride)  # type: ignore[assignment]
        padding: tuple[int, int] = tuple(conv.padding)  # type: ignore[assignment]
        dilation: tuple[int, int] = tuple(conv.dilation)  # type: ignore[assignment]
        kernel = conv.kernel_size
        d = dilation[0]
        method = "library"
        if d > 1 and dilation[1] == d and padding[0] % d == 0 and padding[1] % d == 0:
            if stride == (d, d):
                method = "subsample"
            elif stride == (1, 1):
                method = "polyphase"
        return cls(
            stride,
            padding,
            dilation,
            conv.groups,
            tuple(dilation[i] * (kernel[i] - 1) - padding[i] for i in (0, 1)),  # type: ignore[arg-type]
            method,
            (padding[0] // d, padding[1] // d),
        )


def _depthwise_input_grad(
    grad: torch.Tensor, weight: torch.Tensor, in_size: tuple[int, ...], plan: _DepthwisePlan
) -> torch.Tensor:
    """The input gradient of a depthwise convolution, computed by a forward convolution.

    It is the correlation of the output gradient (zeros inserted between its
    pixels when strided) with the spatially flipped kernel, padded by
    ``dilation * (k - 1) - padding``; the forward kernel is much faster than the
    library's backward one for dilated and strided convolutions.
    """
    stride = plan.stride
    if stride != (1, 1):
        n, c, out_h, out_w = grad.shape
        pad = plan.grad_padding
        # Sized so that the convolution below gives exactly the input's size.
        spread = grad.new_zeros(
            (n, in_size[0] - pad[0] + plan.padding[0], in_size[1] - pad[1] + plan.padding[1], c)
        ).permute(0, 3, 1, 2)
        spread[
            :,
            :,
            : (out_h - 1) * stride[0] + 1 : stride[0],
            : (out_w - 1) * stride[1] + 1 : stride[1],
        ] = grad
        grad = spread
    return F.conv2d(
        grad, weight.flip(-1, -2), None, 1, plan.grad_padding, plan.dilation, plan.groups
    )


def _space_to_batch(t: torch.Tensor, d: int) -> torch.Tensor:
    """(N, C, H, W) -> (d*d*N, C, H/d, W/d): the d*d polyphase components of ``t``, in the
    channels-last format."""
    n, c, h, w = t.shape
    t = t.permute(0, 2, 3, 1).reshape(n, h // d, d, w // d, d, c)
    t = t.permute(2, 4, 0, 1, 3, 5).reshape(d * d * n, h // d, w // d, c)
    return t.permute(0, 3, 1, 2)


_WEIGHT_ONLY = [False, True, False]


def depthwise_weight_grad(
    grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, plan: _DepthwisePlan
) -> torch.Tensor:
    """The weight gradient of a depthwise convolution, an undilated one where possible.

    A convolution with dilation ``d`` and padding ``d * q`` reads, for each output
    pixel, inputs ``d`` apart: at stride ``d`` only the input's every ``d``-th row and
    column (one undilated convolution of ``x[::d, ::d]``), at stride 1 each of the
    ``d * d`` polyphase components of ``x`` separately (one undilated convolution of
    them stacked on the batch). Otherwise the library computes it.
    """
    groups, q = plan.groups, plan.undilated_padding
    if plan.weight_grad == "subsample":
        d = plan.dilation[0]
        sub = x[:, :, ::d, ::d].contiguous(memory_format=torch.channels_last)
        k = weight.shape[-2:]
        if (sub.shape[2] + 2 * q[0] - k[0] + 1, sub.shape[3] + 2 * q[1] - k[1] + 1) == tuple(
            grad.shape[-2:]
        ):
            return _CONV_BACKWARD(
                grad, sub, weight, None, [1, 1], q, [1, 1], False, [0, 0], groups, _WEIGHT_ONLY
            )[1]
    elif plan.weight_grad == "polyphase":
        d = plan.dilation[0]
        if x.shape[-2] % d == 0 and x.shape[-1] % d == 0:
            xs, gs = _space_to_batch(x, d), _space_to_batch(grad, d)
            return _CONV_BACKWARD(
                gs, xs, weight, None, [1, 1], q, [1, 1], False, [0, 0], groups, _WEIGHT_ONLY
            )[1]
    return _CONV_BACKWARD(
        grad,
        x,
        weight,
        None,
        plan.stride,
        plan.padding,
        plan.dilation,
        False,
        [0, 0],
        groups,
        _WEIGHT_ONLY,
    )[1]


class _DepthwiseConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        plan: _DepthwisePlan,
        relu_first: bool,
    ) -> torch.Tensor:
        ctx.plan, ctx.relu_first, ctx.in_size = plan, relu_first, x.shape[-2:]
        # The input is needed for the weight's gradient and for ReLU's mask; with a ReLU
        # first, the ReLU's input is kept (the layer before keeps it anyway) rather than
        # its output, which is recomputed in the backward pass.
        ctx.save_for_backward(x if relu_first or weight.requires_grad else None, weight)
        if relu_first:
            x = F.relu(x)
        return F.conv2d(x, weight, bias, plan.stride, plan.padding, plan.dilation, plan.groups)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x, weight = ctx.saved_tensors
        plan, relu_first = ctx.plan, ctx.relu_first
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        if need_x:
            grad_x = _depthwise_input_grad(grad, weight, ctx.in_size, plan)
            if relu_first:
                grad_x = _THRESHOLD_BACKWARD(grad_x, x, 0)
        if need_w:
            grad_w = depthwise_weight_grad(grad, F.relu(x) if relu_first else x, weight, plan)
        if need_b:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None


def _autocast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` as autocast casts an argument of a lower-precision op: floating tensors other
    than float64 to ``dtype``, the others as they are."""
    if t.is_floating_point() and t.dtype not in (torch.float64, dtype):
        return t.to(dtype)
    return t


class DepthwiseConv(_ConvReplacement):
    """A depthwise ``nn.Conv2d`` (one filter per channel) with a faster backward pass,
    optionally with the ReLU before it folded in.

    The forward pass is the library's convolution; the input gradient is a forward
    convolution with the flipped kernel, the weight gradient an undilated
    convolution's where the dilation allows (:func:`depthwise_weight_grad`). With
    ``relu_first``, it computes ``conv(relu(x))`` and keeps ``x`` instead of
    ``relu(x)`` for the backward pass: in a NAS cell the same ``x`` feeds several
    such operations and is kept once, where each separate ReLU would keep an output
    of its own. It is the convolution it replaces in all but ``forward`` (see
    :class:`_ConvReplacement`; ``plan``, how it computes the gradients, follows its
    settings). Under ``torch.autocast`` it computes in the autocast dtype, as the
    convolution would. Its backward pass is differentiable (second derivatives are
    correct).
    """

    plan: _DepthwisePlan

    def __init__(self, conv: nn.Conv2d, relu_first: bool = False) -> None:
        super().__init__(conv)
        self.relu_first = relu_first

    def _mismatch(self) -> str | None:
        return _depthwise_mismatch(self)

    def _settle(self) -> None:
        super()._settle()
        self.plan = _DepthwisePlan.of(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        device = x.device.type
        if torch.is_autocast_enabled(device):
            # What autocast does for the convolution it replaces: the input, weight and bias
            # in the autocast dtype (casts autograd differentiates back to each one's own),
            # then the function without autocast, so that its forward and backward
            # convolutions see one dtype.
            dtype = torch.get_autocast_dtype(device)
            x, weight = _autocast(x, dtype), _autocast(weight, dtype)
            bias = None if bias is None else _autocast(bias, dtype)
            with torch.autocast(device, enabled=False):
                return _DepthwiseConvFunction.apply(x, weight, bias, self.plan, self.relu_first)
        return _DepthwiseConvFunction.apply(x, weight, bias, self.plan, self.relu_first)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", relu_first=True" if self.relu_first else "")


class _PassCache:
    """Results by input tensor, kept for one forward pass of a model (see :class:`SharedReLU`
    and :class:`SharedPoolNorm`); hooks on the model open and clear it around each pass."""

    def __init__(self) -> None:
        self.active = False
        self.entries: dict[tuple[int, Any], tuple[Any, int, bool, torch.Tensor, int, Any]] = {}
        #: This pass's calls of :class:`SeparableGroup` modules: (their group tag, id of the
        #: input) -> the modules called with it, in call order.
        self.calls: dict[tuple[Any, int], list[nn.Module]] = {}
        #: Learned from the last pass: id of a group's first module -> the group's modules.
        self.groups: dict[int, list[nn.Module]] = {}

    def open(self, module: nn.Module, args: Any) -> None:
        self.entries.clear()
        self.calls.clear()
        self.active = True

    def close(self, module: nn.Module, args: Any, out: Any) -> None:
        self.entries.clear()
        self.active = False
        if self.calls:
            self.groups = {
                id(members[0]): members
                for members in self.calls.values()
                if len(members) > 1 and len({id(m) for m in members}) == len(members)
            }
            self.calls.clear()

    def record(self, tag: Any, x: torch.Tensor, module: nn.Module) -> None:
        """Note that ``module`` (of group tag ``tag``) ran on ``x`` in this pass."""
        if self.active:
            self.calls.setdefault((tag, id(x)), []).append(module)

    def get(self, x: torch.Tensor, tag: Any) -> tuple[torch.Tensor, Any] | None:
        """The output (and extra value) stored for ``x`` under ``tag`` in this pass, if ``x``
        is the same tensor, unchanged, in the same grad mode, and the output unmodified."""
        if not self.active:
            return None
        hit = self.entries.get((id(x), tag))
        if hit is None:
            return None
        ref, version, was_grad, out, out_version, extra = hit
        if (
            ref() is x
            and version == x._version
            and was_grad == torch.is_grad_enabled()
            and out_version == out._version
        ):
            return out, extra
        return None

    def put(self, x: torch.Tensor, tag: Any, out: torch.Tensor, extra: Any = None) -> None:
        """Store ``out`` (and ``extra``) as what ``x`` gives under ``tag`` in this pass."""
        if self.active:
            self.entries[(id(x), tag)] = (
                weakref.ref(x),
                x._version,
                torch.is_grad_enabled(),
                out,
                out._version,
                extra,
            )

    def relu(self, x: torch.Tensor) -> torch.Tensor:
        hit = self.get(x, "relu")
        if hit is not None:
            return hit[0]
        out = F.relu(x)
        self.put(x, "relu", out)
        return out


def _pass_cache(model: nn.Module) -> _PassCache:
    """``model``'s pass cache, created (with the hooks that open and clear it) on first use."""
    cache = getattr(model, "_nastrain_pass_cache", None)
    if cache is None:
        cache = _PassCache()
        model._nastrain_pass_cache = cache  # type: ignore[assignment]
        model.register_forward_pre_hook(cache.open)
        # always_call: a forward pass that raises must not leave the cache holding its graph.
        model.register_forward_hook(cache.close, always_call=True)
    return cache


class SharedReLU(nn.Module):
    """A ReLU computed once per input tensor and forward pass of the model.

    In a NAS cell the same state enters many candidate operations, most of which
    begin with a ReLU: each would compute, keep for the backward pass and
    differentiate its own copy of ``relu(state)``. These share one (the backward
    pass adds their gradients and runs one ReLU backward). Outside a forward
    pass of the model it was installed for, it is a plain ReLU.
    """

    def __init__(self, cache: _PassCache) -> None:
        super().__init__()
        self._cache = cache

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._cache.relu(x)


def _entrances(model: nn.Module) -> set[int]:
    """ids of the modules that receive their ``nn.Sequential``'s input: a Sequential's first
    module, recursively (the first module of a first module, ...)."""
    entrances: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Sequential) and len(module) and not _left_alone(module):
            first = module[0]
            entrances.add(id(first))
            while isinstance(first, nn.Sequential) and len(first):
                first = first[0]
                entrances.add(id(first))
    # A Sequential that is not itself the first of its parent passes its own input on.
    for module in model.modules():
        if isinstance(module, nn.Sequential) and len(module):
            for child in list(module)[1:]:
                entrances.discard(id(child))
                while isinstance(child, nn.Sequential) and len(child):
                    child = child[0]
                    entrances.discard(id(child))
    return entrances


def share_relus_before_depthwise(
    model: nn.Module, modules: Iterable[nn.Module] | None = None
) -> dict[str, int]:
    """Rewrite each ReLU right before a depthwise convolution in an ``nn.Sequential`` of
    ``model`` (inside ``modules`` only, when given: see :func:`optimize_for_cpu`); returns
    how many became shared and how many were folded.

    A ReLU that sees the input of a candidate operation (the first module of its
    Sequential, or of a first Sequential in one) becomes a :class:`SharedReLU`:
    operations reading the same state share it. A ReLU inside an operation, which
    nothing shares, is folded into the convolution (:class:`DepthwiseConv` with
    ``relu_first``). Positions and ``state_dict`` keys stay as they were.
    """
    return _share_relus(model, _Scope(model, modules))


def _share_relus(model: nn.Module, scope: _Scope) -> dict[str, int]:
    counts = {"shared": 0, "folded": 0}
    entrances = _entrances(model)
    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential) or _left_alone(module):
            continue
        children = list(module._modules.items())
        for (relu_name, relu), (conv_name, conv) in itertools.pairwise(children):
            if type(relu) is not nn.ReLU or relu.inplace or _left_alone(relu) or _left_alone(conv):
                continue
            if not (_is_depthwise(conv) or isinstance(conv, DepthwiseConv)):
                continue
            if relu not in scope or conv not in scope:
                continue
            if id(relu) in entrances:
                # The convolution is left to optimize_for_cpu's depthwise rewrite.
                module._modules[relu_name] = scope.add(SharedReLU(_pass_cache(model)))
                counts["shared"] += 1
            elif not getattr(conv, "relu_first", False):
                if isinstance(conv, DepthwiseConv):
                    fused = conv
                else:  # an exact depthwise nn.Conv2d (_is_depthwise)
                    fused = scope.add(DepthwiseConv(cast(nn.Conv2d, conv)))
                    module._modules[conv_name] = fused
                fused.relu_first = True
                module._modules[relu_name] = scope.add(nn.Identity())
                counts["folded"] += 1
    return counts


def _is_strided_or_dilated_depthwise(module: nn.Module) -> bool:
    # An undilated stride-1 one is as fast in the library, in one call for both gradients.
    return _is_depthwise(module) and (module.stride != (1, 1) or module.dilation != (1, 1))


def _is_depthwise(module: nn.Module) -> bool:
    return type(module) is nn.Conv2d and module.groups > 1 and _depthwise_mismatch(module) is None


def _depthwise_mismatch(conv: nn.Conv2d) -> str | None:
    """Why ``conv`` is not a depthwise convolution :class:`DepthwiseConv` computes, or
    ``None``."""
    if not conv.in_channels == conv.groups == conv.out_channels:
        return (
            f"in_channels={conv.in_channels}, groups={conv.groups}, "
            f"out_channels={conv.out_channels} (one filter per channel only)"
        )
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r} ('zeros' only)"
    if isinstance(conv.padding, str):
        return f"padding={conv.padding!r} (numbers only)"
    # The flipped-kernel input gradient needs padding <= dilation * (kernel - 1).
    if any(conv.padding[i] > conv.dilation[i] * (conv.kernel_size[i] - 1) for i in (0, 1)):
        return f"padding={conv.padding!r} (at most dilation * (kernel_size - 1))"
    return None


class _LeanBatchNormFunction(torch.autograd.Function):
    """Training-mode BatchNorm without affine parameters that keeps its output, not its input,
    for the backward pass (see :class:`LeanBatchNorm2d`).

    Its backward pass is not differentiable (``once_differentiable``: a double backward
    raises): the input's gradient depends on the inverse deviation, whose dependence on
    the input is not kept, so a second derivative through it would be silently wrong.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        running_mean: torch.Tensor | None,
        running_var: torch.Tensor | None,
        momentum: float,
        eps: float,
        with_stats: bool = False,
    ) -> Any:
        small = _small_channels_last(x)
        if small:
            out, mean, invstd = _small_batch_norm(x, running_mean, running_var, momentum, eps)
        else:
            out, mean, invstd = torch.native_batch_norm(
                x, None, None, running_mean, running_var, True, momentum, eps
            )
        ctx.save_for_backward(out, invstd)
        ctx.eps, ctx.small = eps, small
        if not with_stats:
            return out
        ctx.mark_non_differentiable(mean, invstd)
        return out, mean, invstd

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor, *unused: Any) -> tuple[Any, ...]:
        out, invstd = ctx.saved_tensors
        if ctx.small:
            # invstd * (g - mean(g) - x_hat * mean(g * x_hat)), per channel, on the
            # (pixels, channels) matrices of the channels-last gradient and output; in
            # float32 at least, as the library's kernel accumulates lower precisions.
            compute = torch.promote_types(grad.dtype, invstd.dtype)
            g = _pixels_by_channels(grad).to(compute)
            x_hat = _pixels_by_channels(out).to(compute)
            n = g.shape[0]
            grad_x = (g + g.sum(0).div_(-n)).addcmul_(x_hat, (g * x_hat).sum(0).div_(-n))
            batch, channels, height, width = out.shape
            grad_x = grad_x.mul_(invstd).to(grad.dtype)
            grad_x = grad_x.view(batch, height, width, channels).permute(0, 3, 1, 2)
            return grad_x, None, None, None, None, None
        zeros, ones = _zeros_and_ones(invstd)
        # The output is the normalised input, x_hat: the library's backward, given x_hat as its
        # input with mean 0 and inverse deviation 1, and the true inverse deviation as the
        # scale, computes invstd * (g - mean(g) - x_hat * mean(g * x_hat)): the input gradient.
        grad_x = _BATCH_NORM_BACKWARD(
            grad, out, invstd, None, None, zeros, ones, True, ctx.eps, _INPUT_ONLY
        )[0]
        return grad_x, None, None, None, None, None


def _pixels_by_channels(t: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> the (N*H*W, C) matrix of its channels-last layout (a view when ``t`` is
    channels-last)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _small_batch_norm(
    x: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    momentum: float,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training-mode BatchNorm (no affine) of a channels-last ``x`` with few channels, on its
    (pixels, channels) matrix: column sums there are fast, where the library's channels-last
    kernel is slow under one vector of channels. Returns what ``native_batch_norm`` does
    (output, batch mean, inverse deviation) and updates the running statistics alike."""
    # In float32 at least (the library's kernel accumulates bfloat16 and float16 so, and
    # returns float32 statistics), the output in x's dtype.
    pixels = _pixels_by_channels(x).to(torch.promote_types(x.dtype, torch.float32))
    n = pixels.shape[0]
    mean = pixels.sum(0).div_(n)
    centred = pixels - mean
    var = centred.square().sum(0).div_(n)
    invstd = (var + eps).rsqrt_()
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            running_mean.lerp_(mean.to(running_mean.dtype), momentum)
            unbiased = var * (n / max(n - 1, 1))
            running_var.lerp_(unbiased.to(running_var.dtype), momentum)
    out = centred.mul_(invstd).to(x.dtype)
    out = out.view(x.shape[0], x.shape[2], x.shape[3], x.shape[1])
    return out.permute(0, 3, 1, 2), mean, invstd


_INPUT_ONLY = [True, False, False]
_UNIT_STATS: dict[tuple[int, torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}


def _zeros_and_ones(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Constant zeros and ones shaped like ``like`` (a per-channel vector), made once."""
    key = (like.numel(), like.dtype, like.device)
    pair = _UNIT_STATS.get(key)
    if pair is None:
        pair = _UNIT_STATS[key] = (torch.zeros_like(like), torch.ones_like(like))
    return pair


def _small_channels_last(x: torch.Tensor) -> bool:
    """A 4-D channels-last tensor with fewer than :data:`SMALL_CHANNELS` channels."""
    return (
        x.dim() == 4
        and x.shape[1] < SMALL_CHANNELS
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    )


class LeanBatchNorm2d(nn.BatchNorm2d):
    """A ``BatchNorm2d`` that saves less for the backward pass and is faster on few channels.

    Without affine parameters and in training mode (a DARTS search cell's
    BatchNorm), the backward pass needs only the normalised output, which the
    next layer, or the mixed op weighting it, keeps anyway: this one saves that
    output instead of its input, so the input is freed. A channels-last input
    with fewer than :data:`SMALL_CHANNELS` channels is normalised with column
    sums on its (pixels, channels) matrix in training mode, on the contiguous
    layout in evaluation mode (both faster), and handed on channels-last.
    Otherwise it is ``nn.BatchNorm2d``. Built by :meth:`like`, it shares the
    original's buffers and parameters. A bfloat16 or float16 input (under autocast, say)
    is normalised with float32 statistics, as the library does. In the lean path a double
    backward raises (see :class:`_LeanBatchNormFunction`).
    """

    @classmethod
    def like(cls, bn: nn.BatchNorm2d) -> LeanBatchNorm2d:
        """A LeanBatchNorm2d with ``bn``'s settings, parameters, buffers and mode."""
        lean = cls(
            bn.num_features,
            eps=bn.eps,
            momentum=bn.momentum,
            affine=bn.affine,
            track_running_stats=bn.track_running_stats,
        )
        for name, param in bn.named_parameters(recurse=False):
            setattr(lean, name, param)
        for name, buffer in bn.named_buffers(recurse=False):
            setattr(lean, name, buffer)
        lean.train(bn.training)
        return lean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.weight is None and x.dim() == 4):
            if _small_channels_last(x):
                return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)
            return super().forward(x)
        return _LeanBatchNormFunction.apply(
            x, self.running_mean, self.running_var, _step_momentum(self), self.eps
        )


def _step_momentum(bn: nn.BatchNorm2d) -> float:
    """Count one more training batch for ``bn``; the momentum its running statistics are
    updated with for it (what ``nn.BatchNorm2d`` does in training mode)."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # a cumulative average
            momentum = 1.0 / float(bn.num_batches_tracked)
    return momentum


class SharedPoolNorm(nn.Sequential):
    """A parameter-free pooling followed by a BatchNorm without affine parameters (a DARTS
    search cell's pooling candidate), computed once per input tensor and forward pass.

    Every edge that reads a state has its own pooling candidate; in training mode
    they all compute the same output (the pooling has no parameters and the
    BatchNorm normalises with the batch's own statistics). The first one computes
    it; the others take it and update their own running statistics with the same
    batch statistics, exactly as their BatchNorm would. In evaluation mode, or
    outside a forward pass of the model it was installed for, it is the
    ``nn.Sequential(pool, bn)`` it replaces (same children, same ``state_dict`` keys).
    """

    def __init__(self, pool: nn.Module, bn: nn.BatchNorm2d, cache: _PassCache) -> None:
        super().__init__(pool, bn)
        self._cache = cache
        settings = sorted(
            (k, repr(v)) for k, v in vars(pool).items() if not k.startswith("_") and k != "training"
        )
        # Two of them share a result if their poolings are alike and their BatchNorms' eps.
        self._tag = (type(pool), tuple(settings), bn.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool, bn = self[0], self[1]
        if not (bn.training and bn.weight is None and x.dim() == 4 and self._cache.active):
            return bn(pool(x))
        momentum = _step_momentum(bn)
        hit = self._cache.get(x, self._tag)
        if hit is not None:
            out, (mean, var) = hit
            if bn.running_mean is not None and bn.running_var is not None:
                with torch.no_grad():
                    bn.running_mean.lerp_(mean, momentum)
                    bn.running_var.lerp_(var, momentum)
            return out
        pooled = pool(x)
        out, mean, invstd = _LeanBatchNormFunction.apply(
            pooled, bn.running_mean, bn.running_var, momentum, bn.eps, True
        )
        n = pooled.numel() // pooled.shape[1]
        # The batch's unbiased variance, as BatchNorm's running estimate takes it.
        var = (invstd.detach().pow(-2) - bn.eps) * (n / max(n - 1, 1))
        self._cache.put(x, self._tag, out, (mean.detach(), var))
        return out


class _Block(NamedTuple):
    """One (ReLU, depthwise convolution, 1x1 convolution, BatchNorm) block of a
    :class:`SeparableGroup`: its modules, and whether its ReLU is the model's shared one."""

    dw: nn.Conv2d
    pw: nn.Conv2d
    bn: nn.BatchNorm2d
    shared_relu: bool


def _separable_blocks(children: list[nn.Module]) -> list[_Block] | None:
    """The blocks of a Sequential's ``children`` if they are (ReLU, depthwise convolution
    without bias, 1x1 convolution without bias, BatchNorm without affine parameters) blocks,
    one after another (a DARTS separable or dilated convolution, as written or as
    :func:`optimize_for_cpu` rewrote its children), else ``None``."""
    if not children or len(children) % 4:
        return None
    blocks: list[_Block] = []
    channels = None
    for i in range(0, len(children), 4):
        relu, dw, pw, bn = children[i : i + 4]
        if any(_left_alone(m) for m in (relu, dw, pw, bn)):
            return None
        is_dw = isinstance(dw, DepthwiseConv) or _is_depthwise(dw)
        if not is_dw or dw.bias is not None or (channels and dw.in_channels != channels):
            return None
        folded = bool(getattr(dw, "relu_first", False))
        if folded:
            if type(relu) is not nn.Identity:
                return None
        elif not (type(relu) is SharedReLU or (type(relu) is nn.ReLU and not relu.inplace)):
            return None
        if not (type(pw) is PointwiseConv or _is_pointwise(pw)) or pw.bias is not None:
            return None
        if pw.in_channels != dw.out_channels:
            return None
        if type(bn) not in (nn.BatchNorm2d, LeanBatchNorm2d) or bn.weight is not None:
            return None
        if bn.num_features != pw.out_channels:
            return None
        channels = pw.out_channels
        blocks.append(_Block(dw, pw, bn, type(relu) is SharedReLU))
    return blocks


def _leaves(seq: nn.Sequential) -> list[nn.Module]:
    """The modules ``seq`` runs one after another: its children, with those that are plain
    ``nn.Sequential`` stacks themselves (no ``forward`` of their own, nothing that
    :func:`_left_alone` protects) opened up."""
    leaves: list[nn.Module] = []
    for child in seq:
        nested = isinstance(child, nn.Sequential) and not _left_alone(child)
        if nested and type(child).forward is nn.Sequential.forward:
            leaves.extend(_leaves(cast(nn.Sequential, child)))
        else:
            leaves.append(child)
    return leaves


def _tile_channels(x: torch.Tensor, k: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, k*C, H, W): ``x`` repeated ``k`` times on the channels, in ``x``'s
    memory format (one copy; the backward pass sums the copies' gradients)."""
    n, c, h, w = x.shape
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        tiled = x.permute(0, 2, 3, 1).unsqueeze(3).expand(n, h, w, k, c).reshape(n, h, w, k * c)
        return tiled.permute(0, 3, 1, 2)
    return x.unsqueeze(1).expand(n, k, c, h, w).reshape(n, k * c, h, w)


def _grouped_pointwise(x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    """The 1x1 convolutions ``weights`` (each ``(out, in, 1, 1)``) of the ``len(weights)``
    channel groups of ``x``, their outputs concatenated: a product with the block-diagonal
    weight on a small channels-last ``x``, else one grouped convolution."""
    k = len(weights)
    if x.numel() <= MATMUL_MAX_ELEMENTS * k and x.is_contiguous(memory_format=torch.channels_last):
        weight = torch.block_diag(*(w.flatten(1) for w in weights))
        return F.linear(x.permute(0, 2, 3, 1), weight).permute(0, 3, 1, 2)
    return F.conv2d(x, torch.cat(weights), None, 1, 0, 1, k)


class SeparableGroup(nn.Sequential):
    """A sequence of (ReLU, depthwise convolution, 1x1 convolution, BatchNorm without affine
    parameters) blocks (a DARTS ``sep_conv`` or ``dil_conv`` candidate) that, in training
    mode, computes itself together with the alike ones reading the same input.

    In a DARTS search cell every state feeds an edge to each later node, and each edge
    has its own candidates: the ``sep_conv_3x3`` of the four edges reading a cell input
    are four small convolution stacks on one tensor. A pass records which alike
    modules (the same settings block by block) ran on one input; from then on the first
    of them to run on that input computes the whole group at once, each layer one
    library call over the members' channels stacked (the input repeated once per
    member; depthwise convolutions with the members' filters concatenated, 1x1
    convolutions block-diagonal, one BatchNorm: per-channel, so the same maths), and
    the others take their share. Each member's BatchNorms' running statistics are
    updated with its share of the batch statistics, as alone (all at once when the
    group is computed, with one fixed momentum; else by each member when it runs).
    Outside a training-mode forward pass of the model it was installed for, under
    autocast, or when the group is not what it was, it is the ``nn.Sequential`` it
    replaced (same children, same ``state_dict`` keys; the class a subclass of the
    original's).
    """

    _cache: _PassCache
    _blocks: list[_Block]
    _tag: tuple[Any, ...]

    def _setup(self, cache: _PassCache) -> None:
        blocks = _separable_blocks(_leaves(self))
        if blocks is None:
            raise ValueError(f"{type(self).__name__}: not a stack of separable blocks")
        self._cache, self._blocks = cache, blocks
        self._tag = tuple(
            (
                b.dw.in_channels,
                b.dw.kernel_size,
                b.dw.stride,
                b.dw.padding,
                b.dw.dilation,
                type(b.dw),
                b.pw.out_channels,
                b.bn.eps,
            )
            for b in blocks
        )

    #: The class it was made from (see :func:`_group_class`).
    _group_base: ClassVar[type[nn.Sequential]] = nn.Sequential

    def _ready(self) -> bool:
        return self.training and all(b.bn.training for b in self._blocks)

    def __reduce_ex__(self, protocol: Any) -> Any:
        # Its class may be made at run time (a subclass of the original's): pickled as the
        # original class to make it from, and the module's state.
        return (_new_group, (self._group_base,), self.__dict__)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cache = self._cache
        if not (
            cache.active
            and x.dim() == 4
            and self._ready()
            and not torch.is_autocast_enabled(x.device.type)
        ):
            return nn.Sequential.forward(self, x)
        cache.record(self._tag, x, self)
        hit = cache.get(x, self)
        if hit is not None:
            out, stats = hit
            if stats is not None:  # not updated with the group's
                self._update_statistics(stats)
            return out
        members = cache.groups.get(id(self))
        if (
            members is None
            or members[0] is not self
            or not all(
                isinstance(m, SeparableGroup) and m._tag == self._tag and m._ready()
                for m in members
            )
        ):
            return nn.Sequential.forward(self, x)
        group = cast(list[SeparableGroup], members)
        outs, stats = _run_group(group, x, cache)
        together = _update_group_statistics(group, stats)
        for member, out, stat in zip(members[1:], outs[1:], stats[1:]):
            cache.put(x, member, out, None if together else stat)
        if not together:
            self._update_statistics(stats[0])
        return outs[0]

    def _update_statistics(self, stats: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """What each BatchNorm's training-mode forward does to its buffers, given its share of
        the batch statistics (mean, unbiased variance)."""
        with torch.no_grad():
            for block, (mean, var) in zip(self._blocks, stats):
                bn = block.bn
                momentum = _step_momentum(bn)
                if bn.running_mean is not None and bn.running_var is not None:
                    bn.running_mean.lerp_(mean, momentum)
                    bn.running_var.lerp_(var, momentum)


def _update_group_statistics(
    members: list[SeparableGroup], stats: list[list[tuple[torch.Tensor, torch.Tensor]]]
) -> bool:
    """Update every member's BatchNorm running statistics with its share of the batch
    statistics (``stats``, from :func:`_run_group`) in three calls, as each one's
    training-mode forward would; False (nothing done) unless they all track running
    statistics with one fixed momentum (then each member updates its own when it runs)."""
    bns = [block.bn for m in members for block in m._blocks]
    momenta = {bn.momentum for bn in bns}
    if len(momenta) != 1 or None in momenta:
        return False
    if not all(bn.track_running_stats and bn.running_mean is not None for bn in bns):
        return False
    momentum = cast(float, momenta.pop())
    with torch.no_grad():
        torch._foreach_add_([cast(torch.Tensor, bn.num_batches_tracked) for bn in bns], 1)
        means = [cast(torch.Tensor, bn.running_mean) for bn in bns]
        variances = [cast(torch.Tensor, bn.running_var) for bn in bns]
        torch._foreach_lerp_(means, [mean for share in stats for mean, _ in share], momentum)
        torch._foreach_lerp_(variances, [var for share in stats for _, var in share], momentum)
    return True


def _run_group(
    members: list[SeparableGroup], x: torch.Tensor, cache: _PassCache
) -> tuple[list[torch.Tensor], list[list[tuple[torch.Tensor, torch.Tensor]]]]:
    """Every member's output on ``x``, computed together (see :class:`SeparableGroup`), and
    each member's share of its BatchNorms' batch statistics (mean, unbiased variance)."""
    k = len(members)
    first = members[0]._blocks
    r = cache.relu(x) if first[0].shared_relu else F.relu(x)
    hit = cache.get(r, ("tile", k))
    if hit is None:
        h = _tile_channels(r, k)
        cache.put(r, ("tile", k), h)
    else:
        h = hit[0]
    stats: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in members]
    for b, block in enumerate(first):
        dw = block.dw
        weight = torch.cat([m._blocks[b].dw.weight for m in members])
        relu_first = b > 0
        if isinstance(dw, DepthwiseConv):
            plan = dw.plan._replace(groups=k * dw.groups)
            h = _DepthwiseConvFunction.apply(h, weight, None, plan, relu_first)
        else:
            if relu_first:
                h = F.relu(h)
            h = F.conv2d(h, weight, None, dw.stride, dw.padding, dw.dilation, k * dw.groups)
        h = _grouped_pointwise(h, [m._blocks[b].pw.weight for m in members])
        h, mean, invstd = _LeanBatchNormFunction.apply(h, None, None, 0.0, block.bn.eps, True)
        n = h.numel() // h.shape[1]
        var = (invstd.pow(-2) - block.bn.eps) * (n / max(n - 1, 1))
        channels = block.pw.out_channels
        for i, (m_i, v_i) in enumerate(zip(mean.split(channels), var.split(channels))):
            stats[i].append((m_i, v_i))
    return list(h.split(first[-1].pw.out_channels, 1)), stats


_GROUP_CLASSES: dict[type, type[SeparableGroup]] = {}


def _group_class(base: type[nn.Sequential]) -> type[SeparableGroup]:
    """The :class:`SeparableGroup` subclass of ``base`` (an ``nn.Sequential`` subclass), so
    that the rewritten module is still an instance of its original class."""
    if issubclass(base, SeparableGroup):
        return base
    if base is nn.Sequential:
        return SeparableGroup
    cls = _GROUP_CLASSES.get(base)
    if cls is None:
        cls = type(
            f"SeparableGroup[{base.__name__}]",
            (SeparableGroup, base),
            {"__module__": __name__, "__doc__": SeparableGroup.__doc__, "_group_base": base},
        )
        _GROUP_CLASSES[base] = cls
    return cls


def _new_group(base: type[nn.Sequential]) -> SeparableGroup:
    """An empty instance of the :class:`SeparableGroup` class made from ``base`` (unpickling)."""
    cls = _group_class(base)
    return cls.__new__(cls)


def group_separable(seq: nn.Sequential, cache: _PassCache) -> SeparableGroup:
    """``seq`` (a stack of separable blocks) as a :class:`SeparableGroup` with the same
    children, parameters, buffers and mode."""
    cls = _group_class(type(seq))
    group = cls.__new__(cls)
    group.__dict__.update(seq.__dict__)
    group._modules = dict(seq._modules)
    group._setup(cache)
    return group


def _is_separable_stack(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Sequential)
        and type(module).forward is nn.Sequential.forward
        and _separable_blocks(_leaves(module)) is not None
    )


def _group_separables(model: nn.Module, scope: _Scope) -> int:
    """Replace each outermost stack of separable blocks in ``scope`` by a
    :class:`SeparableGroup` (one inside a replaced one is left as it is); returns how many."""
    count = 0

    def visit(module: nn.Module) -> None:
        nonlocal count
        for name, child in list(module._modules.items()):
            if child is None:
                continue
            if child in scope and not _left_alone(child) and _is_separable_stack(child):
                stack = cast(nn.Sequential, child)
                module._modules[name] = scope.add(group_separable(stack, _pass_cache(model)))
                count += 1
            elif not _opaque(child):
                visit(child)

    visit(model)
    return count


_POOLS = (nn.MaxPool2d, nn.AvgPool2d)


def share_pool_norms(model: nn.Module, modules: Iterable[nn.Module] | None = None) -> int:
    """Replace every ``nn.Sequential(pooling, BatchNorm2d without affine)`` in ``model``
    (inside ``modules`` only, when given) by a :class:`SharedPoolNorm`, in place; returns
    how many were replaced."""
    return _share_pool_norms(model, _Scope(model, modules))


def _share_pool_norms(model: nn.Module, scope: _Scope) -> int:
    def test(module: nn.Module) -> bool:
        return (
            type(module) is nn.Sequential
            and len(module) == 2
            and type(module[0]) in _POOLS
            and not getattr(module[0], "return_indices", False)
            and type(module[1]) in (nn.BatchNorm2d, LeanBatchNorm2d)
            and module[1].weight is None
            and not (_left_alone(module[0]) or _left_alone(module[1]))
        )

    return _replace(
        model, scope, test, lambda seq: SharedPoolNorm(seq[0], seq[1], _pass_cache(model))
    )


def pointwise_as_matmul(model: nn.Module, modules: Iterable[nn.Module] | None = None) -> int:
    """Replace every plain 1x1 ``nn.Conv2d`` in ``model`` (inside ``modules`` only, when
    given) by a :class:`PointwiseConv`, in place; returns how many were replaced."""
    return _replace(model, _Scope(model, modules), _is_pointwise, PointwiseConv)


def _left_alone(module: nn.Module) -> bool:
    """Whether ``module`` must not be replaced: it carries hooks or parametrizations (a
    replacement would silently drop them), or it is an ``nn.Sequential`` subclass with a
    ``forward`` of its own (see :func:`_opaque`)."""
    hooked = (
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or module._backward_pre_hooks
        or module._state_dict_hooks
        or module._state_dict_pre_hooks
        or module._load_state_dict_pre_hooks
        or module._load_state_dict_post_hooks
    )
    return bool(hooked) or parametrize.is_parametrized(module) or _opaque(module)


def _opaque(module: nn.Module) -> bool:
    """An ``nn.Sequential`` subclass with a ``forward`` of its own (other than this module's
    :class:`SharedPoolNorm`): it may not pass its input through its children in order, so
    neither it nor anything inside it is rewritten."""
    return (
        isinstance(module, nn.Sequential)
        and type(module).forward is not nn.Sequential.forward
        and type(module) not in (SharedPoolNorm, SeparableGroup)
    )


class _Scope:
    """The modules a rewrite may replace: ``roots`` (the whole model when ``None``) and
    everything inside them, except what is inside an :func:`_opaque` module; and the
    modules the rewrite itself made. Held by identity (and kept alive, so that an id is
    never reused by another module meanwhile)."""

    def __init__(self, model: nn.Module, roots: Iterable[nn.Module] | None) -> None:
        self._members: dict[int, nn.Module] = {}
        stack = [model] if roots is None else list(roots)
        for root in stack:
            if not isinstance(root, nn.Module):
                raise TypeError(
                    f"the modules to rewrite must be nn.Module instances, got {type(root).__name__}"
                )
        while stack:
            module = stack.pop()
            if id(module) in self._members:
                continue
            self._members[id(module)] = module
            if not _opaque(module):
                stack.extend(child for child in module._modules.values() if child is not None)

    def __contains__(self, module: object) -> bool:
        return self._members.get(id(module)) is module

    def add(self, module: _M) -> _M:
        """Count ``module`` (made by the rewrite) in; returns it."""
        self._members[id(module)] = module
        return module


def _replace(
    model: nn.Module,
    scope: _Scope,
    test: Callable[[nn.Module], bool],
    make: Callable[[Any], nn.Module],
) -> int:
    """Replace each child ``c`` of a module of ``model`` for which ``c`` is in ``scope``, not
    left alone, and ``test(c)`` holds, by ``make(c)``; returns how many were replaced."""
    count = 0
    for module in list(model.modules()):
        for name, child in list(module._modules.items()):
            if child is not None and child in scope and not _left_alone(child) and test(child):
                module._modules[name] = scope.add(make(child))
                count += 1
    return count


def optimize_for_cpu(
    model: nn.Module,
    modules: Iterable[nn.Module] | None = None,
    *,
    group_separables: bool = False,
) -> dict[str, int]:
    """Rewrite ``model`` in place for fast channels-last training on a CPU; returns how many
    modules each rewrite touched.

    ``modules`` limits the rewrite to those modules and their children (a supernet's
    candidates, say): a module outside them is never replaced, only the model gets the
    two hooks that scope :class:`SharedReLU` and :class:`SharedPoolNorm` to one forward
    pass. ``None`` rewrites the whole model.

    * ``pointwise``: 1x1 convolutions become :class:`PointwiseConv`;
    * ``strided_pointwise``: strided 1x1 convolutions become :class:`StridedPointwiseConv`;
    * ``relu_shared``, ``relu_folded``: a ReLU right before a depthwise convolution in an
      ``nn.Sequential`` is shared by the operations reading the same input, or folded
      into the convolution (:func:`share_relus_before_depthwise`);
    * ``pool_norm_shared``: a pooling followed by a BatchNorm without affine parameters is
      computed once per state (:class:`SharedPoolNorm`);
    * ``depthwise``: the other strided or dilated depthwise convolutions become
      :class:`DepthwiseConv` (an undilated stride-1 one is as fast in the library);
    * ``batchnorm``: BatchNorms become :class:`LeanBatchNorm2d`;
    * ``separable_grouped`` (only with ``group_separables=True``): stacks of (ReLU,
      depthwise convolution, 1x1 convolution, BatchNorm without affine parameters) blocks
      become :class:`SeparableGroup`, computed together with the alike ones reading the
      same input. Only for a model that runs every such stack in every training-mode pass
      (a DARTS supernet): a member computed with its group whose output is then not used
      gets zeros as its weights' gradients, where alone it would get none.

    Only exact ``nn.Conv2d``, ``nn.BatchNorm2d`` and ``nn.ReLU`` modules are replaced. A
    module that carries hooks or parametrizations is not replaced (its children may be);
    an ``nn.Sequential`` subclass with a ``forward`` of its own is not rewritten at all,
    nor is anything inside it, and the ReLUs of a hooked Sequential are neither shared
    nor folded: the rewrites keep every result to float rounding and every hook firing.
    Calling it twice changes nothing more.
    """
    scope = _Scope(model, modules)
    relus = _share_relus(model, scope)
    return {
        "pool_norm_shared": _share_pool_norms(model, scope),
        "pointwise": _replace(model, scope, _is_pointwise, PointwiseConv),
        "strided_pointwise": _replace(model, scope, _is_strided_pointwise, StridedPointwiseConv),
        "relu_shared": relus["shared"],
        "relu_folded": relus["folded"],
        "depthwise": _replace(model, scope, _is_strided_or_dilated_depthwise, DepthwiseConv),
        "batchnorm": _replace(
            model, scope, lambda m: type(m) is nn.BatchNorm2d, LeanBatchNorm2d.like
        ),
        "separable_grouped": _group_separables(model, scope) if group_separables else 0,
    }
