#!/usr/bin/env bash
# The test suite (fast: machinery, not learning outcomes).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_venv.sh
exec .venv/bin/python -m pytest -q "$@"
