"""Install Debian's Chromium and ChromeDriver for the report's browser tests, if missing.

The tox envs that run ``tests/report`` call this first (``commands_pre``). Where both
``chromium`` and ``chromedriver`` are on PATH it does nothing; otherwise, as root on a
machine with apt-get, it installs the Debian packages ``chromium`` and ``chromium-driver``.
It never fails the run: where they cannot be installed it says why, and the browser tests
skip with that reason (``tests/report/conftest.py``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

PACKAGES = ("chromium", "chromium-driver")


def missing() -> list[str]:
    return [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]


def main() -> int:
    absent = missing()
    if not absent:
        print("install_chromium: chromium and chromedriver are installed")
        return 0
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        print(
            f"install_chromium: {', '.join(absent)} missing and apt-get is not usable here "
            "(needs root); the browser tests will be skipped"
        )
        return 0
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES])
    for step in steps:
        print("install_chromium: " + " ".join(step), flush=True)
        done = subprocess.run(step, env=env, check=False, stdout=subprocess.DEVNULL)
        if done.returncode != 0:
            print(f"install_chromium: {' '.join(step)} failed; the browser tests will be skipped")
            return 0
    print(f"install_chromium: installed; still missing: {missing() or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
