#!/usr/bin/env bash
# The prepared GPU check (issue 15): run from anywhere on a lent H100/H200, e.g. through the device
# tool as `bash bench/gpu_check.sh` (results under $OUT/gpu_check), or `--dry-run` on CPU (CI).
# All options go to bench/gpu_check.py; see `bash bench/gpu_check.sh --help`.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-$(command -v python3 || command -v python)}
exec "$PY" bench/gpu_check.py "$@"
