# 2026-11-22. Measured: a frozen metacontroller trained at another KL weight alpha, kept for the code search; written up in docs/results/internal_code_search/.
"""Train a run's frozen metacontroller at another KL weight α on a finished run's base
model and keep it in a new folder, for the diagnostics that read a run's metacontroller.

    python docs/experiments/2026-11-22_metacontroller_at_alpha.py RUN_DIR ALPHA OUT_DIR
    internalrl diagnose code-search OUT_DIR ...

OUT_DIR gets links to RUN_DIR's base_model and data, its run.json with α changed, and
``metacontroller/frozen.safetensors``,
trained by the pipeline's own stage code with only α changed (``internalrl sweep-alpha`` trains the
same but keeps no weights). Prints the switch metrics on 1000 held-out episodes.
"""
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from internalrl import pipeline
from internalrl.rundir import RunDir, stored_config

if len(sys.argv) != 4:
    raise SystemExit(__doc__)
run_dir, alpha, out = sys.argv[1], float(sys.argv[2]), Path(sys.argv[3])
if out.exists():
    raise SystemExit(f"{out} exists; choose a new OUT_DIR")
cfg = stored_config(Path(run_dir))  # the run's own config
run = RunDir(run_dir, cfg, create=False)
(out / "metacontroller").mkdir(parents=True)
for name in ("base_model", "data"):
    os.symlink(Path(run_dir, name).resolve(), out / name)
record = json.loads(Path(run_dir, "run.json").read_text())
record["config"]["metacontroller"]["alpha"] = alpha  # what `internalrl diagnose` reads the metacontroller with
(out / "run.json").write_text(json.dumps(record, indent=2))
mc = replace(cfg.metacontroller, alpha=alpha)
res = pipeline._train_and_eval_meta(cfg, run, mc, "frozen", True, save_to=out / "metacontroller")
print(json.dumps({k: res[k] for k in ("f1", "precision", "recall", "switches_per_episode",
                                      "fraction_beta_intermediate", "action_nll", "kl")}))
