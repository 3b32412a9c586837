"""Benchmark of the experiment report (``nastrain report STORE -o report.html``).

A synthetic store of 2,000 trials with 100 intermediate results each is written through the
real store API (``Store.open``, ``add_trial``, ``set_worker``, ``add_result``,
``end_trial``: one committed transaction per call, as a running experiment writes them),
over a space of 8 layer choices of 6 candidates and one input choice (2 of 4), on 8
workers. Every result is a random float64 (full precision: the worst case for the page's
size); 4% of the trials fail after their results with a traceback-sized reason, 4% are
stopped early, the rest succeed with a final ``{"default", "loss"}``.

It measures, against the issue's targets:

- **render**: ``nastrain report STORE -o report.html`` as a fresh process (interpreter
  start and imports included; target < 5 s), and the same rendering in-process
  (``nastrain.report``) for comparison; medians of 3;
- **page size**: of the written page (target < 5 MB), and how much of it is the data;
- **load in Chromium**: headless Chromium (Debian's, through Selenium and ChromeDriver, as
  the browser tests drive it) from navigation to the page saying it is drawn
  (``document.body.dataset.ready``; target < 2 s), the median of 3 loads, each after a
  blank page; beside it, the page's own time from navigation start to ready.

    .venv/bin/python benchmarks/bench_report.py            # prints the table
    .venv/bin/python benchmarks/bench_report.py --write    # and puts it in README.md

``--write`` replaces what is between ``<!-- report-table -->`` and ``<!-- /report-table -->``
in benchmarks/README.md (appending a "Report" section if absent).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from torch import nn

import nastrain
from nastrain.experiments.records import ExperimentRecord, StrategySpec
from nastrain.experiments.store import Store
from nastrain.htmlreport import collect
from nastrain.htmlreport.page import embed_json
from nastrain.space import SearchSpace
from nastrain.trainer import TrainerSpec

README = Path(__file__).resolve().parent / "README.md"
BEGIN, END = "<!-- report-table -->", "<!-- /report-table -->"
INTRO = """\
How fast `nastrain report STORE -o report.html` writes the page of a large experiment, how
big the page is and how fast Chromium draws it ([`bench_report.py`](bench_report.py), which
says how each is measured): a synthetic store of 2,000 trials x 100 intermediate results
(random full-precision floats), written through the store's API. Most of the command's
time is the interpreter starting and importing torch (about 2.5 s here; the store's records
import it); the rendering itself is the in-process row. Chromium's time covers parsing the
page, ECharts and the data and drawing every section.

```sh
.venv/bin/python benchmarks/bench_report.py --write
```
"""


class Space(nn.Module):
    """8 layer choices of 6 candidates and one input choice (2 of 4 inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nastrain.LayerChoice(
                {
                    name: nn.Identity()
                    for name in ("conv3", "conv5", "sep3", "sep5", "pool", "skip")
                },
                label=f"op{i}",
            )
            for i in range(8)
        )
        self.inputs = nastrain.InputChoice(4, 2, label="inputs")


