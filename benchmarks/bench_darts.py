"""One DARTS search measurement, in this process; prints one JSON line on stdout.

Runs NNI 2.10.1's legacy ``nni.retiarii.oneshot.pytorch.DartsTrainer`` (``--impl nni``,
run it with ``benchmarks/.nni-venv/bin/python``) or ``nastrain_darts.DartsTrainer``
(``--impl nastrain``, the project's venv) on the benchmark supernet (``--space plain``,
:mod:`supernet`, the same network for both) or on the DARTS space the plugin ships
(``--space shipped``, ours only), for ``warmup + steps`` search steps on random data.

The size is set by ``--C``, ``--layers``, ``--image`` (the inputs' side) and ``--batch``;
the defaults are the CPU table's (C=8, 5 cells, 3x16x16, batch 32), and ``--C 16 --layers 8
--image 32 --batch 64`` is the DARTS paper's CIFAR-10 search setting. ``--device cuda`` runs
on a GPU (both trainers get ``device=``; the data stays on the CPU and the trainers move each
batch, as a DataLoader of images would have them); ``--precision`` (ours only: NNI's
trainer has no such option) is ``precision=`` of nastrain's one-shot trainers.

Measured:

* ``steps_per_s``: search steps per second over the last ``--steps`` steps (the first
  ``--warmup`` are left out). A step ends when the trainer calls the weight
  optimizer's ``step()``, which both trainers do exactly once per search step.
* ``rss_before_mb``, ``peak_rss_mb``, ``added_mb``: resident memory just before
  ``fit()``, its peak during ``fit()`` (the kernel's high-water mark, reset before
  ``fit()`` where Linux allows it), and the difference.
* ``gpu_before_mb``, ``peak_gpu_mb``, ``gpu_added_mb`` (``--device cuda``): the same for
  the GPU memory PyTorch allocated (``torch.cuda.memory_allocated`` before ``fit()``,
  ``torch.cuda.max_memory_allocated`` after ``torch.cuda.reset_peak_memory_stats``). On a
  GPU every step ends with ``torch.cuda.synchronize()`` before its time stamp.
* ``floor_s`` (``--impl nastrain``): the compute floor of one first-order step on the same
  model and batch: a forward+backward for the weights' gradients plus a forward+backward
  for the architecture parameters' gradients only; median of 10. ``floor_ratio`` is
  the median timed step over that floor (under the run's autocast with ``--precision``).

The exit status is 0 on success, 1 when the run failed and 2 when it was skipped
(the implementation is not importable); the JSON line then has ``error``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import resource
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import torch
from supernet import build_supernet
from torch import nn
from torch.utils.data import TensorDataset

SKIPPED = 2


class Skip(Exception):
    """The implementation asked for is not available in this environment."""


def rss_mb() -> float:
    """Current resident set size of this process, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float:
    """Peak resident set size since start (or since :func:`reset_peak_rss`), in MiB."""
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def accuracy(out: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """The ``metrics`` callable both trainers get."""
    return {"acc": (out.argmax(1) == y).float().mean().item()}


def load_impl(
    impl: str, space: str, C: int = 8, layers: int = 5
) -> tuple[Any, Callable[[], nn.Module], dict[str, str]]:
    """The trainer class, a model factory and version info for ``impl``/``space``, the
    network ``C`` channels wide with ``layers`` cells."""
    if impl == "nni":
        if space != "plain":
            raise Skip("--space shipped is nastrain's own space; NNI runs --space plain only")
        try:
            import nni
            import nni.retiarii.nn.pytorch as nni_nn
            from nni.retiarii.oneshot.pytorch import DartsTrainer
        except ImportError as e:
            raise Skip(
                f"NNI is not importable here ({e}); run bash benchmarks/setup_nni.sh and use "
                "benchmarks/.nni-venv/bin/python"
            ) from e
        return (
            DartsTrainer,
            lambda: build_supernet(nni_nn.LayerChoice, nni_nn.InputChoice, C, layers),
            {"nni": nni.__version__},
        )
    try:
        import nastrain
        from nastrain.utils import allow_rewrite
        from nastrain_darts import DartsTrainer
    except ImportError as e:
        raise Skip(f"nastrain_darts.DartsTrainer is not importable yet ({e})") from e
    versions = {"nastrain": getattr(nastrain, "__version__", "?")}
    if space == "plain":
        # The supernet is the benchmark's own model, not a space of nastrain's: it asks for
        # the whole of it to be rewritten for the CPU (the stem and the cells' preprocessing
        # too, not only the candidates), as any user may with allow_rewrite(model).
        return (
            DartsTrainer,
            lambda: allow_rewrite(
                build_supernet(nastrain.LayerChoice, nastrain.InputChoice, C, layers)
            ),
            versions,
        )
    try:
        from nastrain_darts.spaces import DartsSpace
    except ImportError as e:
        raise Skip(f"nastrain_darts.spaces.DartsSpace is not importable yet ({e})") from e
    return DartsTrainer, lambda: DartsSpace(C=C, layers=layers), versions


def arch_parameters(trainer: Any) -> tuple[list[torch.Tensor] | None, str]:
    """The trainer's architecture parameters, and where they were found.

    Looks, in order, for ``trainer.arch_parameters()``, ``trainer.arch.parameters()``
    and the distinct ``.alpha`` of ``trainer.nas_modules`` (NNI's layout).
    """
    method = getattr(trainer, "arch_parameters", None)
    if callable(method):
        return list(method()), "trainer.arch_parameters()"
    arch = getattr(trainer, "arch", None)
    if arch is not None and callable(getattr(arch, "parameters", None)):
        return list(arch.parameters()), "trainer.arch.parameters()"
    modules = getattr(trainer, "nas_modules", None)
    if modules:
        seen: dict[int, torch.Tensor] = {}
        for _, module in modules:
            alpha = getattr(module, "alpha", None)
            if isinstance(alpha, torch.Tensor):
                seen.setdefault(id(alpha), alpha)
        if seen:
            return list(seen.values()), "trainer.nas_modules[*].alpha"
    return None, "TODO: the trainer exposes no architecture parameters (arch_parameters())"


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work (no-op on a CPU), so a time stamp counts it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compute_floor(
    model: nn.Module,
    arch: list[torch.Tensor],
    loss_fn: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    reps: int = 10,
    autocast: torch.dtype | None = None,
) -> float:
    """Median time of forward+backward for the weights plus forward+backward for alpha only
    (the forwards under ``autocast`` to that dtype when it is given)."""
    arch_ids = {id(a) for a in arch}
    weights = [p for p in model.parameters() if p.requires_grad and id(p) not in arch_ids]
    model.train()
    times = []
    cast = torch.autocast(x.device.type, autocast, enabled=autocast is not None)
    for i in range(reps + 1):
        for t in (*weights, *arch):
            t.grad = None
        synchronize(x.device)
        start = time.perf_counter()
        with cast:
            loss_w = loss_fn(model(x), y)
        loss_w.backward(inputs=weights)
        with cast:
            loss_a = loss_fn(model(x), y)
        loss_a.backward(inputs=arch)
        synchronize(x.device)
        if i:  # the first one warms up
            times.append(time.perf_counter() - start)
    for t in (*weights, *arch):
        t.grad = None
    return statistics.median(times)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Build data, model and trainer; run ``fit()``; return the numbers."""
    trainer_cls, make_model, versions = load_impl(args.impl, args.space, args.C, args.layers)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise Skip("--device cuda: torch.cuda.is_available() is False here")

    n = args.batch * 2 * (args.warmup + args.steps)  # halves: weights / architecture
    x = torch.randn(n, 3, args.image, args.image)
    y = torch.randint(0, 10, (n,))
    dataset = TensorDataset(x, y)
    model = make_model()
    optimizer = torch.optim.SGD(
        model.parameters(), args.lr, momentum=args.momentum, weight_decay=args.weight_decay
    )
    loss_fn = nn.CrossEntropyLoss()

    stamps: list[float] = []
    cpu_stamps: list[float] = []
    original_step = optimizer.step

    def timed_step(*a: Any, **kw: Any) -> Any:
        result = original_step(*a, **kw)
        synchronize(device)
        stamps.append(time.perf_counter())
        cpu_stamps.append(time.process_time())
        return result

    optimizer.step = timed_step  # type: ignore[method-assign]
    # NNI's trainer has no precision option: main() refuses --precision for it.
    extra = {} if args.impl == "nni" else {"precision": args.precision}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # NNI: "DartsTrainer is deprecated"
        trainer = trainer_cls(
            model=model,
            loss=loss_fn,
            metrics=accuracy,
            optimizer=optimizer,
            num_epochs=1,
            dataset=dataset,
            batch_size=args.batch,
            workers=0,
            device=device,
            unrolled=args.unrolled,
            **extra,
        )

    synchronize(device)
    gpu_before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = rss_mb()
    peak_reset = reset_peak_rss()
    load_before = os.getloadavg()[0]
    fit_start, fit_cpu_start = time.perf_counter(), time.process_time()
    trainer.fit()
    fit_s = time.perf_counter() - fit_start
    load_after = os.getloadavg()[0]
    peak = max(peak_rss_mb(), rss_before)
    gpu_peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0

    expected = args.warmup + args.steps
    if len(stamps) != expected:
        raise RuntimeError(
            f"the weight optimizer stepped {len(stamps)} times in fit(), expected {expected} "
            "(one per search step)"
        )
    window = stamps[-1] - stamps[args.warmup - 1] if args.warmup else stamps[-1] - fit_start
    cpu_start = cpu_stamps[args.warmup - 1] if args.warmup else fit_cpu_start
    steps_per_s = args.steps / window
    timed = [fit_start, *stamps][args.warmup :]  # the ends of the steps before each timed one
    step_times = [b - a for a, b in itertools.pairwise(timed)]

    result: dict[str, Any] = {
        "impl": args.impl,
        "space": args.space,
        "unrolled": args.unrolled,
        "device": args.device,
        "precision": args.precision,
        "C": args.C,
        "layers": args.layers,
        "image": args.image,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": args.threads,
        "batch": args.batch,
        "seed": args.seed,
        "steps_per_s": round(steps_per_s, 4),
        "step_s": round(window / args.steps, 4),
        "step_times_s": [round(t, 3) for t in step_times],
        "median_step_steps_per_s": round(1 / statistics.median(step_times), 4),
        "fit_s": round(fit_s, 3),
        # CPU seconds of this process per wall second of the timed steps (at most --threads):
        # far below it, or timings far from the median step, mean the machine was busy.
        "cpu_per_wall": round((cpu_stamps[-1] - cpu_start) / window, 2),
        "loadavg_1min": [round(load_before, 2), round(load_after, 2)],
        "rss_before_mb": round(rss_before, 1),
        "peak_rss_mb": round(peak, 1),
        "added_mb": round(peak - rss_before, 1),
        "peak_reset": peak_reset,
        # After the trainer replaced the choices; NNI's count includes its alphas.
        "n_model_params": sum(p.numel() for p in model.parameters()),
        # nastrain: the memory format the trainer chose, and how many modules plugins rewrote.
        "channels_last": getattr(trainer, "channels_last", None),
        "rewritten": sum(type(m).__module__.startswith("nastrain_cpu") for m in model.modules()),
    }
    if device.type == "cuda":
        result["gpu_before_mb"] = round(gpu_before / 2**20, 1)
        result["peak_gpu_mb"] = round(gpu_peak / 2**20, 1)
        result["gpu_added_mb"] = round((gpu_peak - gpu_before) / 2**20, 1)
        result["gpu"] = torch.cuda.get_device_name(device)
    if args.floor is None:
        args.floor = args.impl == "nastrain"
    if args.floor:
        arch, source = arch_parameters(trainer)
        result["floor_source"] = source
        if arch is None:
            result["floor_s"] = result["floor_ratio"] = None
        else:
            floor = compute_floor(
                model,
                arch,
                loss_fn,
                x[: args.batch].to(device),
                y[: args.batch].to(device),
                autocast=getattr(trainer, "autocast_dtype", None),
            )
            result["floor_s"] = round(floor, 4)
            result["floor_ratio"] = round(statistics.median(step_times) / floor, 3)
    result["versions"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        **versions,
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=["nni", "nastrain"], required=True)
    parser.add_argument("--space", choices=["plain", "shipped"], default="plain")
    parser.add_argument("--unrolled", action="store_true", help="second-order DARTS")
    parser.add_argument("--steps", type=int, default=10, help="timed search steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed search steps first")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--precision",
        choices=["32", "bf16-mixed", "16-mixed"],
        default="32",
        help="precision= of nastrain's trainer (--impl nastrain only)",
    )
    parser.add_argument("--C", type=int, default=8, help="channels of the first cells")
    parser.add_argument("--layers", type=int, default=5, help="cells")
    parser.add_argument("--image", type=int, default=16, help="side of the 3xSxS inputs")
    parser.add_argument("--lr", type=float, default=0.025, help="SGD learning rate")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=3e-4)
    parser.add_argument(
        "--floor",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure the compute floor after fit() (default: only for --impl nastrain)",
    )
    args = parser.parse_args(argv)
    if args.space == "shipped" and args.impl != "nastrain":
        parser.error("--space shipped needs --impl nastrain")
    if args.impl == "nni" and args.precision != "32":
        parser.error("--precision is nastrain's option: NNI's legacy DartsTrainer has none")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0")

    head = {
        "impl": args.impl,
        "space": args.space,
        "unrolled": args.unrolled,
        "device": args.device,
        "precision": args.precision,
    }
    try:
        result = measure(args)
    except Skip as e:
        print(json.dumps({**head, "error": f"skipped: {e}"}), flush=True)
        return SKIPPED
    except Exception as e:
        traceback.print_exc()
        print(json.dumps({**head, "error": f"{type(e).__name__}: {e}"}), flush=True)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
