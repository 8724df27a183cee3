# RUN: a run directory holding the seed-0 quick base model, made with --set metacontroller.cotrain_steps=0
from internalrl.config import load_config
from internalrl.rundir import RunDir
from internalrl import pipeline
from internalrl.metacontroller import cotrained_config
cfg = load_config("quick", ["metacontroller.cotrain_steps=0"])
run = RunDir("RUN", cfg)
res = pipeline._train_and_eval_meta(cfg, run, cotrained_config(cfg.metacontroller), "cotrained", False)
print({k: res[k] for k in ("f1", "precision", "recall", "switches_per_episode", "fraction_beta_intermediate", "action_nll", "kl", "train_seconds")})
