"""One self-contained HTML page: the shared frame of every report.

A page is the vendored ECharts (``vendor/echarts.min.js``), the report's CSS and the
shared JavaScript helpers (``assets/report.css``, ``assets/common.js``), then one
kind's script (``assets/<kind>.js``), all inlined, and the data it draws embedded as
JSON in ``<script type="application/json" id="nastrain-data">``. Nothing is fetched:
the page opens from a file, offline, anywhere.

The JSON is embedded so that no string in it can end the element or open a comment
(``<``, ``>`` and ``&`` are written as ``\\u003c``, ``\\u003e``, ``\\u0026``, which
``JSON.parse`` and Python's ``json.loads`` read back unchanged), and the page is written
to a temporary file beside the output and renamed over it, so a reader (a browser that
reloads, ``--watch``) sees the old page or the new one, never half of one.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from nastrain._files import atomic_write_text, finite

__all__ = ["DATA_ELEMENT_ID", "embed_json", "read_embedded", "render_page", "write_page"]

#: The id of the element that holds the page's data (``../shared/CONTRACT.md``).
DATA_ELEMENT_ID = "nastrain-data"

_ESCAPES = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026"}
_ESCAPES.update({0x2028: "\\u2028", 0x2029: "\\u2029"})


def embed_json(data: Any) -> str:
    """``data`` as JSON text that is safe inside a ``<script>`` element."""
    text = json.dumps(finite(data), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.translate(_ESCAPES)


def _asset(*parts: str) -> str:
    return resources.files("nastrain.htmlreport").joinpath(*parts).read_text(encoding="utf-8")


def render_page(kind: str, title: str, data: Any) -> str:
    """The whole page of one ``kind`` of report (``"experiment"`` or ``"run"``): its
    script is ``assets/<kind>.js``, which draws ``data`` into the page's ``<main>``."""
    script = _asset("assets", f"{kind}.js")
    scripts = [
        ("echarts", _asset("vendor", "echarts.min.js")),
        ("common", _asset("assets", "common.js")),
        (kind, script),
    ]
    for name, code in scripts:
        # A literal "</script" inside inlined code would end its element early.
        if "</script" in code.lower():
            raise ValueError(f"the {name} script contains '</script', which cannot be inlined")
    bodies = [f"\n{code}\n" for _, code in scripts]
    # Only these three scripts may run: each is allowed by its hash, so markup that a missed
    # escape let into the page (an onerror= attribute, a <script> element) does not run.
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
        for body in bodies
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        # No network: the page may only use what it carries (its scripts, styles, data:).
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        f"script-src {hashes}; style-src 'unsafe-inline'; img-src data:; "
        'font-src data:">\n'
        f"<title>{html.escape(title)}</title>\n"
        f"<style>\n{_asset('assets', 'report.css')}\n</style>\n"
        f'<script type="application/json" id="{DATA_ELEMENT_ID}">{embed_json(data)}</script>\n'
        "</head>\n<body>\n"
        f'<header><h1>{html.escape(title)}</h1><p id="subtitle"></p></header>\n'
        '<main id="report" data-kind="'
        + html.escape(kind)
        + '"></main>\n'
        + "".join(f"<script>{body}</script>\n" for body in bodies)
        + "</body>\n</html>\n"
    )


def read_embedded(page: str) -> Any:
    """The data a page written by :func:`render_page` embeds (for tests and users)."""
    start_tag = f'<script type="application/json" id="{DATA_ELEMENT_ID}">'
    start = page.index(start_tag) + len(start_tag)
    return json.loads(page[start : page.index("</script>", start)])


def write_page(path: str | os.PathLike[str], page: str) -> Path:
    """Write ``page`` to ``path`` atomically (a temporary file beside it, then a rename).

    A missing folder is an error naming it (nothing is created)."""
    target = Path(path)
    folder = target.parent
    if not folder.is_dir():
        raise FileNotFoundError(
            f"cannot write the report to {target}: the folder {folder} does not exist"
        )
    return atomic_write_text(target, page)
