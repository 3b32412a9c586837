"""The kernels' custom autograd functions against plain PyTorch: second derivatives (correct,
or refused loudly), bfloat16 autocast, and a forward pass that raises."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

from nastrain_cpu.kernels import (
    DepthwiseConv,
    LeanBatchNorm2d,
    PointwiseConv,
    SharedReLU,
    StridedPointwiseConv,
    optimize_for_cpu,
)


def channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def double_input(*shape: int) -> torch.Tensor:
    return channels_last(torch.randn(*shape, dtype=torch.float64)).requires_grad_(True)


# --- second derivatives ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stride", "padding", "dilation", "size"),
    [
        (1, 2, 2, 8),  # polyphase weight gradient
        (2, 2, 2, 8),  # subsampled weight gradient
        (1, 2, 2, 7),  # the library's weight gradient
        (2, 1, 1, 7),  # strided: zeros inserted into the input gradient
    ],
)
@pytest.mark.parametrize("relu_first", [False, True])
def test_depthwise_conv_has_correct_second_derivatives(
    stride, padding, dilation, size, relu_first
) -> None:
    conv = nn.Conv2d(3, 3, 3, stride, padding, dilation, groups=3).double()
    fast = DepthwiseConv(conv, relu_first=relu_first)
    x = double_input(2, 3, size, size)

    def f(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(fast, {"weight": weight, "bias": bias}, (x,))

    assert gradcheck(f, (x, conv.weight, conv.bias))
    assert gradgradcheck(f, (x, conv.weight, conv.bias))


def test_strided_and_plain_pointwise_convs_have_correct_second_derivatives() -> None:
    strided = StridedPointwiseConv(nn.Conv2d(3, 4, 1, stride=2).double())
    plain = PointwiseConv(nn.Conv2d(3, 4, 1).double())  # the matrix-product path
    x = double_input(2, 3, 5, 6)
    for module in (strided, plain):
        assert gradgradcheck(module, (x,))


@pytest.mark.parametrize("channels", [3, 20])  # the column-sum path and the library's
def test_lean_batchnorm_refuses_a_second_derivative_loudly(channels) -> None:
    """Its backward keeps the output, not the input, so it cannot differentiate itself; before
    it said so, a double backward came out wrong (off by 6.1 in norm 48.9) in silence."""
    lean = LeanBatchNorm2d(channels, affine=False).double()
    x = double_input(4, channels, 5, 5)
    assert gradcheck(lean, (x,))  # the first derivative is right
    (grad,) = torch.autograd.grad(lean(x).pow(3).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()


def shared_pool_norms() -> nn.Module:
    """Two edges' pooling + BatchNorm on one state, shared by the kernels."""

    class Edges(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ops = nn.ModuleList(
                nn.Sequential(nn.AvgPool2d(3, 1, 1), nn.BatchNorm2d(3, affine=False))
                for _ in range(2)
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.ops[0](x) * 2 + self.ops[1](x)

    model = Edges().double()
    assert optimize_for_cpu(model)["pool_norm_shared"] == 2
    return model


def test_a_shared_pool_norm_refuses_a_second_derivative_loudly() -> None:
    model = shared_pool_norms()
    x = double_input(4, 3, 5, 5)
    (grad,) = torch.autograd.grad(model(x).pow(3).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()


# --- autocast --------------------------------------------------------------------------------


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    ours, theirs = ours.detach().double(), theirs.detach().double()
    return float((ours - theirs).norm() / theirs.norm().clamp_min(1e-12))


# Both sides compute in bfloat16 (8 significant bits: each rounding is off by up to 2**-9,
# 0.2%), in different orders (a matrix product for a convolution, a flipped-kernel
# convolution for the library's backward, column sums for the library's BatchNorm): a few
# roundings through two or three layers. The tensors' relative error (in norm, which
# cancellations inside one sum do not blow up) is held to 2% (about 10 roundings); an
# unrounded float32 computation on either side would be well within it, a wrong
# formula or a dropped term far outside.
BF16_TOLERANCE = 2e-2


def under_autocast(module: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Output, input gradient and parameter gradients of ``module`` run under CPU bfloat16
    autocast, for a fixed random output gradient."""
    x = x.detach().clone().requires_grad_(True)
    for p in module.parameters():
        p.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
    return [out, x.grad, *(p.grad for p in module.parameters())]


def assert_autocast_agrees(ours: nn.Module, theirs: nn.Module, x: torch.Tensor) -> None:
    got, expected = under_autocast(ours, x), under_autocast(theirs, x)
    assert got[0].dtype == expected[0].dtype  # the dtype autocast gives the plain module
    for a, b in zip(got, expected, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert relative_error(a, b) < BF16_TOLERANCE


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize(("stride", "dilation"), [(1, 2), (2, 1), (2, 2)])
@pytest.mark.parametrize("relu_first", [False, True])
def test_depthwise_conv_under_bfloat16_autocast(layout, stride, dilation, relu_first) -> None:
    conv = nn.Conv2d(6, 6, 3, stride, dilation, dilation, groups=6)
    x = torch.randn(4, 6, 8, 8)
    x = channels_last(x) if layout == "channels_last" else x
    reference = nn.Sequential(nn.ReLU(), conv) if relu_first else conv
    assert_autocast_agrees(DepthwiseConv(conv, relu_first=relu_first), reference, x)


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_pointwise_convs_under_bfloat16_autocast(layout) -> None:
    x = torch.randn(4, 6, 8, 10)
    x = channels_last(x) if layout == "channels_last" else x
    conv = nn.Conv2d(6, 5, 1)
    assert_autocast_agrees(PointwiseConv(conv), conv, x)
    strided = nn.Conv2d(6, 5, 1, stride=2)
    # The reference on the contiguous layout (the library's channels-last strided 1x1
    # backward aborts on some sizes, torch 2.14.1).
    got = under_autocast(StridedPointwiseConv(strided), x)
    expected = under_autocast(strided, x.contiguous())
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype and relative_error(a, b) < BF16_TOLERANCE


@pytest.mark.parametrize("channels", [6, 24])  # the column-sum path and the library's
@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_lean_batchnorm_under_bfloat16_autocast(channels, layout) -> None:
    """After a convolution (a bfloat16 input, as autocast gives one) and on its own (float32:
    autocast leaves BatchNorm in the input's dtype)."""
    # No bias: before a BatchNorm its gradient is zero, in bfloat16 rounding noise alone.
    conv = nn.Conv2d(3, channels, 3, padding=1, bias=False)
    x = torch.randn(4, 3, 6, 7) * 3 + 1
    x = channels_last(x) if layout == "channels_last" else x
    bn = nn.BatchNorm2d(channels, affine=False)
    lean = LeanBatchNorm2d.like(copy_of(bn))
    assert_autocast_agrees(nn.Sequential(conv, lean), nn.Sequential(conv, bn), x)
    torch.testing.assert_close(lean.running_mean, bn.running_mean, rtol=2e-2, atol=2e-2)
    y = torch.randn(4, channels, 6, 7)
    y = channels_last(y) if layout == "channels_last" else y
    assert_autocast_agrees(lean, bn, y)


def copy_of(bn: nn.BatchNorm2d) -> nn.BatchNorm2d:
    twin = nn.BatchNorm2d(bn.num_features, affine=bn.affine)
    twin.load_state_dict(bn.state_dict())
    return twin


def cell() -> nn.Module:
    """Two edges on one state, each with a separable convolution (a shared ReLU, a dilated
    depthwise one, a 1x1) and a pooling + BatchNorm, as a DARTS cell has."""

    class Cell(nn.Module):
        def __init__(self) -> None:
            super().__init__()

            def edge() -> nn.ModuleList:
                return nn.ModuleList(
                    [
                        nn.Sequential(
                            nn.ReLU(),
                            nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8, bias=False),
                            nn.Conv2d(8, 8, 1, bias=False),
                            nn.BatchNorm2d(8, affine=False),
                        ),
                        nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.BatchNorm2d(8, affine=False)),
                    ]
                )

            # No bias: every path ends in a BatchNorm, which all but cancels its gradient
            # (a sum of bfloat16 rounding noise).
            self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.edges = nn.ModuleList([edge(), edge()])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = self.stem(x)
            return sum(op(s) * (i + 1) for edge in self.edges for i, op in enumerate(edge))

    return Cell()


def test_a_rewritten_cell_under_bfloat16_autocast_agrees_with_the_plain_one() -> None:
    plain = cell()
    fast = cell()
    fast.load_state_dict(plain.state_dict())
    counts = optimize_for_cpu(fast, list(fast.edges))
    assert counts["relu_shared"] == 2 and counts["pool_norm_shared"] == 2
    x = channels_last(torch.randn(4, 3, 8, 8))
    assert_autocast_agrees(fast, plain, x)


# --- a forward pass that raises --------------------------------------------------------------


def test_a_forward_that_raises_leaves_no_cache_holding_the_graph() -> None:
    class Fails(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("on purpose")

    def branch() -> nn.Sequential:
        return nn.Sequential(nn.ReLU(), nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4))

    model = nn.Sequential(nn.ModuleList([branch(), branch()]), Fails())

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b = (op(x) for op in self.body[0])
            return self.body[1](a + b)

    net = Model()
    assert optimize_for_cpu(net)["relu_shared"] == 2
    assert isinstance(model[0][0][0], SharedReLU)
    cached: list[weakref.ref[torch.Tensor]] = []
    model[0][0][0].register_forward_hook(lambda m, args, out: cached.append(weakref.ref(out)))
    x = channels_last(torch.randn(2, 4, 6, 6, requires_grad=True))
    try:
        net(x)
    except RuntimeError as exc:
        assert "on purpose" in str(exc)
    else:
        pytest.fail("the forward pass did not raise")
    gc.collect()
    cache = net._nastrain_pass_cache
    assert not cache.active and not cache.entries
    assert cached and cached[0]() is None  # the ReLU's output (and its graph) is gone
    # The next pass computes afresh and is right.
    conv = model[0][1][1]
    expected = nn.functional.conv2d(torch.relu(x), conv.weight, conv.bias, 1, 2, 2, 4)
    torch.testing.assert_close(model[0][1](x), expected)
