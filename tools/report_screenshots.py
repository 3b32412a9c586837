"""Make the two report screenshots of the README (docs/images/): a multi-trial experiment on
scikit-learn's digits and a DARTS search, each reported with ``nastrain report -o`` and
photographed by headless Chromium (``chromium --screenshot``).

Run from the repository root in the development environment (the darts and classic plugins
installed, Debian's chromium on PATH); about 3 minutes on 2 cores:

    python tools/report_screenshots.py [--out docs/images] [--keep WORK_DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def experiment(work: Path) -> Path:
    """An evolution search over the digits example's space, 24 trials on 2 workers."""
    import nastrain

    sys.path.insert(0, str(ROOT / "examples"))  # digits_search:DigitsSpace, for the workers too
    store = work / "digits.sqlite"
    nastrain.Experiment(
        "digits_search:DigitsSpace",
        nastrain.TrainerSpec(
            name="classification",
            kwargs={
                "dataset": "digits",
                "epochs": 4,
                "optimizer": "adam",
                "optimizer_kwargs": {"lr": 0.01},
            },
        ),
        nastrain.StrategySpec(name="evolution", kwargs={"population_size": 8, "sample_size": 4}),
        space_kwargs={"channels": 8},
        max_trials=24,
        concurrency=2,
        seed=0,
        store=store,
    ).run()
    return store


def darts_run(work: Path) -> Path:
    """A first-order DARTS search of the plugin's DartsSpace on the digits (8x8, 1 channel)."""
    import torch
    from sklearn.datasets import load_digits
    from torch import nn
    from torch.utils.data import TensorDataset

    from nastrain_darts import DartsTrainer
    from nastrain_darts.spaces import DartsSpace

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    space = DartsSpace(C=8, layers=5, in_channels=1, num_classes=10)
    optimizer = torch.optim.SGD(space.parameters(), lr=0.05, momentum=0.9, weight_decay=3e-4)

    def accuracy(logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        return {"acc": (logits.argmax(1) == target).float().mean().item()}

    run_dir = work / "darts-run"
    DartsTrainer(
        space,
        loss=nn.CrossEntropyLoss(),
        metrics=accuracy,
        optimizer=optimizer,
        num_epochs=10,
        dataset=TensorDataset(x, y),
        batch_size=64,
        # The examples' architecture learning rate (the paper's 3e-4 barely moves alpha in
        # a search this short): the picture shows the probabilities parting.
        arc_learning_rate=3e-2,
        seed=0,
        progress=False,
        log_dir=run_dir,
    ).fit()
    return run_dir


def screenshot(page: Path, picture: Path, height: int) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is not installed (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                chromium,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--window-size=1400,{height}",
                "--virtual-time-budget=10000",
                f"--screenshot={picture}",
                page.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    print(f"wrote {picture}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--keep", type=Path, help="keep the stores and pages in this folder")
    args = parser.parse_args()
    import nastrain

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        store = experiment(work)
        nastrain.report(store, work / "experiment.html")
        screenshot(work / "experiment.html", args.out / "report-experiment.png", 3600)
        run_dir = darts_run(work)
        nastrain.report(run_dir, work / "darts.html")
        screenshot(work / "darts.html", args.out / "report-darts.png", 3000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
