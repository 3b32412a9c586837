"""DartsTrainer's two formulations of the DARTS cell on the shipped space.

``formulation="paper"`` (the default): a node is the plain sum of its mixed incoming edges,
and the derived cell keeps, per node, the two edges whose strongest operation other than
``none`` has the largest softmax weight. ``formulation="nni"``: each node's input choice has
softmax weights of its own, which both mix and select the inputs.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import nastrain
from nastrain_darts import DartsInputChoice, DartsSpace, DartsTrainer, genotype
from nastrain_darts.ops import PRIMITIVES


def small_space() -> DartsSpace:
    # layers=3: cell 0 is normal, cells 1 and 2 reduce; node 3 of a cell has three inputs.
    torch.manual_seed(0)
    return DartsSpace(C=4, layers=3, n_nodes=2).double()


def images(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, 8, 8, generator=generator, dtype=torch.float64)
    return x, torch.randint(0, 10, (n,), generator=generator)


def make(space: nn.Module, **kwargs) -> DartsTrainer:
    x, y = images()
    kwargs.setdefault("channels_last", False)
    return DartsTrainer(
        space, nn.CrossEntropyLoss(), None, None, 1, TensorDataset(x, y), batch_size=4,
        seed=0, progress=False, **kwargs,
    )  # fmt: skip


def alpha_for(**strong: float) -> torch.Tensor:
    """alpha over PRIMITIVES: zero except the given operations."""
    alpha = torch.zeros(len(PRIMITIVES), dtype=torch.float64)
    for name, value in strong.items():
        alpha[PRIMITIVES.index(name)] = value
    return alpha


#: Edge alphas of node 3 of the normal cell where the rules disagree. Softmax weight of each
#: edge's strongest operation other than none: in0 0.029 (none dominates it), in1 0.51,
#: in2 0.17. The paper keeps in1 and in2. Ranking by raw alpha (in2 3.2, in0 2.5, in1 2.0)
#: or by a node's own input weights (set below to favour in0) keeps in0.
NODE3_EDGES = {
    "normal/node3_in0": alpha_for(none=6.0, max_pool_3x3=2.5),
    "normal/node3_in1": alpha_for(sep_conv_3x3=2.0),
    "normal/node3_in2": alpha_for(
        max_pool_3x3=3.0, avg_pool_3x3=3.0, skip_connect=3.0, sep_conv_3x3=3.0,
        sep_conv_5x5=3.0, dil_conv_3x3=3.0, dil_conv_5x5=3.2,
    ),
}  # fmt: skip


def set_alphas(trainer: DartsTrainer, alphas: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for label, value in alphas.items():
            trainer.arch.alphas[label].copy_(value)


def test_paper_derivation_keeps_the_edges_with_the_strongest_non_none_operation() -> None:
    space = small_space()
    trainer = make(space)  # the default formulation: the paper's
    assert trainer.formulation == "paper"
    assert "normal/node3" not in trainer.arch.alphas  # nodes have no weights of their own
    set_alphas(trainer, NODE3_EDGES)
    arch = trainer.export()
    assert arch["normal/node3"] == [1, 2]
    assert arch["normal/node3_in1"] == "sep_conv_3x3"
    assert arch["normal/node3_in2"] == "dil_conv_5x5"
    assert arch["normal/node3_in0"] == "max_pool_3x3"  # never none, kept or not
    assert nastrain.SearchSpace.from_model(small_space()).validate(arch) == arch
    fixed = nastrain.apply_arch(small_space(), arch)
    assert fixed(images(2)[0]).shape == (2, 10)
    gene = genotype(arch, n_nodes=2)
    assert gene.normal[2:] == [("sep_conv_3x3", 1), ("dil_conv_5x5", 2)]

    # NNI's formulation ranks the inputs by the node's own weights instead.
    nni = make(small_space(), formulation="nni")
    set_alphas(nni, {**NODE3_EDGES, "normal/node3": torch.tensor([3.0, 0.0, 1.0])})
    assert nni.export()["normal/node3"] == [0, 2]


def test_paper_strength_excludes_none_and_compares_softmax_weights() -> None:
    trainer = make(small_space())
    set_alphas(trainer, NODE3_EDGES)
    strengths = [trainer.edge_strength(f"normal/node3_in{i}") for i in range(3)]
    expected = []
    for alpha in NODE3_EDGES.values():
        weights = F.softmax(alpha, -1)
        expected.append(max(w for w, name in zip(weights.tolist(), PRIMITIVES) if name != "none"))
    assert strengths == pytest.approx(expected)
    assert strengths == pytest.approx([0.0289, 0.5135, 0.1680], abs=1e-4)


def mixed_node(formulation: str) -> tuple[DartsTrainer, nn.Module, list[torch.Tensor]]:
    """A trainer, the first normal cell's node 3, relaxed, and states to feed it."""
    trainer = make(small_space(), formulation=formulation)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():  # alphas away from uniform
        for alpha in trainer.arch.parameters():
            alpha.copy_(torch.randn(alpha.shape, generator=generator, dtype=alpha.dtype))
    node = trainer.model.cells[0].nodes[1]
    states = [torch.randn(2, 4, 8, 8, generator=generator, dtype=torch.float64) for _ in range(3)]
    return trainer, node, states


