"""Tests of the DARTS CNN search space and its operations."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from nastrain import ChosenInputs, InputChoice, LayerChoice, SearchSpace, apply_arch, fixed_arch
from nastrain.oneshot import REWRITE_ENV, strided_pointwise_convolutions
from nastrain_darts import DartsTrainer
from nastrain_darts.ops import OPS, PRIMITIVES, FactorizedReduce, Zero
from nastrain_darts.spaces import DartsSpace, darts_cnn_space, genotype

# DARTS V2 (the paper's second-order result, Figure 4), with each node's pair in input order.
DARTS_V2_NORMAL = [
    ("sep_conv_3x3", 0),
    ("sep_conv_3x3", 1),
    ("sep_conv_3x3", 0),
    ("sep_conv_3x3", 1),
    ("skip_connect", 0),
    ("sep_conv_3x3", 1),
    ("skip_connect", 0),
    ("dil_conv_3x3", 2),
]
DARTS_V2_REDUCE = [
    ("max_pool_3x3", 0),
    ("max_pool_3x3", 1),
    ("max_pool_3x3", 1),
    ("skip_connect", 2),
    ("max_pool_3x3", 0),
    ("skip_connect", 2),
    ("max_pool_3x3", 1),
    ("skip_connect", 2),
]


def arch_from_genotype(normal, reduce, n_nodes=4, unused_op="none"):
    """An exported architecture with the given (op, input) pairs; unused edges get `unused_op`."""
    arch = {}
    for cell_type, gene in (("normal", normal), ("reduce", reduce)):
        for k, node in enumerate(range(2, 2 + n_nodes)):
            pairs = gene[2 * k : 2 * k + 2]
            arch[f"{cell_type}/node{node}"] = sorted(source for _, source in pairs)
            for source in range(node):
                arch[f"{cell_type}/node{node}_in{source}"] = unused_op
            for op, source in pairs:
                arch[f"{cell_type}/node{node}_in{source}"] = op
    return arch


def enumerate_pairs(gene):
    """(node, input) of each pair of a genotype's cell."""
    return [(2 + k // 2, source) for k, (_, source) in enumerate(gene)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # These tensors are tiny: on a busy 2-core machine, intra-op threads cost seconds per
    # forward in synchronisation (measured: 5 s for the first 32x32 forward, 0.03 s on one).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def space() -> DartsSpace:
    torch.manual_seed(0)
    return DartsSpace()


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_supernet_has_the_papers_parameter_count(space):
    # The paper's search network (quark0/darts cnn/model_search.py) at C=16, 8 layers, 4 nodes,
    # 10 classes has 1,930,618 parameters: every edge holds all 8 operations, the BatchNorms
    # inside cells have no affine parameters, the stem's BatchNorm has them. Ours is built the
    # same way and InputChoice has no weights, so the count is exactly the same. The
    # architecture weights (alphas) are not counted: a one-shot trainer adds them.
    assert n_params(space) == 1_930_618


def test_space_has_36_shared_decisions(space):
    search_space = SearchSpace.from_model(space)
    assert len(search_space) == 36
    for cell_type in ("normal", "reduce"):
        for node in range(2, 6):
            choice = search_space[f"{cell_type}/node{node}"]
            assert (choice.kind, choice.n_candidates, choice.n_chosen) == ("input", node, 2)
            for source in range(node):
                edge = search_space[f"{cell_type}/node{node}_in{source}"]
                assert edge.kind == "layer"
                assert list(edge.names) == PRIMITIVES
    # 1 * 3 * 6 * 10 ways to pick inputs, 8**14 operations, per cell type.
    assert search_space.size == (1 * 3 * 6 * 10 * 8**14) ** 2


def test_every_cell_of_a_type_carries_the_same_labels(space):
    def labels(cell):
        return [
            (name, module.label)
            for name, module in cell.named_modules()
            if isinstance(module, (LayerChoice, InputChoice))
        ]

    reduction = [cell.reduction for cell in space.cells]
    assert reduction == [False, False, True, False, False, True, False, False]
    normal = [labels(cell) for cell in space.cells if not cell.reduction]
    reduce = [labels(cell) for cell in space.cells if cell.reduction]
    assert all(cell == normal[0] for cell in normal)
    assert all(cell == reduce[0] for cell in reduce)
    assert len(normal[0]) == 18
    assert ("nodes.2.edges.3", "normal/node4_in3") in normal[0]
    assert ("nodes.3.input_choice", "reduce/node5") in reduce[0]


def test_unresolved_space_cannot_run():
    with pytest.raises(RuntimeError, match="cannot run by itself"):
        DartsSpace(C=4, layers=3)(torch.randn(2, 3, 16, 16))


@pytest.mark.parametrize("size", [32, 16])
def test_sampled_architecture_runs(space, size):
    arch = SearchSpace.from_model(space).sample(0)
    model = apply_arch(space, arch)
    assert not any(isinstance(m, (LayerChoice, InputChoice)) for m in model.modules())
    assert model(torch.randn(2, 3, size, size)).shape == (2, 10)
    # The space itself stays searchable.
    assert len(SearchSpace.from_model(space)) == 36


def test_benchmark_workload_five_cells_c8():
    space = darts_cnn_space(C=8, layers=5)
    assert [cell.reduction for cell in space.cells] == [False, True, False, True, False]
    for seed in range(3):
        model = apply_arch(space, SearchSpace.from_model(space).sample(seed))
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resolved_node_runs_only_the_edges_it_keeps(space):
    arch = arch_from_genotype(DARTS_V2_NORMAL, DARTS_V2_REDUCE, unused_op="sep_conv_3x3")
    model = apply_arch(space, arch)
    ran = []
    for name, module in model.named_modules():
        if name.count(".") == 5 and ".edges." in name:  # cells.i.nodes.k.edges.source
            module.register_forward_hook(lambda m, args, out, name=name: ran.append(name))
    model(torch.randn(2, 3, 16, 16))
    kept = {f"{node - 2}.edges.{source}" for node, source in enumerate_pairs(DARTS_V2_NORMAL)}
    first_cell = {name.split("nodes.", 1)[1] for name in ran if name.startswith("cells.0.")}
    assert first_cell == kept
    assert len(ran) == 8 * 8


def test_fixed_arch_builds_only_the_kept_edges(space):
    # Unused edges hold sep_conv_3x3: they have weights the fixed build leaves out.
    arch = arch_from_genotype(DARTS_V2_NORMAL, DARTS_V2_REDUCE, unused_op="sep_conv_3x3")
    torch.manual_seed(0)
    with fixed_arch(arch):
        built = DartsSpace()
    applied = apply_arch(space, arch)
    for cell in built.cells:
        for node in cell.nodes:
            assert isinstance(node.input_choice, ChosenInputs)
            assert sorted(int(source) for source in node.edges) == node.input_choice.chosen
    assert n_params(built) < n_params(applied)
    # Same network: with the same weights, the same output.
    built.load_state_dict(applied.state_dict(), strict=False)
    built.eval()
    applied.eval()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(built(x), applied(x))


def test_none_on_every_edge_gives_zero_features():
    space = DartsSpace(C=4, layers=3)
    arch = {
        choice.label: "none" if choice.kind == "layer" else [0, 1]
        for choice in SearchSpace.from_model(space)
    }
    model = apply_arch(space, arch)
    logits = model(torch.randn(2, 3, 15, 15))
    # Every cell outputs zeros, so the logits are the classifier's bias.
    torch.testing.assert_close(logits, model.classifier.bias.expand(2, 10))


def test_zero_op_is_marked_and_outputs_zeros_of_the_right_shape():
    assert Zero.nastrain_zero is True
    assert isinstance(OPS["none"](8, 2, False), Zero)
    x = torch.randn(2, 8, 15, 16)
    out = Zero(1)(x)
    assert out.shape == x.shape and not out.any()
    out = Zero(2)(x)
    assert out.shape == (2, 8, 8, 8) and not out.any()


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [16, 15])
def test_every_op_keeps_channels_and_shapes_like_zero(stride, size):
    x = torch.randn(2, 8, size, size)
    expected = Zero(stride)(x).shape
    assert list(OPS) == PRIMITIVES
    for name in PRIMITIVES:
        assert OPS[name](8, stride, False)(x).shape == expected, name


def factorized_reduce_by_definition(fr: FactorizedReduce, x: torch.Tensor) -> torch.Tensor:
    """The paper's FactorizedReduce: ReLU, two 1x1 stride-2 convolutions (the second on the
    input shifted by a pixel, padded back on an odd side), concatenated, BatchNorm.

    Computed on the contiguous layout, input and weights: the library's channels-last backward
    of a strided 1x1 convolution crashes the process on some sizes (torch 2.14.1)."""
    x = torch.relu(x.contiguous())
    shifted = torch.nn.functional.pad(x[:, :, 1:, 1:], (0, x.shape[3] % 2, 0, x.shape[2] % 2))

    def conv(module: torch.nn.Conv2d, t: torch.Tensor) -> torch.Tensor:
        weight = module.weight.clone(memory_format=torch.contiguous_format)
        return torch.nn.functional.conv2d(t, weight, module.bias, stride=module.stride)

    return fr.bn(torch.cat([conv(fr.conv_1, x), conv(fr.conv_2, shifted)], dim=1))


@pytest.mark.parametrize("size", [(8, 8), (7, 8), (8, 9), (8, 10), (7, 9)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_factorized_reduce_computes_its_definition(size, channels_last):
    torch.manual_seed(0)
    fr = FactorizedReduce(6, 8)
    x = torch.randn(3, 6, *size)
    if channels_last:
        fr.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    results = []
    for compute in (fr, lambda t: factorized_reduce_by_definition(fr, t)):
        xi = x.clone().requires_grad_(True)
        out = compute(xi)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
        results.append([out, xi.grad, *(p.grad for p in fr.parameters())])
        fr.zero_grad(set_to_none=True)
    for ours, expected in zip(*results, strict=True):
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    if channels_last:
        assert results[0][1].is_contiguous(memory_format=torch.channels_last)


class _StridedConvolutions(torch.overrides.TorchFunctionMode):
    """Records the strides of the convolutions run while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.strides: list[object] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.nn.functional.conv2d, torch.conv2d):
            stride = kwargs.get("stride", args[3] if len(args) > 3 else 1)
            if stride not in (1, (1, 1), [1, 1]):
                self.strides.append(stride)
        return func(*args, **kwargs)


@pytest.mark.parametrize("size", [(8, 8), (8, 10), (7, 9)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_factorized_reduce_runs_no_strided_convolution(size, channels_last):
    """The library's channels-last backward of a strided 1x1 convolution aborts the process on
    some sizes (torch 2.14.1, e.g. 8x10): FactorizedReduce gathers the pixels and runs 1x1
    stride-1 products instead, in every layout, so a retrained channels-last model is safe."""
    fr = FactorizedReduce(6, 8)
    x = torch.randn(2, 6, *size)
    if channels_last:
        fr.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with _StridedConvolutions() as mode:
        fr(x.requires_grad_(True)).sum().backward()
    assert mode.strides == []


def test_ops_can_be_shrunk_and_unknown_ops_are_named():
    space = DartsSpace(C=4, layers=3, ops=["skip_connect", "sep_conv_3x3"])
    edge = SearchSpace.from_model(space)["reduce/node3_in2"]
    assert edge.names == ("skip_connect", "sep_conv_3x3")
    with pytest.raises(ValueError, match="conv_7x1_1x7"):
        DartsSpace(ops=["skip_connect", "conv_7x1_1x7"])


def test_search_bn_has_no_affine_parameters_inside_cells(space):
    cell_bns = [m for m in space.cells.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert cell_bns and not any(bn.affine for bn in cell_bns)
    assert space.stem[1].affine
    # Pooling candidates are followed by a BatchNorm, as in the paper's MixedOp.
    pool = space.cells[0].nodes[0].edges["0"]["max_pool_3x3"]
    assert isinstance(pool[1], torch.nn.BatchNorm2d)


def test_genotype_prints_like_the_paper():
    arch = arch_from_genotype(DARTS_V2_NORMAL, DARTS_V2_REDUCE)
    assert str(genotype(arch)) == (
        "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
        "('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), "
        "('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
        "('max_pool_3x3', 1), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), "
        "('skip_connect', 2), ('max_pool_3x3', 1), ('skip_connect', 2)], "
        "reduce_concat=[2, 3, 4, 5])"
    )
    with pytest.raises(ValueError, match="reduce/node2"):
        genotype({k: v for k, v in arch.items() if k != "reduce/node2"})


def test_the_shipped_space_trains_channels_last_without_any_rewrite(monkeypatch) -> None:
    """FactorizedReduce's 1x1 convolutions only hold weights (its forward never runs the
    library's strided convolution), so they are no channels-last hazard: with no plugin
    rewriting the supernet, a CPU search still picks the faster format."""
    monkeypatch.setenv(REWRITE_ENV, "0")
    model = DartsSpace(C=4, layers=5)
    assert strided_pointwise_convolutions(model) == []
    data = TensorDataset(torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,)))
    trainer = DartsTrainer(
        model, nn.CrossEntropyLoss(), None, None, 1, data, batch_size=4, device="cpu",
        seed=0, progress=False,
    )  # fmt: skip
    assert trainer.channels_last
    assert not [m for m in trainer.model.modules() if type(m).__module__.startswith("nastrain_cpu")]
    trainer.fit()  # the backward runs in channels-last without a crash
