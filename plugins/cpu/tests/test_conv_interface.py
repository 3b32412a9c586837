"""The convolutions' replacements keep the interface of the ``nn.Conv2d`` they replace: code
that reads a convolution's settings, checks ``isinstance(m, nn.Conv2d)`` or loads a
checkpoint sees no difference; only ``forward`` differs."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nastrain_cpu import plugin
from nastrain_cpu.kernels import (
    DepthwiseConv,
    PointwiseConv,
    StridedPointwiseConv,
    optimize_for_cpu,
    pointwise_as_matmul,
)

#: What nn.Module itself sets on every module: not a convolution's settings.
MODULE_STATE = set(vars(nn.Module()))


def channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


class ReadsItsConvolutions(nn.Module):
    """A candidate whose forward reads its convolutions' ``out_channels``, ``stride``,
    ``padding`` and ``kernel_size`` (as a user's may): the result depends on each."""

    def __init__(self, channels: int = 4, width: int = 6) -> None:
        super().__init__()
        self.pre = nn.Conv2d(channels, width, 1)
        self.dw = nn.Conv2d(width, width, 3, stride=2, padding=2, dilation=2, groups=width)
        self.down = nn.Conv2d(width, width, 1, stride=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pre(x)
        # A pooled shortcut as strided as the convolutions, checked against out_channels.
        z = self.dw(y) + self.down(y) + F.avg_pool2d(y, self.dw.stride)
        assert z.shape[1] == self.pre.out_channels == self.down.out_channels
        pad = self.dw.padding
        z = F.pad(z, (pad[1], pad[1], pad[0], pad[0]))
        return z.mean((2, 3)).view(-1, self.pre.out_channels) * self.dw.kernel_size[0]


def forward_backward(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype))
    return [out.detach(), x.grad, *(p.grad for p in model.parameters())]


def twins() -> tuple[nn.Sequential, nn.Sequential]:
    """A plain model and an equal copy of it whose candidate the plugin rewrote, in float64."""
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), ReadsItsConvolutions()).double()
    fast = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), ReadsItsConvolutions()).double()
    fast.load_state_dict(plain.state_dict())
    fast.to(memory_format=torch.channels_last)
    trainer = SimpleNamespace(channels_last_requested=None)
    counts = plugin.nastrain_prepare_model(trainer, fast, torch.device("cpu"), [fast[1]])
    assert counts is not None
    assert (counts["pointwise"], counts["strided_pointwise"], counts["depthwise"]) == (1, 1, 1)
    return plain, fast


def test_a_candidate_reading_its_convolutions_settings_computes_the_same() -> None:
    plain, fast = twins()
    candidate = fast[1]
    assert type(candidate.pre) is PointwiseConv
    assert type(candidate.dw) is DepthwiseConv
    assert type(candidate.down) is StridedPointwiseConv
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    ours, theirs = forward_backward(fast, channels_last(x)), forward_backward(plain, x)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    ("make", "replacement"),
    [
        pytest.param(lambda: nn.Conv2d(6, 4, 1), PointwiseConv, id="pointwise"),
        pytest.param(
            lambda: nn.Conv2d(6, 4, 1, padding="valid", bias=False), PointwiseConv, id="valid"
        ),
        pytest.param(lambda: nn.Conv2d(6, 4, 1, stride=(2, 1)), StridedPointwiseConv, id="strided"),
        pytest.param(
            lambda: nn.Conv2d(6, 6, 5, stride=2, padding=4, dilation=2, groups=6),
            DepthwiseConv,
            id="depthwise-dilated-strided",
        ),
        pytest.param(
            lambda: nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False),
            DepthwiseConv,
            id="depthwise",
        ),
    ],
)
def test_a_replacement_is_the_conv2d_it_replaces_in_all_but_forward(make, replacement) -> None:
    conv = make()
    conv.tag = "the user's"  # an attribute a user set on the convolution
    conv.register_buffer("mask", torch.ones(conv.out_channels))
    fast = replacement(conv)
    assert isinstance(fast, nn.Conv2d) and fast.channels_last_safe is True
    settings = {k: v for k, v in vars(conv).items() if k not in MODULE_STATE}
    assert {"out_channels", "stride", "padding", "_reversed_padding_repeated_twice"} <= set(
        settings
    )
    assert {k: v for k, v in vars(fast).items() if k in settings} == settings
    assert fast.weight is conv.weight and fast.bias is conv.bias and fast.mask is conv.mask
    assert list(fast.state_dict()) == list(conv.state_dict())
    assert repr(fast) == repr(conv).replace("Conv2d", replacement.__name__, 1)
    # nn.Conv2d's own methods work on it: _conv_forward is the library's convolution.
    x = torch.randn(2, 6, 9, 9)
    torch.testing.assert_close(fast._conv_forward(x, fast.weight, fast.bias), conv(x))
    torch.testing.assert_close(fast(channels_last(x)), conv(x), rtol=1e-5, atol=1e-5)


