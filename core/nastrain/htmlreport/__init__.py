"""Reports of what a search did: one self-contained HTML page from what the run stores.

``nastrain report STORE -o report.html`` (or :func:`report`) draws an experiment from its
SQLite store (read-only: while it runs, after it stopped, after a crash);
``nastrain report RUN_DIR -o page.html`` draws a one-shot search from the run record
(``run.jsonl``) its trainer wrote in its checkpoint or log directory. The page carries
everything it needs (see :mod:`nastrain.htmlreport.page`) and embeds its data as JSON in
``<script type="application/json" id="nastrain-data">``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from nastrain.htmlreport.page import DATA_ELEMENT_ID, read_embedded, render_page, write_page

__all__ = [
    "DATA_ELEMENT_ID",
    "RUN_RECORD",
    "ReportError",
    "collect",
    "read_embedded",
    "render",
    "report",
    "source_kind",
    "watch",
]

#: The run record's file name in a one-shot trainer's checkpoint or log directory.
RUN_RECORD = "run.jsonl"

_SQLITE_HEADER = b"SQLite format 3\x00"

Kind = Literal["experiment", "run"]


class ReportError(ValueError):
    """A source that cannot be reported on (nothing was written)."""


def source_kind(source: str | os.PathLike[str]) -> tuple[Kind, Path]:
    """What ``source`` is: ``("experiment", store)`` for an experiment's SQLite store,
    ``("run", record)`` for a one-shot run record (``run.jsonl``, or a folder holding one).
    Anything else is a :class:`ReportError` naming it."""
    path = Path(source)
    if path.is_dir():
        record = path / RUN_RECORD
        if record.is_file():
            return "run", record
        raise ReportError(
            f"{path} is a folder without a run record ({RUN_RECORD}): give an experiment's "
            "store, or the checkpoint or log directory of a one-shot search"
        )
    if not path.exists():
        raise ReportError(f"{path} does not exist")
    try:
        with path.open("rb") as f:
            head = f.read(len(_SQLITE_HEADER))
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror or exc}") from None
    if head == _SQLITE_HEADER:
        return "experiment", path
    if head.lstrip().startswith(b"{"):
        return "run", path
    raise ReportError(
        f"{path} is neither an experiment store (an SQLite file) nor a one-shot run record "
        f"({RUN_RECORD})"
    )


def collect(source: str | os.PathLike[str]) -> dict[str, Any]:
    """The data a report of ``source`` draws (the JSON the page embeds)."""
    kind, path = source_kind(source)
    if kind == "experiment":
        from nastrain.htmlreport import experiment  # reads a store: loads the experiments package

        return experiment.collect(path)
    from nastrain.htmlreport import run  # imported when asked for, like the experiment's

    return run.collect(path)


def render(source: str | os.PathLike[str]) -> str:
    """The HTML page reporting on ``source`` (an experiment store or a run record)."""
    return _render(*source_kind(source))[0]


def _render(kind: Kind, path: Path) -> tuple[str, dict[str, Any]]:
    data = collect(path)
    return render_page(kind, str(data.get("title") or path.name), data), data


def _check_output(target: Path, source: Path) -> None:
    """Refuse an output that would overwrite data: the source itself, or any other
    experiment store or run record (a page is written over an old page, nothing else)."""
    if not target.parent.is_dir():
        raise ReportError(
            f"cannot write the report to {target}: the folder {target.parent} does not exist"
        )
    if not target.exists():
        return
    if target.is_dir():
        raise ReportError(f"cannot write the report to {target}: it is a folder")
    if os.path.samefile(target, source):
        raise ReportError(
            f"refusing to write the report over its own source {target}; choose another -o"
        )
    try:
        kind, _ = source_kind(target)
    except ReportError:
        return  # not a store or a record: an old page, or another file the user names
    what = "an experiment store" if kind == "experiment" else "a one-shot run record"
    raise ReportError(f"refusing to write the report over {target}: it is {what}")


def report(source: str | os.PathLike[str], output: str | os.PathLike[str]) -> Path:
    """Write the HTML report of ``source`` to ``output`` (atomically) and return its path.

    ``source`` is an experiment's SQLite store, or a one-shot search's run record
    (``run.jsonl``) or the folder holding it. A source that is neither, or an ``output``
    in a folder that does not exist, is an error and nothing is written. A run whose
    record draws cells (a DARTS space) also gets each cell of its final architecture as
    Graphviz text beside the page, ``<output stem>.<cell>.dot``."""
    target = Path(output)
    kind, path = source_kind(source)
    _check_output(target, path)
    page, data = _render(kind, path)
    written = write_page(target, page)
    if kind == "run":
        from nastrain.htmlreport import run  # imported when asked for, like the experiment's

        run.write_dot_files(data, written)  # each cell as Graphviz text beside the page
    return written


def watch(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    interval: float = 5.0,
    done: Callable[[], bool] | None = None,
    on_write: Callable[[Path], None] | None = None,
) -> Path:
    """Rewrite the report of ``source`` every ``interval`` seconds until the run it
    reports on has ended (an experiment whose store no live process holds, a one-shot
    run whose record says it ended), or ``done()`` says so; a last page is written then.
    Ctrl-C stops it; the page written last stays."""
    if interval <= 0:
        raise ValueError(f"interval must be positive, got {interval}")
    kind, path = source_kind(source)
    finished = done or (lambda: _ended(kind, path))
    while True:
        ended = finished()
        written = report(path, output)
        if on_write is not None:
            on_write(written)
        if ended:
            return written
        time.sleep(interval)


def _ended(kind: Kind, path: Path) -> bool:
    if kind == "experiment":
        from nastrain.htmlreport import experiment  # loads the experiments package (torch)

        return experiment.ended(path)
    from nastrain.htmlreport import run  # imported when asked for, like the experiment's

    return run.ended(path)
