"""The experiment report in a real headless Chromium: it draws a real multi-trial store with
no console error, its trial table sorts when a header is clicked, the metric switch redraws
the intermediate curves, "best" follows the experiment's mode, and the JSON the browser
reads (and the curves it decodes) is what the store holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import nastrain
from nastrain.experiments.store import Store
from nastrain.htmlreport import experiment as report_experiment


def _experiment(trials, store: Path, **options: Any) -> nastrain.Experiment:
    return nastrain.Experiment(
        trials.SmallSpace(),
        trials.ScoreTrainer(None, epochs=3, fail=[3.0]),
        "grid",
        max_trials=options.pop("max_trials", 18),
        executor="inline",
        store=store,
        progress=False,
        **options,
    )


def _write(store: Path, tmp_path: Path) -> Path:
    return nastrain.report(store, tmp_path / "report.html")


def _column(browser: Any, label: str) -> list[str]:
    """The texts of the trial table's column ``label``, top to bottom."""
    return browser.execute_script(
        """
        const table = document.getElementById("trials");
        const headers = [...table.querySelectorAll("thead th")].map((th) => th.textContent);
        const at = headers.indexOf(arguments[0]);
        return [...table.querySelectorAll("tbody tr")].map((tr) => tr.children[at].textContent);
        """,
        label,
    )


def _series(browser: Any, chart: str) -> list[dict[str, Any]]:
    return browser.execute_script(
        "return echarts.getInstanceByDom(document.getElementById(arguments[0]))"
        ".getOption().series.map((s) => ({name: s.name, data: s.data}));",
        chart,
    )


def _number(text: str) -> float | None:
    return None if text == "–" else float(text)


@pytest.fixture
def grid_page(trials, tmp_path) -> tuple[Path, Path]:
    store = tmp_path / "s.sqlite"
    _experiment(trials, store).run()
    return store, _write(store, tmp_path)


def test_a_real_store_draws_every_section_with_no_console_error(
    grid_page, open_page, browser
) -> None:
    store, page = grid_page
    assert open_page(page) == []
    sections = browser.execute_script(
        "return [...document.querySelectorAll('main section')].map((s) => s.id);"
    )
    assert sections == [
        "experiment",
        "history",
        "curves",
        "table",
        "choices",
        "parallel",
        "timeline",
    ]
    with Store.read(store) as reader:
        best = max((t for t in reader.trials() if t.value is not None), key=lambda t: t.value)
    card = browser.find_element("id", "best").text
    assert card.startswith(f"Best architecture: trial {best.index}")
    # Per choice: a box per candidate of each label, from the final values of the trials
    # that chose it (with every trial as a dot); parallel coordinates: a line per succeeded one.
    boxes = browser.execute_script(
        """
        return [...document.querySelectorAll("#choices svg.boxes")].map((svg) => [
          svg.dataset.label,
          [...svg.querySelectorAll("g.box")].map((g) => ({
            ...g.dataset, dots: g.querySelectorAll("circle").length,
          })),
        ]);
        """
    )
    assert [label for label, _ in boxes] == ["a", "b", "c"]
    with Store.read(store) as reader:
        done = [t for t in reader.trials() if t.value is not None]
    for label, drawn in boxes:
        for box in drawn:
            # A layer choice's candidate is its name; an input choice's, the inputs as JSON.
            name = {t.index: t.arch[label] for t in done}
            name = {
                i: v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
                for i, v in name.items()
            }
            values = sorted(t.value for t in done if name[t.index] == box["candidate"])
            assert (float(box["min"]), float(box["max"])) == (values[0], values[-1])
            assert int(box["count"]) == box["dots"] == len(values)
        assert sum(box["dots"] for box in drawn) == len(done)
    (parallel,) = _series(browser, "parallel-chart")
    assert len(parallel["data"]) == 15


