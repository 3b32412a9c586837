"""Driver of the CIFAR-scale DARTS benchmark: NNI 2.10.1's legacy DartsTrainer against ours.

The DARTS paper's search setting (Liu et al., 2019): the supernet of :mod:`supernet` with
C=16 and 8 cells (and, for ours, the shipped ``DartsSpace(C=16, layers=8)``), batch 64,
random 3x32x32 inputs under a fixed seed, SGD (lr 0.025, momentum 0.9, weight decay 3e-4);
first order, second order, and first order with ``precision="bf16-mixed"`` (ours only:
NNI has no such option, so it is compared with NNI's float32 first order).

``--device cuda`` runs that size on a GPU (steps/s and peak GPU memory,
``torch.cuda.max_memory_allocated``); ``--device cpu`` runs ``--size small`` (C=4, 5
cells, 3x16x16, batch 16: a few minutes in all) so that a reader without a GPU can run
the same comparison. Every run is a fresh process of ``bench_darts.py``, NNI's and ours
alternating in each repetition (:func:`run_darts.run_order`); the table gives medians and
is written into ``benchmarks/README.md`` between ``<!-- cifar-gpu-table -->`` /
``<!-- cifar-cpu-table -->`` and their closing markers.

Usage: ``python benchmarks/run_cifar.py --device cuda`` or
``python benchmarks/run_cifar.py --device cpu --size small`` (NNI from
``benchmarks/.nni-venv``, built by ``setup_nni.sh``; ``--help``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
from run_darts import (
    Config,
    add_run_arguments,
    command_line,
    fmt,
    load_range,
    median,
    paired_ratio,
    ratio,
    run_reps,
    select,
    write_readme,
)

#: The sizes ``--size`` names: C, cells, image side, batch.
SIZES = {
    "paper": {"C": 16, "layers": 8, "image": 32, "batch": 64},
    "small": {"C": 4, "layers": 5, "image": 16, "batch": 16},
}
MARKERS = {
    "cuda": ("<!-- cifar-gpu-table -->", "<!-- /cifar-gpu-table -->"),
    "cpu": ("<!-- cifar-cpu-table -->", "<!-- /cifar-cpu-table -->"),
}
FIRST, SECOND = "nni first-order", "nni second-order"


@dataclass
class CifarConfig(Config):
    """A row of the CIFAR table: a configuration of run_darts.py's kind, plus the
    precision of ours and the issue's target for it on one GPU."""

    precision: str = "32"
    speed_target: float | None = None  # steps/s over the baseline's, at least
    memory_target: float | None = None  # peak GPU memory over the baseline's, at most


def configs() -> list[CifarConfig]:
    """NNI's two baselines, then ours on the same supernet and on the shipped space."""
    rows = [CifarConfig(FIRST, "nni", "plain", False), CifarConfig(SECOND, "nni", "plain", True)]
    for space, name in (("plain", "nastrain"), ("shipped", "nastrain shipped")):
        rows += [
            CifarConfig(
                f"{name} first-order",
                "nastrain",
                space,
                False,
                FIRST,
                speed_target=1.5,
                memory_target=0.6,
            ),
            CifarConfig(f"{name} second-order", "nastrain", space, True, SECOND, speed_target=1.3),
            CifarConfig(
                f"{name} bf16-mixed first-order",
                "nastrain",
                space,
                False,
                FIRST,
                speed_target=2.5,
                precision="bf16-mixed",
            ),
        ]
    return rows


def target_cells(cfg: CifarConfig, base: Config | None, key: str, device: str) -> tuple[str, str]:
    """The issue's target for ``cfg`` and, on a GPU, whether the plain medians meet it."""
    parts = []
    if cfg.speed_target is not None:
        parts.append(f"speed >= {cfg.speed_target}x")
    if cfg.memory_target is not None:
        parts.append(f"memory <= {cfg.memory_target}x")
    if not parts:
        return "—", "—"
    if device != "cuda":
        return ", ".join(parts), "— (GPU targets)"
    if base is None or not cfg.runs or not base.runs:
        return ", ".join(parts), "—"
    speed = (median(cfg, "steps_per_s") or 0) / (median(base, "steps_per_s") or float("inf"))
    met = cfg.speed_target is None or speed >= cfg.speed_target
    if cfg.memory_target is not None:
        memory = (median(cfg, key) or float("inf")) / (median(base, key) or 1e-9)
        met = met and memory <= cfg.memory_target
    return ", ".join(parts), "yes" if met else "**no**"


