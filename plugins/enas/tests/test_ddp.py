"""ENAS on two gloo processes: the controller's parameters stay bitwise equal."""

from __future__ import annotations

import json
import textwrap

from nastrain import distributed

SCRIPT = textwrap.dedent(
    """
    import json, torch
    from torch import nn
    from torch.utils.data import TensorDataset
    import nastrain
    from nastrain import distributed as d
    from nastrain_enas import EnasTrainer
    assert d.init_from_env()
    if {noop}:
        import nastrain_enas.enas as e
        e.distributed.all_reduce_mean = lambda tensors: None  # the negative control

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
