"""The DARTS CNN search space (Liu et al., 2019, §2.1 and §3.1), as a nastrain model space.

A network is a stem, ``layers`` cells and a classifier. A cell takes the outputs
of the two cells before it (``c_{k-2}``, ``c_{k-1}``: states 0 and 1) and builds
``n_nodes`` nodes (states 2, 3, ...). Node ``j`` reads every earlier state ``i``
through an edge, a :class:`~nastrain.LayerChoice` over the candidate operations,
and an :class:`~nastrain.InputChoice` keeps two of those edges and sums them. The
cell's output concatenates its nodes.

The input choice names the edge feeding each of its inputs (its ``edge_labels``),
so that :class:`~nastrain_darts.DartsTrainer` searches the space as the paper
does (its default ``formulation="paper"``): during the search a node is the plain
sum of all its mixed incoming edges, and the derived cell keeps, per node, the two
edges whose strongest operation other than ``none`` has the largest softmax weight.
``formulation="nni"`` gives every node's input choice softmax weights of its own
instead, and keeps the two inputs of largest weight (NNI's formulation).

Labels are shared by every cell of one type, so the whole network has one normal
and one reduction cell to decide, as in the paper::

    normal/node2_in0 ... normal/node5_in4   the operation on the edge from state i to node j
    normal/node2 ... normal/node5           which two edges node j keeps
    reduce/...                              the same for the reduction cells

With the defaults that is 14 edges and 4 nodes per cell type: 36 decisions.
:func:`genotype` prints an exported architecture the way the paper writes one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, cast

import torch
from torch import nn

from nastrain import ChosenInputs, InputChoice, LayerChoice
from nastrain.utils import allow_rewrite
from nastrain_darts.ops import OPS, PRIMITIVES, FactorizedReduce, ReLUConvBN

__all__ = ["Cell", "DartsSpace", "Genotype", "Node", "darts_cnn_space", "genotype"]

#: The cell types, and the label prefix of each.
CELL_TYPES = ("normal", "reduce")


def edge_label(cell_type: str, node: int, source: int) -> str:
    """The label of the edge from state ``source`` to node ``node`` (a state index, 2 or more)."""
    return f"{cell_type}/node{node}_in{source}"


def node_label(cell_type: str, node: int) -> str:
    """The label of the input choice of node ``node`` (a state index, 2 or more)."""
    return f"{cell_type}/node{node}"


def candidate(name: str, C: int, stride: int, affine: bool) -> nn.Module:
    """One candidate operation of an edge in the search space.

    Pooling is followed by a BatchNorm, as in the paper's search network (its
    ``MixedOp``): it puts the parameter-free pooling outputs on the scale of the
    convolutions' normalised outputs.
    """
    op = OPS[name](C, stride, affine)
    if "pool" in name:
        op = nn.Sequential(op, nn.BatchNorm2d(C, affine=affine))
    return op


class Node(nn.Module):
    """An intermediate node of a cell: an edge from each earlier state, two of them kept.

    ``edges[str(i)]`` is the edge from state ``i``; ``input_choice.edge_labels[i]`` is
    its label. Built inside :func:`nastrain.fixed_arch`, the node keeps only the edges
    it reads.
    """

    def __init__(
        self,
        cell_type: str,
        index: int,
        C: int,
        reduction: bool,
        ops: Sequence[str],
        affine: bool,
    ) -> None:
        super().__init__()
        self.index = index
        # In a reduction cell the edges from the cell inputs downsample.
        self.edges = nn.ModuleDict(
            {
                str(source): LayerChoice(
                    {
                        name: candidate(name, C, 2 if reduction and source < 2 else 1, affine)
                        for name in ops
                    },
                    label=edge_label(cell_type, index, source),
                )
                for source in range(index)
            }
        )
        self.input_choice = InputChoice(
            n_candidates=index, n_chosen=2, reduction="sum", label=node_label(cell_type, index)
        )
        # The edge computing each input: DartsTrainer's paper formulation sums the edges
        # plainly and keeps, when it derives the cell, the inputs of the strongest edges.
        # (setattr: InputChoice declares no such attribute, DartsTrainer reads it with
        # getattr, and nn.Module's __setattr__ is typed for tensors and modules only.)
        edges = [edge_label(cell_type, index, i) for i in range(index)]
        setattr(self.input_choice, "edge_labels", edges)  # noqa: B010
        if isinstance(self.input_choice, ChosenInputs):
            for source in range(index):
                if source not in self.input_choice.chosen:
                    del self.edges[str(source)]

    def forward(self, states: list[torch.Tensor]) -> torch.Tensor:
        choice = self.input_choice
        if isinstance(choice, ChosenInputs):
            return self._forward_chosen(states, choice.chosen)
        # Searching: every edge runs and the (replaced) input choice combines them.
        return choice([self.edges[str(i)](state) for i, state in enumerate(states)])

    def _forward_chosen(self, states: list[torch.Tensor], chosen: list[int]) -> torch.Tensor:
        # A resolved node runs only the edges it keeps, and leaves out those whose
        # operation is `none`: adding zeros changes nothing.
        outputs = []
        for source in chosen:
            op = self.edges[str(source)]
            if not getattr(op, "nastrain_zero", False):
                outputs.append(op(states[source]))
        if not outputs:
            return self.edges[str(chosen[0])](states[chosen[0]])
        result = outputs[0]
        for output in outputs[1:]:
            result = result + output
        return result


class Cell(nn.Module):
    """A normal or reduction cell: preprocess the two inputs to ``C`` channels, build the
    nodes, concatenate them (``n_nodes * C`` channels out)."""

    def __init__(
        self,
        *,
        n_nodes: int,
        C_prev_prev: int,
        C_prev: int,
        C: int,
        reduction: bool,
        reduction_prev: bool,
        ops: Sequence[str],
        affine: bool,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.cell_type = CELL_TYPES[reduction]
        if reduction_prev:
            # c_{k-2} is twice the size of c_{k-1}: bring it down to match.
            self.preprocess0: nn.Module = FactorizedReduce(C_prev_prev, C, affine=affine)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=affine)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=affine)
        # Plugins that rewrite supernets (nastrain-cpu) may rewrite the preprocessing as they
        # do the candidates: tests/test_cpu_kernels.py checks the results are the same.
        allow_rewrite(self.preprocess0)
        allow_rewrite(self.preprocess1)
        self.nodes = nn.ModuleList(
            Node(self.cell_type, index, C, reduction, ops, affine)
            for index in range(2, 2 + n_nodes)
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node in self.nodes:
            states.append(node(states))
        return torch.cat(states[2:], dim=1)


class DartsSpace(nn.Module):
    """The DARTS CNN search space: stem, ``layers`` cells, global average pooling, linear.

    Reduction cells sit at ``layers // 3`` and ``2 * layers // 3``; each doubles the
    channels and halves the spatial size. The stem is a 3x3 convolution with
    BatchNorm to ``stem_multiplier * C`` channels. ``affine`` is the BatchNorm
    setting inside the cells (``False`` for search, as in the paper; the stem's
    BatchNorm always has its affine parameters, as in the paper's code). ``ops``
    names the candidate operations of every edge (a subset of
    :data:`~nastrain_darts.ops.PRIMITIVES` shrinks the space).

    The space runs once its choices are resolved: by :func:`nastrain.apply_arch`,
    built inside :func:`nastrain.fixed_arch`, or by a one-shot trainer.
    """

    def __init__(
        self,
        C: int = 16,
        num_classes: int = 10,
        layers: int = 8,
        n_nodes: int = 4,
        in_channels: int = 3,
        stem_multiplier: int = 3,
        affine: bool = False,
        ops: Sequence[str] = PRIMITIVES,
    ) -> None:
        super().__init__()
        ops = list(ops)
        if not ops:
            raise ValueError("DartsSpace: ops is empty; give at least one operation name")
        unknown = [name for name in ops if name not in OPS]
        if unknown:
            raise ValueError(
                f"DartsSpace: unknown operation(s) {unknown} in ops; choose from {PRIMITIVES}"
            )
        if len(set(ops)) != len(ops):
            raise ValueError(f"DartsSpace: ops {ops} names an operation twice")
        if n_nodes < 1 or layers < 1:
            raise ValueError(f"DartsSpace: n_nodes ({n_nodes}) and layers ({layers}) must be >= 1")
        self.C = C
        self.num_classes = num_classes
        self.layers = layers
        self.n_nodes = n_nodes
        self.ops = ops

        C_curr = stem_multiplier * C
        # Rewritable by plugins, as the cells' preprocessing (see Cell).
        self.stem = allow_rewrite(
            nn.Sequential(
                nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False),
                nn.BatchNorm2d(C_curr),
            )
        )
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            self.cells.append(
                Cell(
                    n_nodes=n_nodes,
                    C_prev_prev=C_prev_prev,
                    C_prev=C_prev,
                    C=C_curr,
                    reduction=reduction,
                    reduction_prev=reduction_prev,
                    ops=ops,
                    affine=affine,
                )
            )
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, n_nodes * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(self.global_pooling(s1).flatten(1))

    def architecture_graph(self, arch: Mapping[str, Any]) -> dict[str, Any]:
        """An architecture of this space as the two cells it derives, for the run record's
        diagrams (:meth:`nastrain.oneshot.SupernetTrainer.architecture_graph`):
        ``{"cells": {"normal": {"nodes": [...], "edges": [[source, target, op], ...]},
        "reduce": {...}}}``. The nodes are drawn as in the paper's figures: the cell inputs
        ``c_{k-2}`` and ``c_{k-1}``, the intermediate nodes ``0``, ``1``, ... and the output
        ``c_{k}``; an edge per input each node keeps, named by its operation, and a plain
        edge (op ``None``) from every intermediate node to the output, which concatenates
        them. A network of too few layers to have a normal cell has only ``"reduce"``."""
        names = ["c_{k-2}", "c_{k-1}", *(str(i) for i in range(self.n_nodes)), "c_{k}"]
        cells: dict[str, Any] = {}
        present = {cast(Cell, cell).cell_type for cell in self.cells}
        for cell_type in (t for t in CELL_TYPES if t in present):  # few layers: no normal cell
            edges: list[list[Any]] = []
            for node in range(2, 2 + self.n_nodes):
                label = node_label(cell_type, node)
                if label not in arch:
                    raise ValueError(
                        f"architecture_graph: the architecture has no value for {label!r}; is "
                        f"it an architecture of this DartsSpace (n_nodes={self.n_nodes})?"
                    )
                for source in sorted(arch[label]):
                    op = arch[edge_label(cell_type, node, source)]
                    edges.append([names[source], names[node], op])
            edges += [[names[node], names[-1], None] for node in range(2, 2 + self.n_nodes)]
            cells[cell_type] = {"nodes": list(names), "edges": edges}
        return {"cells": cells}


def darts_cnn_space(**kwargs: Any) -> DartsSpace:
    """The DARTS CNN search space; keyword arguments as for :class:`DartsSpace`."""
    return DartsSpace(**kwargs)


class Genotype(NamedTuple):
    """A cell pair written as in the paper's ``genotypes.py``.

    ``normal`` and ``reduce`` list ``(operation, input state)`` for each node in
    turn, two per node; the ``*_concat`` lists name the states the cell outputs.
    """

    normal: list[tuple[str, int]]
    normal_concat: list[int]
    reduce: list[tuple[str, int]]
    reduce_concat: list[int]


def genotype(arch: Mapping[str, Any], n_nodes: int = 4) -> Genotype:
    """The :class:`Genotype` of an exported architecture of :class:`DartsSpace`.

    For every node, the inputs its input choice keeps (in index order) with the
    operation chosen on each of those edges. ``str()`` of the result reads like
    the paper's genotypes, e.g. ``Genotype(normal=[('sep_conv_3x3', 0), ...],
    normal_concat=[2, 3, 4, 5], reduce=[...], reduce_concat=[2, 3, 4, 5])``.
    """

    def value(label: str) -> Any:
        if label not in arch:
            raise ValueError(
                f"genotype: the architecture has no value for {label!r}; is it an architecture "
                f"of DartsSpace with n_nodes={n_nodes}?"
            )
        return arch[label]

    def cell(cell_type: str) -> list[tuple[str, int]]:
        gene = []
        for node in range(2, 2 + n_nodes):
            for source in sorted(value(node_label(cell_type, node))):
                gene.append((value(edge_label(cell_type, node, source)), source))
        return gene

    concat = list(range(2, 2 + n_nodes))
    return Genotype(
        normal=cell("normal"),
        normal_concat=concat,
        reduce=cell("reduce"),
        reduce_concat=list(concat),
    )
