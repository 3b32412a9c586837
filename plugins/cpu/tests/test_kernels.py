"""The CPU fast paths of nastrain_cpu.kernels compute what PyTorch's own layers compute."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nastrain_cpu.kernels import (
    MATMUL_MAX_ELEMENTS,
    DepthwiseConv,
    LeanBatchNorm2d,
    PointwiseConv,
    SeparableGroup,
    SharedPoolNorm,
    SharedReLU,
    StridedPointwiseConv,
    optimize_for_cpu,
    pointwise_as_matmul,
    share_pool_norms,
    share_relus_before_depthwise,
)


def channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def forward_backward(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Output, input gradient and parameter gradients for a fixed random output gradient."""
    x = x.detach().clone().requires_grad_(True)
    for p in module.parameters():
        p.grad = None
    out = module(x)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
    return (out.detach(), x.grad, *(p.grad for p in module.parameters()))


def assert_close(ours: tuple, theirs: tuple) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        if a is None or b is None:  # a frozen parameter: no gradient on either side
            assert a is None and b is None
            continue
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation", "size"),
    [
        (3, 1, 1, 1, 8),  # sep_conv_3x3
        (5, 1, 2, 1, 8),  # sep_conv_5x5
        (3, 1, 2, 2, 8),  # dil_conv_3x3: polyphase weight gradient
        (5, 1, 4, 2, 8),  # dil_conv_5x5
        (3, 2, 1, 1, 8),  # strided: zeros inserted in the input gradient
        (5, 2, 2, 1, 7),  # strided, odd size
        (3, 2, 2, 2, 8),  # strided and dilated: subsampled weight gradient
        (5, 2, 4, 2, 7),  # ... on an odd size
        (3, 1, 2, 2, 7),  # dilated on an odd size: the library's weight gradient
        (3, 1, 0, 1, 6),  # no padding
        (3, 3, 3, 3, 9),  # stride = dilation = 3
        ((3, 5), (1, 2), (1, 2), (1, 1), 8),  # rectangular
    ],
)
@pytest.mark.parametrize("bias", [False, True])
def test_depthwise_conv_matches_conv2d(kernel, stride, padding, dilation, size, bias) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 6, kernel, stride, padding, dilation, groups=6, bias=bias)
    x = channels_last(torch.randn(3, 6, size, size + 1))
    expected = forward_backward(conv, x)
    fast = DepthwiseConv(conv)
    assert fast.weight is conv.weight
    assert_close(forward_backward(fast, x), expected)
    assert_close(forward_backward(fast, x.contiguous()), expected)  # either layout


@pytest.mark.parametrize(("stride", "dilation"), [(1, 1), (2, 2), (1, 2)])
@pytest.mark.parametrize("frozen", [False, True])
def test_depthwise_conv_with_the_relu_folded_in_matches_relu_then_conv2d(
    stride, dilation, frozen
) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 6, 3, stride, dilation, dilation, groups=6, bias=False)
    conv.weight.requires_grad_(not frozen)
    x = channels_last(torch.randn(3, 6, 8, 8))
    expected = forward_backward(nn.Sequential(nn.ReLU(), conv), x)
    assert_close(forward_backward(DepthwiseConv(conv, relu_first=True), x), expected)


class Edge(nn.Module):
    """Three operations reading one state, as a NAS edge's candidates do."""

    def __init__(self) -> None:
        super().__init__()

        def block(dilation: int) -> nn.Sequential:
            return nn.Sequential(
                nn.ReLU(), nn.Conv2d(4, 4, 3, padding=dilation, dilation=dilation, groups=4)
            )

        self.ops = nn.ModuleList(
            [
                block(1),
                block(2),
                nn.Sequential(block(1), block(1)),  # the inner block's ReLU sees no shared input
                nn.Sequential(nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)),  # not depthwise
            ]
        )

    def forward(self, x):
        return sum(op(x) for op in self.ops)