def write_store(path: Path, trials: int, steps: int, seed: int = 0) -> float:
    """Write the synthetic store at ``path``; returns the seconds it took."""
    rng = random.Random(seed)
    space = SearchSpace.from_model(Space())
    record = ExperimentRecord(
        space=space,
        trainer=TrainerSpec(name="bench-report", kwargs={"epochs": steps}),
        strategy=StrategySpec(name="random"),
        seed=seed,
        mode="max",
        space_name="bench_report:Space",
    )
    reason = "ValueError: the trainer failed on purpose\n" + "  File ...\n" * 60
    start = time.perf_counter()
    with Store.open(path, record) as store:
        store.record_run({"max_trials": trials, "concurrency": 8, "executor": "local"})
        for index in range(trials):
            trial = store.add_trial(index, space.sample(rng), rng.getrandbits(31), "{}")
            trial = store.set_worker(trial, f"bench-host:{1000 + index % 8}")
            quality = rng.random()
            fate = rng.random()
            for step in range(steps if fate >= 0.04 else steps // 3):
                value = quality * (1 - 0.9 ** (step + 1)) + rng.gauss(0, 0.01)
                store.add_result(trial, value, False)
            if fate < 0.04:
                store.end_trial(trial, "early_stopped", None)
            elif fate < 0.08:
                store.end_trial(trial, "failed", reason)
            else:
                store.add_result(trial, {"default": quality, "loss": rng.random() * 3}, True)
                store.end_trial(trial, "succeeded", None)
    return time.perf_counter() - start


def time_command(store: Path, page: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "nastrain", "report", str(store), "-o", str(page)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def time_in_process(store: Path, page: Path) -> float:
    start = time.perf_counter()
    nastrain.report(store, page)
    return time.perf_counter() - start


def time_chromium(page: Path, loads: int) -> tuple[list[float], list[float]]:
    """Seconds from navigation to ready, as Selenium sees it and as the page does."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    profile = tempfile.mkdtemp(prefix="bench-report-chromium-")
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(
        service=Service(executable_path=shutil.which("chromedriver")), options=options
    )
    driver.set_page_load_timeout(120)
    outside, inside = [], []
    try:
        for _ in range(loads):
            driver.get("about:blank")
            start = time.perf_counter()
            driver.get(page.resolve().as_uri())
            WebDriverWait(driver, 120, poll_frequency=0.01).until(
                lambda d: d.execute_script("return document.body.dataset.ready === 'yes'")
            )
            outside.append(time.perf_counter() - start)
            inside.append(driver.execute_script("return performance.now() / 1000;"))
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            if errors:
                raise RuntimeError(f"the page logged errors: {errors}")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    return outside, inside


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3, help="renders and loads (medians)")
    parser.add_argument("--write", action="store_true", help="put the table in README.md")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench-report-"))
    try:
        store, page = folder / "store.sqlite", folder / "report.html"
        written = write_store(store, args.trials, args.steps)
        commands = [time_command(store, page) for _ in range(args.reps)]
        in_process = [time_in_process(store, page) for _ in range(args.reps)]
        size = page.stat().st_size
        data = len(embed_json(collect(store)).encode())
        outside, inside = time_chromium(page, args.reps)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    mb = 1e6
    rows = [
        ("`nastrain report` (fresh process)", f"{statistics.median(commands):.2f} s", "< 5 s"),
        ("rendering in-process (`nastrain.report`)", f"{statistics.median(in_process):.2f} s", ""),
        ("page size", f"{size / mb:.2f} MB ({data / mb:.2f} MB of it data)", "< 5 MB"),
        ("Chromium: navigation to drawn", f"{statistics.median(outside):.2f} s", "< 2 s"),
        ("Chromium: the page's own clock to drawn", f"{statistics.median(inside):.2f} s", ""),
    ]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    table = "\n".join(
        [
            "| measure | median of 3 | target |",
            "|---|---:|---|",
            *(f"| {name} | {value} | {target} |" for name, value, target in rows),
            "",
            f"`python benchmarks/bench_report.py` on {time.strftime('%Y-%m-%d')}: "
            f"{args.trials} trials x {args.steps} intermediate results; "
            f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
            f"Python {platform.python_version()}, Chromium through Selenium; writing the store "
            f"through its API took {written:.0f} s; 1-minute load average {load:.1f} at the end. "
            f"Every run: commands {', '.join(f'{t:.2f}' for t in commands)} s; in-process "
            f"{', '.join(f'{t:.2f}' for t in in_process)} s; loads "
            f"{', '.join(f'{t:.2f}' for t in outside)} s.",
        ]
    )
    print(table)
    if args.write:
        text = README.read_text()
        block = f"{BEGIN}\n{table}\n{END}"
        if BEGIN in text and END in text:
            head, _, rest = text.partition(BEGIN)
            _, _, tail = rest.partition(END)
            text = head + block + tail
        else:
            text = text.rstrip("\n") + f"\n\n## Report\n\n{INTRO}\n{block}\n"
        README.write_text(text)


if __name__ == "__main__":
    main()
