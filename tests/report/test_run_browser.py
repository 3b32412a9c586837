"""The page of a one-shot run in a real headless Chromium: a real search's page draws with no
console error, a probability heat-map per label that has probabilities, the cell diagrams
as SVG (switching epoch redraws them), the metric switch; and the pages of records that are
short of something (no epoch yet, a line cut short, no architecture) say so."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from nastrain import htmlreport


def _records_module() -> Any:
    """The trainers of test_run_record.py (a sibling; tests are imported by path here)."""
    name = "nastrain_test_run_record_trainers"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).with_name("test_run_record.py")
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def soft_page(tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("run")
    # A weight half of 3/4: with it this seeded search changes its cell after epoch 1
    # (test_the_seeded_search_of_these_pages_changes_its_cell_after_epoch_1).
    _records_module().SoftTrainer(
        num_epochs=4, checkpoint_dir=folder / "run", split_fraction=0.75
    ).fit()
    page = htmlreport.report(folder / "run", folder / "page.html")
    return page, htmlreport.read_embedded(page.read_text())


def test_the_seeded_search_of_these_pages_changes_its_cell_after_epoch_1(soft_page) -> None:
    # What the epoch switch below is tested on; checked here too, where no browser is.
    _, data = soft_page
    assert [d["epochs"] for d in data["diagrams"]] == [[1], [2, 3, 4]]


def script(browser: Any, code: str) -> Any:
    return browser.execute_script(code)


def test_a_real_run_s_page_draws_every_section_without_console_errors(
    soft_page, open_page, browser
) -> None:
    page, data = soft_page
    assert open_page(page) == []
    labels = [c["label"] for c in data["header"]["choices"]]
    # A heat-map per label, each an ECharts heatmap of epochs x candidates.
    heatmaps = script(
        browser,
        """return [...document.querySelectorAll('#probabilities .heatmap')].map((box) => {
             const chart = echarts.getInstanceByDom(box.querySelector('.chart'));
             const option = chart.getOption();
             return {label: box.dataset.label, type: option.series[0].type,
                     x: option.xAxis[0].data, y: option.yAxis[0].data,
                     cells: option.series[0].data.length};
           });""",
    )
    assert [h["label"] for h in heatmaps] == labels
    for heatmap, choice in zip(heatmaps, data["header"]["choices"]):
        assert heatmap["type"] == "heatmap" and heatmap["y"] == choice["candidates"]
        assert heatmap["x"] == [1, 2, 3, 4]
        assert heatmap["cells"] == 4 * len(choice["candidates"])
    # The cells as SVG: the final cell's nodes and its edges' operations.
    final = data["epochs"][-1]
    cell = final["graph"]["cells"]["cell"]
    drawn = script(
        browser,
        """const svg = document.querySelector('#cell-diagrams svg');
           return {nodes: svg.querySelectorAll('g.node').length,
                   edges: svg.querySelectorAll('path.edge').length,
                   texts: [...svg.querySelectorAll('text')].map((t) => t.textContent),
                   width: svg.getBoundingClientRect().width};""",
    )
    assert drawn["nodes"] == len(cell["nodes"]) and drawn["edges"] == len(cell["edges"])
    assert final["architecture"]["edge_01"] in drawn["texts"] and drawn["width"] > 100
    # The final architecture's card lists every label with its chosen value.
    rows = script(
        browser,
        "return [...document.querySelectorAll('#final-arch-table tbody tr')]"
        ".map((tr) => [...tr.cells].map((td) => td.textContent));",
    )
    chosen = {row[0]: row[1] for row in rows}
    assert chosen == {
        label: (value if isinstance(value, str) else json.dumps(value, separators=(",", ":")))
        for label, value in final["architecture"].items()
    }
    # Entropy: a line per label; the metric switch redraws the curve of the chosen key.
    series = script(
        browser,
        "return echarts.getInstanceByDom(document.getElementById('entropy-chart'))"
        ".getOption().series.map((s) => s.name);",
    )
    assert series == labels
    shown = script(
        browser,
        """const select = document.getElementById('metric-key');
           select.value = 'acc'; select.dispatchEvent(new Event('change'));
           const s = echarts.getInstanceByDom(document.getElementById('metric-chart'))
             .getOption().series[0];
           return {name: s.name, data: s.data};""",
    )
    assert shown["name"] == "acc"
    assert [point[1] for point in shown["data"]] == [e["metrics"]["acc"] for e in data["epochs"]]


def test_the_cells_of_an_earlier_epoch_are_one_switch_away(soft_page, open_page, browser) -> None:
    page, data = soft_page
    assert open_page(page) == []
    options = script(
        browser,
        "const s = document.getElementById('diagram-epoch');"
        "return s ? [...s.options].map((o) => Number(o.value)) : null;",
    )
    assert len(data["diagrams"]) >= 2  # this seeded search changes its cell after epoch 1
    assert options == [1, 2, 3, 4]
    first = data["epochs"][0]["graph"]["cells"]["cell"]
    labels = script(
        browser,
        """const s = document.getElementById('diagram-epoch');
           s.value = '1'; s.dispatchEvent(new Event('change'));
           return [...document.querySelectorAll('#cell-diagrams .edge-label text')]
             .map((t) => t.textContent);""",
    )
    assert labels == [op for _, _, op in first["edges"] if op is not None]


def _write(path: Path, entries: list[dict[str, Any]], tail: str = "") -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries) + tail)
    return path


def test_pages_of_records_short_of_something_say_so(soft_page, open_page, browser, tmp_path):
    _, data = soft_page
    header, epochs = data["header"], data["epochs"]
    # Only a header: the search has not finished an epoch.
    record = _write(tmp_path / "run.jsonl", [header])
    assert open_page(htmlreport.report(record, tmp_path / "empty.html")) == []
    assert script(browser, "return document.getElementById('no-epochs') !== null")
    # A line cut short: the page notes it and draws what came before.
    _write(record, [header, *epochs[:2]], tail='{"type": "epoch", "epo')
    assert open_page(htmlreport.report(record, tmp_path / "cut.html")) == []
    notes = script(
        browser,
        "return [...document.querySelectorAll('#notes .note')].map((p) => p.textContent);",
    )
    assert len(notes) == 1 and "cut short" in notes[0]
    assert "running" in script(browser, "return document.getElementById('subtitle').textContent")
    # No architecture (uniform sampling prefers none) and no probabilities: no heat-map.
    bare = [
        {**e, "architecture": None, "graph": None, "probabilities": {}, "entropy": {}}
        for e in epochs
    ]
    failed = {"type": "end", "time": 0, "epochs": 4, "status": "failed", "error": "E: boom"}
    _write(record, [header, *bare, failed])
    assert open_page(htmlreport.report(record, tmp_path / "bare.html")) == []
    found = script(
        browser,
        """return {none: document.getElementById('no-architecture') !== null,
                   heatmaps: document.querySelectorAll('#probabilities').length,
                   diagrams: document.querySelectorAll('#diagrams').length,
                   error: document.getElementById('run-error').textContent};""",
    )
    assert found == {"none": True, "heatmaps": 0, "diagrams": 0, "error": "stopped by E: boom"}
    assert not (tmp_path / "bare.cell.dot").exists()  # no graph, no .dot


HOSTILE = '<img src=x onerror="window.pwned = 1">'


def test_a_strangers_record_cannot_put_markup_into_the_page(
    soft_page, open_page, browser, tmp_path, show_every_tooltip
):
    # Labels and candidate names come from the record, which may come from anyone: they reach
    # the page (tables, diagrams, tooltips, which ECharts renders as HTML) as text only.
    page, _ = soft_page
    hostile = page.parent / "run" / "run.jsonl"
    text = hostile.read_text()
    labels = {c["label"] for c in htmlreport.read_embedded(page.read_text())["header"]["choices"]}
    for label in labels:
        text = text.replace(json.dumps(label), json.dumps(label + HOSTILE))
    record = tmp_path / "run.jsonl"
    record.write_text(text)
    assert open_page(htmlreport.report(record, tmp_path / "page.html")) == []
    assert show_every_tooltip() > 0
    assert HOSTILE in browser.find_element("tag name", "main").text  # shown, as text
    assert script(browser, "return document.querySelectorAll('img').length") == 0
    assert script(browser, "return window.pwned === undefined")


def test_labels_named_like_object_properties_are_read_as_the_record_s_own(
    open_page, browser, tmp_path
) -> None:
    # "constructor" and "toString" are properties of every JS object and "__proto__" its
    # prototype: the page must read only what the record holds under such a label or key.
    labels = ["constructor", "__proto__", "toString"]
    header = {
        "format": "nastrain-run",
        "schema_version": 1,
        "type": "header",
        "trainer": "soft",
        "choices": [
            {"label": label, "kind": "layer", "candidates": ["a", "b"], "n_chosen": 1}
            for label in labels
        ],
        "num_epochs": 2,
    }
    epochs = [
        {
            "type": "epoch",
            "epoch": epoch,
            "time": float(epoch),
            "metrics": {"loss": 1.0 / epoch, **({"constructor": 0.5} if epoch == 2 else {})},
            "probabilities": {"__proto__": [0.3, 0.7]},  # "constructor", "toString": none
            "entropy": {"__proto__": 0.61},
            "architecture": {"constructor": "a", "__proto__": "b", "toString": "a"},
            "graph": None,
        }
        for epoch in (1, 2)
    ]
    record = _write(tmp_path / "run.jsonl", [header, *epochs])
    assert open_page(htmlreport.report(record, tmp_path / "page.html")) == []
    # (As JSON text: chromedriver's own serializer calls this object circular.)
    drawn = json.loads(
        script(
            browser,
            """const series = (id) => echarts.getInstanceByDom(document.getElementById(id))
             .getOption().series;
           const select = document.getElementById('metric-key');
           select.value = 'constructor'; select.dispatchEvent(new Event('change'));
           const out = {
             heatmaps: [...document.querySelectorAll('#probabilities .heatmap')]
               .map((box) => box.dataset.label),
             entropy: series('entropy-chart').map((s) => s.name),
             rows: [...document.querySelectorAll('#final-arch-table tbody tr')]
               .map((tr) => [...tr.cells].map((td) => td.textContent)),
             metric: series('metric-chart')[0].data,
           };
           return JSON.stringify(out);""",
        )
    )
    assert drawn["heatmaps"] == ["__proto__"] and drawn["entropy"] == ["__proto__"]
    assert drawn["rows"] == [
        ["constructor", "a", "–"],
        ["__proto__", "b", "0.7"],
        ["toString", "a", "–"],
    ]
    assert drawn["metric"] == [[1, None], [2, 0.5]]  # epoch 1 has no "constructor" metric
