#!/usr/bin/env bash
# The main job: the gridworld pipeline on the quick preset -> runs/quick/{results.json,report.html}
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_venv.sh
exec .venv/bin/internalrl run --preset quick --out "${OUT:-runs/quick}" "$@"
