"""BatchNorm recalibration: each architecture's own statistics, the supernet's kept."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nastrain.calibration import batch_statistics, preserved_bn_stats, recalibrate_bn
from nastrain.utils import recalibrate_bn as exported


def model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.BatchNorm1d(4), nn.ReLU())


def batches(n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(5 * torch.randn(8, 3, generator=g) + 2, torch.zeros(8)) for _ in range(n)]


def test_statistics_are_the_cumulative_average_of_the_eval_mode_features() -> None:
    net = model()
    net.train()
    bn = net[2]
    bn.running_mean.fill_(100.0)  # pooled statistics far from these batches
    used = recalibrate_bn(net, batches(5), num_batches=3)
    assert used == 3
    assert all(m.training for m in net.modules())  # modes restored
    with torch.no_grad():
        net.eval()  # dropout off: the features the evaluation sees
        features = [net[0](x) for x, _ in batches(3)]
    mean = torch.stack([f.mean(0) for f in features]).mean(0)
    var = torch.stack([f.var(0) for f in features]).mean(0)
    assert torch.allclose(bn.running_mean, mean, atol=1e-5)
    assert torch.allclose(bn.running_var, var, atol=1e-4)
    assert int(bn.num_batches_tracked) == 3
    assert bn.momentum == 0.1  # restored


def test_modes_are_restored_and_no_gradient_is_taken() -> None:
    net = model()
    net.eval()
    recalibrate_bn(net, batches())
    assert not any(m.training for m in net.modules())
    assert all(p.grad is None for p in net.parameters())


def test_a_model_without_batchnorm_works_and_nothing_changes() -> None:
    net = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ran = []
    assert recalibrate_bn(net, batches(), forward=lambda x: ran.append(x)) == 0
    assert not ran  # no batch is run for nothing
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    with preserved_bn_stats(net), batch_statistics(net):
        net(torch.randn(2, 3))
    assert exported is recalibrate_bn


def test_no_batches_leave_the_statistics_as_they_are() -> None:
    net = model()
    net[2].running_mean.fill_(3.0)
    assert recalibrate_bn(net, []) == 0
    assert recalibrate_bn(net, batches(), num_batches=0) == 0
    assert torch.equal(net[2].running_mean, torch.full((4,), 3.0))


def test_preserved_bn_stats_restores_the_supernets_statistics_after_recalibration() -> None:
    net = model()
    bn = net[2]
    bn.running_mean.fill_(7.0)
    bn.num_batches_tracked.fill_(42)
    mean = bn.running_mean
    with preserved_bn_stats(net):
        recalibrate_bn(net, batches())
        assert not torch.equal(bn.running_mean, torch.full((4,), 7.0))
    assert bn.running_mean is mean and torch.equal(mean, torch.full((4,), 7.0))
    assert int(bn.num_batches_tracked) == 42 and bn.momentum == 0.1


def test_batch_statistics_normalise_with_the_batch_and_leave_the_running_ones() -> None:
    net = model().eval()
    bn = net[2]
    state = {k: v.clone() for k, v in bn.state_dict().items()}
    x = batches(1)[0][0]
    with torch.no_grad(), batch_statistics(net):
        out = net[2](net[0](x))
    h = net[0](x).detach()
    expected = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + bn.eps)
    expected = expected * bn.weight.detach() + bn.bias.detach()
    assert torch.allclose(out, expected, atol=1e-5)
    assert all(torch.equal(state[k], v) for k, v in bn.state_dict().items())
    assert bn.running_mean is not None  # put back


def test_bad_num_batches_is_named() -> None:
    with pytest.raises(ValueError, match="num_batches must be an int >= 0"):
        recalibrate_bn(model(), batches(), num_batches=-1)
