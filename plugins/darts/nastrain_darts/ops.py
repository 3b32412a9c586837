"""The eight candidate operations of the DARTS CNN search space (Liu et al., 2019, §3.1).

Every operation maps ``C`` channels to ``C`` channels; at ``stride=2`` it halves the
spatial size (rounding up, so odd sizes work too). :data:`OPS` builds one by its
paper name, :data:`PRIMITIVES` lists those names in the paper's order. ``affine``
is the BatchNorm setting: ``False`` during search, as in the paper, so the
architecture weights alone scale each operation's output.

All ReLUs are out of place: a cell feeds one state into several edges.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "OPS",
    "PRIMITIVES",
    "DilConv",
    "FactorizedReduce",
    "ReLUConvBN",
    "SepConv",
    "Zero",
]


class Zero(nn.Module):
    """The ``none`` operation: an edge that carries nothing.

    ``nastrain_zero = True`` tells one-shot trainers that the output is zero
    whatever the input, so they may skip running this module. Run anyway, it
    returns zeros of the shape the other operations on its edge produce (the
    spatial size halved, rounding up, at ``stride=2``) and the input's dtype,
    device and memory format.
    """

    nastrain_zero = True

    def __init__(self, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return torch.zeros_like(x)
        # A strided view costs nothing and has exactly the downsampled shape.
        return torch.zeros_like(x[:, :, :: self.stride, :: self.stride])

    def extra_repr(self) -> str:
        return f"stride={self.stride}"


class ReLUConvBN(nn.Sequential):
    """ReLU, convolution, BatchNorm: the cell's 1x1 input preprocessing."""

    def __init__(
        self,
        C_in: int,
        C_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        affine: bool = True,
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """Dilated depthwise-separable convolution: ReLU, depthwise conv, 1x1 conv, BatchNorm.

    ``dil_conv_3x3`` and ``dil_conv_5x5`` use dilation 2 (receptive fields 5x5 and 9x9).
    """

    def __init__(
        self,
        C_in: int,
        C_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        dilation: int,
        affine: bool = True,
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(
                C_in,
                C_in,
                kernel_size,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=C_in,
                bias=False,
            ),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Separable convolution, applied twice as in the paper: two (ReLU, depthwise conv,
    1x1 conv, BatchNorm) blocks; only the first one strides."""

    def __init__(
        self,
        C_in: int,
        C_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        affine: bool = True,
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride, padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_in, 1, bias=False),
            nn.BatchNorm2d(C_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, 1, padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class _EvenOddPixels(torch.autograd.Function):
    """(N, C, H, W), H and W even -> (N, 2C, H/2, W/2): the pixels at even rows and columns,
    then those at odd rows and columns, on the channels. The backward pass writes the
    gradient straight into one zeroed tensor (autograd's own, through two strided
    slices and a concatenation, is about 3x slower here)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.shape = x.shape
        ctx.memory_format = (
            torch.channels_last
            if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
            else torch.contiguous_format
        )
        return torch.cat([x[:, :, ::2, ::2], x[:, :, 1::2, 1::2]], 1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        channels = ctx.shape[1]
        grad_x = torch.empty(
            ctx.shape, dtype=grad.dtype, device=grad.device, memory_format=ctx.memory_format
        ).zero_()
        grad_x[:, :, ::2, ::2] = grad[:, :channels]
        grad_x[:, :, 1::2, 1::2] = grad[:, channels:]
        return grad_x


class FactorizedReduce(nn.Module):
    """Halve the spatial size without dropping pixels: two 1x1 stride-2 convolutions, one on
    the input and one on the input shifted by one pixel, concatenated on channels.

    ``skip_connect`` at stride 2, and the preprocessing of a cell's older input when the
    previous cell was a reduction cell. ``C_out`` must be even.
    """

    def __init__(self, C_in: int, C_out: int, affine: bool = True) -> None:
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce needs an even C_out, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        # Weight holders: forward() computes their strided products without the library's
        # strided convolution, so they are no channels-last hazard (SupernetTrainer's check).
        # (setattr: nn.Conv2d declares no such attribute, the check reads it with getattr,
        # and nn.Module's __setattr__ is typed for tensors and modules only.)
        for conv in (self.conv_1, self.conv_2):
            setattr(conv, "channels_last_safe", True)  # noqa: B010
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if not (height % 2 or width % 2):
            # conv_1 reads the pixels at even rows and columns, conv_2 those at odd ones: gather
            # both (the ReLU after the gathering, on half the pixels) and run the two 1x1
            # convolutions as one, whose block-diagonal weight puts conv_1's outputs first.
            both = self.relu(_EvenOddPixels.apply(x))
            weight = torch.block_diag(self.conv_1.weight.flatten(1), self.conv_2.weight.flatten(1))
            return self.bn(_pointwise(both, weight))
        x = self.relu(x)
        shifted = x[:, :, 1:, 1:]
        # On an odd side the shifted path would come out one pixel short; pad it back.
        shifted = F.pad(shifted, (0, width % 2, 0, height % 2))
        # A 1x1 stride-2 convolution is a 1x1 convolution of every second pixel: computed so,
        # since the library's channels-last backward of a strided 1x1 convolution crashes the
        # process on some sizes (torch 2.14.1, e.g. an 8x10 input).
        return self.bn(
            torch.cat(
                [
                    _pointwise(_every_second_pixel(x), self.conv_1.weight, self.conv_1.bias),
                    _pointwise(_every_second_pixel(shifted), self.conv_2.weight, self.conv_2.bias),
                ],
                dim=1,
            )
        )


def _pointwise(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias)`` for a 1x1 ``weight`` (``(out, in, 1, 1)`` or ``(out, in)``).

    On a small channels-last ``x`` it is one matrix product over the channels of its
    (N, H, W, C) view, which costs less than the convolution library's per-call overhead
    (up to 32K input elements); otherwise the convolution."""
    if x.numel() > 32 * 1024 or not x.is_contiguous(memory_format=torch.channels_last):
        return F.conv2d(x, weight.view(*weight.shape[:2], 1, 1), bias)
    out = F.linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias)
    return out.permute(0, 3, 1, 2)


def _every_second_pixel(x: torch.Tensor) -> torch.Tensor:
    """``x[:, :, ::2, ::2]`` as a dense tensor in ``x``'s memory layout."""
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return x[:, :, ::2, ::2].contiguous(memory_format=layout)


#: A factory ``(C, stride, affine) -> nn.Module`` for each operation, by paper name.
OPS: dict[str, Callable[[int, int, bool], nn.Module]] = {
    "none": lambda C, stride, affine: Zero(stride),
    "max_pool_3x3": lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "avg_pool_3x3": lambda C, stride, affine: nn.AvgPool2d(
        3, stride=stride, padding=1, count_include_pad=False
    ),
    "skip_connect": lambda C, stride, affine: (
        nn.Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine)
    ),
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine=affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine=affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine=affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine=affine),
}

#: The candidate operations of the search space, in the paper's order.
PRIMITIVES: list[str] = [
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
]