def test_relus_before_depthwise_convs_are_shared_at_the_entrance_and_folded_inside() -> None:
    torch.manual_seed(0)
    reference, model = Edge(), Edge()
    model.load_state_dict(reference.state_dict())
    assert share_relus_before_depthwise(model) == {"shared": 3, "folded": 1}
    assert share_relus_before_depthwise(model) == {"shared": 0, "folded": 0}
    assert all(isinstance(model.ops[i][0], SharedReLU) for i in (0, 1))
    assert isinstance(model.ops[2][0][0], SharedReLU)
    assert isinstance(model.ops[2][1][0], nn.Identity) and model.ops[2][1][1].relu_first
    assert type(model.ops[3][0]) is nn.ReLU
    assert list(model.state_dict()) == list(reference.state_dict())
    x = channels_last(torch.randn(2, 4, 6, 6))
    for _ in range(2):  # a second pass computes afresh
        assert_close(forward_backward(model, x), forward_backward(reference, x))


def test_a_shared_relu_is_computed_once_per_input_and_pass() -> None:
    model = Edge()
    share_relus_before_depthwise(model)
    first, second = model.ops[0][0], model.ops[1][0]
    seen: list[torch.Tensor] = []
    model.ops[0][1].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    model.ops[1][1].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = torch.randn(2, 4, 6, 6)
    model(x)
    assert seen[0] is seen[1]  # one ReLU output for both operations
    model(x)
    assert seen[2] is not seen[0] and seen[2] is seen[3]  # a new pass, a new one
    # Outside a pass of the model it recomputes.
    assert first(x) is not second(x)
    torch.testing.assert_close(first(x), torch.relu(x))


def test_a_shared_relu_recomputes_after_an_in_place_change() -> None:
    class Meddling(Edge):
        def forward(self, x):
            a = self.ops[0][0](x)
            a.mul_(0)  # its output changed in place
            b = self.ops[1][0](x)
            x.add_(1)  # its input changed in place
            c = self.ops[2][0][0](x)
            return a, b, c

    model = Meddling()
    share_relus_before_depthwise(model)
    x = torch.randn(2, 4, 6, 6)
    expected = (torch.zeros_like(x), torch.relu(x), torch.relu(x + 1))
    assert_close(model(x.clone()), expected)


class PoolingEdges(nn.Module):
    """Edges reading one state, each with its own pooling candidates (pooling + BatchNorm
    without affine parameters), as in a DARTS search cell; mixed with fixed weights."""

    def __init__(self, momentum: float | None = 0.1) -> None:
        super().__init__()

        def pooled(pool: nn.Module) -> nn.Sequential:
            return nn.Sequential(pool, nn.BatchNorm2d(4, affine=False, momentum=momentum))

        self.ops = nn.ModuleList(
            [
                pooled(nn.MaxPool2d(3, 1, 1)),
                pooled(nn.AvgPool2d(3, 1, 1, count_include_pad=False)),
                pooled(nn.MaxPool2d(3, 1, 1)),  # another edge: shares the first one's result
                pooled(nn.AvgPool2d(3, 1, 1, count_include_pad=False)),  # ... the second's
                pooled(nn.AvgPool2d(3, 1, 1)),  # counts the padding: its own
                pooled(nn.MaxPool2d(3, 2, 1)),  # strided: its own
                nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.BatchNorm2d(4)),  # affine: untouched
            ]
        )

    def forward(self, x):
        outs = [op(x) for op in self.ops]
        return sum(o.flatten(1).mean(1) * (i + 1) for i, o in enumerate(outs))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_shared_pool_norms_compute_what_each_edge_would_and_update_every_running_stat(
    momentum,
) -> None:
    torch.manual_seed(0)
    reference, model = PoolingEdges(momentum), PoolingEdges(momentum)
    model.load_state_dict(reference.state_dict())
    keys = list(model.state_dict())
    assert share_pool_norms(model) == 6
    assert share_pool_norms(model) == 0
    assert type(model.ops[6]) is nn.Sequential
    assert list(model.state_dict()) == keys
    optimize_for_cpu(model)  # the BatchNorms become lean ones inside
    computed: list[int] = []
    for i in range(6):
        model.ops[i][0].register_forward_hook(lambda m, a, o, i=i: computed.append(i))
    for step in range(3):  # the running statistics follow the reference's, step by step
        x = channels_last(torch.randn(3, 4, 7, 7) * (step + 1) + step)
        computed.clear()
        assert_close(forward_backward(model, x), forward_backward(reference, x))
        assert computed == [0, 1, 4, 5]  # the alike edges took the first one's result
        for ours, theirs in zip(model.modules(), reference.modules(), strict=True):
            if isinstance(theirs, nn.BatchNorm2d):
                torch.testing.assert_close(ours.running_mean, theirs.running_mean)
                torch.testing.assert_close(ours.running_var, theirs.running_var)
                assert ours.num_batches_tracked == theirs.num_batches_tracked == step + 1
    model.eval(), reference.eval()
    x = channels_last(torch.randn(3, 4, 7, 7))
    assert_close(forward_backward(model, x), forward_backward(reference, x))


