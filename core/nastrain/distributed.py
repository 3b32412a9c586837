"""Helpers for one search on several processes (``torchrun --nproc_per_node=N``).

Every function works without a process group: then the world is one process, rank 0,
and the collectives return at once. Plugin authors use them for what DDP does not
cover: a gradient taken outside the wrapped module's backward (an architecture
parameter held apart from the model, a gradient from ``torch.autograd.grad``) must be
averaged with :func:`all_reduce_mean` before the optimizer steps, or the ranks' copies
drift apart; a path drawn at random must be the same on every rank
(:func:`broadcast_tensors` from rank 0); files, progress and printing belong to
:func:`is_main`.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.distributed as dist

__all__ = [
    "agree",
    "all_reduce_mean",
    "barrier",
    "broadcast_tensors",
    "check_same_labels",
    "init_from_env",
    "is_distributed",
    "is_main",
    "mean_of",
    "rank",
    "run_on_ranks",
    "world_size",
]


def is_distributed() -> bool:
    """Whether a process group of more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """The number of processes in the search (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes files, prints and shows progress (rank 0)."""
    return rank() == 0


def init_from_env(device: torch.device | str | None = None) -> bool:
    """Initialise the default process group from torchrun's environment, if it asks for one.

    Does nothing (returns whether a group is in use) when a group is already initialised
    or ``WORLD_SIZE`` is unset or 1. Otherwise ``RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT`` must be set (a clear error names the missing ones); the backend is
    NCCL for a CUDA ``device`` and gloo otherwise.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError(
            f"WORLD_SIZE={size} asks for {size} processes, but this torch build has no "
            "torch.distributed"
        )
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={size} asks for several processes, but {', '.join(missing)} "
            "is not set: launch with torchrun, or set them"
        )
    cuda = device is not None and torch.device(device).type == "cuda"
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    # A process that exits with its group alive can abort in gloo's threads ("terminate
    # called without an active exception"): the group this call made is destroyed at exit.
    atexit.register(_destroy_group)
    return True


def _destroy_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(tensors: Iterable[torch.Tensor | None]) -> None:
    """Average each tensor over the ranks, in place (``None`` entries are skipped).

    Every rank must pass tensors of the same shapes in the same order (a parameter
    without a gradient on one rank must have none, or zeros, on all). One flat buffer
    per dtype and device, so the collective runs once per group, not per tensor.
    """
    if not is_distributed():
        return
    size = dist.get_world_size()
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for t in tensors:
        if t is not None:
            groups.setdefault((t.dtype, t.device), []).append(t)
    for group in groups.values():
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(size)
        offset = 0
        with torch.no_grad():
            for t in group:
                n = t.numel()
                t.copy_(flat[offset : offset + n].view_as(t))
                offset += n


def broadcast_tensors(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrite each tensor, in place, with rank ``src``'s (a sampled path, parameters)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t, src=src)


def agree(value: int, src: int = 0) -> int:
    """Rank ``src``'s ``value`` (an integer, e.g. a seed) on every rank; ``value`` itself on
    one process."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.broadcast(t, src=src)
    return int(t.item())


def mean_of(values: Mapping[str, float]) -> dict[str, float]:
    """Each value averaged over the ranks (every rank passes the same keys, in the same
    order): an epoch's mean metrics of the whole batch rather than of this rank's share."""
    if not is_distributed() or not values:
        return dict(values)
    t = torch.tensor(list(values.values()), dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t.div_(dist.get_world_size())
    return dict(zip(values, t.tolist()))


def barrier() -> None:
    """Wait for every rank (no-op on one process)."""
    if is_distributed():
        dist.barrier()


def check_same_labels(labels: Sequence[str], what: str = "search space") -> None:
    """Raise on every rank if the ranks built different ``labels`` (e.g. a space's labels).

    The error names the first label that differs and the ranks, so a script that builds
    its space from something rank-dependent fails before any step instead of hanging in
    a collective of mismatched shapes.
    """
    if not is_distributed():
        return
    gathered: list[list[str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, list(labels))
    first = gathered[0] or []
    for r, other in enumerate(gathered[1:], start=1):
        other = other or []
        for i in range(max(len(first), len(other))):
            a = first[i] if i < len(first) else None
            b = other[i] if i < len(other) else None
            if a != b:
                raise RuntimeError(
                    f"the ranks built different {what}s: label {i} is {a!r} on rank 0 "
                    f"but {b!r} on rank {r}; build the same space on every process"
                )


def run_on_ranks(script: str, nprocs: int = 2, timeout: float = 120.0) -> list[str]:
    """Run the Python ``script`` on ``nprocs`` gloo processes on loopback; their stdouts.

    For tests of distributed code (a plugin's too): each process gets torchrun's
    environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, a free
    ``MASTER_PORT``), so the script calls :func:`init_from_env`. Every process is killed
    if any is still running after ``timeout`` seconds; a process that fails or times out
    raises ``RuntimeError`` with every rank's stderr.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Each rank writes into files, not pipes: a rank blocked on a full pipe that nobody reads
    # yet (its output is read after the ranks before it) would hang the others' collectives.
    with tempfile.TemporaryDirectory(prefix="nastrain-ranks-") as folder:
        procs = []
        for r in range(nprocs):
            env = dict(os.environ, WORLD_SIZE=str(nprocs), RANK=str(r), LOCAL_RANK=str(r))
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
            base = os.path.join(folder, str(r))
            with open(base + ".out", "w") as out, open(base + ".err", "w") as err:
                # The child holds its own copies of the two files' descriptors.
                command = [sys.executable, "-c", script]
                procs.append(subprocess.Popen(command, env=env, stdout=out, stderr=err))
        deadline = time.monotonic() + timeout
        codes: list[int | None] = []
        try:
            for p in procs:
                try:
                    codes.append(p.wait(timeout=max(deadline - time.monotonic(), 0.1)))
                except subprocess.TimeoutExpired:
                    for q in procs:
                        q.kill()
                    p.wait()
                    codes.append(None)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        outputs = []
        for r in range(nprocs):
            base = os.path.join(folder, str(r))
            texts = []
            for suffix in (".out", ".err"):
                with open(base + suffix, encoding="utf-8", errors="replace") as file:
                    texts.append(file.read())
            outputs.append(texts)
    if any(code != 0 for code in codes):
        report = "\n".join(
            f"--- rank {r}: {'timed out' if code is None else f'exit {code}'}\n{err[-3000:]}"
            for r, (code, (_, err)) in enumerate(zip(codes, outputs))
        )
        raise RuntimeError(f"a process of the {nprocs} failed:\n{report}")
    return [out for out, _ in outputs]
