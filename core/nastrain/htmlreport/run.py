"""The report of a one-shot search, from its run record (``run.jsonl``, see
:mod:`nastrain.runrecord`): what :func:`collect` gathers for ``assets/run.js`` to draw
(probability heat-maps per label over epochs, entropy and metric curves, the architecture
and how it changed, the cell diagrams), and the diagrams themselves.

A run whose record carries a ``graph`` (a DARTS space's cells) gets each cell drawn here as
an SVG of our own, a layered drawing: the nodes in columns by their longest path from a
cell input, each edge a curve labelled with its operation. The page inlines it;
:func:`write_dot_files` writes each cell of the final architecture as Graphviz text beside
the page (``<page stem>.<cell>.dot``), which ``dot -Tsvg`` renders where Graphviz is
installed (nothing here needs it).
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import os
import re
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nastrain.htmlreport import RUN_RECORD, ReportError
from nastrain.htmlreport.page import write_page
from nastrain.runrecord import RunRecord, RunRecordError, read_record

__all__ = [
    "STALE_SECONDS",
    "cell_dot",
    "cell_svg",
    "collect",
    "dot_paths",
    "ended",
    "write_dot_files",
]

# The diagrams' geometry (pixels).
_COLUMN = 190
_ROW = 64
_BOX_W, _BOX_H = 84, 30
_MARGIN = 24
#: Fill colours of the nodes: cell inputs, intermediate nodes, the output.
_FILLS = {"input": "#d8f0dc", "node": "#dbe7fb", "output": "#fbeec8"}
#: Colours of the edges, picked per operation name (stable across pages).
_PALETTE = (
    "#2f6fdb",
    "#d9480f",
    "#2b8a3e",
    "#862e9c",
    "#c2255c",
    "#0b7285",
    "#5f3dc4",
    "#e67700",
    "#495057",
)


def _read(path: str | os.PathLike[str]) -> RunRecord:
    path = Path(path)
    if path.is_dir():  # a checkpoint or log directory
        path = path / RUN_RECORD
    try:
        return read_record(path)
    except RunRecordError as exc:
        raise ReportError(str(exc)) from None


#: How long (seconds) a record written on another host (or by a nastrain that did not note
#: its writer) may stay unchanged before :func:`ended` takes its run as gone: an hour.
STALE_SECONDS = 3600.0


def ended(path: str | os.PathLike[str], *, stale_after: float = STALE_SECONDS) -> bool:
    """Whether the run of the record at ``path`` (the file, or the folder holding it) is
    over, so that ``--watch`` stops: its record has an end line (its ``fit()`` returned or
    raised), or its writer is gone. A killed run writes no end line; then the header's
    ``pid`` and ``host`` say who wrote it: on this host, a process that no longer runs
    (ended; a pid taken since by another process reads as alive); written elsewhere (or
    by a record without them), a file unchanged for ``stale_after`` seconds (an hour: an
    epoch longer than that on another host ends a watch early)."""
    record = _read(path)
    if record.end is not None:
        return True
    pid, host = record.header.get("pid"), record.header.get("host")
    local = host == socket.gethostname()
    if local and isinstance(pid, int) and not isinstance(pid, bool) and pid > 0:
        return not _alive(pid)
    try:
        unchanged = time.time() - record.path.stat().st_mtime
    except OSError:
        return True  # gone since it was read
    return unchanged >= stale_after


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:  # not a pid this system has
        return False
    return True


def collect(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The data the page of the run record at ``path`` (the file, or the folder holding
    it) draws (``kind`` ``"run"``): the
    record's ``header``, ``epochs`` and ``end`` as they are in the file, the ``notes`` of
    what was skipped reading it, the run's ``status`` and the cell ``diagrams`` (each
    distinct graph once, with the epochs it held and each cell's SVG), and ``dot``, the
    final architecture's cells as Graphviz text. A file that is not a run record is a
    :class:`~nastrain.htmlreport.ReportError` naming it."""
    record = _read(path)
    header, epochs, end = record.header, record.epochs, record.end
    status = str(end.get("status", "completed")) if end is not None else "running"
    diagrams: list[dict[str, Any]] = []
    by_key: dict[str, dict[str, Any]] = {}
    for entry in epochs:
        cells = _cells(entry.get("graph"), record.path, entry["epoch"])
        if not cells:
            continue
        key = json.dumps(cells, sort_keys=True)
        diagram = by_key.get(key)
        if diagram is None:
            diagram = {
                "epochs": [],
                "cells": [
                    {"name": name, "svg": cell_svg(cell, title=f"{name} cell")}
                    for name, cell in cells.items()
                ],
            }
            by_key[key] = diagram
            diagrams.append(diagram)
        diagram["epochs"].append(entry["epoch"])
    final = _cells(epochs[-1].get("graph"), record.path, epochs[-1]["epoch"]) if epochs else {}
    trainer = header.get("trainer", "one-shot")
    return {
        "kind": "run",
        "title": f"{trainer} search: {record.path.parent.name or record.path.name}",
        "source": str(record.path),
        "status": status,
        "header": header,
        "epochs": epochs,
        "end": end,
        "notes": record.notes,
        "diagrams": diagrams,
        "dot": {name: cell_dot(cell, name=name) for name, cell in final.items()},
    }