def test_clicking_a_header_sorts_the_trial_table(grid_page, open_page, browser) -> None:
    _, page = grid_page
    assert open_page(page) == []
    ranks = [_number(t) for t in _column(browser, "rank")]
    assert ranks == [*range(1, 16), None, None, None]  # ranked first, the failed ones after
    values = [_number(t) for t in _column(browser, "value")]
    assert values == sorted(values[:15], reverse=True) + [None] * 3
    header = browser.find_element("css selector", '#trials th[data-key="value"]')
    header.click()
    ascending = [_number(t) for t in _column(browser, "value")]
    assert ascending == sorted(v for v in values if v is not None) + [None] * 3
    assert header.get_attribute("aria-sort") == "ascending"
    header.click()
    descending = [_number(t) for t in _column(browser, "value")]
    assert descending == sorted((v for v in values if v is not None), reverse=True) + [None] * 3
    browser.find_element("css selector", '#trials th[data-key="index"]').click()
    assert [int(t) for t in _column(browser, "trial")] == list(range(18))
    # The filter box keeps the rows that contain its text.
    box = browser.find_element("css selector", "#table input[type=search]")
    box.send_keys("failed")
    assert _column(browser, "status") == ["failed"] * 3


def test_the_metric_switch_redraws_the_curves(trials, tmp_path, open_page, browser) -> None:
    experiment = _experiment(trials, tmp_path / "s.sqlite")
    curves = {
        0: [{"default": 0.5, "loss": 2.0}, {"default": 0.75, "loss": 1.0}],
        1: [{"default": 0.25, "loss": 3.0}, {"default": 0.5}, {"default": 0.625, "loss": 1.5}],
    }
    with Store.open(experiment.store_path, experiment.record) as store:
        for index, results in curves.items():
            trial = store.add_trial(index, {"a": "x", "b": "p", "c": [0, 1]}, index, "{}")
            for metric in results:
                store.add_result(trial, metric, False)
            store.add_result(trial, results[-1], True)
            store.end_trial(trial, "succeeded", None)
    assert open_page(_write(experiment.store_path, tmp_path)) == []

    def drawn() -> dict[str, list[list[Any]]]:
        return {s["name"]: s["data"] for s in _series(browser, "curves-chart")}

    def expected(key: str) -> dict[str, list[list[Any]]]:
        return {
            f"trial {i}": [[step, m.get(key)] for step, m in enumerate(results)]
            for i, results in curves.items()
        }

    assert drawn() == expected("default")
    from selenium.webdriver.support.ui import Select

    select = Select(browser.find_element("id", "curve-metric"))
    assert [o.get_attribute("value") for o in select.options] == ["default", "loss"]
    select.select_by_value("loss")
    assert drawn() == expected("loss")  # a step without the key is a gap (null)
    assert (
        browser.execute_script(
            "return echarts.getInstanceByDom(document.getElementById('curves-chart'))"
            ".getOption().yAxis[0].name;"
        )
        == "loss"
    )


def test_the_json_the_browser_reads_is_what_the_store_holds(grid_page, open_page, browser) -> None:
    store, page = grid_page
    assert open_page(page) == []
    document = browser.execute_script(
        "return JSON.parse(document.getElementById('nastrain-data').textContent);"
    )
    decoded = browser.execute_script("return window.NASTRAIN_EXPERIMENT.curves('default');")
    with Store.read(store) as reader:
        held = reader.observed_trials()
    assert report_experiment.trials(document) == held
    # What the page decodes in JavaScript from the columns: the stored results, per trial.
    assert decoded == [list(t.intermediate) for t in held]
    assert sum(len(c) for c in decoded) == 15 * 3


def test_smaller_is_better_everywhere(trials, tmp_path, open_page, browser) -> None:
    store = tmp_path / "s.sqlite"
    _experiment(trials, store, mode="min").run()
    assert open_page(_write(store, tmp_path)) == []
    with Store.read(store) as reader:
        held = [t for t in reader.trials() if t.value is not None]
    smallest = min(held, key=lambda t: (t.value, t.index))
    assert browser.find_element("id", "best").text.startswith(
        f"Best architecture: trial {smallest.index}"
    )
    _, best = _series(browser, "history-chart")
    running, lowest = [], None
    for t in sorted(held, key=lambda t: t.index):
        lowest = t.value if lowest is None else min(lowest, t.value)
        running.append([t.index, lowest, t.index])
    assert best["data"] == running
    assert _column(browser, "value")[0] == f"{smallest.value:g}"
    # The history against wall time: the trials in the order they ended.
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "history-axis")).select_by_value("time")
    _, best = _series(browser, "history-chart")
    by_end = sorted(held, key=lambda t: t.ended)
    assert [point[2] for point in best["data"]] == [t.index for t in by_end]
    seconds = [point[0] for point in best["data"]]
    assert seconds == sorted(seconds) and seconds[0] >= 0


