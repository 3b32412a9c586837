#!/usr/bin/env bash
# The GPU half of the CIFAR-scale DARTS benchmark, in one go, on a machine with a GPU and no
# package index (sized for under 8 minutes on one H200; it has not run on one yet). Installs
# nastrain and nastrain-darts from this checkout (built offline with the folder's hatchling)
# and NNI 2.10.1 from a folder of wheels, into two virtual environments that see the
# machine's own torch (--system-site-packages); runs the benchmark's smoke tests, on the GPU
# too; then run_cifar.py --device cuda at the DARTS paper's size, which writes the GPU table
# into benchmarks/README.md. How to prepare the wheel folder: benchmarks/README.md,
# "Preparing the GPU check".
#
# Usage: bash benchmarks/gpu_check.sh [run_cifar.py options, e.g. --reps 3]
#   WHEELS  the folder of wheels (default benchmarks/wheels)
#   PYTHON  the interpreter with the machine's torch (default python3)
#   OUT     if set, README.md, the runs' JSON lines and the log are copied there too
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
wheels="$(cd "${WHEELS:-$here/wheels}" && pwd)"
py="${PYTHON:-python3}"
ours="$here/.gpu-venv"
nni="$here/.nni-venv"
runs="${OUT:-${TMPDIR:-/tmp}}/cifar_gpu_runs.jsonl"
start=$SECONDS

step() { echo "gpu_check [$((SECONDS - start)) s]: $*"; }
save() { # copy what the run produced to $OUT (a device machine returns only that folder)
    if [ -n "${OUT:-}" ]; then cp "$here/README.md" "$OUT/README.md"; fi
}
trap save EXIT
if [ -n "${OUT:-}" ]; then exec > >(tee -a "$OUT/gpu_check.log") 2>&1; fi

step "$("$py" --version), $("$py" -c 'import torch; print("torch", torch.__version__)')"
nvidia-smi -L || true
if ! "$py" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "gpu_check: torch.cuda.is_available() is False with $py: no GPU to measure" >&2
    exit 1
fi

pip_offline() { # pip install from the wheel folder only; what the machine has already counts
    "$1/bin/python" -m pip --disable-pip-version-check install --quiet --no-index \
        --find-links "$wheels" "${@:2}"
}
step "installing nastrain and nastrain-darts (this checkout) into $ours"
"$py" -m venv --system-site-packages "$ours"
pip_offline "$ours" "$root" "$root/plugins/darts"
"$ours/bin/python" -c 'import nastrain_darts, torch; assert torch.cuda.is_available()'

step "installing NNI 2.10.1 into $nni"
if ! "$nni/bin/python" -W ignore -c 'import nni.retiarii.oneshot.pytorch as o; o.DartsTrainer' \
    2>/dev/null; then
    "$py" -m venv --system-site-packages "$nni"
    pip_offline "$nni" --no-deps nni==2.10.1 pytorch-lightning==1.9.5 -r "$here/nni-deps.txt"
    "$nni/bin/python" -W ignore -c 'import nni.retiarii.oneshot.pytorch as o; o.DartsTrainer'
fi

step "smoke tests of the benchmark, on the GPU too"
(cd "$root" && OMP_NUM_THREADS=1 "$ours/bin/python" -m pytest -q -p no:cacheprovider \
    tests/benchmarks/test_bench_cifar.py)

step "run_cifar.py --device cuda $*"
(cd "$root" && "$ours/bin/python" benchmarks/run_cifar.py --device cuda --reps 2 --steps 20 \
    --warmup 5 --timeout 240 --prime-mb 0 --jsonl "$runs" "$@")
step "done: the GPU table is in benchmarks/README.md"
