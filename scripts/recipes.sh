#!/usr/bin/env bash
# The base-model recipe search: each recipe is the quick preset plus config overrides, trained on
# one thread and judged by `internalrl steerability` (docs/steerability.md has the table).
#
#   scripts/recipes.sh NAME [NAME ...]      # e.g. scripts/recipes.sh quick soft eps01 conv
#
# Environment: OUT (default runs/recipes), STEPS / BATCH (the protocol's controller budget,
# default 800 / 256 for the screen; the paper's is 3200 / 512), THREADS (default 1).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_venv.sh
OUT=${OUT:-runs/recipes}
STEPS=${STEPS:-800}
BATCH=${BATCH:-256}
export OMP_NUM_THREADS=${THREADS:-1}

recipe() {
  case "$1" in
    quick) echo "" ;;
    soft) echo "--set train.soft_targets=true" ;;
    eps005) echo "--set data.epsilon=0.05" ;;
    eps01) echo "--set data.epsilon=0.1" ;;
    conv) echo "--set model.obs_encoder=conv" ;;
    linear) echo "--set model.obs_encoder=linear" ;;
    wide) echo "--set model.width=128 --set model.mlp=256 --set model.head_dim=32" ;;
    deep) echo "--set model.depth=8" ;;
    wide_wd01) echo "--set model.width=128 --set model.mlp=256 --set model.head_dim=32 --set train.weight_decay=0.1" ;;
    wide6_wd01) echo "--set model.width=128 --set model.mlp=256 --set model.head_dim=32 --set model.depth=6 --set train.weight_decay=0.1" ;;
    wd01) echo "--set train.weight_decay=0.1" ;;
    wd0) echo "--set train.weight_decay=0" ;;
    obs0) echo "--set train.obs_loss_weight=0" ;;
    ls01) echo "--set train.label_smoothing=0.1" ;;
    wd01_uw1) echo "--set train.weight_decay=0.1 --set model.upper_window=1" ;;
    wd01_uw4) echo "--set train.weight_decay=0.1 --set model.upper_window=4" ;;
    wide_wd01_uw4) echo "--set model.width=128 --set model.mlp=256 --set model.head_dim=32 --set train.weight_decay=0.1 --set model.upper_window=4" ;;
    wider_wd01_uw4) echo "--set model.width=256 --set model.mlp=512 --set model.head_dim=64 --set train.weight_decay=0.1 --set model.upper_window=4" ;;
    soft_wd01) echo "--set train.soft_targets=true --set train.weight_decay=0.1" ;;
    *) echo "unknown recipe $1" >&2; return 1 ;;
  esac
}

for name in "$@"; do
  sets=$(recipe "$name")
  args="--preset quick --out $OUT/$name $sets --no-progress"
  echo "== $name: $sets"
  .venv/bin/internalrl data $args
  .venv/bin/internalrl train $args
  .venv/bin/internalrl evaluate $args
  .venv/bin/internalrl steerability "$OUT/$name" --steps "$STEPS" --batch-size "$BATCH" --no-progress \
    --name "steerability_${STEPS}x${BATCH}"
done
