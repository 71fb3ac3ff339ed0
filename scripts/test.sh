#!/usr/bin/env bash
# The test suite: lint, unit and data tests, executed notebooks.
# Data tests read ../shared/data (or $KWS_DATA_DIR) and skip cleanly without it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
.venv/bin/ruff check kws tests benchmarks
.venv/bin/python -m pytest -q "$@"
