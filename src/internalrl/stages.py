"""The pipeline's stages. Each is ``(config, run directory) -> artifact folder``; a stage
whose folder is finished is skipped, so re-running a killed pipeline resumes it."""
from __future__ import annotations

import json
import time
from dataclasses import asdict

import numpy as np
import torch

from .config import Config
from .data import data_card, generate_grid, load_trajectories, save_trajectories
from .envs.tasks import parse_task_set
from .evaluate import evaluate_policy
from .rundir import RunDir
from .train import evaluate_heldout, load_model, resolve_device, train_base_model


def _log(msg: str) -> None:
    print(f"[internalrl] {msg}", flush=True)


def stage_data(cfg: Config, run: RunDir, progress: bool = True):
    """Expert trajectories on the pretraining tasks (SPEC §2)."""
    if run.done("data"):
        _log("data: finished earlier, skipped")
        return run.path("data")
    t0 = time.perf_counter()
    spec = cfg.env.spec()
    tasks = parse_task_set(cfg.env.pretrain_tasks, spec.num_objects)
    arrays, stats = generate_grid(cfg.data.num_episodes, tasks, spec, seed=cfg.seed, epsilon=cfg.data.epsilon,
                                  progress=progress)
    stats["seconds"] = time.perf_counter() - t0
    card = data_card(arrays, tasks, {"obs_format": "grid", "env": asdict(spec), "epsilon": cfg.data.epsilon,
                                     "seed": cfg.seed, "generation": stats})
    save_trajectories(run.partial("data"), arrays, card)
    headline = {
        "episodes": card["num_episodes"], "steps": card["num_steps"], "mean_length": card["length"]["mean"],
        "expert_success_rate": stats["expert_success_rate"], "layout_resample_fraction": stats["resample_fraction"],
        "expert_reference_accuracy": card["expert_reference"]["accuracy"], "seconds": stats["seconds"],
    }
    _log(f"data: {card['num_episodes']} episodes, mean length {card['length']['mean']:.1f}, "
         f"{100 * stats['resample_fraction']:.1f}% of layouts resampled (no safe path)")
    return run.finish("data", asdict(cfg.data), {"headline": headline, "card": card})


def stage_base_model(cfg: Config, run: RunDir, progress: bool = True):
    """Pretrain the base model (SPEC §3); resumes from its checkpoint if killed."""
    if run.done("base_model"):
        _log("base_model: finished earlier, skipped")
        return run.path("base_model")
    data = load_trajectories(run.require("data", "data"))
    work = run.partial("base_model")
    model, info = train_base_model(cfg, data, work, progress=progress)
    device = next(model.parameters()).device
    _, val_idx = data.split(cfg.data.val_fraction)
    heldout = evaluate_heldout(model, data, val_idx, 256, device)
    ref = data_card({k: v[val_idx] for k, v in data.arrays.items()}, [], {})["expert_reference"]
    headline = {
        "heldout_action_accuracy": heldout["action_accuracy"], "heldout_action_nll": heldout["action_nll"],
        "heldout_obs_nll": heldout["obs_nll"], "expert_action_accuracy": ref["accuracy"],
        "expert_action_nll": ref["nll"], "train_seconds": info["train_seconds"],
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    _log(f"base_model: held-out next-action accuracy {heldout['action_accuracy']:.3f} "
         f"(expert's own {ref['accuracy']:.3f}), NLL {heldout['action_nll']:.3f} (expert {ref['nll']:.3f})")
    return run.finish("base_model", {"model": asdict(cfg.model), "train": asdict(cfg.train), "seed": cfg.seed},
                      {"headline": headline})


def stage_eval_base(cfg: Config, run: RunDir, progress: bool = True):
    """The base model as a policy: free play and the post-training task."""
    if run.done("eval_base"):
        _log("eval_base: finished earlier, skipped")
        return run.path("eval_base")
    device = resolve_device(cfg.train.device)
    model = load_model(run.require("base_model", "train"), device=device)
    spec = cfg.env.spec()
    pre = parse_task_set(cfg.env.pretrain_tasks, spec.num_objects)
    post = parse_task_set(cfg.env.posttrain_task, spec.num_objects)
    t0 = time.perf_counter()
    res = evaluate_policy(model, spec, pre, post, num_envs=cfg.eval.num_envs, seed=cfg.seed + 1000,
                          temperature=cfg.eval.temperature, device=device)
    free, postr = res["free_play"], res["posttrain"]
    work = run.partial("eval_base")
    env = res["free_env"]
    np.savez(work / "free_play_examples.npz", paths=free.pop("paths"), layout=env.cell_identity[:4])
    postr.pop("paths")
    headline = {
        "free_play_completion": free["success_rate"], "posttrain_success": postr["success_rate"],
        "episodes_each": cfg.eval.num_envs, "seconds": time.perf_counter() - t0,
    }
    _log(f"eval_base: free play completes a pretraining task in {100 * free['success_rate']:.1f}% of "
         f"{cfg.eval.num_envs} episodes; post-training task success {100 * postr['success_rate']:.2f}%")
    return run.finish("eval_base", {"eval": asdict(cfg.eval), "seed": cfg.seed},
                      {"headline": headline, "free_play": free, "posttrain": postr})
