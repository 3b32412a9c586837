"""The run record of a one-shot search: what it learned, epoch by epoch, as JSON lines.

Every :class:`nastrain.oneshot.SupernetTrainer` run with a ``checkpoint_dir`` or a
``log_dir`` writes ``run.jsonl`` (:data:`nastrain.htmlreport.RUN_RECORD`) there, which
``nastrain report DIR -o page.html`` draws and loggers may read. One JSON object per line:

- first a **header**: ``{"format": "nastrain-run", "schema_version": 1, "type": "header",
  "trainer": ..., "trainer_class": ..., "choices": [{"label", "kind", "candidates",
  "n_chosen"}, ...], "num_epochs", "batch_size", "device", "options": {...},
  "nastrain_version", "started": ISO 8601 (UTC), "time": Unix seconds}``. A layer
  choice's ``candidates`` are its candidates' names; an input choice's are its inputs,
  ``"0"``, ``"1"``, ...;
- then one **epoch** line per finished epoch: ``{"type": "epoch", "epoch": n, "time",
  "seconds" (the epoch's duration), "metrics" (the epoch's mean losses and metrics),
  "probabilities" ({label: one number per candidate}), "entropy" ({label: nats}),
  "architecture" (what would be exported now, or null), "graph" (the architecture as
  cells of nodes and edges, or null)}``; what each trainer puts in ``probabilities``,
  ``entropy`` and ``architecture`` is said by its ``architecture_probabilities``,
  ``architecture_entropy`` and ``current_architecture`` methods;
- and an **end** line when ``fit()`` returns (``"status": "completed"``) or raises
  (``"failed"`` or ``"interrupted"``, with ``"error"``): ``{"type": "end", "time",
  "epochs", "status"}``.

Each line is written whole with one ``write`` and flushed (epoch lines are ``fsync``-ed),
so a reader sees whole lines, but for a last line cut short by a killed process, which
:func:`read_record` ignores with a note. A resumed search keeps the header and the epochs
up to its checkpoint's and drops the rest, so its record reads as an uninterrupted run's
(but for the times). No pickle: JSON only.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from nastrain.htmlreport import RUN_RECORD
from nastrain.serialization import SCHEMA_VERSION

__all__ = [
    "FORMAT",
    "RunRecord",
    "RunRecordError",
    "RunRecordWriter",
    "json_line",
    "read_record",
]

#: The header's ``"format"``: what marks a JSON-lines file as a nastrain run record.
FORMAT = "nastrain-run"
#: The kinds of line that follow the header.
LINE_TYPES = ("epoch", "end")


class RunRecordError(ValueError):
    """A file that is not a (readable) run record; the message names it."""


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def json_line(entry: Mapping[str, Any]) -> str:
    """``entry`` as one line of JSON (non-finite floats as ``null``), with its newline."""
    return json.dumps(_finite(entry), ensure_ascii=False, allow_nan=False) + "\n"


@attrs.frozen
class RunRecord:
    """What a run record holds: its ``header``, its ``epochs`` (in order, one line per epoch)
    and its ``end`` line (``None`` while the run goes on, or after a kill); ``notes`` says
    what was skipped (a last line cut short, an epoch written twice, epochs missing)."""

    path: Path
    header: dict[str, Any]
    epochs: list[dict[str, Any]]
    end: dict[str, Any] | None
    notes: list[str]


def read_record(path: str | os.PathLike[str]) -> RunRecord:
    """Read the run record at ``path``.

    A :class:`RunRecordError` naming the file says why one is refused: not JSON lines, no
    ``nastrain-run`` header, written by a newer nastrain (both schema versions named), a
    line of an unknown type or without its epoch. A last line that is not whole JSON (a
    process killed while writing it) is skipped with a note, as is an epoch written twice
    (the later line is kept)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RunRecordError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RunRecordError(f"{path} is not a run record: it is not UTF-8 text") from None
    lines = text.split("\n")
    complete = text.endswith("\n")
    if complete:
        lines.pop()
    if not lines or not lines[0].strip():
        raise RunRecordError(f"{path} is empty, not a run record (no {FORMAT!r} header)")
    notes: list[str] = []
    entries: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) and not complete and number > 1:
                notes.append(
                    f"line {number} of {path.name} is cut short (the run was stopped while "
                    "writing it) and was ignored"
                )
                break
            if number == 1:
                raise RunRecordError(
                    f"{path} is not a run record: its first line is not JSON (a nastrain run "
                    f"record starts with a {FORMAT!r} header)"
                ) from None
            raise RunRecordError(f"{path}: line {number} is not JSON") from None
        if not isinstance(entry, dict):
            raise RunRecordError(
                f"{path}: line {number} is a JSON {type(entry).__name__}, not an object"
            )
        entries.append((number, entry))
    header = entries[0][1]
    if header.get("format") != FORMAT:
        raise RunRecordError(
            f"{path} is not a nastrain run record: its first line has no "
            f'"format": "{FORMAT}" header'
        )
    version = header.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise RunRecordError(f"{path}: the header's schema_version is {version!r}, not an int")
    if version > SCHEMA_VERSION:
        raise RunRecordError(
            f"{path} is a run record of schema_version {version}, written by a newer "
            f"nastrain; this nastrain reads schema_version {SCHEMA_VERSION} and older: "
            "upgrade nastrain to read it"
        )
    by_epoch: dict[int, dict[str, Any]] = {}
    end: dict[str, Any] | None = None
    for number, entry in entries[1:]:
        kind = entry.get("type")
        if kind not in LINE_TYPES:
            raise RunRecordError(
                f"{path}: line {number} has type {kind!r}; a run record's lines after the "
                f"header are {' or '.join(LINE_TYPES)}"
            )
        if kind == "end":
            end = entry
            continue
        epoch = entry.get("epoch")
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
            raise RunRecordError(f"{path}: line {number} is an epoch line without an epoch >= 1")
        if epoch in by_epoch:
            notes.append(f"epoch {epoch} is written twice in {path.name}; the later line is used")
        by_epoch[epoch] = entry
    epochs = [by_epoch[e] for e in sorted(by_epoch)]
    numbers = [e["epoch"] for e in epochs]
    missing = sorted(set(range(1, max(numbers, default=0) + 1)) - set(numbers))
    if missing:
        notes.append(f"epoch(s) {_ranges(missing)} are missing from {path.name}")
    return RunRecord(path=path, header=header, epochs=epochs, end=end, notes=notes)


