"""pip-install every first-party plugin distribution under plugins/ into this environment.

The tox env `all` runs this, so a new folder under plugins/ is installed and
tested with everything else without editing tox.ini.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main() -> int:
    root = Path(__file__).resolve().parents[1] / "plugins"
    folders = sorted(p for p in root.iterdir() if (p / "pyproject.toml").is_file())
    if not folders:
        print("no plugin distributions under plugins/")
        return 0
    command = [sys.executable, "-m", "pip", "install", "--quiet", *map(str, folders)]
    print("installing:", ", ".join(p.name for p in folders), flush=True)
    return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
