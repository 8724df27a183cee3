"""The ant-pinpad's own stages, ``(config, run directory) -> artifact folder`` like the
gridworld's (:mod:`internalrl.pipeline`), into the same stage folders (``data``, ``data_clean``,
``base_model``, ``eval_base``), so the grid's later stages (probes, controllers, metacontroller,
RL, injection, the α sweep) read an ant run as they read a grid run.

* ``data``: D, the shipped PPO expert's *sampled* actions, and ``data_clean``: D*, its Gaussian
  mean actions (SPEC §2); successful episodes of the pretraining tasks only.
* ``base_model``: the base model (a Hawk for the ant presets) trained on D with the Gaussian
  action and next-observation losses, λ = ``train.obs_loss_weight`` (10, the paper's); measured on
  held-out D and D*.
* ``eval_base``: the base model as a policy, free play on the pretraining tasks and the
  post-training task, beside the shipped expert on the same task sets, seeds and episode counts;
  the paper reports ant results normalised by its expert.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .config import Config, ConfigError
from .data import DataError, load_trajectories
from .envs.tasks import parse_task_set
# the grid's probe, controller, metacontroller, RL and injection stages serve the ant as they are
from .pipeline import (clean_data, command, stage_controllers, stage_injection, stage_metacontroller, stage_probes,
                       stage_rl_quick)
from .rundir import RunDir
from .train import evaluate_heldout, load_model, resolve_device


def _log(msg: str) -> None:
    print(f"[internalrl] {msg}", flush=True)


def _expert(cfg: Config):
    """The shipped expert, checked against this config's environment; and a record naming it."""
    from .experts.ant import DEFAULT_WEIGHTS, expert_obs_dim, load_ant_expert

    policy = load_ant_expert()
    spec = cfg.env.spec()
    if policy.obs_dim != expert_obs_dim(spec):
        raise ConfigError(f"the shipped ant expert reads a {policy.obs_dim}-number observation, made for the paper's "
                          f"ant-pinpad (env.size=4, env.num_objects=4, env.num_walls=1); this config's env "
                          f"(size {spec.size}, {spec.num_objects} colours, {spec.num_walls} walls) needs "
                          f"{expert_obs_dim(spec)}")
    sha = hashlib.sha256(Path(DEFAULT_WEIGHTS).read_bytes()).hexdigest()
    return policy, {"weights": Path(DEFAULT_WEIGHTS).name, "sha256": sha}


def stage_data(cfg: Config, run: RunDir, progress: bool = True):
    """D (sampled expert actions, seed ``seed``) and D* (mean actions, seed ``seed + 1``), each
    ``data.num_episodes`` successful episodes of the pretraining tasks."""
    from .experts.ant import generate_ant_dataset, write_ant_dataset

    spec = cfg.env.spec()
    tasks = parse_task_set(cfg.env.pretrain_tasks, spec.num_objects)
    policy = expert = None
    for stage, mean, seed in (("data", False, cfg.seed), ("data_clean", True, cfg.seed + 1)):
        if run.done(stage):
            _log(f"{stage}: finished earlier, skipped")
            continue
        if policy is None:
            policy, expert = _expert(cfg)
        t0 = time.perf_counter()
        arrays, stats = generate_ant_dataset(cfg.data.num_episodes, tasks, seed, policy, mean_actions=mean,
                                             spec=spec, progress=progress)
        if not stats["complete"]:
            raise DataError(f"the ant expert succeeded in {stats['expert_episodes_succeeded']} of "
                            f"{stats['expert_episodes_rolled_out']} episodes, fewer than data.num_episodes="
                            f"{cfg.data.num_episodes}; check the env settings against the expert's (docs/ant.md)")
        stats["seconds"] = time.perf_counter() - t0
        work = run.partial(stage)
        write_ant_dataset(work, arrays, stats, tasks, spec, {"seed": seed, "expert": expert})
        card = json.loads((work / "card.json").read_text())
        lengths = arrays["lengths"]
        headline = {"episodes": int(len(lengths)), "steps": int(lengths.sum()), "mean_length": float(lengths.mean()),
                    "actions": "mean" if mean else "sampled", "expert_success_rate": stats["expert_success_rate"],
                    "seconds": stats["seconds"]}
        _log(f"{stage}: {len(lengths)} ant episodes ({'mean' if mean else 'sampled'} expert actions), mean length "
             f"{lengths.mean():.0f}, expert success {stats['expert_success_rate']:.3f}")
        run.finish(stage, {**asdict(cfg.data), "seed": seed, "mean_actions": mean, "expert": expert},
                   {"headline": headline, "card": card})
    return run.path("data")


def expert_action_entropy() -> float:
    """The entropy (nats) of the shipped expert's Gaussian: its state-independent std makes this the NLL it
    would score on its own unclipped sampled actions, the bar for a model that knew the task and the state."""
    from .experts.ant import load_ant_expert

    log_std = load_ant_expert().log_std.detach().double()
    return float((0.5 * math.log(2 * math.pi * math.e) + log_std).sum())


@torch.no_grad()
def mean_action_error(model, data, idx: np.ndarray, device, batch_size: int = 128) -> float:
    """Mean squared distance (summed over the 8 torques) between the model's mean action and D*'s actions."""
    from .data import make_batch

    total, steps = 0.0, 0
    for i in range(0, len(idx), batch_size):
        batch = make_batch(data, idx[i : i + batch_size]).to(device)
        out = model(batch.obs[:, :-1])
        err = ((out.action - batch.actions) ** 2).sum(-1)
        total += float((err * batch.mask).sum())
        steps += int(batch.mask.sum())
    return total / max(1, steps)