def _ranges(numbers: list[int]) -> str:
    parts: list[str] = []
    start = prev = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ", ".join(parts)


class RunRecordWriter:
    """Writes one run's record to ``directory / run.jsonl``.

    :meth:`start` begins it (a fresh header, or, for a search resumed after ``epoch``
    epochs, the earlier record cut back to those epochs); :meth:`write` appends one line
    whole, flushed, and ``fsync``-ed when ``sync``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory) / RUN_RECORD

    def start(self, header: Mapping[str, Any], *, epoch: int = 0) -> bool:
        """Begin the record. After ``epoch`` finished epochs (a resumed search), an earlier
        record of the same trainer there keeps its header and its first ``epoch`` epochs
        (later epochs, an end line and a line cut short are dropped); otherwise, and when
        ``epoch`` is 0, the record starts afresh with ``header``. The file is replaced
        atomically. Returns whether an earlier record was kept."""
        kept: list[str] = []
        if epoch > 0 and self.path.is_file():
            try:
                old = read_record(self.path)
            except RunRecordError:
                old = None
            if old is not None and old.header.get("trainer") == header.get("trainer"):
                kept = [json_line(old.header)]
                kept += [json_line(e) for e in old.epochs if e["epoch"] <= epoch]
        resumed = bool(kept)
        if not resumed:
            kept = [json_line(header)]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write("".join(kept))
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return resumed

    def write(self, entry: Mapping[str, Any], *, sync: bool = False) -> None:
        """Append ``entry`` as one line, in one write, flushed (and ``fsync``-ed if ``sync``)."""
        line = json_line(entry)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            if sync:
                os.fsync(f.fileno())
