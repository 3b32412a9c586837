#!/usr/bin/env bash
# Build benchmarks/.nni-venv: a private virtual environment with NNI 2.10.1, used only by the
# DARTS benchmark (run_darts.py) to run NNI's legacy DartsTrainer beside ours. NNI is installed
# here at run time; no NNI code is part of the repository.
#
# NNI 2.10.1 pins old releases of some packages (filelock<3.12, pytorch-lightning's own pins)
# that do not resolve next to torch 2.14, so nni and pytorch-lightning go in with --no-deps and
# their runtime dependencies are listed here by hand. torch/torchvision are re-pinned in the same
# pip call so that pip never swaps the project's torch for another release.
#
# Idempotent: does nothing when the venv already imports NNI's DARTS trainer.
# Usage: bash benchmarks/setup_nni.sh   (env PYTHON=python3.11 to choose the interpreter)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${NNI_VENV:-$here/.nni-venv}"
py="${PYTHON:-python3}"
check='import nni, nni.retiarii.nn.pytorch, nni.retiarii.oneshot.pytorch as o; o.DartsTrainer'

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -W ignore -c "$check" 2>/dev/null; then
    echo "setup_nni: $venv already imports NNI $("$venv/bin/python" -c 'import nni; print(nni.__version__)')"
    exit 0
fi

start=$SECONDS
"$py" -m venv "$venv"
pip_install() {
    # The machine's pip configuration lists local indexes that may be absent: drop that noise.
    "$venv/bin/python" -m pip --disable-pip-version-check install --quiet "$@" 2>&1 |
        { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

# What importing nni.retiarii.nn.pytorch and nni.retiarii.oneshot.pytorch and running the
# legacy DartsTrainer needs: nni-deps.txt (shared with gpu_check.sh).
pip_install torch==2.14.1 torchvision==0.29.1 numpy -r "$here/nni-deps.txt"
pip_install --no-deps "nni==2.10.1" "pytorch-lightning==1.9.5"

"$venv/bin/python" -W ignore -c "$check"
echo "setup_nni: built $venv with NNI $("$venv/bin/python" -c 'import nni; print(nni.__version__)')" \
    "in $((SECONDS - start)) s"