def test_a_shared_pool_norm_recomputes_after_an_in_place_change() -> None:
    class Meddling(PoolingEdges):
        def forward(self, x):
            a = self.ops[0](x)
            a.mul_(0)  # its output changed in place: the next edge computes its own
            b = self.ops[2](x)
            return a, b

    model = Meddling()
    share_pool_norms(model)
    assert isinstance(model.ops[2], SharedPoolNorm)
    x = torch.randn(3, 4, 7, 7)
    a, b = model(x)
    assert a.abs().sum() == 0 and b.abs().sum() > 0
    expected = nn.functional.batch_norm(
        nn.functional.max_pool2d(x, 3, 1, 1), None, None, training=True
    )
    torch.testing.assert_close(b, expected)


def test_depthwise_conv_skips_the_weight_gradient_it_is_not_asked_for() -> None:
    conv = nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4, bias=False)
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    conv.weight.requires_grad_(False)
    DepthwiseConv(conv)(x).sum().backward()
    assert x.grad is not None and conv.weight.grad is None


@pytest.mark.parametrize("size", [4, 40])  # below and above MATMUL_MAX_ELEMENTS
def test_pointwise_conv_matches_conv2d_on_both_paths(size) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 6, 1)
    x = channels_last(torch.randn(4, 8, size, size))
    assert (x.numel() > MATMUL_MAX_ELEMENTS) == (size == 40)
    expected = forward_backward(conv, x)
    assert_close(forward_backward(PointwiseConv(conv), x), expected)


@pytest.mark.parametrize(
    ("stride", "size"), [(2, (8, 8)), (2, (7, 9)), ((2, 1), (6, 5)), (3, (8, 7))]
)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("view", [False, True])  # the input a slice of a larger tensor
@pytest.mark.parametrize("frozen", [False, True])
def test_strided_pointwise_conv_matches_conv2d(stride, size, bias, view, frozen) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 4, 1, stride=stride, bias=bias)
    for p in conv.parameters():
        p.requires_grad_(not frozen)
    fast = StridedPointwiseConv(conv)
    assert fast.weight is conv.weight
    x = channels_last(torch.randn(3, 6, size[0] + 1, size[1] + 1))

    def through(module: nn.Module) -> nn.Module:
        return nn.Sequential(module) if not view else Shifted(module)

    # The reference on the contiguous layout: the library's channels-last strided 1x1
    # backward crashes on some of these sizes (torch 2.14.1, e.g. 8x10 with this gradient).
    expected = forward_backward(through(conv), x.contiguous())
    ours = forward_backward(through(fast), x)
    assert_close(ours, expected)
    assert ours[1].is_contiguous(memory_format=torch.channels_last)