def test_isinstance_checks_see_the_same_convolutions_after_the_rewrite() -> None:
    plain, fast = twins()

    def flops(model: nn.Module) -> dict[str, int]:
        """Multiply-adds per output pixel of each Conv2d, read from its settings, as a FLOP
        counter would."""
        return {
            name: m.out_channels * (m.in_channels // m.groups) * m.kernel_size[0] ** 2
            for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d)
        }

    assert flops(fast) == flops(plain) and len(flops(fast)) == 4
    # Init code that finds the convolutions by isinstance reaches the rewritten ones.
    for m in fast.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.zeros_(m.weight)
    assert all(not p.detach().any() for n, p in fast.named_parameters() if "weight" in n)


def checkpoint(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state_dict through a torch.save file, as a checkpoint would have it."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_checkpoints_of_rewritten_and_plain_models_are_interchangeable() -> None:
    plain, fast = twins()
    shapes = {k: v.shape for k, v in plain.state_dict().items()}
    assert {k: v.shape for k, v in fast.state_dict().items()} == shapes
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    # Train the rewritten one a step, so that its weights differ from the plain one's.
    forward_backward(fast, channels_last(x))
    torch.optim.SGD(fast.parameters(), lr=0.1).step()
    assert not torch.equal(fast[1].pre.weight, plain[1].pre.weight)
    plain.load_state_dict(checkpoint(fast))  # strict: the same keys, the same shapes
    torch.testing.assert_close(fast(channels_last(x)), plain(x), rtol=1e-9, atol=1e-12)
    # And back: a plain model's checkpoint loads into a rewritten one.
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(0.5)
    fast.load_state_dict(checkpoint(plain))
    torch.testing.assert_close(fast(channels_last(x)), plain(x), rtol=1e-9, atol=1e-12)


def test_rewriting_twice_changes_nothing_more() -> None:
    """The replacements are nn.Conv2d instances, yet no rewrite picks them again: neither
    scoped to the candidate nor over the whole model."""
    _, fast = twins()
    before = list(fast.named_modules())
    assert set(optimize_for_cpu(fast, [fast[1]]).values()) == {0}
    assert set(optimize_for_cpu(fast).values()) == {0}
    assert pointwise_as_matmul(fast) == 0
    after = list(fast.named_modules())
    assert [n for n, _ in after] == [n for n, _ in before]
    assert all(a is b for (_, a), (_, b) in zip(after, before, strict=True))


def test_a_setting_changed_after_the_rewrite_is_honoured_or_refused_by_name() -> None:
    conv = nn.Conv2d(4, 4, 3, stride=2, padding=2, dilation=2, groups=4).double()
    fast = DepthwiseConv(conv)
    assert fast.plan.weight_grad == "subsample"
    conv.stride = fast.stride = 1  # an int, as nn.Conv2d's forward takes it
    assert fast.stride == (1, 1) and fast.plan.stride == (1, 1)
    assert fast.plan.weight_grad == "polyphase"
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    for a, b in zip(
        forward_backward(fast, channels_last(x)), forward_backward(conv, x), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match=r"DepthwiseConv cannot compute padding=\(5, 5\)"):
        fast.padding = 5
    assert fast.padding == (2, 2) and fast.plan.padding == (2, 2)  # left as it was

    pointwise = PointwiseConv(nn.Conv2d(4, 3, 1))
    with pytest.raises(ValueError, match="PointwiseConv cannot compute padding=\\(1, 1\\)"):
        pointwise.padding = 1
    with pytest.raises(ValueError, match="StridedPointwiseConv takes strides"):
        pointwise.stride = 2
    assert pointwise.padding == (0, 0) and pointwise.stride == (1, 1)


def test_what_a_replacement_cannot_compute_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"PointwiseConv cannot compute kernel_size=\(3, 3\)"):
        PointwiseConv(nn.Conv2d(4, 4, 3))
    with pytest.raises(ValueError, match="StridedPointwiseConv cannot compute groups=2"):
        StridedPointwiseConv(nn.Conv2d(4, 4, 1, stride=2, groups=2))
    with pytest.raises(ValueError, match="DepthwiseConv cannot compute .*one filter per channel"):
        DepthwiseConv(nn.Conv2d(4, 8, 3, groups=4))
    with pytest.raises(TypeError, match="PointwiseConv replaces an nn.Conv2d, got Linear"):
        PointwiseConv(nn.Linear(4, 4))  # type: ignore[arg-type]
