"""A real headless Chromium for the report tests, driven through Selenium and Debian's
ChromeDriver (installed by ``tools/install_chromium.py`` in the test env's setup).

``browser`` is one Chromium for the session; ``open_page(path)`` loads a page from a file
and returns the browser's console messages of level SEVERE (errors), after waiting for the
page's script to say it is done drawing (``document.body.dataset.ready``). The tests skip,
saying why, only where Chromium, ChromeDriver or Selenium is not installed.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    absent = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    if absent:
        return (
            f"{' and '.join(absent)} not installed (Debian: apt-get install chromium "
            "chromium-driver; tools/install_chromium.py does it as root)"
        )
    return None


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    why = _missing()
    if why is not None:
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for argument in (
        "--headless=new",
        "--no-sandbox",  # as root (CI), Chromium's sandbox cannot start
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Debian's driver, matching Debian's Chromium: Selenium Manager would try to download one.
    service = Service(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def open_page(browser: Any) -> Callable[[Path], list[dict[str, Any]]]:
    from selenium.webdriver.support.ui import WebDriverWait

    def open_(path: Path) -> list[dict[str, Any]]:
        browser.get_log("browser")  # drop what an earlier page logged
        browser.get(Path(path).resolve().as_uri())
        WebDriverWait(browser, 30).until(
            lambda d: d.execute_script("return document.body.dataset.ready === 'yes'")
        )
        return [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]

    return open_


#: Shows the tooltip of (up to 50) data items of every series of every chart of the page,
#: one after another (ECharts renders tooltips as HTML); returns how many were shown.
_SHOW_EVERY_TOOLTIP = """
let shown = 0;
for (const chart of NASTRAIN.charts) {
  (chart.getOption().series || []).forEach((series, seriesIndex) => {
    const count = Array.isArray(series.data) ? Math.min(series.data.length, 50) : 0;
    for (let dataIndex = 0; dataIndex < count; dataIndex++) {
      chart.dispatchAction({ type: "showTip", seriesIndex, dataIndex });
      shown++;
    }
  });
}
return shown;
"""


@pytest.fixture
def show_every_tooltip(browser: Any) -> Callable[[], int]:
    """Show every chart's tooltips on the open page (for tests of what markup they hold)."""
    return lambda: browser.execute_script(_SHOW_EVERY_TOOLTIP)
