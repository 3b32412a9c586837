"""The nastrain-cpu plugin, as a one-shot trainer meets it: it rewrites only the candidates
(and marked modules), never the user's stem or head, keeps every hook firing and every
result to float rounding, and stays out of the way when asked to."""

from __future__ import annotations

import copy
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import nastrain
from nastrain import plugins
from nastrain.oneshot import REWRITE_ENV, SupernetTrainer, strided_pointwise_convolutions
from nastrain.utils import replace_layer_choice
from nastrain_cpu import plugin
from nastrain_cpu.kernels import (
    DepthwiseConv,
    LeanBatchNorm2d,
    PointwiseConv,
    SharedPoolNorm,
    SharedReLU,
    StridedPointwiseConv,
    optimize_for_cpu,
)


class Mixed(nn.Module):
    """Every candidate of a choice, summed with fixed weights (what a DARTS search runs)."""

    def __init__(self, choice: nastrain.LayerChoice) -> None:
        super().__init__()
        self.ops = nn.ModuleList(choice.candidates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = 0
        for i, op in enumerate(self.ops):
            out = out + (i + 1) / len(self.ops) * op(x)
        return out


class MixedTrainer(SupernetTrainer):
    """Trains every candidate at once with SGD (the weight step of a DARTS search)."""

    def __init__(self, model: nn.Module, data: TensorDataset, **kwargs: Any) -> None:
        super().__init__(
            model,
            loss=nn.functional.cross_entropy,
            metrics=None,
            num_epochs=2,
            dataset=data,
            batch_size=4,
            progress=False,
            device="cpu",
            seed=0,
            **kwargs,
        )
        replace_layer_choice(self.model, Mixed)
        self.prepare_model()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)

    def search_step(self, train_batch: Any, valid_batch: Any) -> dict[str, float]:
        x, y = train_batch
        self.optimizer.zero_grad()
        loss = self.loss(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}

    def checkpointables(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer}

    def export(self) -> dict[str, Any]:
        return {}


