#!/usr/bin/env bash
# Fetch the wheels that bench/gpu_check.sh installs on a GPU machine which has torch and transformers but
# not trl, peft, accelerate or datasets (and cannot reach a package index): the pure-Python wheels of those
# four and of the project's pure dependencies, at the versions constraints.txt pins, into bench/wheelhouse/
# (git-ignored; carry it to the machine with the repository).
#
#   bash scripts/fetch_gpu_wheelhouse.sh                    # pure-Python wheels only (~12 MB)
#   GPU_PYTHON=3.11 bash scripts/fetch_gpu_wheelhouse.sh    # also the binary deps for CPython 3.11 x86_64
#
# The binary dependencies (pyarrow, pandas, xxhash, psutil, PyYAML: ~60 MB for one Python version) are
# usually already on a GPU image; fetch them only for the Python version the machine runs.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${WHEELHOUSE:-bench/wheelhouse}
PIP=${PIP:-.venv/bin/pip}
mkdir -p "$OUT"
pin() { grep -i -E "^$1==" constraints.txt | head -n1; }
PURE="trl peft accelerate datasets dill multiprocess fsspec math-verify latex2sympy2_extended sympy mpmath
      antlr4-python3-runtime tqdm filelock huggingface_hub packaging Jinja2 httpx"
specs=()
for name in $PURE; do
  spec=$(pin "$name" || true)
  specs+=("${spec:-$name}")
done
"$PIP" download --no-deps --only-binary=:all: --python-version 3.11 --implementation py --abi none \
  --platform any -d "$OUT" "${specs[@]}"
if [ -n "${GPU_PYTHON:-}" ]; then
  binary=()
  for name in pyarrow pandas xxhash psutil PyYAML MarkupSafe; do
    spec=$(pin "$name" || true)
    binary+=("${spec:-$name}")
  done
  "$PIP" download --no-deps --only-binary=:all: --python-version "$GPU_PYTHON" \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    -d "$OUT" "${binary[@]}"
fi
du -sh "$OUT"
ls "$OUT"
