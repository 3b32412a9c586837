"""The DARTS CNN supernet used by the DARTS benchmark, in plain PyTorch.

One module code for both sides of the comparison: the choice classes are passed
in, so ``build_supernet(nni.retiarii.nn.pytorch.LayerChoice, ...InputChoice)`` and
``build_supernet(nastrain.LayerChoice, nastrain.InputChoice)`` build the same
network (same modules, same parameter names, and, under the same
``torch.manual_seed``, the same initial weights).

The network follows the DARTS paper's search setting (Liu et al., 2019): a stem, ``layers``
cells (reduction cells at ``layers // 3`` and ``2 * layers // 3``, which halve the spatial
size and double the channels) and a linear classifier. A cell reads the outputs of the
two cells before it (states 0 and 1) and builds ``n_nodes`` nodes (states 2, 3, ...).
Node ``j`` reads every earlier state ``i`` through an edge, a ``LayerChoice`` over the
paper's eight operations, and an ``InputChoice(n_candidates=j, n_chosen=2,
reduction="sum")`` keeps two of those edges. The cell outputs its nodes, concatenated.
BatchNorm is ``affine=False`` everywhere in the cells, as in the search phase of the paper.

Labels are shared by every cell of one type (``normal/...``, ``reduce/...``), so the
network has one normal and one reduction cell to decide. Nothing here is specific to
either framework: the choice classes only need ``LayerChoice(candidates, label=...)``
and ``InputChoice(n_candidates, n_chosen=..., reduction=..., label=...)``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["OP_NAMES", "build_supernet"]

#: The paper's eight candidate operations, in the paper's order.
OP_NAMES = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)


class Zero(nn.Module):
    """The ``none`` operation: zeros shaped like the other operations' output."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class ReLUConvBN(nn.Sequential):
    """ReLU, convolution, BatchNorm (the cells' 1x1 input preprocessing)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=False),
        )


class DilConv(nn.Sequential):
    """ReLU, dilated depthwise convolution, 1x1 convolution, BatchNorm."""

    def __init__(self, c: int, kernel: int, stride: int, padding: int, dilation: int) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c, c, kernel, stride, padding, dilation=dilation, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c, affine=False),
        )


class SepConv(nn.Sequential):
    """Two stacked (ReLU, depthwise conv, 1x1 conv, BatchNorm) blocks; the first strides."""

    def __init__(self, c: int, kernel: int, stride: int, padding: int) -> None:
        super().__init__(
            DilConv(c, kernel, stride, padding, dilation=1),
            DilConv(c, kernel, 1, padding, dilation=1),
        )


class FactorizedReduce(nn.Module):
    """Halve the spatial size with two offset stride-2 1x1 convolutions, concatenated."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv2 = nn.Conv2d(c_in, c_out - c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        return self.bn(torch.cat([self.conv1(x), self.conv2(x[:, :, 1:, 1:])], dim=1))


def make_op(name: str, c: int, stride: int) -> nn.Module:
    """One candidate operation by its paper name, ``c`` channels in and out."""
    if name == "none":
        return Zero(stride)
    if name == "max_pool_3x3":
        return nn.Sequential(
            nn.MaxPool2d(3, stride=stride, padding=1), nn.BatchNorm2d(c, affine=False)
        )
    if name == "avg_pool_3x3":
        return nn.Sequential(
            nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
            nn.BatchNorm2d(c, affine=False),
        )
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c)
    if name.startswith(("sep_conv_", "dil_conv_")):
        kernel = int(name[-1])
        if name.startswith("sep"):
            return SepConv(c, kernel, stride, kernel // 2)
        return DilConv(c, kernel, stride, 2 * (kernel // 2), dilation=2)
    raise ValueError(f"unknown operation {name!r}; choose one of {list(OP_NAMES)}")


class Node(nn.Module):
    """One node of a cell: an edge (LayerChoice) from each earlier state, two of them kept."""

    def __init__(
        self,
        layer_choice: Callable[..., Any],
        input_choice: Callable[..., Any],
        cell_type: str,
        index: int,
        c: int,
        reduction: bool,
    ) -> None:
        super().__init__()
        self.edges = nn.ModuleList()
        for source in range(index):
            stride = 2 if reduction and source < 2 else 1
            ops = OrderedDict((name, make_op(name, c, stride)) for name in OP_NAMES)
            self.edges.append(layer_choice(ops, label=f"{cell_type}/node{index}_in{source}"))
        self.input_switch = input_choice(
            index, n_chosen=2, reduction="sum", label=f"{cell_type}/node{index}"
        )

    def forward(self, states: list[torch.Tensor]) -> torch.Tensor:
        return self.input_switch([edge(s) for edge, s in zip(self.edges, states, strict=True)])


class Cell(nn.Module):
    """A normal or reduction cell: two preprocessed inputs, ``n_nodes`` nodes, concatenated."""

    def __init__(
        self,
        layer_choice: Callable[..., Any],
        input_choice: Callable[..., Any],
        n_nodes: int,
        c_pp: int,
        c_p: int,
        c: int,
        reduction: bool,
        reduction_prev: bool,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.preproc0 = (
            FactorizedReduce(c_pp, c) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, 0)
        )
        self.preproc1 = ReLUConvBN(c_p, c, 1, 1, 0)
        cell_type = "reduce" if reduction else "normal"
        self.nodes = nn.ModuleList(
            Node(layer_choice, input_choice, cell_type, 2 + i, c, reduction) for i in range(n_nodes)
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preproc0(s0), self.preproc1(s1)]
        for node in self.nodes:
            states.append(node(states))
        return torch.cat(states[2:], dim=1)


class Supernet(nn.Module):
    """Stem, cells and classifier of the DARTS search network."""

    def __init__(
        self,
        layer_choice: Callable[..., Any],
        input_choice: Callable[..., Any],
        C: int,
        layers: int,
        n_nodes: int,
        num_classes: int,
        in_channels: int,
        stem_multiplier: int = 3,
    ) -> None:
        super().__init__()
        c_cur = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c_cur, 3, padding=1, bias=False), nn.BatchNorm2d(c_cur)
        )
        c_pp, c_p, c_cur = c_cur, c_cur, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                c_cur *= 2
            cell = Cell(
                layer_choice, input_choice, n_nodes, c_pp, c_p, c_cur, reduction, reduction_prev
            )
            self.cells.append(cell)
            reduction_prev = reduction
            c_pp, c_p = c_p, n_nodes * c_cur
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(self.pool(s1).flatten(1))


def build_supernet(
    LayerChoice: Callable[..., Any],
    InputChoice: Callable[..., Any],
    C: int = 8,
    layers: int = 5,
    n_nodes: int = 4,
    num_classes: int = 10,
    in_channels: int = 3,
) -> nn.Module:
    """The DARTS search network, its choices built with the given ``LayerChoice``/``InputChoice``.

    Labels: ``{normal,reduce}/node{j}_in{i}`` for the edge from state ``i`` to node ``j``
    (states 0 and 1 are the cell inputs, nodes are states 2 to ``n_nodes + 1``) and
    ``{normal,reduce}/node{j}`` for node ``j``'s input choice.
    """
    return Supernet(LayerChoice, InputChoice, C, layers, n_nodes, num_classes, in_channels)