def _cells(graph: Any, path: Path, epoch: int) -> dict[str, dict[str, Any]]:
    """The cells of an epoch's ``graph`` (checked), or ``{}`` when it has none."""
    if graph is None:
        return {}
    where = f"{path}: epoch {epoch}'s graph"
    cells = graph.get("cells") if isinstance(graph, Mapping) else None
    if not isinstance(cells, Mapping):
        raise ReportError(f'{where} is not an object with "cells"')
    checked: dict[str, dict[str, Any]] = {}
    for name, cell in cells.items():
        if not isinstance(cell, Mapping):
            raise ReportError(f"{where}: cell {name!r} is not an object")
        nodes, edges = cell.get("nodes"), cell.get("edges")
        if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
            raise ReportError(f"{where}: cell {name!r} has no list of node names")
        if not isinstance(edges, list):
            raise ReportError(f"{where}: cell {name!r} has no list of edges")
        known = set(nodes)
        for edge in edges:
            if (
                not isinstance(edge, list)
                or len(edge) != 3
                or not all(isinstance(e, str) for e in edge[:2])
                or not (edge[2] is None or isinstance(edge[2], str))
            ):
                raise ReportError(
                    f"{where}: cell {name!r} has an edge {edge!r}, not [source, target, op]"
                )
            if edge[0] not in known or edge[1] not in known:
                raise ReportError(
                    f"{where}: cell {name!r} has an edge {edge!r} between nodes it does not list"
                )
        checked[str(name)] = {"nodes": list(nodes), "edges": [list(e) for e in edges]}
    return checked


# --- the diagrams --------------------------------------------------------------------------


def _ranks(nodes: Sequence[str], edges: Sequence[Sequence[Any]]) -> dict[str, int]:
    """Each node's column: its longest path from a node without inputs (cycles cut)."""
    rank = dict.fromkeys(nodes, 0)
    for _ in range(len(nodes)):
        changed = False
        for source, target, _op in edges:
            if source != target and rank[target] < rank[source] + 1 <= len(nodes):
                rank[target] = rank[source] + 1
                changed = True
        if not changed:
            break
    return rank


def _kind(node: str, edges: Sequence[Sequence[Any]]) -> str:
    has_in = any(e[1] == node for e in edges)
    has_out = any(e[0] == node for e in edges)
    if not has_in:
        return "input"
    return "node" if has_out else "output"


def _colour(op: str) -> str:
    digest = hashlib.sha256(op.encode("utf-8")).digest()
    return _PALETTE[digest[0] % len(_PALETTE)]