class Shifted(nn.Module):
    """Runs ``module`` on the input shifted by a pixel (a strided view), as FactorizedReduce."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x[:, :, 1:, 1:])


def test_pointwise_convolutions_as_matmul_compute_the_same() -> None:
    model = nn.Sequential(
        nn.Conv2d(4, 6, 1), nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 5, 1, bias=False)
    )
    x = torch.randn(2, 4, 5, 5)
    expected = model(x)
    weight = model[0].weight
    assert pointwise_as_matmul(model) == 2
    assert isinstance(model[0], PointwiseConv) and model[0].weight is weight
    model.to(memory_format=torch.channels_last)
    out = model(channels_last(x))
    assert torch.allclose(out, expected, atol=1e-5)
    assert list(model.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias", "2.weight"]


def small_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),  # fewer than 16 channels: run on the contiguous layout
        nn.ReLU(),
        nn.Conv2d(8, 8, 5, padding=4, dilation=2, groups=8, bias=False),
        nn.Conv2d(8, 16, 1, bias=False),
        nn.BatchNorm2d(16, affine=False),
        nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )


def test_optimize_for_cpu_keeps_results_parameters_and_state_dict() -> None:
    torch.manual_seed(0)
    reference, model = small_net(), small_net()
    model.load_state_dict(reference.state_dict())
    params = list(model.parameters())
    keys = list(model.state_dict())
    model.to(memory_format=torch.channels_last)
    counts = optimize_for_cpu(model)
    assert counts == {
        "pool_norm_shared": 0,
        "pointwise": 1,
        "strided_pointwise": 0,
        "relu_shared": 0,
        "relu_folded": 1,  # the ReLU is not the first module: nothing else reads its input
        "depthwise": 1,
        "batchnorm": 2,
        "separable_grouped": 0,
    }
    assert set(optimize_for_cpu(model).values()) == {0}
    assert isinstance(model[2], nn.Identity) and model[3].relu_first
    assert list(model.parameters()) == params and list(model.state_dict()) == keys
    assert isinstance(model[3], DepthwiseConv) and isinstance(model[4], PointwiseConv)
    assert isinstance(model[1], LeanBatchNorm2d) and model[1].running_mean is not None

    x = torch.randn(5, 3, 12, 12)
    model.train(), reference.train()
    assert_close(forward_backward(model, channels_last(x)), forward_backward(reference, x))
    # BatchNorm running statistics were updated the same way.
    torch.testing.assert_close(model[1].running_mean, reference[1].running_mean)
    torch.testing.assert_close(model[5].running_var, reference[5].running_var)
    model.eval(), reference.eval()
    assert_close(forward_backward(model, channels_last(x)), forward_backward(reference, x))
    # The small BatchNorm hands the next layer a channels-last tensor again.
    assert model[:2](channels_last(x)).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    ("channels", "affine", "momentum", "layout"),
    [
        (8, False, 0.1, "channels_last"),  # small: normalised on the (pixels, channels) matrix
        (3, False, None, "channels_last"),
        (24, False, 0.1, "channels_last"),
        (24, False, None, "contiguous"),  # cumulative running averages
        (8, True, 0.1, "channels_last"),  # affine: nn.BatchNorm2d's own path
        (24, True, 0.3, "contiguous"),
    ],
)
def test_lean_batchnorm_matches_batchnorm(channels, affine, momentum, layout) -> None:
    torch.manual_seed(0)
    reference = nn.BatchNorm2d(channels, affine=affine, momentum=momentum)
    if affine:
        nn.init.normal_(reference.weight), nn.init.normal_(reference.bias)
    lean = LeanBatchNorm2d.like(reference)
    mirror = nn.BatchNorm2d(channels, affine=affine, momentum=momentum)
    mirror.load_state_dict(reference.state_dict())
    assert lean.running_mean is reference.running_mean and lean.weight is reference.weight
    assert list(lean.state_dict()) == list(reference.state_dict())
    for _ in range(3):  # running statistics accumulate alike
        x = torch.randn(4, channels, 5, 6) * 3 + 1
        if layout == "channels_last":
            x = channels_last(x)
        expected = forward_backward(mirror, x)
        ours = forward_backward(lean, x)
        assert_close(ours, expected)
        assert ours[0].is_contiguous(memory_format=torch.channels_last) == (
            layout == "channels_last"
        )
    torch.testing.assert_close(lean.running_var, mirror.running_var)
    assert lean.num_batches_tracked.item() == mirror.num_batches_tracked.item() == 3
    lean.eval(), mirror.eval()
    assert_close(forward_backward(lean, x), forward_backward(mirror, x))


def test_lean_batchnorm_keeps_its_output_not_its_input_for_backward() -> None:
    x = torch.randn(4, 24, 5, 5, requires_grad=True)
    hidden = x * 2  # what a convolution would hand the BatchNorm

    def saved_by(module: nn.Module) -> list[torch.Tensor]:
        saved: list[torch.Tensor] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            out = module(hidden)
        return [t for t in saved if t.shape == hidden.shape] + [out]

    *plain, _ = saved_by(nn.BatchNorm2d(24, affine=False))
    assert any(t is hidden for t in plain)
    *lean, out = saved_by(LeanBatchNorm2d(24, affine=False))
    assert not any(t is hidden for t in lean)
    assert any(t.data_ptr() == out.data_ptr() for t in lean)


class _ReadsItsReLUTwice(nn.Sequential):
    """A Sequential subclass whose forward uses its ReLU's output twice: folding that ReLU
    into the convolution would change the result."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self[0](x)
        return self[1](h) + h


