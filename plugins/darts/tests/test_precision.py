"""The DARTS custom autograd functions under CPU bfloat16 autocast: they run, give the
autocast dtype's results and match their float32 results within bfloat16's precision."""

from __future__ import annotations

import torch

from nastrain_darts._fast import WeightedSum
from nastrain_darts.ops import FactorizedReduce

# bfloat16 keeps 8 mantissa bits (relative rounding ~4e-3 per value); sums of a few dozen
# rounded products stay within a few 1e-2 of the float32 result relative to its size.
RTOL = 3e-2


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool((a.float() - b.float()).norm() <= RTOL * b.float().norm())


def test_weighted_sum_under_bf16_autocast_matches_float32() -> None:
    torch.manual_seed(0)
    weights = torch.softmax(torch.randn(3), 0).requires_grad_()
    outputs = [torch.randn(2, 4, 5, 5, requires_grad=True) for _ in range(3)]
    out32 = WeightedSum.apply(weights, [0, 1, 2], *outputs)
    g32 = torch.autograd.grad(out32.square().sum(), [weights, *outputs])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = [o.to(torch.bfloat16) for o in outputs]
        out16 = WeightedSum.apply(weights, [0, 1, 2], *low)
    g16 = torch.autograd.grad(out16.float().square().sum(), [weights, *outputs])
    assert _close(out16, out32)
    for a, b in zip(g16, g32):
        assert a.dtype == b.dtype == torch.float32
        assert _close(a, b)


def test_factorized_reduce_under_bf16_autocast_matches_float32() -> None:
    torch.manual_seed(0)
    module = FactorizedReduce(4, 8)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    # A random projection as the loss: the sum of squares of batch-normalised outputs is
    # nearly constant, its gradient all cancellation, which no low precision keeps.
    r = torch.randn(2, 8, 4, 4)
    out32 = module(x)
    (gx32,) = torch.autograd.grad((out32 * r).sum(), [x])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out16 = module(x)
    (gx16,) = torch.autograd.grad((out16.float() * r).sum(), [x])
    assert out16.dtype == torch.bfloat16
    assert gx16.dtype == torch.float32
    assert _close(out16, out32)
    assert _close(gx16, gx32)