def _layout(cell: Mapping[str, Any]) -> tuple[dict[str, tuple[float, float]], int, int]:
    nodes, edges = cell["nodes"], cell["edges"]
    rank = _ranks(nodes, edges)
    columns: dict[int, list[str]] = {}
    for node in nodes:
        columns.setdefault(rank[node], []).append(node)
    tallest = max((len(c) for c in columns.values()), default=1)
    width = 2 * _MARGIN + max(columns, default=0) * _COLUMN + _BOX_W
    height = 2 * _MARGIN + (tallest - 1) * _ROW + _BOX_H
    where: dict[str, tuple[float, float]] = {}
    for column, members in columns.items():
        top = _MARGIN + (tallest - len(members)) * _ROW / 2
        for i, node in enumerate(members):
            where[node] = (_MARGIN + column * _COLUMN, top + i * _ROW)
    return where, width, height


def cell_svg(cell: Mapping[str, Any], *, title: str = "cell") -> str:
    """One cell (``{"nodes": [...], "edges": [[source, target, op], ...]}``) as an SVG
    document: nodes as boxes in columns, edges as labelled curves. Every text is escaped."""
    where, width, height = _layout(cell)
    esc = html.escape
    # The arrow head's id, unique to this drawing: a page inlines several.
    arrow = (
        "arrow-"
        + hashlib.sha256(json.dumps([title, cell], sort_keys=True).encode("utf-8")).hexdigest()[:10]
    )
    parts: list[str] = []
    labels: list[str] = []
    low, high = 0.0, float(height)  # the drawing's vertical extent (arcs may leave the grid)
    long_edges = 0
    for index, (source, target, op) in enumerate(cell["edges"]):
        sx, sy = where[source]
        tx, ty = where[target]
        x1, y1 = sx + _BOX_W, sy + _BOX_H / 2
        x2, y2 = tx, ty + _BOX_H / 2
        span = round((tx - sx) / _COLUMN)
        if span < 1:  # a backward or same-column edge: around below the boxes
            x1, x2 = sx + _BOX_W / 2, tx + _BOX_W / 2
            y1, y2 = sy + _BOX_H, ty + _BOX_H
            bend = max(y1, y2) + _ROW / 2
            c1, c2 = (x1, bend), (x2, bend)
        elif span == 1:  # to the next column: an S-curve
            dx = (x2 - x1) / 2
            c1, c2 = (x1 + dx, y1), (x2 - dx, y2)
        else:
            # Over the columns between: an arc above or below their boxes, in turn, higher
            # the farther it goes, so that it crosses no box and its label sits apart.
            long_edges += 1
            side = -1 if long_edges % 2 else 1
            edge_y = min(y1, y2) - _BOX_H / 2 if side < 0 else max(y1, y2) + _BOX_H / 2
            lift = edge_y + side * (10 + 8 * span)
            c1, c2 = (x1 + _COLUMN / 3, lift), (x2 - _COLUMN / 3, lift)
        path = (
            f"M {x1:.1f} {y1:.1f} C {c1[0]:.1f} {c1[1]:.1f} {c2[0]:.1f} {c2[1]:.1f} "
            f"{x2:.1f} {y2:.1f}"
        )
        # The label at the curve's middle (t = 1/2 of the cubic).
        mx = (x1 + 3 * c1[0] + 3 * c2[0] + x2) / 8
        my = (y1 + 3 * c1[1] + 3 * c2[1] + y2) / 8
        low = min(low, c1[1] - 4, c2[1] - 4, my - 12)
        high = max(high, c1[1] + 4, c2[1] + 4, my + 12)
        colour = "#8a93a3" if op is None else _colour(op)
        dash = ' stroke-dasharray="4 3"' if op is None else ""
        parts.append(
            f'<path class="edge" data-edge="{index}" d="{path}" fill="none" stroke="{colour}" '
            f'stroke-width="1.6"{dash} marker-end="url(#{arrow})"/>'
        )
        if op is not None:
            w = 6.2 * len(op) + 8
            labels.append(
                f'<g class="edge-label"><rect x="{mx - w / 2:.1f}" y="{my - 8:.1f}" '
                f'width="{w:.1f}" height="15" rx="3" fill="#ffffff" fill-opacity="0.9"/>'
                f'<text x="{mx:.1f}" y="{my + 3.5:.1f}" text-anchor="middle" '
                f'fill="{colour}">{esc(op)}</text></g>'
            )
    parts.extend(labels)
    for node in cell["nodes"]:
        x, y = where[node]
        fill = _FILLS[_kind(node, cell["edges"])]
        parts.append(
            f'<g class="node" data-node="{esc(node)}"><rect x="{x:.1f}" y="{y:.1f}" '
            f'width="{_BOX_W}" height="{_BOX_H}" rx="5" fill="{fill}" stroke="#5b6475"/>'
            f'<text x="{x + _BOX_W / 2:.1f}" y="{y + _BOX_H / 2 + 4:.1f}" '
            f'text-anchor="middle" font-size="12">{esc(node)}</text></g>'
        )
    top, tall = math.floor(low), math.ceil(high - low)
    head = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="cell-diagram" width="{width}" '
        f'height="{tall}" viewBox="0 {top} {width} {tall}" role="img" '
        f'aria-label="{esc(title)}" font-family="sans-serif" font-size="11">',
        f"<title>{esc(title)}</title>",
        f'<defs><marker id="{arrow}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" '
        'fill="#5b6475"/></marker></defs>',
    ]
    return "".join([*head, *parts, "</svg>"])


