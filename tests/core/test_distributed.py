"""nastrain.distributed on two real gloo processes on loopback (and on one, no group)."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from nastrain import distributed


def test_one_process_without_a_group_is_rank_zero_and_collectives_are_no_ops() -> None:
    t = torch.tensor([1.0, 2.0])
    distributed.all_reduce_mean([t, None])
    distributed.broadcast_tensors([t])
    distributed.check_same_labels(["a"])
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    assert torch.equal(t, torch.tensor([1.0, 2.0]))


SCRIPT = textwrap.dedent(
    """
    import json, torch
    from nastrain import distributed as d
    assert d.init_from_env()
    r = d.rank()
    g = [torch.full((2, 2), float(r)), torch.tensor([10.0 * r], dtype=torch.float64), None]
    d.all_reduce_mean(g)
    b = torch.tensor([float(r + 5)])
    d.broadcast_tensors([b])
    try:
        d.check_same_labels(["x", "y" if r == 0 else "z"])
        err = None
    except RuntimeError as e:
        err = str(e)
    print(json.dumps({"rank": r, "size": d.world_size(), "main": d.is_main(),
                      "g0": g[0].tolist(), "g1": g[1].tolist(), "b": b.tolist(), "err": err}))
    """
)


def test_two_ranks_average_broadcast_and_name_the_first_differing_label() -> None:
    outs = [json.loads(o.strip().splitlines()[-1]) for o in distributed.run_on_ranks(SCRIPT)]
    assert [o["rank"] for o in outs] == [0, 1]
    assert [o["main"] for o in outs] == [True, False]
    for o in outs:
        assert o["size"] == 2
        assert o["g0"] == [[0.5, 0.5], [0.5, 0.5]]  # mean of 0 and 1
        assert o["g1"] == [5.0]
        assert o["b"] == [5.0]  # rank 0's value everywhere
        assert "label 1 is 'y' on rank 0 but 'z' on rank 1" in o["err"]


def test_a_failing_rank_raises_with_its_error() -> None:
    with pytest.raises(RuntimeError, match="rank 1: exit 1"):
        distributed.run_on_ranks("import os, sys; sys.exit(int(os.environ['RANK']))", timeout=30)


def test_a_hanging_rank_is_killed_at_the_timeout() -> None:
    with pytest.raises(RuntimeError, match="timed out"):
        distributed.run_on_ranks("import time; time.sleep(60)", timeout=2)