def table(cfgs: list[CifarConfig], device: str) -> str:
    """The markdown table of medians; memory is peak GPU memory on a GPU, RSS on a CPU."""
    by_name = {c.name: c for c in cfgs}
    if device == "cuda":
        peak_key, added_key, mem_key = "peak_gpu_mb", "gpu_added_mb", "peak_gpu_mb"
        head = "peak GPU MB | added GPU MB | peak GPU MB vs NNI"
    else:
        peak_key, added_key, mem_key = "peak_rss_mb", "added_mb", "added_mb"
        head = "peak RSS MB | added MB | added MB vs NNI"
    rows = [
        f"| configuration | steps/s | steps/s at median step | {head} | speed vs NNI "
        "| speed vs NNI, paired by repetition | step / floor | target (one GPU) | met |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for cfg in cfgs:
        base = by_name.get(cfg.baseline) if cfg.baseline else None
        if not cfg.runs:
            reason = cfg.errors[0] if cfg.errors else "not run"
            rows.append(f"| {cfg.name} | n/a ({reason}) | | | | | | | | | |")
            continue
        speed = median(cfg, "steps_per_s")
        base_speed = median(base, "steps_per_s") if base and base.runs else None
        base_mem = median(base, mem_key) if base and base.runs else None
        note = f" ({len(cfg.runs)} of {len(cfg.runs) + len(cfg.errors)} runs)" if cfg.errors else ""
        target, met = target_cells(cfg, base, mem_key, device)
        at_median = median(cfg, "median_step_steps_per_s")
        rows.append(
            f"| {cfg.name}{note} | {fmt(speed, 3)} | {fmt(at_median, 3)} "
            f"| {fmt(median(cfg, peak_key), 0)} | {fmt(median(cfg, added_key), 0)} "
            f"| {ratio(median(cfg, mem_key), base_mem)} | {ratio(speed, base_speed)} "
            f"| {paired_ratio(cfg, base, 'steps_per_s')} | {fmt(median(cfg, 'floor_ratio'), 2)} "
            f"| {target} | {met} |"
        )
    return "\n".join(rows)


def describe(cfgs: list[CifarConfig], args: argparse.Namespace, elapsed: float) -> str:
    """The line under the table: command, date, machine, size, load and duration."""
    runs: list[dict[str, Any]] = [r for c in cfgs for r in c.runs]
    if args.device == "cuda":
        gpus = sorted({r["gpu"] for r in runs if "gpu" in r}) or ["no GPU answered"]
        machine = f"{', '.join(gpus)}, {os.cpu_count()} CPUs"
    else:
        machine = f"{os.cpu_count()} CPUs, {args.threads} thread{'s' * (args.threads != 1)}"
    torches = sorted({r["versions"]["torch"] for r in runs if "versions" in r})
    return (
        f"`{command_line('run_cifar.py', args.argv)}` on "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC: {machine}; "
        f"torch {', '.join(torches) or '?'}; C={args.C}, {args.layers} cells, "
        f"3x{args.image}x{args.image} inputs, batch {args.batch}; {args.steps} timed steps "
        f"after {args.warmup} warm-up steps, median of {args.reps} fresh processes; "
        f"1-minute load average {load_range(cfgs)} during the runs; the whole run took "
        f"{elapsed / 60:.1f} min."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], required=True)
    parser.add_argument(
        "--size",
        choices=sorted(SIZES),
        help="paper (the default on cuda) or small (the default on cpu); --C, --layers, "
        "--image and --batch override it",
    )
    parser.add_argument("--C", type=int)
    parser.add_argument("--layers", type=int)
    parser.add_argument("--image", type=int)
    parser.add_argument(
        "--floor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure our runs' compute floor (step / floor; about 10 extra steps a run)",
    )
    add_run_arguments(parser, steps=10, warmup=3, batch=None)
    args = parser.parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    size = SIZES[args.size or ("paper" if args.device == "cuda" else "small")]
    for key, value in size.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("run_cifar: --device cuda, but no GPU is visible here", file=sys.stderr)

    all_cfgs = configs()
    cfgs = select(parser, all_cfgs, args.only)

    def extra(cfg: Config) -> list[str]:
        precision = cfg.precision if isinstance(cfg, CifarConfig) else "32"
        options = ["--device", args.device, "--C", str(args.C), "--layers", str(args.layers)]
        options += ["--image", str(args.image)] + ([] if args.floor else ["--no-floor"])
        return options + (["--precision", precision] if cfg.impl == "nastrain" else [])

    elapsed = run_reps(cfgs, args, extra)
    out = table(all_cfgs, args.device)
    print(out)
    if not args.no_readme:
        write_readme(f"{out}\n\n{describe(all_cfgs, args, elapsed)}", *MARKERS[args.device])
        print("wrote the table into benchmarks/README.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
