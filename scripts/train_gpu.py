#!/usr/bin/env python
"""Pretrain the base model on a GPU a few minutes at a time, resuming each time.

    python scripts/train_gpu.py --checkpoint ckpt/paper.safetensors            # paper preset, 9 minutes
    python scripts/train_gpu.py --checkpoint ckpt/paper.safetensors --minutes 9 --data ckpt/data

Every run loads the checkpoint (created if missing), trains the ``paper`` preset's base model
(width 256, depth 6, batch 1024, its lr schedule over ``train.steps``) with bf16 autocast on
CUDA, and stops by itself before ``--minutes`` run out, final save included. The checkpoint is
one compact safetensors file (:mod:`internalrl.compact`: bf16 weights and bf16 AdamW second
moments, 13.3 MiB for the paper model, under 16 MiB); it says how resuming handles precision. The training
data is the data stage's: generated from the config into ``--data`` (default: a folder beside
the checkpoint) when it is not there yet.

The model, batches, lr schedule and loss are the package's (``internalrl.train``); only the
loop's stopping rule and the checkpoint format are this script's. At the end it prints where
the checkpoint is and how to continue on a CPU with ``internalrl train --init-from``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import torch

from internalrl.compact import CompactCheckpoint, save_compact
from internalrl.config import dumps, load_config
from internalrl.data import batch_indices, data_card, generate_grid, load_trajectories, make_batch, save_trajectories
from internalrl.envs.tasks import parse_task_set
from internalrl.errors import USER_ERRORS, CheckpointError, ConfigError, DataError
from internalrl.models.sequence_model import SequenceModel
from internalrl.train import lr_at, resolve_device, train_step

SAVE_EVERY_S = 120.0  # also save mid-run, so a killed run loses at most this much


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="compact checkpoint file (created if missing)")
    p.add_argument("--minutes", type=float, default=9.0, help="stop within this many minutes, final save included (default 9)")
    p.add_argument("--data", default=None, help="dataset folder (default: <checkpoint>_data beside it; generated if missing)")
    p.add_argument("--preset", default="paper")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                   help="autocast dtype of the forward pass (auto: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--log-every", type=int, default=100, help="print progress every N steps (default 100)")
    return p.parse_args(argv)


def _compare(stored: dict, cfg) -> list[str]:
    """Fields the checkpoint's config and this run's disagree on (train.device may differ)."""
    now = json.loads(dumps(cfg))
    diffs = []
    for section in ("seed", "env", "data", "model", "train"):
        a, b = stored.get(section), now.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{section}.{k}: {a.get(k)!r} in the checkpoint, {b.get(k)!r} now" for k in sorted(set(a) | set(b))
                      if a.get(k) != b.get(k) and (section, k) != ("train", "device")]
        elif a != b:
            diffs.append(f"{section}: {a!r} in the checkpoint, {b!r} now")
    return diffs


def get_data(cfg, folder: Path):
    """The data stage's dataset for ``cfg``: loaded from ``folder``, or generated into it."""
    spec = cfg.env.spec()
    if not (folder / "card.json").exists():
        tasks = parse_task_set(cfg.env.pretrain_tasks, spec.num_objects)
        t0 = time.perf_counter()
        print(f"[train_gpu] generating {cfg.data.num_episodes} expert episodes into {folder}", flush=True)
        arrays, stats = generate_grid(cfg.data.num_episodes, tasks, spec, seed=cfg.seed, epsilon=cfg.data.epsilon)
        stats["seconds"] = time.perf_counter() - t0
        save_trajectories(folder, arrays, data_card(arrays, tasks, {"obs_format": "grid", "env": asdict(spec),
                                                                     "epsilon": cfg.data.epsilon, "seed": cfg.seed,
                                                                     "generation": stats}))
    data = load_trajectories(folder)
    if data.card.get("env") != asdict(spec):
        raise DataError(f"{folder} holds data of another environment ({data.card.get('env')}); use another --data")
    return data


def main(argv=None, clock=time.monotonic) -> int:
    args = parse_args(argv)
    try:
        return train(args, clock)
    except USER_ERRORS as e:
        print(f"train_gpu: error: {e}", file=sys.stderr)
        return 2