def stage_base_model(cfg: Config, run: RunDir, progress: bool = True, minutes: float | None = None,
                     checkpoint_file: str | None = None):
    """Pretrain the base model on D (SPEC §3): the grid's training stage (resumes if killed; stops after
    ``minutes`` with a checkpoint, then returns None; accumulates in ``checkpoint_file``), measured the ant's way."""
    from .pipeline import stage_base_model as train_stage

    return train_stage(cfg, run, progress, checkpoint_file=checkpoint_file, minutes=minutes, finish=finish_base_model)


def finish_base_model(cfg: Config, run: RunDir, model, train_seconds: float, stage_config: dict):
    """The trained model's held-out action NLL on D and D*, beside the expert's own entropy."""
    data = load_trajectories(run.require("data", command(cfg, "data")))
    device = next(model.parameters()).device
    clean = clean_data(cfg, run)
    _, val = data.split(cfg.data.val_fraction)
    _, val_clean = clean.split(cfg.data.val_fraction)
    heldout = evaluate_heldout(model, data, val, 64, device)
    heldout_clean = evaluate_heldout(model, clean, val_clean, 64, device)
    headline = {
        "heldout_action_nll": heldout["action_nll"], "heldout_obs_nll": heldout["obs_nll"],
        "heldout_clean_action_nll": heldout_clean["action_nll"],
        "heldout_clean_mean_action_sq_error": mean_action_error(model, clean, val_clean, device),
        "expert_action_entropy": expert_action_entropy(),
        "action_std_mean": float(model.action_log_std.detach().exp().mean()),
        "heldout_episodes": int(len(val)),
        "train_seconds": train_seconds, "parameters": sum(p.numel() for p in model.parameters()),
    }
    _log(f"base_model: held-out action NLL {heldout['action_nll']:.3f} on D ({len(val)} episodes; the expert's own "
         f"entropy {headline['expert_action_entropy']:.3f}), {heldout_clean['action_nll']:.3f} on D*; observation "
         f"NLL {heldout['obs_nll']:.3f}; {train_seconds / 60:.1f} min of training")
    return run.finish("base_model", stage_config, {"headline": headline})


def stage_eval_base(cfg: Config, run: RunDir, progress: bool = True):
    """The base model as a policy: free play (success = the visits spell some pretraining task) and the
    post-training task, and the shipped expert (sampled actions, as D was made) on the same task sets."""
    from .envs.ant import BatchedAntPinpad
    from .evaluate import rollout_ant_base_model
    from .experts.ant import evaluate_ant_expert

    if run.done("eval_base"):
        _log("eval_base: finished earlier, skipped")
        return run.path("eval_base")
    device = resolve_device(cfg.train.device)
    model = load_model(run.require("base_model", command(cfg, "train")), device=device)
    policy, expert = _expert(cfg)
    spec = cfg.env.spec()
    pre = parse_task_set(cfg.env.pretrain_tasks, spec.num_objects)
    post = parse_task_set(cfg.env.posttrain_task, spec.num_objects)
    n, seed, temp = cfg.eval.num_envs, cfg.seed + 1000, cfg.eval.temperature
    t0 = time.perf_counter()
    results = {}
    for name, tasks, free, s in (("free_play", pre, True, seed), ("posttrain", post, False, seed + 1)):
        _log(f"eval_base: {name}, {n} episodes of the base model and of the expert")
        results[name] = rollout_ant_base_model(model, BatchedAntPinpad(n, tasks, spec, seed=s), free_play=free,
                                               seed=s, temperature=temp, device=device)
        results[name]["expert"] = evaluate_ant_expert(policy, tasks, n, seed=s, mean_actions=False, spec=spec)
    ratio = lambda a, b: a / b if b > 0 else None  # noqa: E731
    free, postr = results["free_play"], results["posttrain"]
    headline = {
        "free_play_success": free["success_rate"], "posttrain_success": postr["success_rate"],
        "expert_pretrain_success": free["expert"]["success_rate"],
        "expert_posttrain_success": postr["expert"]["success_rate"],
        "free_play_normalised": ratio(free["success_rate"], free["expert"]["success_rate"]),
        "posttrain_normalised": ratio(postr["success_rate"], postr["expert"]["success_rate"]),
        "free_play_colours_done": free["colours_done_mean"], "posttrain_colours_done": postr["colours_done_mean"],
        "free_play_outcomes": free["outcomes"],
        "episodes_each": n, "temperature": temp, "seconds": time.perf_counter() - t0,
    }
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    _log(f"eval_base: free play success {free['success_rate']:.3f} (expert on the pretraining tasks "
         f"{free['expert']['success_rate']:.3f}; normalised {fmt(headline['free_play_normalised'])}), post-training "
         f"task {postr['success_rate']:.3f} (expert {postr['expert']['success_rate']:.3f}; normalised "
         f"{fmt(headline['posttrain_normalised'])}), {n} episodes each")
    return run.finish("eval_base", {"eval": asdict(cfg.eval), "seed": cfg.seed, "expert": expert},
                      {"headline": headline, **results})


#: The stage functions of each ant command (``rl`` runs one method: see :mod:`internalrl.cli_ant`).
STAGES = {"data": [stage_data], "train": [stage_base_model], "evaluate": [stage_eval_base], "probe": [stage_probes],
          "controllers": [stage_controllers], "metacontroller": [stage_metacontroller], "injection": [stage_injection]}
#: ``run --env ant``: every stage, in order: internal RL and raw-action RL on the post-training task, then injection.
STAGES["run"] = [stage_data, stage_base_model, stage_eval_base, stage_probes, stage_controllers, stage_metacontroller,
                 stage_rl_quick, stage_injection]
