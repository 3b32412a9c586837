"""The run record of a one-shot search: what it learned, epoch by epoch, as JSON lines.

Every :class:`nastrain.oneshot.SupernetTrainer` run with a ``checkpoint_dir`` or a
``log_dir`` writes ``run.jsonl`` (:data:`nastrain.htmlreport.RUN_RECORD`) there, which
``nastrain report DIR -o page.html`` draws and loggers may read. One JSON object per line:

- first a **header**: ``{"format": "nastrain-run", "schema_version": 1, "type": "header",
  "trainer": ..., "trainer_class": ..., "choices": [{"label", "kind", "candidates",
  "n_chosen"}, ...], "num_epochs", "batch_size", "device", "options": {...},
  "nastrain_version", "started": ISO 8601 (UTC), "time": Unix seconds, "pid", "host"}``
  (``pid`` and ``host``: the process writing the record, see :func:`writer_identity`;
  ``started`` and ``time``: when the search first started, kept on a resume). A layer
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
:func:`read_record` ignores with a note. A resumed search keeps the epochs up to its
checkpoint's and drops the rest, and keeps the first run's start in a header otherwise its
own, so its record reads as an uninterrupted run's (but for the times and the pid); a record
it cannot read is moved aside, never overwritten. No pickle: JSON only.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from nastrain._files import atomic_write_text, finite
from nastrain.htmlreport import RUN_RECORD
from nastrain.serialization import SCHEMA_VERSION

__all__ = [
    "FORMAT",
    "KEPT_ON_RESUME",
    "RunRecord",
    "RunRecordError",
    "RunRecordWriter",
    "json_line",
    "read_record",
    "writer_identity",
]

logger = logging.getLogger(__name__)

#: The header's ``"format"``: what marks a JSON-lines file as a nastrain run record.
FORMAT = "nastrain-run"
#: The kinds of line that follow the header.
LINE_TYPES = ("epoch", "end")


class RunRecordError(ValueError):
    """A file that is not a (readable) run record; the message names it."""


def json_line(entry: Mapping[str, Any]) -> str:
    """``entry`` as one line of JSON (non-finite floats as ``null``), with its newline."""
    return json.dumps(finite(entry), ensure_ascii=False, allow_nan=False) + "\n"


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


def _parse(chunk: bytes) -> tuple[Any, str | None]:
    """One line's bytes as JSON, or ``(None, why not)``: not UTF-8, not JSON, nested too
    deep for the parser, a number too long to read."""
    try:
        text = chunk.decode("utf-8")
    except UnicodeDecodeError:
        return None, "is not UTF-8 text"
    try:
        return json.loads(text), None
    except json.JSONDecodeError:
        return None, "is not JSON"
    except RecursionError:
        return None, "is JSON nested too deeply to read"
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        return None, f"is JSON that cannot be read ({exc})"


#: How a line the writer appends begins (json_line keeps the entry's key order: "type" first).
_LINE_START = b'{"type": '


def _after_cut(chunk: bytes) -> dict[str, Any] | None:
    """The whole line that follows a line cut short within ``chunk``, or ``None``.

    A write that fails part-way (a full disk) leaves a line without its end, and the
    writer's next line (the end line :meth:`SupernetTrainer.fit` writes when it fails) then
    continues it: ``{"type": "epoch", "ep{"type": "end", ...}``. Every line this module
    writes starts with ``{"type": ``, which cannot occur unescaped inside a JSON string, so
    the first such start after the beginning whose rest is a whole line of a known type is
    that next line."""
    at = chunk.find(_LINE_START, 1)
    while at > 0:
        entry, problem = _parse(chunk[at:])
        if problem is None and isinstance(entry, dict) and entry.get("type") in LINE_TYPES:
            return entry
        at = chunk.find(_LINE_START, at + 1)
    return None


def read_record(path: str | os.PathLike[str]) -> RunRecord:
    """Read the run record at ``path``.

    A :class:`RunRecordError` naming the file (and the line) says why one is refused: not
    JSON lines, no ``nastrain-run`` header, written by a newer nastrain (both schema
    versions named), a line of an unknown type or without its epoch, a line that is not
    UTF-8 JSON. Skipped, each with a note: a last line that is not whole (a process killed
    while writing it: not newline-ended, and not UTF-8, cut mid-character, or not JSON), a
    line cut short that the writer's next line continues (a write that failed part-way,
    then the end line: the cut part is dropped, the next line read), and an epoch written
    twice (the later line is kept)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RunRecordError(f"cannot read {path}: {exc.strerror or exc}") from None
    chunks = raw.split(b"\n")
    complete = raw.endswith(b"\n")
    if complete:
        chunks.pop()
    if not chunks or not chunks[0].strip():
        raise RunRecordError(f"{path} is empty, not a run record (no {FORMAT!r} header)")
    notes: list[str] = []
    entries: list[tuple[int, dict[str, Any]]] = []
    for number, chunk in enumerate(chunks, start=1):
        if not chunk.strip():
            continue
        entry, problem = _parse(chunk)
        if problem is not None:
            if number == 1:
                raise RunRecordError(
                    f"{path} is not a run record: its first line {problem} (a nastrain run "
                    f"record starts with a {FORMAT!r} header)"
                )
            if number == len(chunks) and not complete:
                notes.append(
                    f"line {number} of {path.name} is cut short (the run was stopped while "
                    "writing it) and was ignored"
                )
                break
            entry = _after_cut(chunk)
            if entry is None:
                raise RunRecordError(f"{path}: line {number} {problem}")
            notes.append(
                f"line {number} of {path.name} starts with a line cut short (a write that "
                f"failed part-way), which was ignored; the {entry['type']} line after it "
                "was read"
            )
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


#: The header fields a resumed record keeps from its first run: when the search started.
KEPT_ON_RESUME = ("started", "time")


def writer_identity() -> dict[str, Any]:
    """Who writes a record, as its header says: this process's ``pid`` and ``host`` (how
    :func:`nastrain.htmlreport.run.ended` tells a run that is gone from one that goes on)."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


class RunRecordWriter:
    """Writes one run's record to ``directory / run.jsonl``.

    :meth:`start` begins it (a fresh header, or, for a search resumed after ``epoch``
    epochs, the earlier record cut back to those epochs); :meth:`write` appends one line
    whole, flushed, and ``fsync``-ed when ``sync``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory) / RUN_RECORD

    def start(self, header: Mapping[str, Any], *, epoch: int = 0) -> bool:
        """Begin the record with ``header``, stamped with this process's ``pid`` and
        ``host`` (:func:`writer_identity`). Returns whether an earlier record was kept.

        After ``epoch`` finished epochs (a resumed search), an earlier record of the same
        trainer there keeps its first ``epoch`` epochs (later epochs, an end line and a line
        cut short are dropped) and its first run's start (``started``, ``time``); the rest
        of the header is ``header``'s (this run's ``num_epochs``, options, pid...). An
        earlier record that cannot be read, or is another trainer's, is never overwritten
        on a resume: it is moved aside to ``run.jsonl.unreadable-<n>`` (or
        ``run.jsonl.other-<n>``) with a warning naming both files, and the record starts
        afresh. With ``epoch`` 0 the record starts afresh, replacing any earlier one.

        The file is replaced atomically (and its folder fsynced): a process killed at any
        moment in here leaves the old record or the new one, each whole, and either resumes.
        """
        header = {**header, **writer_identity()}
        kept: list[str] = []
        if epoch > 0 and self.path.is_file():
            why, suffix = None, "unreadable"
            try:
                old = read_record(self.path)
            except RunRecordError as exc:
                why = str(exc)
            else:
                if old.header.get("trainer") == header.get("trainer"):
                    for key in KEPT_ON_RESUME:
                        if key in old.header:
                            header[key] = old.header[key]
                    kept = [json_line(e) for e in old.epochs if e["epoch"] <= epoch]
                    kept.insert(0, json_line(header))
                else:
                    why = (
                        f"it is the record of trainer {old.header.get('trainer')!r}, not of "
                        f"{header.get('trainer')!r}"
                    )
                    suffix = "other"
            if why is not None:
                aside = self._aside(suffix)
                os.replace(self.path, aside)
                logger.warning(
                    "the run record %s cannot be resumed (%s); it was moved to %s and the "
                    "record starts afresh",
                    self.path,
                    why,
                    aside,
                )
        resumed = bool(kept)
        if not resumed:
            kept = [json_line(header)]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, "".join(kept))
        return resumed

    def _aside(self, suffix: str) -> Path:
        """A free name beside the record for an earlier one moved aside."""
        n = 1
        while True:
            aside = self.path.with_name(f"{self.path.name}.{suffix}-{n}")
            if not aside.exists():
                return aside
            n += 1

    def write(self, entry: Mapping[str, Any], *, sync: bool = False) -> None:
        """Append ``entry`` as one line, in one write, flushed (and ``fsync``-ed if ``sync``)."""
        line = json_line(entry)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            if sync:
                os.fsync(f.fileno())
