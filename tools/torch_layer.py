"""Install torch and torchvision once into a folder that every tox env puts on PYTHONPATH.

The torch wheel unpacks to several GB; installing it into every tox env would
cost a minute and 5 GB each. The layer holds only torch, torchvision and their
own dependencies, so each env still installs nastrain and its plugins on its
own, which is what proves a plugin stands alone.

Usage: python tools/torch_layer.py LAYER_DIR CONSTRAINTS_FILE
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def _pins(constraints: Path) -> list[str]:
    lines = (line.split("#")[0].strip() for line in constraints.read_text().splitlines())
    return [line for line in lines if line]


def main(layer: str, constraints: str) -> int:
    target = Path(layer)
    pins = _pins(Path(constraints))
    stamp = target / "LAYER.txt"
    if stamp.exists() and stamp.read_text().split() == pins:
        print(f"torch layer at {target} is ready ({' '.join(pins)})")
        return 0
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(partial), *pins]
    print("building torch layer:", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    (partial / "LAYER.txt").write_text("\n".join(pins) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
