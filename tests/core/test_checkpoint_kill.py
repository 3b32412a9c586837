"""A one-shot search SIGKILLed at random moments while it writes a checkpoint (mid-write at a
random byte, before the file's fsync, before the rename, after it) resumes every time from
the last whole checkpoint, says so when it skips a half-written one, and ends bitwise where a
run that was never interrupted ends.

One driver process imports torch once and forks each run (a real process, killed with
SIGKILL by itself at the planned moment); the kill points come from a seeded
``random.Random``, so the test is deterministic.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    not hasattr(signal, "SIGKILL") or sys.platform == "win32", reason="needs fork and SIGKILL"
)

EPOCHS = 6

DRIVER = textwrap.dedent(
    """
    import builtins, hashlib, json, logging, os, random, signal, sys
    from pathlib import Path

    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    import nastrain
    from nastrain.oneshot import SupernetTrainer
    from nastrain.utils import replace_layer_choice

    torch.set_num_threads(1)  # before any op: the forked runs must not inherit thread pools
    EPOCHS = int(sys.argv[3])
    PLAN = {}  # this run's kill point: epoch, stage, offset
    SIZES = []  # checkpoint sizes, recorded by the reference run


    def die():
        os.kill(os.getpid(), signal.SIGKILL)


    class KillingFile:
        # A checkpoint's temporary file that kills the process once `offset` bytes are on disk.
        def __init__(self, file, offset):
            self.file, self.offset, self.written = file, offset, 0

        def write(self, data):
            data = bytes(data)
            if self.written + len(data) >= self.offset:
                self.file.write(data[: self.offset - self.written])
                self.file.flush()
                os.fsync(self.file.fileno())
                die()
            self.written += len(data)
            return self.file.write(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.file.__exit__(*exc)


    real_open, real_fsync, real_replace = builtins.open, os.fsync, os.replace
    CURRENT = {"epoch": None}


    def planned(stage):
        return PLAN.get("epoch") == CURRENT["epoch"] and PLAN.get("stage") == stage


    def killing_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if "w" in mode and str(file).endswith(".tmp") and planned("write"):
            return KillingFile(handle, PLAN["offset"])
        return handle


    def killing_fsync(fd):
        if planned("fsync"):
            die()
        return real_fsync(fd)


    def killing_replace(src, dst):
        if planned("replace"):
            die()
        SIZES.append(os.path.getsize(src))
        real_replace(src, dst)
        if planned("after-replace"):
            die()


    builtins.open, os.fsync, os.replace = killing_open, killing_fsync, killing_replace


    class Path_(nn.Module):
        # One candidate per step, drawn from torch's RNG (as single-path trainers do).
        def __init__(self, choice):
            super().__init__()
            self.candidates = nn.ModuleList(choice.candidates)

        def forward(self, x):
            return self.candidates[int(torch.randint(len(self.candidates), ()))](x)


    class PathTrainer(SupernetTrainer):
        name = "random-path"

        def __init__(self, model, data, checkpoint_dir):
            super().__init__(model, loss=nn.functional.cross_entropy, metrics=None,
                             num_epochs=EPOCHS, dataset=data, batch_size=16, seed=3,
                             checkpoint_dir=checkpoint_dir, progress=False)
            replace_layer_choice(self.model, Path_)
            self.prepare_model()
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)

        def search_step(self, train_batch, valid_batch):
            self.optimizer.zero_grad()
            loss = self.loss(self.model(train_batch[0]), train_batch[1])
            loss.backward()
            for group in self.optimizer.param_groups:  # Python's RNG must resume exactly too
                group["lr"] = 0.05 * (0.5 + random.random())
            self.optimizer.step()
            return {"loss": loss.item()}

        def checkpointables(self):
            return {"optimizer": self.optimizer}

        def save_checkpoint(self, directory):
            CURRENT["epoch"] = self.epoch
            return super().save_checkpoint(directory)

        def export(self):
            return {}


    def digest(state):
        return {k: hashlib.sha256(v.detach().numpy().tobytes()).hexdigest()
                for k, v in state.items()}


    def search(checkpoint_dir):
        g = torch.Generator().manual_seed(7)
        x = torch.randn(64, 6, generator=g)
        data = TensorDataset(x, torch.randint(0, 3, (64,), generator=g))
        torch.manual_seed(3)
        model = nn.Sequential(
            nastrain.LayerChoice({"linear": nn.Linear(6, 6),
                                  "mlp": nn.Sequential(nn.Linear(6, 6), nn.ReLU()),
                                  "tanh": nn.Tanh()}, label="op"),
            nn.Dropout(0.2),  # draws from torch's RNG
            nn.Linear(6, 3),
        )
        trainer = PathTrainer(model, data, checkpoint_dir)
        trainer.fit()
        return {
            "weights": digest(trainer.model.state_dict()),
            "momentum": [digest(s) for s in trainer.optimizer.state_dict()["state"].values()],
            "history": [json.loads(json.dumps(r)) for r in trainer.history],
            "after": [torch.rand(2).tolist(), random.random()],  # RNG states at the end
        }


    def run(plan, checkpoint_dir, log):
        pid = os.fork()
        if pid == 0:  # the run, in a process of its own
            code = 0
            try:
                PLAN.update(plan)
                logging.basicConfig(filename=log, level=logging.INFO, force=True)
                result = search(checkpoint_dir)
                result["sizes"] = SIZES
                with real_open(log + ".json", "w") as f:
                    json.dump(result, f)
            except BaseException as exc:
                with real_open(log, "a") as f:
                    f.write(f"FAILED: {type(exc).__name__}: {exc}\\n")
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        signalled = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        record = {"plan": plan, "killed": signalled, "exit": os.waitstatus_to_exitcode(status),
                  "log": Path(log).read_text() if Path(log).exists() else ""}
        if Path(log + ".json").exists():
            record["result"] = json.loads(Path(log + ".json").read_text())
        return record


    work = Path(sys.argv[1])
    plans = json.loads(sys.argv[2])
    # Once here, without checkpoints: the forked runs then find torch's lazy imports done.
    plain = search(None)
    reference = run({}, str(work / "reference"), str(work / "reference.log"))
    runs = []
    if "result" in reference:
        smallest = min(reference["result"]["sizes"])
        for i, plan in enumerate(plans):
            if plan["stage"] == "write":
                plan = {**plan, "offset": int(plan["fraction"] * smallest)}
            runs.append(run(plan, str(work / "killed"), str(work / f"run{i}.log")))
        runs.append(run({}, str(work / "killed"), str(work / "final.log")))
    print(json.dumps({"plain": plain, "reference": reference, "runs": runs}))
    """
)

STAGES = ("write", "fsync", "replace", "after-replace")


def kill_plans(seed: int, count: int) -> tuple[list[dict], int]:
    """Kill points along one search, and the last whole epoch they leave: each run is killed
    while writing the checkpoint of an epoch after the last whole one (so it makes progress),
    at a random stage and byte. ``whole``: the last whole epoch when the run starts."""
    rng = random.Random(seed)
    plans, whole = [], 0
    # Every stage at least once, in random order, then random ones.
    stages = rng.sample(STAGES, len(STAGES)) + [rng.choice(STAGES) for _ in STAGES]
    for stage in stages[:count]:
        epoch = min(EPOCHS, whole + rng.choice((1, 1, 2)))
        if epoch == EPOCHS and stage == "after-replace":
            stage = "write"  # keep the last epoch for the final, uninterrupted run
        plans.append({"epoch": epoch, "stage": stage, "fraction": rng.random(), "whole": whole})
        whole = epoch if stage == "after-replace" else epoch - 1
    return plans, whole


def test_a_search_killed_while_writing_checkpoints_resumes_bitwise(tmp_path: Path) -> None:
    plans, whole = kill_plans(seed=10, count=7)
    assert {p["stage"] for p in plans} == set(STAGES)
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(tmp_path), json.dumps(plans), str(EPOCHS)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    reference = report["reference"]
    assert "result" in reference, reference["log"]
    *killed, final = report["runs"]
    assert len(killed) == len(plans)
    for plan, run in zip(plans, killed):
        where = f"run killed at {run['plan']}"
        assert run["killed"], f"{where} was not killed (exit {run['exit']}): {run['log']}"
        assert "FAILED" not in run["log"], f"{where}: {run['log']}"
        if plan["whole"]:
            assert f"after epoch {plan['whole']}" in run["log"], f"{where}: {run['log']}"
    for before, after in zip(plans, [*killed[1:], final]):
        # A kill before the rename leaves a half-written file: the next run skips it, and says so.
        half_written = before["stage"] != "after-replace"
        assert ("checkpoint whose writing was interrupted" in after["log"]) == half_written, after[
            "log"
        ]
    assert final["exit"] == 0, final["log"]
    assert f"after epoch {whole}" in final["log"] or not whole
    expected = {k: v for k, v in reference["result"].items() if k != "sizes"}
    got = {k: v for k, v in final["result"].items() if k != "sizes"}
    assert got == expected  # bitwise: digests of the bytes, floats through JSON
    assert report["plain"] == expected  # and checkpoints do not change a run
    assert [r["epoch"] for r in got["history"]] == list(range(1, EPOCHS + 1))
    assert not list((tmp_path / "killed").glob("*.tmp"))
