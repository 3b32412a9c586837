"""Driver of the DARTS benchmark: NNI 2.10.1's legacy DartsTrainer against nastrain_darts.

Runs ``bench_darts.py`` several times per configuration, each run in a fresh process
(NNI's with ``benchmarks/.nni-venv/bin/python``, built by ``setup_nni.sh``; ours with the
interpreter running this script), takes the median of each number, prints a markdown
table and writes it into ``benchmarks/README.md`` between ``<!-- darts-table -->`` and
``<!-- /darts-table -->``. Repetitions go round-robin over the configurations, so a
change in the machine's load spreads over all of them. A configuration that fails or
is skipped shows as ``n/a (reason)``.

Usage: ``bash benchmarks/setup_nni.sh && python benchmarks/run_darts.py``
(``--only nni`` to run the configurations whose name contains ``nni``; ``--help``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BENCH = HERE / "bench_darts.py"
NNI_PYTHON = HERE / ".nni-venv" / "bin" / "python"
README = HERE / "README.md"
START, END = "<!-- darts-table -->", "<!-- /darts-table -->"


@dataclass
class Config:
    """One row of the table: an implementation, a space and the DARTS order."""

    name: str
    impl: str
    space: str
    unrolled: bool
    baseline: str | None = None  # the NNI row it is compared with
    runs: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: bool = False  # not importable: the next repetitions would say the same


def configs() -> list[Config]:
    """The benchmark's configurations, NNI's first (they are the baselines)."""
    return [
        Config("nni plain first-order", "nni", "plain", False),
        Config("nni plain unrolled", "nni", "plain", True),
        Config("nastrain plain first-order", "nastrain", "plain", False, "nni plain first-order"),
        Config("nastrain plain unrolled", "nastrain", "plain", True, "nni plain unrolled"),
        Config(
            "nastrain shipped first-order", "nastrain", "shipped", False, "nni plain first-order"
        ),
    ]


def run_order(cfgs: list[Config]) -> list[Config]:
    """The order of one repetition: each NNI baseline followed at once by the runs compared
    with it, so that the paired ratios compare runs seconds, not minutes, apart."""
    order: list[Config] = []
    for cfg in cfgs:
        if cfg.baseline is None:
            order.append(cfg)
            order.extend(c for c in cfgs if c.baseline == cfg.name)
    order.extend(c for c in cfgs if c not in order)  # compared with a baseline not run
    return order


def prime_memory(mb: int) -> float:
    """Write ``mb`` MiB once and free it; returns the seconds it took.

    On a virtual machine whose memory the host backs lazily, the first touch of a page
    is slow (seconds per GiB); whichever run touched fresh memory first would pay for
    it. Touching it once here, before any measurement, takes that cost out.
    """
    start = time.perf_counter()
    if mb > 0:
        blob = b"\1" * (mb << 20)
        del blob
    return time.perf_counter() - start


def run_once(cfg: Config, args: argparse.Namespace, extra: Sequence[str] = ()) -> dict[str, Any]:
    """One fresh-process run of bench_darts.py (``extra``: more of its options); its JSON,
    or ``{"error": ...}``."""
    python = str(NNI_PYTHON) if cfg.impl == "nni" else args.python
    if cfg.impl == "nni" and not NNI_PYTHON.exists():
        return {"error": "no benchmarks/.nni-venv: run bash benchmarks/setup_nni.sh"}
    cmd = [python, str(BENCH), "--impl", cfg.impl, "--space", cfg.space]
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    cmd += ["--threads", str(args.threads), "--batch", str(args.batch), "--seed", str(args.seed)]
    if cfg.unrolled:
        cmd.append("--unrolled")
    cmd += extra
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONWARNINGS": "ignore"}
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=args.timeout, env=env, cwd=HERE.parent
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    result = json.loads(lines[-1])
    if proc.returncode and "error" not in result:
        result["error"] = f"exit {proc.returncode}"
    return result


def median(cfg: Config, key: str) -> float | None:
    values = [r[key] for r in cfg.runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def fmt(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def ratio(ours: float | None, theirs: float | None) -> str:
    return "—" if ours is None or not theirs else f"{ours / theirs:.2f}x"


def paired_ratio(cfg: Config, base: Config | None, key: str) -> str:
    """The median over repetitions of ours / NNI's within the same repetition, with the
    per-repetition ratios: runs next to each other in time share the machine's state,
    which drifts over minutes on a shared virtual machine."""
    if base is None:
        return "—"
    theirs = {r["rep"]: r.get(key) for r in base.runs if "rep" in r}
    ratios = [
        r[key] / theirs[r["rep"]]
        for r in cfg.runs
        if r.get(key) is not None and theirs.get(r.get("rep"))
    ]
    if not ratios:
        return "—"
    each = ", ".join(f"{x:.2f}" for x in ratios)
    return f"{statistics.median(ratios):.2f}x ({each})"


def table(cfgs: list[Config]) -> str:
    """The markdown table of medians."""
    by_name = {c.name: c for c in cfgs}
    rows = [
        "| configuration | steps/s | steps/s at median step | peak RSS MB | added MB "
        "| speed vs NNI | speed vs NNI, paired by repetition | added MB vs NNI "
        "| step / floor |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cfg in cfgs:
        if not cfg.runs:
            reason = cfg.errors[0] if cfg.errors else "not run"
            rows.append(f"| {cfg.name} | n/a ({reason}) | | | | | | | |")
            continue
        speed, added = median(cfg, "steps_per_s"), median(cfg, "added_mb")
        base = by_name.get(cfg.baseline) if cfg.baseline else None
        base_speed = median(base, "steps_per_s") if base else None
        base_added = median(base, "added_mb") if base else None
        floor_ratio = median(cfg, "floor_ratio")
        floor_cell = fmt(floor_ratio, 2)
        if floor_ratio is None and any("floor_source" in r for r in cfg.runs):
            floor_cell = "n/a (no arch parameters exposed)"
        note = f" ({len(cfg.runs)} of {len(cfg.runs) + len(cfg.errors)} runs)" if cfg.errors else ""
        at_median = median(cfg, "median_step_steps_per_s")
        rows.append(
            f"| {cfg.name}{note} | {fmt(speed, 3)} | {fmt(at_median, 3)} "
            f"| {fmt(median(cfg, 'peak_rss_mb'), 0)} "
            f"| {fmt(added, 0)} | {ratio(speed, base_speed)} "
            f"| {paired_ratio(cfg, base, 'steps_per_s')} | {ratio(added, base_added)} "
            f"| {floor_cell} |"
        )
    return "\n".join(rows)


def write_readme(block: str, start: str = START, end: str = END) -> None:
    """Put ``block`` between the markers ``start`` and ``end`` of README.md (appending them
    if absent)."""
    text = README.read_text() if README.exists() else "# Benchmarks\n"
    new = f"{start}\n{block}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: new, text)
    else:
        text = text.rstrip("\n") + "\n\n" + new + "\n"
    README.write_text(text)


def run_reps(
    cfgs: list[Config],
    args: argparse.Namespace,
    extra: Callable[[Config], Sequence[str]] = lambda cfg: (),
) -> float:
    """Run every configuration ``args.reps`` times, round-robin in :func:`run_order`, each a
    fresh process with ``extra(cfg)`` added to its options; record the runs and errors in
    the configurations and return the seconds it took (memory priming included)."""
    started = time.perf_counter()
    print(f"primed {args.prime_mb} MiB in {prime_memory(args.prime_mb):.1f} s", file=sys.stderr)
    for rep in range(args.reps):
        for cfg in run_order(cfgs):
            if cfg.skipped:
                continue
            t0 = time.perf_counter()
            result = run_once(cfg, args, extra(cfg))
            took = time.perf_counter() - t0
            result["rep"] = rep + 1
            if "error" in result:
                cfg.errors.append(result["error"])
                status = result["error"]
            else:
                cfg.runs.append(result)
                status = json.dumps(result)
            print(f"[{rep + 1}/{args.reps}] {cfg.name} ({took:.0f} s): {status}", file=sys.stderr)
            if args.jsonl:
                with args.jsonl.open("a") as f:
                    f.write(json.dumps({"config": cfg.name, "rep": rep + 1, **result}) + "\n")
            cfg.skipped = str(result.get("error", "")).startswith("skipped")
    return time.perf_counter() - started


def add_run_arguments(
    parser: argparse.ArgumentParser, steps: int = 10, warmup: int = 3, batch: int | None = 32
) -> None:
    """The driver options that run_darts.py and run_cifar.py share, with these defaults."""
    parser.add_argument("--reps", type=int, default=3, help="fresh-process runs per configuration")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1200, help="seconds for one run")
    parser.add_argument("--only", default="", help="run configurations whose name contains this")
    parser.add_argument("--prime-mb", type=int, default=4096, help="memory to touch first (MiB)")
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter for nastrain's runs (default: this one; it needs nastrain_darts)",
    )
    parser.add_argument("--jsonl", type=Path, help="also append every run's JSON to this file")
    parser.add_argument("--no-readme", action="store_true", help="do not update README.md")


def select(parser: argparse.ArgumentParser, all_cfgs: list[Config], only: str) -> list[Config]:
    """The configurations whose name contains ``only``; the others get a "not run" error."""
    cfgs = [c for c in all_cfgs if only in c.name]
    if not cfgs:
        parser.error(f"no configuration name contains {only!r}")
    for cfg in all_cfgs:
        if all(cfg is not c for c in cfgs):
            cfg.errors.append(f"not run: --only {only}")
    return cfgs


def command_line(script: str, argv: list[str] | None) -> str:
    """How the driver was called, for the README: ``python benchmarks/<script> <args>``."""
    args = argv if argv is not None else sys.argv[1:]
    return f"python benchmarks/{script}" + "".join(f" {shlex.quote(a)}" for a in args)


def load_range(cfgs: list[Config]) -> str:
    """The lowest and highest 1-minute load average the runs saw, as "a to b"."""
    loads = [x for c in cfgs for r in c.runs for x in r.get("loadavg_1min", [])]
    return f"{min(loads):.1f} to {max(loads):.1f}" if loads else "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser)
    args = parser.parse_args(argv)

    all_cfgs = configs()
    cfgs = select(parser, all_cfgs, args.only)
    elapsed = run_reps(cfgs, args)

    out = table(all_cfgs)
    print(out)
    if not args.no_readme:
        command = command_line("run_darts.py", argv)
        today = datetime.date.today().isoformat()
        load = load_range(cfgs)
        cpus = os.cpu_count()
        block = (
            f"{out}\n\n"
            f"`{command}` on {today}: {cpus} CPUs, {args.threads} threads, batch {args.batch}, "
            f"{args.steps} timed steps after {args.warmup} warm-up steps, median of "
            f"{args.reps} fresh processes; 1-minute load average {load} during the runs; "
            f"the whole run took {elapsed / 60:.0f} min."
        )
        write_readme(block)
        print(f"wrote the table into {README}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