class ReadsItsReLUTwice(nn.Sequential):
    """A Sequential subclass whose forward uses its ReLU's output twice: folding that ReLU
    into the convolution would change the result."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self[0](x)
        return self[1](h) + h


def ops(C: int, stride: int) -> dict[str, nn.Module]:
    """DARTS-like candidates on one edge."""

    def depthwise(dilation: int) -> nn.Conv2d:
        return nn.Conv2d(C, C, 3, stride, dilation, dilation, groups=C, bias=False)

    return {
        "sep": nn.Sequential(
            nn.ReLU(), depthwise(1), nn.Conv2d(C, C, 1, bias=False), nn.BatchNorm2d(C, affine=False)
        ),
        "dil": nn.Sequential(
            nn.ReLU(), depthwise(2), nn.Conv2d(C, C, 1, bias=False), nn.BatchNorm2d(C, affine=False)
        ),
        "pool": nn.Sequential(nn.MaxPool2d(3, stride, 1), nn.BatchNorm2d(C, affine=False)),
        "shortcut": nn.Sequential(
            nn.ReLU(), nn.Conv2d(C, C, 1, stride, bias=False), nn.BatchNorm2d(C, affine=False)
        ),
    } | ({"custom": ReadsItsReLUTwice(nn.ReLU(), depthwise(2))} if stride == 1 else {})


class Space(nn.Module):
    """The user's stem (1x1 conv, BatchNorm), two edges reading one state (one strided), the
    user's head (1x1 conv, BatchNorm, pooling, linear)."""

    def __init__(self, C: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, C, 1), nn.BatchNorm2d(C))
        self.a = nastrain.LayerChoice(ops(C, 1), label="a")
        self.b = nastrain.LayerChoice(ops(C, 1), label="b")
        self.down = nastrain.LayerChoice(ops(C, 2), label="down")
        self.head = nn.Sequential(
            nn.Conv2d(C, C, 1), nn.BatchNorm2d(C), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.classifier = nn.Linear(C, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        return self.classifier(self.head(self.down(self.a(s) + self.b(s))))


def data(dtype: torch.dtype = torch.float32) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 8, 10, generator=g, dtype=dtype)
    return TensorDataset(x, torch.randint(0, 3, (16,), generator=g))


def from_kernels(model: nn.Module) -> list[str]:
    """The names of ``model``'s modules that the kernels made."""
    return [n for n, m in model.named_modules() if type(m).__module__ == "nastrain_cpu.kernels"]


def hooked_stem(model: Space) -> list[tuple[int, ...]]:
    calls: list[tuple[int, ...]] = []
    model.stem[0].register_forward_hook(lambda module, args, out: calls.append(tuple(out.shape)))
    return calls


def test_the_plugin_loads_from_its_entry_point_and_only_then() -> None:
    pm = plugins.plugin_manager()
    assert "cpu" in [impl.plugin_name for impl in pm.hook.nastrain_prepare_model.get_hookimpls()]
    # The core imports no kernel module of its own, nor the plugin, until plugins load.
    code = (
        "import sys, nastrain, nastrain.oneshot; "
        "print([m for m in sys.modules if 'kernel' in m or 'nastrain_cpu' in m])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_only_the_candidates_are_rewritten_and_the_user_s_hooks_still_fire() -> None:
    model = Space()
    calls = hooked_stem(model)
    candidate_hook: list[int] = []
    model.a.candidates[0][2].register_forward_hook(lambda m, a, o: candidate_hook.append(1))
    custom = model.a.candidates[4]
    trainer = MixedTrainer(model, data())
    rewritten = from_kernels(trainer.model)
    assert rewritten and all(name.startswith(("a.", "b.", "down.")) for name in rewritten)
    # The user's stem and head, 1x1 convolutions and BatchNorms, are the user's modules.
    assert [type(m) for m in trainer.model.stem] == [nn.Conv2d, nn.BatchNorm2d]
    assert (
        type(trainer.model.head[0]) is nn.Conv2d and type(trainer.model.head[1]) is nn.BatchNorm2d
    )
    ops_a = trainer.model.a.ops
    assert isinstance(ops_a[0][0], SharedReLU) and isinstance(ops_a[1][1], DepthwiseConv)
    assert type(ops_a[0][2]) is nn.Conv2d  # hooked: left alone, as the plain 1x1 is not
    assert isinstance(ops_a[1][2], PointwiseConv) and isinstance(ops_a[1][3], LeanBatchNorm2d)
    assert isinstance(ops_a[2], SharedPoolNorm)
    assert isinstance(trainer.model.down.ops[3][1], StridedPointwiseConv)
    # The Sequential subclass with its own forward, and its ReLU and convolution, are kept.
    assert ops_a[4] is custom and [type(m) for m in custom] == [nn.ReLU, nn.Conv2d]
    # No strided 1x1 convolution is left, so the CPU trains in the channels-last format.
    assert not strided_pointwise_convolutions(trainer.model) and trainer.channels_last
    trainer.fit()
    assert len(calls) == 2 * 2 and len(candidate_hook) == 2 * 2  # 2 epochs of 2 steps


def test_a_rewritten_supernet_trains_to_the_plain_one_s_weights_and_statistics(caplog) -> None:
    torch.manual_seed(0)
    plain_model = Space().double()
    fast_model = copy.deepcopy(plain_model)
    plain_calls, fast_calls = hooked_stem(plain_model), hooked_stem(fast_model)
    plain = MixedTrainer(plain_model, data(torch.float64), rewrite_model=False)
    with caplog.at_level("INFO", logger="nastrain"):
        fast = MixedTrainer(fast_model, data(torch.float64))
    assert not from_kernels(plain.model) and from_kernels(fast.model)
    assert not plain.channels_last and fast.channels_last
    (line,) = [r.getMessage() for r in caplog.records if "rewrote" in r.getMessage()]
    assert line.startswith("cpu rewrote the supernet: {") and "'pool_norm_shared': 3" in line
    plain.fit()
    fast.fit()
    expected = plain.model.state_dict()
    got = fast.model.state_dict()
    assert list(got) == list(expected)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-9, atol=1e-12, msg=name)
    losses = [[h["metrics"]["loss"] for h in t.history] for t in (fast, plain)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-9)
    assert len(fast_calls) == len(plain_calls) == 4


@pytest.mark.parametrize("how", ["rewrite_model=False", REWRITE_ENV, "channels_last=False"])
def test_the_switches_leave_the_model_untouched(how, monkeypatch) -> None:
    kwargs: dict[str, Any] = {}
    if how == REWRITE_ENV:
        monkeypatch.setenv(REWRITE_ENV, "0")
    else:
        key, value = how.split("=")
        kwargs[key] = value == "True"
    trainer = MixedTrainer(Space(), data(), **kwargs)
    assert from_kernels(trainer.model) == []
    assert not hasattr(trainer.model, "_nastrain_pass_cache")
    assert not trainer.model._forward_hooks and not trainer.model._forward_pre_hooks


def test_no_rewrite_off_the_cpu_nor_without_modules() -> None:
    model = Space()
    trainer = SimpleNamespace(channels_last_requested=None)
    candidates = list(model.a.candidates)
    assert plugin.nastrain_prepare_model(trainer, model, torch.device("meta"), candidates) is None
    assert plugin.nastrain_prepare_model(trainer, model, torch.device("cpu"), ()) is None
    assert from_kernels(model) == []
    counts = plugin.nastrain_prepare_model(trainer, model, torch.device("cpu"), candidates)
    assert counts is not None and sum(counts.values()) > 0
    assert {n.split(".")[0] for n in from_kernels(model)} == {"a"}


def test_modules_that_are_not_modules_are_refused_by_name() -> None:
    model = Space()
    with pytest.raises(TypeError, match="must be nn.Module instances, got str"):
        optimize_for_cpu(model, [model.a, "stem"])  # type: ignore[list-item]
    assert from_kernels(model) == []
