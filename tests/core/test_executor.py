"""The local executor's own rules: what it does with more workers than CPUs, and how a trial's
weights come from its seed."""

from __future__ import annotations

import gc
import os
import sys
import warnings

import pytest
import torch
from torch import nn

import nastrain
from nastrain.experiments import executor
from nastrain.experiments.executor import (
    LocalExecutor,
    SeededSpace,
    WorkerSetup,
    initialize_from_seed,
)


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

    with pytest.warns(UserWarning, match="concurrency 64 is far above the 2 CPUs.*capped to 4"):
        assert local(64).concurrency == 4
    with pytest.warns(UserWarning, match="concurrency 5 is .*capped to 4 .*twice the CPUs"):
        assert local(5).concurrency == 4  # never fewer than an allowed concurrency
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert local(4).concurrency == 4  # twice the CPUs: as asked


def _seeded_models() -> list[nn.Module]:
    def model() -> nn.Module:
        torch.seed()  # every copy starts from other random weights
        return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Conv1d(4, 2, 1), Custom())

    return [model(), model(), model()]


class Custom(nn.Module):
    """A parameter whose module has no reset_parameters: it keeps the space's values."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.randn(3))


def test_weights_are_drawn_again_from_the_seed() -> None:
    state = torch.random.get_rng_state()
    with torch.random.fork_rng(devices=[]):  # the tests after this one keep their generator
        first, again, other = _seeded_models()
    assert torch.equal(torch.random.get_rng_state(), state)
    scale = again[3].scale.detach().clone()
    again[1].running_mean.fill_(5.0)
    with torch.random.fork_rng(devices=[]):
        for net, seed in ((first, 7), (again, 7), (other, 8)):
            initialize_from_seed(net, seed)
    for name in ("0.weight", "0.bias", "2.weight", "2.bias"):
        assert torch.equal(first.get_parameter(name), again.get_parameter(name)), name
        assert not torch.equal(first.get_parameter(name), other.get_parameter(name)), name
    assert torch.equal(again[1].running_mean, torch.zeros(4))  # BatchNorm reset too
    assert torch.equal(again[3].scale, scale)


def test_a_parents_own_reset_of_its_childrens_parameters_is_what_stays() -> None:
    # nn.MultiheadAttention's _reset_parameters zeroes out_proj.bias; out_proj (a Linear)
    # has a reset_parameters of its own, which must not run after it.
    net = nn.Sequential(nn.MultiheadAttention(8, 2), nn.Linear(8, 8))
    attention = net[0]
    with torch.no_grad():
        attention.out_proj.bias.fill_(1.0)
        attention.in_proj_bias.fill_(1.0)
    with torch.random.fork_rng(devices=[]):
        initialize_from_seed(net, 3)
    assert torch.equal(attention.out_proj.bias, torch.zeros(8))
    assert torch.equal(attention.in_proj_bias, torch.zeros(24))
    assert not torch.equal(attention.out_proj.weight, torch.zeros(8, 8))  # drawn again


_PROBE = """
import torch
from torch import nn

drawn = torch.rand(3)  # at import
calls = 0


def build():
    global calls
    calls += 1
    return nn.Linear(2, 2)
"""


def test_a_worker_imports_the_users_modules_under_a_fixed_seed_and_builds_nothing(
    tmp_path, monkeypatch
) -> None:
    # The user's modules (and the space's) are imported under torch.manual_seed(0), leaving
    # the generator as it was; a space function is only checked, not called: every trial
    # calls it again under its own seed.
    name = "nastrain_worker_probe"
    (tmp_path / f"{name}.py").write_text(_PROBE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    setup = WorkerSetup(
        space_ref=f"{name}:build",
        modules=(name,),
        threads=torch.get_num_threads(),
        environ=executor.nastrain_environ(),
    )
    state = torch.random.get_rng_state()
    try:
        space = executor.prepare_worker(setup)  # what every executor's worker does
        probe = sys.modules[name]
        # What it prepared is out of the collector's sight (a full collection in a worker
        # then scans only what its trials made), the probe module among it.
        frozen = gc.get_freeze_count()
        made = probe.drawn  # a tensor the module made at import: tracked by the collector
        probe_frozen = gc.is_tracked(made) and all(o is not made for o in gc.get_objects())
    finally:
        gc.unfreeze()
        sys.modules.pop(name, None)
    assert frozen > 0 and probe_frozen
    assert torch.equal(torch.random.get_rng_state(), state)
    assert isinstance(space, SeededSpace) and space.ref == f"{name}:build"
    assert probe.calls == 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        assert torch.equal(probe.drawn, torch.rand(3))


def test_a_named_space_that_is_neither_a_model_nor_a_function_is_refused() -> None:
    with pytest.raises(TypeError, match="space 'math:pi' is a float, not a model or a function"):
        executor.trial_space("math:pi")
    with pytest.raises(ValueError, match="space 'torch.nn.Linear' must be given as 'module:attr'"):
        executor.trial_space("torch.nn.Linear")


def test_workers_get_the_nastrain_variables_the_experiment_has_now(trials, tmp_path, monkeypatch):
    # Workers come from a fork server that keeps the environment it started with; each
    # experiment hands its workers its own NASTRAIN_* variables (a logger's switch, say), also
    # ones set or removed after an earlier experiment started that server.
    def probe(name: str) -> float:
        result = nastrain.Experiment(
            trials.SmallSpace(),
            nastrain.TrainerSpec(name="test-environ"),
            max_trials=1,
            store=tmp_path / f"{name}.sqlite",
        ).run()
        (trial,) = result.trials
        assert trial.status == "succeeded", trial.reason
        assert trial.worker is not None and trial.worker.rsplit(":", 1)[1] != str(os.getpid())
        return trial.value

    monkeypatch.delenv("NASTRAIN_TEST_PROBE", raising=False)
    assert probe("unset") == 0.0
    monkeypatch.setenv("NASTRAIN_TEST_PROBE", "7")
    assert probe("set") == 7.0
    monkeypatch.delenv("NASTRAIN_TEST_PROBE")
    assert probe("removed") == 0.0
