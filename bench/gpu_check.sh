#!/usr/bin/env bash
# The one-shot GPU check (bench/gpu_check.py): about 5 minutes on one H100/H200.
#
#   bash scripts/fetch_gpu_wheelhouse.sh    # on a machine with a package index: fills bench/wheelhouse/
#   bash bench/gpu_check.sh [--out FILE]    # on the GPU machine (torch and transformers installed)
#   bash bench/gpu_check.sh --cpu-smoke     # every part at toy size on CPU
#
# When trl, peft, accelerate or datasets cannot be imported, installs them from bench/wheelhouse/ (no index)
# into a virtual environment that sees the system's packages (torch, transformers), then runs the check.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
if ! "$PY" -c "import trl, peft, accelerate, datasets, math_verify" 2>/dev/null; then
  WHEELS=${WHEELHOUSE:-bench/wheelhouse}
  if [ ! -d "$WHEELS" ]; then
    echo "gpu_check: trl/peft/accelerate/datasets missing and no wheelhouse at $WHEELS (run scripts/fetch_gpu_wheelhouse.sh)" >&2
    exit 2
  fi
  VENV=${GPU_CHECK_VENV:-/tmp/mathforge-gpu-check-venv}
  "$PY" -m venv --system-site-packages "$VENV"
  "$VENV/bin/python" -m pip install --quiet --no-index --find-links "$WHEELS" \
    trl peft accelerate datasets math-verify latex2sympy2_extended sympy
  PY="$VENV/bin/python"
fi
"$PY" -c "import torch, transformers, trl; print('gpu_check:', torch.__version__, transformers.__version__, trl.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
exec "$PY" bench/gpu_check.py "$@"
