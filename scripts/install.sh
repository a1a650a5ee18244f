#!/usr/bin/env bash
# Create ./.venv (once) and install taichi_dr into it with its test extra.
# torch is installed first and pinned: on these machines torch==2.13.0 is a local CPU wheel,
# while an unpinned torch pulls several GB of CUDA wheels. The package itself asks for torch>=2.2.
# Source it (". scripts/install.sh") to stay inside the environment afterwards.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
python -m pip install -q -e ".[test]"
export TI_SKIP_VERSION_CHECK=ON
