"""The switch of an ant run's frozen metacontroller, read from its training checkpoint before the stage finished.

    python docs/experiments/2026-12-02_ant_metacontroller_checkpoint.py RUN_DIR [EPISODES]

Measured (2026-12-02, the ant quick run stopped with the frozen metacontroller's 500 steps done): see docs/ant.md.
Scores the checkpoint's metacontroller on held-out D* exactly as the metacontroller stage does.
"""
import json
import sys
from pathlib import Path

import torch

from internalrl.config import config_from_dict
from internalrl.metacontroller import Metacontroller, evaluate_metacontroller
from internalrl.pipeline import clean_data
from internalrl.rundir import RunDir
from internalrl.train import load_model

root = Path(sys.argv[1])
episodes = int(sys.argv[2]) if len(sys.argv) > 2 else 256
cfg = config_from_dict(json.loads((root / "run.json").read_text())["config"])
run = RunDir(root, cfg)
try:
    data = clean_data(cfg, run)
    _, val = data.split(cfg.data.val_fraction)
    base = load_model(root / "base_model")
    ck = torch.load(root / ".metacontroller.partial" / "checkpoint_frozen.pt", map_location="cpu", weights_only=False)
    meta = Metacontroller(cfg.metacontroller, cfg.model.width)
    meta.load_state_dict(ck["modules"]["meta"])
    res = evaluate_metacontroller(base, meta.eval(), data, val[:episodes], cfg.meta_layer(), "cpu", seed=cfg.seed)
    keys = ("f1", "precision", "recall", "switches_per_episode", "subgoals_per_episode", "fraction_beta_intermediate",
            "action_nll", "kl")
    print(json.dumps({"step": ck["step"], "episodes": int(min(episodes, len(val))), **{k: res[k] for k in keys}}))
finally:
    run.close()
