"""Train a base model with config overrides and log, every K steps, the held-out next-action
NLL/accuracy and the free-play completion rate (512 episodes) against training seconds.

This is how the quick preset's base-model recipe was chosen (docs/journal.md, "What the quick base
model needs"). Usage, one training per core:

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python scripts/base_model_curve.py NAME EVERY \\
        [--preset quick] [section.field=value ...]

Writes ``curves/NAME.jsonl``. Datasets are cached in ``curves/data_<episodes>_<seed>``.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from internalrl.config import load_config
from internalrl.data import batch_indices, data_card, generate_grid, load_trajectories, make_batch, save_trajectories
from internalrl.envs.gridworld import BatchedGridPinpad
from internalrl.envs.tasks import parse_task_set
from internalrl.evaluate import rollout_base_model
from internalrl.models.sequence_model import SequenceModel
from internalrl.train import evaluate_heldout, lr_at, train_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("name")
    ap.add_argument("every", type=int)
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--out", default="curves")
    args = ap.parse_args()
    cfg = load_config(args.preset, args.overrides)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = cfg.env.spec()
    tasks = parse_task_set(cfg.env.pretrain_tasks, spec.num_objects)
    dpath = out / f"data_{cfg.data.num_episodes}_{cfg.seed}"
    if not (dpath / "card.json").exists():
        arrays, stats = generate_grid(cfg.data.num_episodes, tasks, spec, seed=cfg.seed, progress=False)
        save_trajectories(dpath, arrays, data_card(arrays, tasks, {"obs_format": "grid", "env": asdict(spec),
                                                                   "epsilon": 0.0, "seed": cfg.seed, "generation": stats}))
    data = load_trajectories(dpath)
    tc = cfg.train
    torch.manual_seed(cfg.seed)
    model = SequenceModel(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    train_idx, val_idx = data.split(cfg.data.val_fraction)
    lengths = data.arrays["lengths"]
    seconds = 0.0
    with open(out / f"{args.name}.jsonl", "w") as log:
        log.write(json.dumps({"overrides": args.overrides, "preset": args.preset}) + "\n")
        for step in range(tc.steps):
            t0 = time.perf_counter()
            for g in opt.param_groups:
                g["lr"] = lr_at(step, tc)
            train_step(model, opt, make_batch(data, batch_indices(train_idx, tc.batch_size, cfg.seed, step, lengths)), tc)
            seconds += time.perf_counter() - t0
            if (step + 1) % args.every and step + 1 != tc.steps:
                continue
            model.eval()
            ev = evaluate_heldout(model, data, val_idx[:1024], 256, "cpu")
            fp = rollout_base_model(model, BatchedGridPinpad(512, tasks, spec, seed=123), free_play=True, seed=123)
            model.train()
            row = {"step": step + 1, "train_seconds": round(seconds, 1), "val_action_nll": round(ev["action_nll"], 4),
                   "val_action_accuracy": round(ev["action_accuracy"], 4), "free_play": fp["success_rate"],
                   "failures": fp["failures"]}
            print(json.dumps(row), flush=True)
            log.write(json.dumps(row) + "\n")
            log.flush()


if __name__ == "__main__":
    main()
