"""The core's BatchNorm recalibration covers the plugin's LeanBatchNorm2d."""

from __future__ import annotations

import torch
from torch import nn

from nastrain.calibration import recalibrate_bn
from nastrain_cpu.kernels import LeanBatchNorm2d


def test_lean_batchnorm_of_the_cpu_kernels_is_recalibrated_too() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 1), LeanBatchNorm2d(3, affine=False)).to(
        memory_format=torch.channels_last
    )
    g = torch.Generator().manual_seed(2)
    xs = [
        (3 * torch.randn(4, 2, 5, 5, generator=g)).contiguous(memory_format=torch.channels_last)
        for _ in range(2)
    ]
    recalibrate_bn(net, xs)
    with torch.no_grad():
        feats = [net[0](x) for x in xs]
    mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    assert torch.allclose(net[1].running_mean, mean, atol=1e-5)
