"""A search killed (SIGKILL) after epoch k and resumed from its checkpoint in a fresh process
ends bitwise where an uninterrupted run with the same seed ends: supernet weights, controller,
its optimizer, the baseline and the controller gradient still being accumulated."""

from __future__ import annotations

import json
import runpy
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import nastrain
from nastrain_enas import EnasTrainer

SCRIPT = textwrap.dedent(
    """
    import hashlib, json, os, signal, sys
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset
    import nastrain
    from nastrain_enas import EnasTrainer, RandomOneShotTrainer


    class Space(nn.Module):
        def __init__(self):
            super().__init__()
            self.op = nastrain.LayerChoice(
                {"linear": nn.Linear(6, 6), "mlp": nn.Sequential(nn.Linear(6, 6), nn.ReLU()),
                 "tanh": nn.Tanh()}, label="op")
            self.drop = nn.Dropout(0.2)  # draws from torch's RNG: must resume exactly too
            self.pick = nastrain.InputChoice(3, 2, label="pick")
            self.head = nn.Linear(6, 3)

        def forward(self, x):
            h = self.drop(self.op(x))
            return self.head(self.pick([h, x, -h]))


    def digest(state):
        return {k: hashlib.sha256(v.detach().cpu().numpy().tobytes()).hexdigest()
                for k, v in state.items()}


    def accuracy(logits, y):
        return (logits.argmax(1) == y).float().mean()


    def main(checkpoint, algorithm, kill_after=0):
        torch.set_num_threads(1)
        base = EnasTrainer if algorithm == "enas" else RandomOneShotTrainer

        class Killed(base):
            def save_checkpoint(self, directory):
                super().save_checkpoint(directory)
                if self.epoch == kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)

        g = torch.Generator().manual_seed(7)
        x = torch.randn(128, 6, generator=g)
        data = TensorDataset(x, torch.randint(0, 3, (128,), generator=g))
        torch.manual_seed(3)  # the model is built before the trainer (and its seed) exists
        model = Space()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=3e-4)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 5)
        common = dict(batch_size=16, seed=3, checkpoint_dir=checkpoint or None,
                      lr_scheduler=scheduler, progress=False)
        if algorithm == "enas":
            # 4 controller samples per epoch, 3 per update: a gradient is pending at epoch ends.
            trainer = Killed(model, nn.CrossEntropyLoss(), None, accuracy, optimizer, 5, data,
                             ctrl_lr=0.01, ctrl_steps_aggregate=3, baseline_decay=0.9, **common)
        else:
            trainer = Killed(model, nn.CrossEntropyLoss(), None, optimizer, 5, data, **common)
        trainer.fit()
        result = {
            "weights": digest(trainer.model.state_dict()),
            "optimizer": [digest(s) for s in trainer.optimizer.state_dict()["state"].values()],
            "history": trainer.history,
            "arch": trainer.export(),
        }
        if algorithm == "enas":
            controller = trainer.controller
            result["controller"] = digest(controller.state_dict())
            result["ctrl_optim"] = [
                digest(s) for s in trainer.ctrl_optim.state_dict()["state"].values()
            ]
            result["grads"] = digest(
                {n: p.grad for n, p in controller.named_parameters() if p.grad is not None}
            )
            result["baseline"] = trainer.baseline.hex()
            result["pending"] = trainer.pending_samples
        else:
            result["ranking"] = trainer.ranking
        return json.loads(json.dumps(result))


    if __name__ == "__main__":
        print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
    """
)


def run(script: Path, checkpoint: Path, algorithm: str, kill_after: int = 0):
    return subprocess.run(
        [sys.executable, str(script), str(checkpoint), algorithm, str(kill_after)],
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize("algorithm", ["enas", "random"])
def test_killed_and_resumed_equals_uninterrupted(tmp_path: Path, algorithm: str) -> None:
    script = tmp_path / "search.py"
    script.write_text(SCRIPT)
    checkpoint = tmp_path / "ckpt"
    killed = run(script, checkpoint, algorithm, kill_after=2)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert torch.load(checkpoint / "checkpoint.pt", weights_only=True)["epoch"] == 2
    resumed = run(script, checkpoint, algorithm)
    assert resumed.returncode == 0, resumed.stderr
    got = json.loads(resumed.stdout)
    # The uninterrupted run in this process (each process costs seconds of imports).
    expected = runpy.run_path(str(script))["main"]("", algorithm)
    assert got == expected  # bitwise: digests of the bytes, floats as hex
    assert [r["epoch"] for r in got["history"]] == [1, 2, 3, 4, 5]
    if algorithm == "enas":
        assert got["grads"] and got["pending"] == 20 % 3  # a pending gradient was carried


class Other(nn.Module):
    def __init__(self, n_candidates: int) -> None:
        super().__init__()
        self.op = nastrain.LayerChoice({"a": nn.Linear(4, 4), "b": nn.Tanh()}, label="op")
        self.pick = nastrain.InputChoice(n_candidates, 1, label="pick")

    def forward(self, x):
        h = self.op(x)
        return self.pick([h, x, -x][: self.pick.n_candidates])


def test_resuming_with_another_space_names_the_mismatched_label(tmp_path: Path) -> None:
    x = torch.randn(32, 4)

    def trainer(n_candidates: int) -> EnasTrainer:
        return EnasTrainer(
            Other(n_candidates),
            nn.MSELoss(),
            None,
            lambda logits, y: -float(nn.functional.mse_loss(logits, y)),
            None,
            1,
            TensorDataset(x, x),
            batch_size=8,
            seed=0,
            checkpoint_dir=tmp_path,
            progress=False,
        )

    trainer(2).fit()
    with pytest.raises(ValueError, match=r"another search space: choice 'pick' differs"):
        trainer(3).fit()
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1