def test_paper_node_is_the_plain_sum_of_its_mixed_edges() -> None:
    trainer, node, states = mixed_node("paper")
    assert isinstance(node.input_choice, DartsInputChoice) and node.input_choice.alpha is None
    node.eval()  # BatchNorm with its running statistics: every call computes the same
    edges = [node.edges[str(i)](s) for i, s in enumerate(states)]
    torch.testing.assert_close(node(states), edges[0] + edges[1] + edges[2], rtol=1e-12, atol=0)
    # The sum differentiates to each edge's alpha.
    node(states).sum().backward(inputs=trainer.arch.parameters())
    assert all(trainer.arch.alphas[f"normal/node3_in{i}"].grad is not None for i in range(3))


def test_nni_node_is_the_weighted_sum_of_its_mixed_edges() -> None:
    trainer, node, states = mixed_node("nni")
    node.eval()
    edges = [node.edges[str(i)](s) for i, s in enumerate(states)]
    weights = F.softmax(trainer.arch.alphas["normal/node3"], -1)
    expected = sum(w * e for w, e in zip(weights, edges))
    torch.testing.assert_close(node(states), expected, rtol=1e-12, atol=1e-15)


def test_a_searched_shipped_space_exports_a_valid_architecture_in_each_formulation() -> None:
    for formulation, unrolled in (("paper", False), ("paper", True), ("nni", False)):
        space = small_space()
        pristine = copy.deepcopy(space)
        # channels_last=None: the CPU kernels, as a user's search on a CPU gets them.
        trainer = make(space, formulation=formulation, channels_last=None, unrolled=unrolled)
        trainer.fit()
        arch = trainer.export()
        assert nastrain.SearchSpace.from_model(pristine).validate(arch) == arch
        assert nastrain.apply_arch(pristine, arch)(images(2)[0]).shape == (2, 10)


def test_paper_formulation_checks_the_edges_an_input_choice_names() -> None:
    class Bad(nn.Module):
        def __init__(self, edges: list[str]) -> None:
            super().__init__()
            self.a = nastrain.LayerChoice({"x": nn.Identity(), "y": nn.Tanh()}, label="a")
            self.pick = nastrain.InputChoice(2, 1, label="pick")
            self.pick.edge_labels = edges

        def forward(self, x):
            return self.pick([self.a(x), x])

    data = TensorDataset(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
    for edges, message in ((["a", "ghost"], r"'pick'.*\['ghost'\]"), (["a"], r"'pick'.*1 edges")):
        with pytest.raises(ValueError, match=message):
            DartsTrainer(Bad(edges), nn.CrossEntropyLoss(), None, None, 1, data)
    with pytest.raises(ValueError, match="formulation must be one of"):
        DartsTrainer(Bad(["a", "a"]), nn.CrossEntropyLoss(), None, None, 1, data, formulation="x")
