"""Seeding and saving the global random generators (torch, Python, NumPy).

Shared by the one-shot loop (checkpoints) and the multi-trial executor (a trial's seed);
it imports nothing of nastrain.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["rng_state", "seed_everything", "set_rng_state"]


def rng_state() -> tuple[dict[str, torch.Tensor], list[Any], list[Any] | None]:
    """torch's (tensors), Python's and NumPy's (JSON-ready) global RNG states."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = state
    version, internal, gauss = random.getstate()
    python = [version, list(internal), gauss]
    numpy_state = None
    if "numpy" in sys.modules:
        name, keys, pos, has_gauss, cached = sys.modules["numpy"].random.get_state()
        numpy_state = [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]
    return tensors, python, numpy_state


def set_rng_state(
    tensors: Mapping[str, torch.Tensor], python: list[Any], numpy_state: list[Any] | None
) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(tensors["torch"])
    # One state per GPU ("cuda0", "cuda1", ... "cuda10": in index order, not the names'):
    # each GPU this machine has gets its own; states of GPUs it lacks (a checkpoint written
    # on more GPUs, or on a GPU machine and read on a CPU) are left out.
    cuda = sorted((int(k[4:]), v) for k, v in tensors.items() if k.startswith("cuda"))
    if cuda and torch.cuda.is_available():
        count = torch.cuda.device_count()
        for index, state in cuda:
            if index < count:
                torch.cuda.set_rng_state(state, index)
    random.setstate((python[0], tuple(python[1]), python[2]))
    if numpy_state is not None:
        import numpy as np  # not a dependency of nastrain: only a state saved with it has it

        name, keys, pos, has_gauss, cached = numpy_state
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def seed_everything(seed: int) -> None:
    """Seed torch, Python and (when loaded) NumPy."""
    torch.manual_seed(seed)
    random.seed(seed)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed(seed % 2**32)
