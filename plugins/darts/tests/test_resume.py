"""A DARTS search killed (SIGKILL) after epoch k and resumed from its checkpoint ends exactly
where an uninterrupted run with the same seed ends."""

from __future__ import annotations

import json
import os
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
from nastrain_darts import DartsTrainer

SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset
    import nastrain
    from nastrain_darts import DartsTrainer

    class Space(nn.Module):
        def __init__(self):
            super().__init__()
            self.op = nastrain.LayerChoice(
                {"linear": nn.Linear(6, 6), "mlp": nn.Sequential(nn.Linear(6, 6), nn.ReLU()),
                 "tanh": nn.Tanh()}, label="op")
            self.drop = nn.Dropout(0.2)  # draws from torch's RNG: must resume exactly too
            self.pick = nastrain.InputChoice(2, 1, label="pick")
            self.head = nn.Linear(6, 3)

        def forward(self, x):
            return self.head(self.pick([self.drop(self.op(x)), x]))

    class Killed(DartsTrainer):
        def save_checkpoint(self, directory):
            super().save_checkpoint(directory)
            if self.epoch == int(os.environ.get("KILL_AFTER", "0")):
                os.kill(os.getpid(), signal.SIGKILL)

    g = torch.Generator().manual_seed(7)
    x = torch.randn(96, 6, generator=g)
    data = TensorDataset(x, torch.randint(0, 3, (96,), generator=g))
    torch.manual_seed(3)  # the model is built before the trainer (and its seed) exists
    model = Space()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=3e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 5)
    trainer = Killed(model, nn.CrossEntropyLoss(), None, optimizer, 5, data, batch_size=16,
                     arc_learning_rate=1e-2, unrolled=sys.argv[2] == "unrolled", seed=3,
                     checkpoint_dir=sys.argv[1] or None, lr_scheduler=scheduler, progress=False)
    trainer.fit()
    print(json.dumps({
        "alphas": {k: v.tolist() for k, v in trainer.arch.state_dict().items()},
        "weights": [p.detach().double().sum().item() for p in trainer.model.parameters()],
        "epochs": [r["epoch"] for r in trainer.history],
        "arch": trainer.export(),
    }))
    """
)


def run(script: Path, checkpoint: str, mode: str, kill_after: int = 0):
    env = {**os.environ, "KILL_AFTER": str(kill_after)}
    return subprocess.run(
        [sys.executable, str(script), checkpoint, mode], capture_output=True, text=True, env=env
    )


@pytest.mark.parametrize("mode", ["first-order", "unrolled"])
def test_killed_and_resumed_equals_uninterrupted(tmp_path: Path, mode: str) -> None:
    script = tmp_path / "search.py"
    script.write_text(SCRIPT)
    uninterrupted = run(script, "", mode)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    checkpoint = tmp_path / "ckpt"
    killed = run(script, str(checkpoint), mode, kill_after=2)
    assert killed.returncode == -signal.SIGKILL
    assert torch.load(checkpoint / "checkpoint.pt", weights_only=True)["epoch"] == 2
    resumed = run(script, str(checkpoint), mode)
    assert resumed.returncode == 0, resumed.stderr
    # Bitwise: the same floats, not just close ones.
    assert json.loads(resumed.stdout) == json.loads(uninterrupted.stdout)
    assert json.loads(resumed.stdout)["epochs"] == [1, 2, 3, 4, 5]


class Other(nn.Module):
    def __init__(self, names) -> None:
        super().__init__()
        self.op = nastrain.LayerChoice({n: nn.Linear(4, 4) for n in names}, label="op")
        self.act = nastrain.LayerChoice({"relu": nn.ReLU(), "tanh": nn.Tanh()}, label="act")

    def forward(self, x):
        return self.act(self.op(x))


def test_resuming_with_another_space_names_the_first_mismatched_label(tmp_path: Path) -> None:
    x = torch.randn(32, 4)
    data = TensorDataset(x, x)

    def trainer(names):
        return DartsTrainer(
            Other(names),
            nn.MSELoss(),
            None,
            None,
            1,
            data,
            batch_size=8,
            seed=0,
            checkpoint_dir=tmp_path,
            progress=False,
        )

    trainer(["a", "b"]).fit()
    with pytest.raises(ValueError, match=r"another search space: choice 'op' differs"):
        trainer(["a", "c"]).fit()
    assert not list(tmp_path.glob("*.tmp"))  # no half-written files
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1