def train(args, clock) -> int:
    began = clock()
    if args.minutes <= 0:
        raise ConfigError(f"--minutes must be positive, got {args.minutes}")
    if args.log_every < 1:
        raise ConfigError(f"--log-every must be at least 1, got {args.log_every}")
    deadline = began + 60.0 * args.minutes
    cfg = load_config(args.preset, args.overrides + ([f"seed={args.seed}"] if args.seed is not None else []))
    try:
        device = resolve_device(args.device)
    except RuntimeError as e:  # cuda asked for, none here
        raise ConfigError("--device cuda, but no CUDA device is available here; use --device auto or cpu") from None
    cfg.train.device = device.type
    precision = args.precision if args.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    autocast = torch.bfloat16 if precision == "bf16" else None
    path = Path(args.checkpoint)
    ck = CompactCheckpoint(path) if path.exists() else None
    if ck is not None:
        diffs = _compare(ck.config, cfg)
        if diffs:
            raise CheckpointError(f"{path} was trained with another config:\n  " + "\n  ".join(diffs[:8]) +
                                  "\nUse the same --preset, --seed and --set as the run that wrote it, or another --checkpoint.")
    data = get_data(cfg, Path(args.data) if args.data else path.with_name(path.stem + "_data"))
    tc = cfg.train
    torch.manual_seed(cfg.seed)
    model = SequenceModel(cfg.model).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    start, seconds_before = 0, 0.0
    if ck is not None:
        ck.restore(model, opt)
        start, seconds_before = ck.step, float(ck.extra.get("train_seconds", 0.0))
    train_idx, _ = data.split(cfg.data.val_fraction)
    lengths = data.arrays["lengths"]
    params = sum(p.numel() for p in model.parameters())
    print(f"[train_gpu] {params / 1e6:.2f}M parameters on {device} ({precision}); step {start} of {tc.steps}; "
          f"{len(train_idx)} training episodes; stopping within {args.minutes:g} min", flush=True)

    def save(step: int) -> tuple[int, float]:
        t = clock()
        size = save_compact(path, model, opt, step, dumps(cfg), {"train_seconds": seconds_before + clock() - t_train,
                                                                 "precision": precision})
        return size, clock() - t

    def fetch(s: int):  # the batch of step s, prepared in a worker thread while the device runs step s-1
        return make_batch(data, batch_indices(train_idx, tc.batch_size, cfg.seed, s, lengths), device)

    pool = ThreadPoolExecutor(1)
    pending = pool.submit(fetch, start) if start < tc.steps else None
    t_train = clock()
    step, tokens, step_s, save_s, last_save, reason = start, 0, 0.0, 1.0, clock(), "finished"
    while step < tc.steps:
        now = clock()
        if now + 2 * step_s + 2 * save_s > deadline:
            reason = "time limit"
            break
        if now - last_save > SAVE_EVERY_S:
            _, took = save(step)
            save_s, last_save = max(save_s, took), clock()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, tc)
        batch = pending.result().to(device)
        pending = pool.submit(fetch, step + 1) if step + 1 < tc.steps else None
        losses = train_step(model, opt, batch, tc, autocast)
        nll = float(losses["action_nll"].detach())  # waits for the GPU: the step's time is real
        tokens += int(batch.mask.sum())
        step += 1
        took = clock() - now
        step_s = took if step_s == 0 else max(0.9 * step_s + 0.1 * took, took)
        if step % args.log_every == 0 or step == tc.steps:
            rate = tokens / max(clock() - t_train, 1e-9)
            print(f"[train_gpu] step {step}/{tc.steps} action_nll {nll:.4f} obs_nll "
                  f"{float(losses['obs_nll'].detach()) if 'obs_nll' in losses else float('nan'):.2f} lr {lr_at(step - 1, tc):.2e} "
                  f"{rate:,.0f} tokens/s", flush=True)
    pool.shutdown(cancel_futures=True)
    size, _ = save(step)
    opts = " ".join([f"--preset {args.preset}", *([f"--seed {args.seed}"] if args.seed is not None else []),
                     *(f"--set {o}" for o in args.overrides)])
    print(f"[train_gpu] stopped ({reason}) at step {step} of {tc.steps} after {(clock() - began) / 60:.1f} min; "
          f"checkpoint {path} ({size / 2**20:.1f} MiB)", flush=True)
    print(f"[train_gpu] continue here: python scripts/train_gpu.py --checkpoint {path} {opts}", flush=True)
    cpu = f"{opts} --set train.steps={max(1, tc.steps - step)} --set train.warmup_steps=0 --out runs/from-gpu"
    print(f"[train_gpu] continue on a CPU (the weights and Adam's second moments carry over; the lr schedule is the "
          f"run's own): internalrl data {cpu} && internalrl train {cpu} --init-from {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
