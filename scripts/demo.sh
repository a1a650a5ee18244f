#!/usr/bin/env bash
# One command for a newcomer: install into ./.venv, then run the built-in demo reconstruction.
# Outputs land in ./taichi_dr_out/demo/ (mesh.obj, metrics.json, loss.png, renders/, turntable.gif).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/install.sh
export MPLBACKEND=Agg
taichi-dr demo "$@"