def _dot_id(text: str) -> str:
    """``text`` as a quoted DOT identifier."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def cell_dot(cell: Mapping[str, Any], *, name: str = "cell") -> str:
    """One cell as a Graphviz ``digraph`` (left to right; edges labelled with their
    operation, plain connections dashed), for ``dot -Tsvg``."""
    lines = [
        f"digraph {_dot_id(name)} {{",
        "  rankdir=LR;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    for node in cell["nodes"]:
        fill = _FILLS[_kind(node, cell["edges"])]
        lines.append(f'  {_dot_id(node)} [fillcolor="{fill}"];')
    for source, target, op in cell["edges"]:
        if op is None:
            attributes = 'style="dashed", color="#8a93a3"'
        else:
            attributes = f'label={_dot_id(op)}, color="{_colour(op)}"'
        lines.append(f"  {_dot_id(source)} -> {_dot_id(target)} [{attributes}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _file_part(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name) or "cell"


def dot_paths(data: Mapping[str, Any], page: str | os.PathLike[str]) -> dict[str, Path]:
    """Where :func:`write_dot_files` puts each cell of ``data`` (:func:`collect`'s) for the
    page at ``page``: ``<page stem>.<cell>.dot`` beside it, the cell's name kept to letters,
    digits, ``_`` and ``-``. Names that come out alike (``"a b"`` and ``"a_b"``, or ``"A"``
    and ``"a"`` on a case-blind disk) get ``-2``, ``-3``, ... in the order of the cells, so
    that no cell's file overwrites another's."""
    page = Path(page)
    stem = page.name[: -len(page.suffix)] if page.suffix else page.name
    paths: dict[str, Path] = {}
    taken: set[str] = set()
    for name in data.get("dot", {}):
        base = part = _file_part(name)
        n = 1
        while part.casefold() in taken:
            n += 1
            part = f"{base}-{n}"
        taken.add(part.casefold())
        paths[name] = page.with_name(f"{stem}.{part}.dot")
    return paths


def write_dot_files(data: Mapping[str, Any], page: str | os.PathLike[str]) -> list[Path]:
    """Write each cell of the final architecture (``data["dot"]``) as Graphviz text beside
    the page at ``page`` (atomically, as the page); returns the paths written."""
    written = []
    for name, path in dot_paths(data, page).items():
        written.append(write_page(path, data["dot"][name]))
    return written
