"""The local executor's own rules: what it does with more workers than CPUs, and how a trial's
weights come from its seed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nastrain import executor
from nastrain.executor import LocalExecutor, WorkerSetup, initialize_from_seed


def test_concurrency_far_above_the_cpus_is_capped_with_a_warning(monkeypatch) -> None:
    monkeypatch.setattr(executor, "available_cpus", lambda: 2)

    def local(concurrency: int) -> LocalExecutor:
        return LocalExecutor(
            setup=WorkerSetup(),
            space=None,
            concurrency=concurrency,
            trial_timeout=None,
            handler=None,
        )

    with pytest.warns(UserWarning, match="concurrency 64 is far above the 2 CPUs.*capped to 2"):
        assert local(64).concurrency == 2
    assert local(4).concurrency == 4  # twice the CPUs: as asked


class Custom(nn.Module):
    """A parameter whose module has no reset_parameters: it keeps the space's values."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.randn(3))


def test_weights_are_drawn_again_from_the_seed() -> None:
    def model() -> nn.Module:
        torch.seed()  # every copy starts from other random weights
        return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Conv1d(4, 2, 1), Custom())

    first, again, other = model(), model(), model()
    scale = again[3].scale.detach().clone()
    again[1].running_mean.fill_(5.0)
    for net, seed in ((first, 7), (again, 7), (other, 8)):
        initialize_from_seed(net, seed)
    for name in ("0.weight", "0.bias", "2.weight", "2.bias"):
        assert torch.equal(first.get_parameter(name), again.get_parameter(name)), name
        assert not torch.equal(first.get_parameter(name), other.get_parameter(name)), name
    assert torch.equal(again[1].running_mean, torch.zeros(4))  # BatchNorm reset too
    assert torch.equal(again[3].scale, scale)
