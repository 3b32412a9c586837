"""DARTS on two gloo processes: alpha (held outside the model) stays bitwise equal; a script
launched with torchrun searches as one process does, writing files on rank 0 only, and its
checkpoint resumes on another number of processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import torch

from nastrain import distributed

SCRIPT = textwrap.dedent(
    """
    import json, os, sys, torch
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
    ddp = type(tr.parallel_model).__name__
    print(json.dumps({{"alpha": alpha, "w": w, "ddp": ddp}}))
    d.barrier()  # every rank done before the group goes
    torch.distributed.destroy_process_group()
    # Leave without the interpreter's teardown: in the tox env with every plugin, a gloo
    # process sometimes aborted there ("terminate called without an active exception")
    # after its work and output were done (torch's gloo threads at exit; see docs/one-shot.md).
    sys.stdout.flush(); sys.stderr.flush(); os._exit(0)
    """
)


def run(unrolled: bool, noop: bool) -> list[dict]:
    outs = distributed.run_on_ranks(SCRIPT.format(unrolled=unrolled, noop=noop), timeout=120)
    return [json.loads(o.strip().splitlines()[-1]) for o in outs]


@pytest.mark.parametrize("unrolled", [False, True], ids=["first-order", "second-order"])
def test_alpha_and_weights_bitwise_equal_across_ranks(unrolled: bool) -> None:
    r0, r1 = run(unrolled, noop=False)
    assert r0["alpha"] == r1["alpha"]  # JSON floats: equal means bitwise equal
    assert r0["w"] == r1["w"]  # averaged by DDP's backward: the weight step runs through it
    assert r0["ddp"] == r1["ddp"] == "DistributedDataParallel"


def test_negative_control_without_the_all_reduce_alpha_drifts() -> None:
    r0, r1 = run(unrolled=False, noop=True)
    assert r0["alpha"] != r1["alpha"]


# --- a whole search on several processes, launched as torchrun launches it -------------------

FIT = textwrap.dedent(
    """
    import json, os, sys, torch
    from torch import nn
    from torch.utils.data import TensorDataset
    import nastrain
    from nastrain import distributed as d
    from nastrain_darts import DartsTrainer

    class Sin2(nn.Module):
        def forward(self, x):
            return torch.sin(2 * x)

    class Planted(nn.Module):  # the planted op and input of test_planted.py
        def __init__(self):
            super().__init__()
            self.op = nastrain.LayerChoice(
                {"linear": nn.Linear(8, 8), "tanh": nn.Tanh(), "sin2": Sin2()}, label="op")
            self.pick = nastrain.InputChoice(2, 1, label="pick")
        def forward(self, x):
            return self.pick([self.op(x[:, 8:]), self.op(x[:, :8])])

    epochs, folder, unrolled, batch = json.loads(sys.argv[1])
    torch.manual_seed(d.rank())  # each process its own initialisation: rank 0's is used
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    data = TensorDataset(x, torch.sin(2 * x[:, :8]))
    trainer = DartsTrainer(
        Planted().double(), nn.MSELoss(), None, None, epochs, data, batch_size=batch,
        learning_rate=0.05, arc_learning_rate=3e-2, unrolled=unrolled, seed=0,
        checkpoint_dir=folder, progress=True, log_frequency=1)
    trainer.fit()
    alpha = [a.detach().tolist() for a in trainer.arch.parameters()]
    w = [p.detach().tolist() for p in trainer.weights]
    print(json.dumps({"rank": d.rank(), "size": d.world_size(), "alpha": alpha, "w": w,
                      "arch": trainer.export(), "history": trainer.history,
                      "ddp": type(trainer.parallel_model).__name__}))
    d.barrier()
    if d.is_distributed():
        torch.distributed.destroy_process_group()
    # Leave without the interpreter's teardown: in the tox env with every plugin, a gloo
    # process sometimes aborted there ("terminate called without an active exception")
    # after its work and output were done (torch's gloo threads at exit; see docs/one-shot.md).
    sys.stdout.flush(); sys.stderr.flush(); os._exit(0)
    """
)


def _torchrun(tmp_path: Any, nprocs: int, *args: Any) -> tuple[list[dict], str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node=N script.py ARGS`` (what
    ``torchrun`` runs): each rank's JSON line, and the launcher's stderr."""
    script = tmp_path / "search.py"
    script.write_text(FIT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nprocs}", str(script), json.dumps(list(args))]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return sorted(lines, key=lambda r: r["rank"]), done.stderr


def _run_alone(tmp_path: Any, *args: Any) -> dict:
    script = tmp_path / "alone.py"
    script.write_text(FIT)
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, str(script), json.dumps(list(args))]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("unrolled", [False, True], ids=["first-order", "second-order"])
def test_torchrun_on_two_processes_searches_as_one_process_does(
    tmp_path: Any, unrolled: bool
) -> None:
    ranks, stderr = _torchrun(tmp_path, 2, 3, str(tmp_path / "two"), unrolled, 32)
    alone = _run_alone(tmp_path, 3, str(tmp_path / "one"), unrolled, 32)
    r0, r1 = ranks
    assert (r0["size"], r1["size"]) == (2, 2)
    assert (r0["ddp"], alone["ddp"]) == ("DistributedDataParallel", "Planted")
    assert r0["alpha"] == r1["alpha"] and r0["w"] == r1["w"]  # bitwise, on every rank
    # The same global batches as one process: the same search, to rounding (the ranks'
    # halves of a batch are averaged, not summed in one pass; alpha is float32, so 1e-5).
    assert r0["arch"] == alone["arch"] == {"op": "sin2", "pick": [1]}
    flat = lambda r: torch.tensor([v for a in r["alpha"] for v in a], dtype=torch.float64)  # noqa: E731
    assert torch.allclose(flat(r0), flat(alone), rtol=1e-5, atol=1e-7)
    for a, b in zip(r0["history"], alone["history"]):  # epoch means of the whole batches
        assert a["metrics"]["loss"] == pytest.approx(b["metrics"]["loss"], rel=1e-5)
    # Rank 0 alone wrote the checkpoint and the run record, and logged the steps.
    record = (tmp_path / "two" / "run.jsonl").read_text().splitlines()
    assert [json.loads(line)["type"] for line in record] == ["header", *["epoch"] * 3, "end"]
    assert (tmp_path / "two" / "checkpoint.pt").exists()
    assert stderr.count("darts: epoch 1/3 step 1/4") == 1


def test_a_search_checkpointed_on_two_processes_resumes_on_one(tmp_path: Any) -> None:
    folder = str(tmp_path / "run")
    _torchrun(tmp_path, 2, 2, folder, False, 32)  # epochs 1-2 on two processes
    resumed = _run_alone(tmp_path, 3, folder, False, 32)  # epoch 3 alone
    straight = _run_alone(tmp_path, 3, str(tmp_path / "straight"), False, 32)
    assert resumed["arch"] == straight["arch"]
    a = torch.tensor([v for x in resumed["alpha"] for v in x], dtype=torch.float64)
    b = torch.tensor([v for x in straight["alpha"] for v in x], dtype=torch.float64)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)  # alpha is float32


def test_a_batch_the_processes_do_not_divide_is_refused_naming_both(tmp_path: Any) -> None:
    with pytest.raises(AssertionError, match=r"batch_size=33 is the global batch.*2 processes"):
        _torchrun(tmp_path, 2, 1, str(tmp_path / "x"), False, 33)
