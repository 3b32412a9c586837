"""ENAS on two gloo processes: the controller's parameters stay bitwise equal; whole SPOS and
ENAS searches keep every rank's weights, controller and export equal."""

from __future__ import annotations

import json
import textwrap

import pytest

from nastrain import distributed

SCRIPT = textwrap.dedent(
    """
    import json, os, sys, torch
    from torch import nn
    from torch.utils.data import TensorDataset
    import nastrain
    from nastrain import distributed as d
    from nastrain_enas import EnasTrainer
    assert d.init_from_env()
    if {noop}:
        import nastrain_enas.enas as e
        e.distributed.all_reduce_mean = lambda tensors: None  # the negative control:
        e.distributed.mean_of = lambda values: dict(values)  # each rank its own reward

    class Space(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nastrain.LayerChoice([nn.Identity(), nn.Tanh(), nn.ReLU()], label="a")
            self.c = nastrain.InputChoice(3, 2, label="c")
        def forward(self, x):
            h = self.a(x)
            return self.c([h, x, -x])

    torch.manual_seed(0)
    x = torch.randn(64, 4)
    reward = lambda logits, y: -float((logits - y).pow(2).mean())
    tr = EnasTrainer(Space(), nn.MSELoss(), None, reward, None, 1, TensorDataset(x, x),
                     batch_size=4, ctrl_steps_aggregate=2, seed=0, progress=False)
    g = torch.Generator().manual_seed(1 + d.rank())  # each rank its own batches
    for step in range(8):
        i = torch.randperm(64, generator=g)[:4]
        tr.architecture_step((x[i], x[i]))
    print(json.dumps([p.detach().flatten().tolist() for p in tr.controller.parameters()]))
    d.barrier()  # every rank done before the group goes
    torch.distributed.destroy_process_group()
    # Leave without the interpreter's teardown: in the tox env with every plugin, a gloo
    # process sometimes aborted there ("terminate called without an active exception")
    # after its work and output were done (torch's gloo threads at exit; see docs/one-shot.md).
    sys.stdout.flush(); sys.stderr.flush(); os._exit(0)
    """
)


def run(noop: bool) -> list[list]:
    outs = distributed.run_on_ranks(SCRIPT.format(noop=noop), timeout=120)
    return [json.loads(o.strip().splitlines()[-1]) for o in outs]


def test_controller_parameters_bitwise_equal_across_ranks() -> None:
    r0, r1 = run(noop=False)
    assert r0 == r1


def test_negative_control_without_the_all_reduce_the_controllers_drift() -> None:
    r0, r1 = run(noop=True)
    assert r0 != r1


FIT = textwrap.dedent(
    """
    import json, os, sys, torch
    from torch import nn
    from torch.utils.data import TensorDataset
    import nastrain
    from nastrain import distributed as d
    from nastrain_enas import EnasTrainer, RandomOneShotTrainer

    class Space(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nastrain.LayerChoice(
                {"lin": nn.Linear(4, 4), "tanh": nn.Sequential(nn.Linear(4, 4), nn.Tanh()),
                 "drop": nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))}, label="a")
            self.c = nastrain.InputChoice(3, 2, label="c")
            self.head = nn.Linear(4, 2)
        def forward(self, x):
            return self.head(self.c([self.a(x), x, -x]))

    which, seed = sys.argv[1], json.loads(sys.argv[2])
    torch.manual_seed(100 + d.rank())  # each process its own initialisation and draws
    x = torch.randn(128, 4, generator=torch.Generator().manual_seed(3))
    data = TensorDataset(x, (x[:, 0] > 0).long())
    acc = lambda logits, y: float((logits.argmax(1) == y).float().mean())
    if which == "enas":
        trainer = EnasTrainer(Space(), nn.CrossEntropyLoss(), None, acc, None, 2, data,
                              batch_size=16, ctrl_steps_aggregate=2, seed=seed, progress=False)
    else:
        trainer = RandomOneShotTrainer(Space(), nn.CrossEntropyLoss(), None, None, 2, data,
                                       batch_size=16, seed=seed, progress=False)
    trainer.fit()
    state = [p.detach().flatten().tolist() for p in trainer.model.parameters()]
    state += [p.detach().flatten().tolist() for p in trainer.arch_parameters()]
    print(json.dumps({"state": state, "arch": trainer.export(),
                      "ddp": type(trainer.parallel_model).__name__}))
    d.barrier()
    torch.distributed.destroy_process_group()
    # Leave without the interpreter's teardown: in the tox env with every plugin, a gloo
    # process sometimes aborted there ("terminate called without an active exception")
    # after its work and output were done (torch's gloo threads at exit; see docs/one-shot.md).
    sys.stdout.flush(); sys.stderr.flush(); os._exit(0)
    """
)


def test_spos_and_enas_searches_on_two_processes_stay_equal_on_every_rank() -> None:
    # Each rank built its model from its own generator and, with seed=None, would draw its
    # own paths: rank 0's model and seed are every rank's, so the paths, the weights and the
    # controller agree bitwise, dropout in a candidate and all.
    for which, seed in (("spos", None), ("enas", 0)):
        script = FIT.replace("sys.argv[1], json.loads(sys.argv[2])", f"{which!r}, {seed!r}")
        outs = distributed.run_on_ranks(script, timeout=180)
        r0, r1 = (json.loads(o.strip().splitlines()[-1]) for o in outs)
        assert r0["state"] == r1["state"], which
        assert r0["arch"] == r1["arch"], which
        # The weight steps ran through DDP, which found each step's unused candidates.
        assert r0["ddp"] == r1["ddp"] == "DistributedDataParallel", which


def test_ranks_that_built_different_spaces_are_refused_before_any_step() -> None:
    script = FIT.replace("sys.argv[1], json.loads(sys.argv[2])", "'spos', 0").replace(
        '"drop": nn.Sequential',
        # torchrun's RANK: the group does not exist yet when the space is built
        '("drop" if os.environ["RANK"] == "0" else "dropped"): nn.Sequential',
    )
    with pytest.raises(RuntimeError, match=r"different search spaces.*a:layer:lin\|tanh\|drop"):
        distributed.run_on_ranks(script, timeout=180)
