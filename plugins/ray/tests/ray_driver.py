"""An experiment on a Ray cluster, run as a process of its own by the driver-loss test:
``python ray_driver.py <address> <store> <log> [<epochs> [<seconds an epoch>]]`` (3 epochs of
0.25 s unless given; the test SIGKILLs it, then runs it again)."""

from __future__ import annotations

import sys

from nastrain_ray_test_trainers import EpochsTrainer

import nastrain


def main(address: str, store: str, log: str, epochs: str = "3", sleep: str = "0.25") -> None:
    experiment = nastrain.Experiment(
        "nastrain_test_trials:SmallSpace",
        EpochsTrainer(None, log=log, epochs=int(epochs), sleep=float(sleep)),
        "grid",
        max_trials=6,
        concurrency=2,
        store=store,
        executor="ray",
        executor_options={"address": address},
        progress="lines",
    )
    result = experiment.run()
    print("statuses", [t.status for t in result.trials], flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:6])