def _dilated_depthwise() -> nn.Conv2d:
    return nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4, bias=False)


def test_optimize_for_cpu_leaves_hooked_parametrized_and_custom_modules_alone() -> None:
    torch.manual_seed(0)
    hooked = nn.Conv2d(4, 4, 1)
    calls: list[tuple[int, ...]] = []
    hooked.register_forward_hook(lambda module, args, out: calls.append(tuple(out.shape)))
    parametrized = nn.Conv2d(4, 4, 1)
    torch.nn.utils.parametrize.register_parametrization(parametrized, "weight", nn.Tanh())
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        hooked,
        parametrized,
        nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(), _dilated_depthwise()),  # plain: rewritten
        _ReadsItsReLUTwice(nn.ReLU(), _dilated_depthwise()),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    x = torch.randn(2, 3, 6, 6)
    expected = forward_backward(model, x)
    calls.clear()
    model.to(memory_format=torch.channels_last)
    counts = optimize_for_cpu(model)
    assert type(model[1]) is nn.Conv2d
    assert torch.nn.utils.parametrize.is_parametrized(model[2], "weight")
    assert isinstance(model[3][0], PointwiseConv) and isinstance(model[3][2], DepthwiseConv)
    assert counts["relu_folded"] == 1  # the plain Sequential's, not the subclass's
    assert type(model[4][0]) is nn.ReLU
    assert_close(forward_backward(model, channels_last(x)), expected)
    assert calls == [(2, 4, 6, 6)]  # the hook still fires, once per forward


