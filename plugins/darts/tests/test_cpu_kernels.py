"""The shipped space searched through the CPU kernels of nastrain-cpu (channels-last,
nastrain_cpu.kernels) computes what the same search computes in plain PyTorch; it runs where
nastrain-cpu is installed (tox env `all`), and is skipped beside the core alone (env `darts`)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from nastrain.oneshot import strided_pointwise_convolutions
from nastrain_darts import DartsTrainer
from nastrain_darts._fast import frozen
from nastrain_darts.spaces import DartsSpace

kernels = pytest.importorskip("nastrain_cpu.kernels")
SharedPoolNorm, StridedPointwiseConv = kernels.SharedPoolNorm, kernels.StridedPointwiseConv


def trainer(
    model: nn.Module, channels_last: bool | None, data: TensorDataset, **kwargs: Any
) -> DartsTrainer:
    optimizer = torch.optim.SGD(model.parameters(), 0.025)
    return DartsTrainer(
        model,
        nn.CrossEntropyLoss(),
        None,
        optimizer,
        1,
        data,
        batch_size=8,
        seed=0,
        progress=False,
        channels_last=channels_last,
        **kwargs,
    )


@pytest.mark.parametrize("size", [8, 6])  # 6: the second reduction halves an odd size
def test_kernels_compute_the_plain_search_gradients_and_statistics(size) -> None:
    torch.manual_seed(0)
    space = DartsSpace(C=4, layers=5).double()
    x = torch.randn(8, 3, size, size, dtype=torch.float64)
    y = torch.randint(0, 10, (8,))
    data = TensorDataset(x, y)
    twin = copy.deepcopy(space)  # before a trainer relaxes the space in place
    plain = trainer(space, False, data)
    fast = trainer(twin, True, data)
    assert any(isinstance(m, SharedPoolNorm) for m in fast.model.modules())
    assert any(isinstance(m, StridedPointwiseConv) for m in fast.model.modules())
    assert not any(isinstance(m, SharedPoolNorm) for m in plain.model.modules())
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the same alphas, away from uniform
        for a, b in zip(plain.arch.parameters(), fast.arch.parameters(), strict=True):
            a.copy_(torch.randn(a.shape, generator=generator, dtype=a.dtype))
            b.copy_(a)

    results = []
    for t, batch in ((plain, x), (fast, x.contiguous(memory_format=torch.channels_last))):
        alpha_grads = t._alpha_grad(batch, y)
        with frozen(t.arch.parameters()):
            t.loss(t.model(batch), y).backward(inputs=t.weights)
        weight_grads = {name: p.grad for name, p in t.model.named_parameters()}
        results.append((alpha_grads, weight_grads, dict(t.model.named_buffers())))
        t.optimizer.zero_grad(set_to_none=True)

    (alpha_plain, w_plain, buf_plain), (alpha_fast, w_fast, buf_fast) = results
    for a, b in zip(alpha_plain, alpha_fast, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
    assert w_fast.keys() == w_plain.keys() and buf_fast.keys() == buf_plain.keys()
    for name, grad in w_plain.items():
        torch.testing.assert_close(w_fast[name], grad, rtol=1e-9, atol=1e-12, msg=name)
    for name, buffer in buf_plain.items():
        torch.testing.assert_close(buf_fast[name], buffer, rtol=1e-9, atol=1e-12, msg=name)


def test_the_shipped_space_is_rewritten_and_trained_channels_last_by_default() -> None:
    """On a CPU, with channels_last left to the trainer: the plugin rewrites the candidates and
    the space's own preprocessing and stem (marked rewritable), leaves no strided 1x1
    convolution behind, and channels-last is chosen; the classifier stays the user's."""
    data = TensorDataset(torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,)))
    fast = trainer(DartsSpace(C=4, layers=5), None, data)
    assert fast.channels_last and not strided_pointwise_convolutions(fast.model)
    rewritten = {
        name
        for name, m in fast.model.named_modules()
        if type(m).__module__ == "nastrain_cpu.kernels"
    }
    assert "stem.1" in rewritten and "cells.0.preprocess1.2" in rewritten
    assert "cells.2.preprocess0.conv_1" in rewritten  # FactorizedReduce after a reduction
    assert type(fast.model.classifier) is nn.Linear


