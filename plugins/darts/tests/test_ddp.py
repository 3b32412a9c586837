"""DARTS on two gloo processes: alpha (held outside the model) stays bitwise equal."""

from __future__ import annotations

import json
import textwrap

import pytest

from nastrain import distributed

SCRIPT = textwrap.dedent(
    """
    import json, torch
    from torch import nn
    from torch.utils.data import TensorDataset
    import nastrain
    from nastrain import distributed as d
    from nastrain_darts import DartsTrainer
    assert d.init_from_env()
    if {noop}:
        d.all_reduce_mean = lambda tensors: None  # the negative control
        import nastrain_darts.trainer as t
        t.distributed.all_reduce_mean = d.all_reduce_mean

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.op = nastrain.LayerChoice(
                {{"a": nn.Linear(3, 3), "b": nn.Sequential(nn.Linear(3, 3), nn.Tanh())}},
                label="op")
            self.head = nn.Linear(3, 2)
        def forward(self, x):
            return self.head(self.op(x))

    torch.manual_seed(0)  # the same model and alpha on every rank
    x = torch.randn(64, 3, dtype=torch.float64)
    y = (x.sum(1) > 0).long()
    model = Tiny().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    tr = DartsTrainer(model, nn.CrossEntropyLoss(), None, opt, 1, TensorDataset(x, y),
                      unrolled={unrolled}, seed=0)
    # Each rank its own share of every global batch (what the sharded halves give).
    g = torch.Generator().manual_seed(1 + d.rank())
    for step in range(10):
        i = torch.randperm(64, generator=g)[:16]
        tr.search_step((x[i[:8]], y[i[:8]]), (x[i[8:]], y[i[8:]]))
    alpha = [a.detach().tolist() for a in tr.arch.parameters()]
    w = [p.detach().tolist() for p in tr.weights]
    print(json.dumps({{"alpha": alpha, "w": w}}))
    d.barrier()  # every rank done before the group goes
    torch.distributed.destroy_process_group()
    """
)


def run(unrolled: bool, noop: bool) -> list[dict]:
    outs = distributed.run_on_ranks(SCRIPT.format(unrolled=unrolled, noop=noop), timeout=120)
    return [json.loads(o.strip().splitlines()[-1]) for o in outs]


@pytest.mark.parametrize("unrolled", [False, True], ids=["first-order", "second-order"])
def test_alpha_and_weights_bitwise_equal_across_ranks(unrolled: bool) -> None:
    r0, r1 = run(unrolled, noop=False)
    assert r0["alpha"] == r1["alpha"]  # JSON floats: equal means bitwise equal
    assert r0["w"] == r1["w"]


def test_negative_control_without_the_all_reduce_alpha_drifts() -> None:
    r0, r1 = run(unrolled=False, noop=True)
    assert r0["alpha"] != r1["alpha"]