def test_a_forward_that_raises_leaves_no_pass_cache_behind() -> None:
    class Fails(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("on purpose")

    model = nn.Sequential(
        nn.Sequential(nn.ReLU(), _dilated_depthwise()),
        nn.Sequential(nn.ReLU(), _dilated_depthwise()),
        Fails(),
    )
    model.to(memory_format=torch.channels_last)
    assert optimize_for_cpu(model)["relu_shared"] == 1
    x = channels_last(torch.randn(2, 4, 6, 6, requires_grad=True))
    with pytest.raises(RuntimeError, match="on purpose"):
        model(x)
    cache = model._nastrain_pass_cache
    assert not cache.active and not cache.entries


class Separable(nn.Sequential):
    """(ReLU, depthwise conv, 1x1 conv, BatchNorm) blocks, as DARTS's sep_conv / dil_conv."""

    def __init__(self, kernel: int, dilation: int, blocks: int, nested: bool = False) -> None:
        padding = dilation * (kernel - 1) // 2

        def block() -> list[nn.Module]:
            return [
                nn.ReLU(),
                nn.Conv2d(4, 4, kernel, 1, padding, dilation, groups=4, bias=False),
                nn.Conv2d(4, 4, 1, bias=False),
                nn.BatchNorm2d(4, affine=False),
            ]

        if nested:  # the benchmark supernet's SepConv: a Sequential of two blocks
            super().__init__(*(nn.Sequential(*block()) for _ in range(blocks)))
        else:
            super().__init__(*(m for _ in range(blocks) for m in block()))


class SeparableEdges(nn.Module):
    """Edges reading one state, each with its own separable candidates (as a DARTS search
    cell's), mixed with fixed weights."""

    def __init__(self, nested: bool = False) -> None:
        super().__init__()
        self.ops = nn.ModuleList(
            [
                *(Separable(3, 1, 2, nested) for _ in range(3)),  # sep_conv_3x3 of 3 edges
                *(Separable(3, 2, 1) for _ in range(2)),  # dil_conv_3x3 of 2 edges
                Separable(5, 1, 2),  # alone of its kind
            ]
        )

    def forward(self, x):
        return sum(op(x) * (i + 1) for i, op in enumerate(self.ops))


@pytest.mark.parametrize(
    ("nested", "layout", "momentum"),
    [
        (False, "channels_last", 0.1),  # running statistics updated for the group at once
        (True, "channels_last", 0.1),
        (False, "contiguous", 0.1),
        (True, "channels_last", None),  # cumulative averages: by each member when it runs
    ],
)
def test_alike_separable_candidates_on_one_state_are_computed_together_as_each_alone(
    nested, layout, momentum, monkeypatch
) -> None:
    import nastrain_cpu.kernels as kernels

    torch.manual_seed(0)
    reference, model = SeparableEdges(nested).double(), SeparableEdges(nested).double()
    for bn in (*reference.modules(), *model.modules()):
        if isinstance(bn, nn.BatchNorm2d):
            bn.momentum = momentum
    model.load_state_dict(reference.state_dict())
    keys, params = list(model.state_dict()), list(model.parameters())
    assert optimize_for_cpu(model)["separable_grouped"] == 0  # not asked for
    assert optimize_for_cpu(model, group_separables=True)["separable_grouped"] == 6
    assert optimize_for_cpu(model, group_separables=True)["separable_grouped"] == 0
    assert all(isinstance(op, SeparableGroup) and isinstance(op, Separable) for op in model.ops)
    assert list(model.state_dict()) == keys and list(model.parameters()) == params
    groups: list[int] = []
    run_group = kernels._run_group
    monkeypatch.setattr(
        kernels,
        "_run_group",
        lambda members, *a: groups.append(len(members)) or run_group(members, *a),
    )
    to_layout = channels_last if layout == "channels_last" else lambda t: t.contiguous()
    for step in range(3):
        x = to_layout(torch.randn(3, 4, 8, 8, dtype=torch.float64) * (step + 1) + step)
        groups.clear()
        ours, theirs = forward_backward(model, x), forward_backward(reference, x)
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        # The first pass learns which alike candidates read one input; the next compute them
        # together: the three sep_conv_3x3, the two dil_conv_3x3.
        assert groups == ([] if step == 0 else [3, 2])
        for ours_bn, theirs_bn in zip(model.modules(), reference.modules(), strict=True):
            if isinstance(theirs_bn, nn.BatchNorm2d):
                torch.testing.assert_close(ours_bn.running_mean, theirs_bn.running_mean)
                torch.testing.assert_close(ours_bn.running_var, theirs_bn.running_var)
                assert ours_bn.num_batches_tracked == theirs_bn.num_batches_tracked
    model.eval(), reference.eval()  # evaluation: each computes alone, with its own statistics
    x = to_layout(torch.randn(3, 4, 8, 8, dtype=torch.float64))
    assert_close(forward_backward(model, x), forward_backward(reference, x))


def test_a_separable_candidate_with_a_hooked_layer_is_not_grouped() -> None:
    model = SeparableEdges()
    model.ops[0][1].register_forward_hook(lambda *args: None)
    assert optimize_for_cpu(model, group_separables=True)["separable_grouped"] == 5
    assert not isinstance(model.ops[0], SeparableGroup)


def test_grouped_separable_candidates_copy_and_pickle_as_their_own_class() -> None:
    import copy
    import pickle

    torch.manual_seed(0)
    model = SeparableEdges()
    optimize_for_cpu(model, group_separables=True)
    x = torch.randn(2, 4, 6, 6)
    model(x), model(x)  # learn the groups, then use them
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):  # in memory only
        assert all(isinstance(op, SeparableGroup) and isinstance(op, Separable) for op in twin.ops)
        assert type(twin.ops[0]) is type(model.ops[0])
        assert twin.ops[0]._cache is twin._nastrain_pass_cache
        assert_close(forward_backward(twin, x), forward_backward(copy.deepcopy(model), x))