def test_an_empty_and_a_crashed_experiment_render(
    trials, store_with_a_running_trial, tmp_path, open_page, browser
) -> None:
    empty = _experiment(trials, tmp_path / "empty.sqlite")
    Store.open(empty.store_path, empty.record).close()
    assert open_page(nastrain.report(empty.store_path, tmp_path / "empty.html")) == []
    assert "no trials yet" in browser.find_element("id", "no-trials").text
    _, crashed = store_with_a_running_trial
    assert open_page(nastrain.report(crashed, tmp_path / "crashed.html")) == []
    assert _column(browser, "status") == ["interrupted"]
    assert "no experiment process holds the store" in browser.find_element("id", "trials").text


def test_a_long_table_draws_its_first_rows_sorted_over_all_and_all_on_request(
    trials, tmp_path, open_page, browser
) -> None:
    experiment = _experiment(trials, tmp_path / "s.sqlite")
    values = [((i * 37) % 251) / 10 for i in range(250)]  # all different, in no order
    with Store.open(experiment.store_path, experiment.record) as store:
        for index, value in enumerate(values):
            trial = store.add_trial(index, {"a": "x", "b": "p", "c": [0, 1]}, index, "{}")
            store.add_result(trial, value, True)
            store.end_trial(trial, "succeeded", None)
    assert open_page(_write(experiment.store_path, tmp_path)) == []
    assert len(_column(browser, "trial")) == 200
    count = browser.find_element("css selector", "#table .count")
    assert count.text == "250 of 250 rows (the first 200 drawn)"
    browser.find_element("css selector", '#trials th[data-key="value"]').click()
    assert [float(v) for v in _column(browser, "value")] == sorted(values)[:200]
    browser.find_element("css selector", "#table button.more").click()
    assert [float(v) for v in _column(browser, "value")] == sorted(values)
    assert count.text == "250 of 250 rows"


HOSTILE = '<img src=x onerror="window.pwned = 1">'


def test_a_strangers_store_cannot_put_markup_into_the_page(
    trials, tmp_path, open_page, browser, show_every_tooltip
):
    # A store may come from anyone: its texts reach the page (table, cards, tooltips, which
    # ECharts renders as HTML) as text only. Every tooltip of every chart is shown once.
    import sqlite3

    store = tmp_path / "s.sqlite"
    _experiment(trials, store, max_trials=4).run()
    with sqlite3.connect(store) as db:
        db.execute("UPDATE trials SET worker = ?, reason = ?", (HOSTILE, HOSTILE))
    assert open_page(_write(store, tmp_path)) == []
    assert show_every_tooltip() > 0
    assert HOSTILE in browser.find_element("id", "trials").text  # shown, as text
    assert browser.execute_script("return document.querySelectorAll('img').length") == 0
    assert browser.execute_script("return window.pwned === undefined")


def test_labels_named_like_object_properties_and_many_input_ways_draw(
    trials, tmp_path, open_page, browser
):
    # "constructor" & co. are properties of every JavaScript object: the page must look them
    # up as the store's own keys. An input choice of 2 among 6 has too many ways to list: its
    # parallel axis holds the ways trials chose, and every line reaches every axis.
    store = tmp_path / "odd.sqlite"
    nastrain.Experiment(
        trials.OddNamesSpace(),
        trials.ScoreTrainer(None, epochs=2),
        "random",
        max_trials=12,
        executor="inline",
        store=store,
        progress=False,
    ).run()
    assert open_page(_write(store, tmp_path)) == []
    axes, rows = browser.execute_script(
        """
        const box = document.getElementById("parallel-chart");
        const option = echarts.getInstanceByDom(box).getOption();
        return [option.parallelAxis.map((a) => a.data || null), option.series[0].data];
        """
    )
    assert len(rows) == 12
    for row in rows:
        for value, categories in zip(row, axes):
            assert categories is None or value in categories, (value, categories)
    boxes = browser.execute_script(
        "return [...document.querySelectorAll('svg.boxes')].map((s) => s.dataset.label);"
    )
    assert boxes == ["constructor", "__proto__", "toString"]
