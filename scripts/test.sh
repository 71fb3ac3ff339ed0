#!/usr/bin/env bash
# The test suite: lint, unit and real-data tests, then the notebooks, executed.
# Data tests read $KWS_DATA_DIR (default ../shared/data) and skip cleanly without it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
if [ -z "${KWS_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
  export KWS_DATA_DIR="$(cd ../shared/data && pwd)"
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
.venv/bin/ruff check kws tests benchmarks notebooks
.venv/bin/python notebooks/build.py --check
.venv/bin/python -m pytest -q "$@"
.venv/bin/python -m pytest -q --nbmake notebooks/
