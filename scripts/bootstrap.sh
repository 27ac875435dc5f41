#!/usr/bin/env bash
# Create .venv at the repo root (when missing or stale) and install mathforge with its deps.
# Needs only python3 (>= 3.11). Pins come from constraints.txt (a resolved, co-installing set:
# torch 2.13.0, trl 1.16.0, transformers 5.23.0, lighteval 0.13.0, ...), which also spares pip a
# long backtracking search. MATHFORGE_EXTRAS adds extras (e.g. "dev,gpu").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.mathforge-installed
EXTRAS=${MATHFORGE_EXTRAS:-dev}

if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$STAMP" -nt constraints.txt ]; then
  exit 0
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "mathforge needs Python >= 3.11 ($PYTHON is $("$PYTHON" -V 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating $VENV with $("$PYTHON" -V)"
  "$PYTHON" -m venv "$VENV"
fi
echo "[bootstrap] installing mathforge[$EXTRAS] into $VENV (first time: a few minutes)"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip 2>/dev/null || true
# torch first, alone: a plain resolver run could otherwise pull a multi-GB CUDA build.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c constraints.txt torch
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[$EXTRAS]"
touch "$STAMP"
echo "[bootstrap] ready: $VENV"
