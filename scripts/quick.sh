#!/usr/bin/env bash
# The main job: the gridworld pipeline on the quick preset -> runs/quick/{results.json,report.html}
# It starts from the shipped base model (internalrl.pretrained "grid"); pass --base-model train to
# pretrain one from scratch instead (10-20 more minutes on a 2-core CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_venv.sh
base=shipped
for arg in "$@"; do case "$arg" in --base-model|--base-model=*) base="";; esac; done
exec .venv/bin/internalrl run --preset quick --out "${OUT:-runs/quick}" ${base:+--base-model "$base"} "$@"
