"""Shared setup of the nastrain-enas tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Run each test on one intra-op thread.

    The test models are tiny: handing each small op to a second thread costs more than it
    saves, and on a loaded machine (CI, a busy laptop) waiting for that thread dominates
    (a 1000-element sqrt measured 8 ms with two threads, 1 us with one).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