def test_the_unrolled_architecture_gradient_is_the_plain_one() -> None:
    """DARTS' second order takes first-order gradients only (a finite difference of them at
    w+ and w-), so it runs through the kernels, whose lean BatchNorms refuse a double
    backward, and gives the plain search's gradient."""
    torch.manual_seed(0)
    space = DartsSpace(C=4, layers=3).double()
    x = torch.randn(8, 3, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 10, (8,))
    data = TensorDataset(x, y)
    twin = copy.deepcopy(space)
    plain = trainer(space, False, data, unrolled=True)
    fast = trainer(twin, True, data, unrolled=True)
    assert any(isinstance(m, SharedPoolNorm) for m in fast.model.modules())
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for a, b in zip(plain.arch.parameters(), fast.arch.parameters(), strict=True):
            a.copy_(torch.randn(a.shape, generator=generator, dtype=a.dtype))
            b.copy_(a)
    grads = []
    for t, batch in ((plain, x), (fast, x.contiguous(memory_format=torch.channels_last))):
        t._unrolled_arch_gradient(batch[:4], y[:4], batch[4:], y[4:])
        grads.append([a.grad.clone() for a in t.arch.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-7, atol=1e-10)


def test_the_edges_reading_one_state_are_computed_together_as_each_edge_alone(
    monkeypatch,
) -> None:
    """DARTS runs every candidate in every pass, so the plugin computes the alike separable
    and dilated convolutions of the edges reading one state together (SeparableGroup):
    after a first pass has shown which those are, the architecture and the weights' passes
    give the per-edge search's forward, alpha and weight gradients and statistics."""
    torch.manual_seed(0)
    space = DartsSpace(C=4, layers=3).double()
    x = torch.randn(8, 3, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 10, (8,))
    data = TensorDataset(x, y)
    twin = copy.deepcopy(space)
    plain = trainer(space, False, data)
    fast = trainer(twin, True, data)
    assert DartsTrainer.runs_every_candidate
    groups = [m for m in fast.model.modules() if isinstance(m, kernels.SeparableGroup)]
    assert len(groups) == 3 * 14 * 4  # sep_conv_3x3/5x5, dil_conv_3x3/5x5 on every edge
    sizes: list[int] = []
    run_group = kernels._run_group

    def spy(members, *args):
        sizes.append(len(members))
        return run_group(members, *args)

    monkeypatch.setattr(kernels, "_run_group", spy)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for a, b in zip(plain.arch.parameters(), fast.arch.parameters(), strict=True):
            a.copy_(torch.randn(a.shape, generator=generator, dtype=a.dtype))
            b.copy_(a)

    results = []
    for t, batch in ((plain, x), (fast, x.contiguous(memory_format=torch.channels_last))):
        first = t.model(batch)  # the first pass: each edge alone
        alpha_grads = t._alpha_grad(batch, y)
        with frozen(t.arch.parameters()):
            logits = t.model(batch)
            t.loss(logits, y).backward(inputs=t.weights)
        weight_grads = {name: p.grad for name, p in t.model.named_parameters()}
        buffers = dict(t.model.named_buffers())
        results.append((first.detach(), logits.detach(), alpha_grads, weight_grads, buffers))
    # Per cell type, the states feeding 4, 4, 3 and 2 edges: four groups each, twice a pass.
    assert sorted(set(sizes)) == [2, 3, 4] and len(sizes) == 2 * 3 * 4 * 4
    (f_plain, l_plain, a_plain, w_plain, b_plain), (f_fast, l_fast, a_fast, w_fast, b_fast) = (
        results
    )
    torch.testing.assert_close(f_fast, f_plain, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(l_fast, l_plain, rtol=1e-9, atol=1e-12)
    for a, b in zip(a_plain, a_fast, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
    assert w_fast.keys() == w_plain.keys() and b_fast.keys() == b_plain.keys()
    for name, grad in w_plain.items():
        torch.testing.assert_close(w_fast[name], grad, rtol=1e-9, atol=1e-12, msg=name)
    for name, buffer in b_plain.items():
        torch.testing.assert_close(b_fast[name], buffer, rtol=1e-9, atol=1e-12, msg=name)
