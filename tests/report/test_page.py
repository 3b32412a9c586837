"""The page frame every report shares: the vendored library is the one its README names,
the embedded JSON survives any string, the page asks for nothing from the network, and it
is written whole or not at all."""

from __future__ import annotations

import hashlib
import json
import re
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import pytest

from nastrain import htmlreport
from nastrain.htmlreport import page

VENDOR = resources.files("nastrain.htmlreport") / "vendor"
#: The sha256 of echarts@6.1.0's dist/echarts.min.js, as vendor/README.md records it.
ECHARTS_SHA256 = "b66b25aeb4df84e33199dc21694014d336d222cbd9deb0e5a7c14bd6aa0d0fd0"


def test_the_vendored_echarts_is_the_release_its_readme_names() -> None:
    code = (VENDOR / "echarts.min.js").read_bytes()
    assert hashlib.sha256(code).hexdigest() == ECHARTS_SHA256
    readme = (VENDOR / "README.md").read_text()
    assert "echarts@6.1.0" in readme and ECHARTS_SHA256 in readme
    # Apache-2.0: its license and notice travel with it.
    assert "Apache License" in (VENDOR / "ECHARTS-LICENSE").read_text()
    assert "Apache ECharts" in (VENDOR / "ECHARTS-NOTICE").read_text()


@pytest.mark.parametrize(
    "text",
    ["</script><script>alert(1)</script>", "<!-- x", "a & b > c", "\u2028\u2029", "ünï 😀"],
)
def test_embedded_json_reads_back_unchanged_and_cannot_end_its_element(text: str) -> None:
    data = {"label": text, "values": [1.5, float("nan"), float("inf")], "nested": {text: [text]}}
    embedded = page.embed_json(data)
    assert "<" not in embedded and ">" not in embedded and "&" not in embedded
    assert json.loads(embedded) == {
        "label": text,
        "values": [1.5, None, None],  # JSON has no NaN or infinity
        "nested": {text: [text]},
    }


def test_a_page_embeds_its_data_and_loads_nothing_from_outside(monkeypatch, tmp_path) -> None:
    (tmp_path / "probe.js").write_text("NASTRAIN.run(() => {});\n")
    real = page._asset

    def asset(*parts: str) -> str:
        return (tmp_path / "probe.js").read_text() if parts[-1] == "probe.js" else real(*parts)

    monkeypatch.setattr(page, "_asset", asset)
    data = {"title": "</script> & co", "rows": [{"a": 1}]}
    html = page.render_page("probe", "A <probe>", data)
    assert page.read_embedded(html) == data
    assert "<title>A &lt;probe&gt;</title>" in html
    # No element loads anything (no src or href attribute: the parser reads script contents
    # as text, as a browser does), and the page's policy forbids fetching.
    tags = Tags()
    tags.feed(html)
    assert [(tag, name) for tag, name in tags.loads] == []
    assert "default-src 'none'" in html
    script_src = re.search(r"script-src ([^;]*);", html)
    assert script_src and "unsafe" not in script_src.group(1)  # only hashed scripts run
    assert script_src.group(1).count("'sha256-") == 3
    # Every script is inline: the data and three scripts, each closed where it should be.
    assert tags.scripts == 4


class Tags(HTMLParser):
    """The page's elements as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[tuple[str, str]] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.scripts += tag == "script"
        self.loads += [(tag, name) for name, _ in attrs if name in ("src", "href", "srcset")]


def test_a_page_is_written_whole_and_never_into_a_missing_folder(tmp_path: Path) -> None:
    target = tmp_path / "r.html"
    target.write_text("old page")
    page.write_page(target, "new page")
    assert target.read_text() == "new page"
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]  # no temporary file left
    missing = tmp_path / "nowhere" / "r.html"
    with pytest.raises(FileNotFoundError, match=r"the folder .*nowhere does not exist"):
        page.write_page(missing, "x")
    assert not missing.parent.exists()


def test_a_source_that_is_neither_a_store_nor_a_run_record_is_named(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(htmlreport.ReportError, match=r"notes\.txt is neither an experiment store"):
        htmlreport.source_kind(text)
    with pytest.raises(htmlreport.ReportError, match=r"folder without a run record"):
        htmlreport.source_kind(tmp_path)
    with pytest.raises(htmlreport.ReportError, match=r"absent\.sqlite does not exist"):
        htmlreport.source_kind(tmp_path / "absent.sqlite")
    output = tmp_path / "out.html"
    with pytest.raises(htmlreport.ReportError):
        htmlreport.report(text, output)
    assert not output.exists()


def test_a_report_is_never_written_over_its_source_or_other_data(tmp_path: Path) -> None:
    record = tmp_path / "run" / "run.jsonl"
    record.parent.mkdir()
    record.write_text('{"type": "header", "format": "nastrain-run"}\n')
    store = tmp_path / "other.sqlite"
    store.write_bytes(b"SQLite format 3\x00" + bytes(100))
    before = (record.read_bytes(), store.read_bytes())
    for source, output, match in [
        (record, record, "over its own source"),
        (record.parent, record, "over its own source"),  # the folder's record is the source
        (record, store, "over .*other.sqlite: it is an experiment store"),
        (store, tmp_path / "run", "it is a folder"),
    ]:
        with pytest.raises(htmlreport.ReportError, match=match):
            htmlreport.report(source, output)
    assert (record.read_bytes(), store.read_bytes()) == before


def test_markup_that_slips_into_a_page_cannot_run(monkeypatch, tmp_path, open_page, browser):
    # The page's policy lets only its own three scripts run (by hash): an event handler that
    # a missed escape let in is refused by the browser, which says so on the console.
    hostile = '<img src=x onerror="window.pwned = 1"><b id="injected">x</b>'
    probe = f"NASTRAIN.run(() => {{ document.getElementById('report').innerHTML = {hostile!r}; }});"
    real = page._asset
    monkeypatch.setattr(
        page, "_asset", lambda *parts: probe if parts[-1] == "probe.js" else real(*parts)
    )
    target = page.write_page(tmp_path / "p.html", page.render_page("probe", "probe", {}))
    errors = open_page(target)
    assert browser.find_elements("id", "injected")  # the markup is there...
    assert browser.execute_script("return window.pwned === undefined")  # ...but did not run
    assert any("Content Security Policy" in e["message"] for e in errors), errors
