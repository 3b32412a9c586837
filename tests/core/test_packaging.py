"""What the repository's distributions ship: each wheel marks its package as typed.

The wheels are built as pip builds them (one ``pip wheel`` over the core and every folder
under plugins/ with a ``pyproject.toml``), so a new plugin is checked without editing this.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_distribution_ships_py_typed_in_its_wheel(tmp_path: Path) -> None:
    sources = [ROOT, *sorted(p.parent for p in (ROOT / "plugins").glob("*/pyproject.toml"))]
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip, "--wheel-dir", str(tmp_path), *map(str, sources)],
        check=True,
        timeout=300,
    )
    wheels = sorted(tmp_path.glob("*.whl"))
    assert len(wheels) == len(sources), [w.name for w in wheels]
    for wheel in wheels:
        names = zipfile.ZipFile(wheel).namelist()
        packages = {n.split("/")[0] for n in names if "/" in n and ".dist-info/" not in n}
        assert packages, f"{wheel.name} holds no package"
        untyped = sorted(p for p in packages if f"{p}/py.typed" not in names)
        assert not untyped, f"{wheel.name}: no py.typed in {untyped}"
        if wheel.name.split("-")[0] == "nastrain":  # the core (plugins: nastrain_<name>-)
            # The report pages inline these files: the core's wheel must carry them.
            needed = {
                "nastrain/htmlreport/vendor/echarts.min.js",
                "nastrain/htmlreport/vendor/ECHARTS-LICENSE",
                "nastrain/htmlreport/vendor/ECHARTS-NOTICE",
                "nastrain/htmlreport/assets/common.js",
                "nastrain/htmlreport/assets/report.css",
            }
            assert needed <= set(names), sorted(needed - set(names))
