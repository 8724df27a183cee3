"""RL on the post-training task (SPEC §6, §7), every method with the same critic-free PPO.

* ``internal``: a causal policy over controller codes, acting when the metacontroller's
  hardened switch fires (the base model, switch and decoder are part of the environment).
* ``no-switch``: the same with a metacontroller trained with β ≡ 1: a code every step.
* ``cotrained``: the same with a metacontroller co-trained with its base model.
* ``raw``: finetune the base model itself on raw actions.
* ``compile``: the same internal RL with a CompILE segmenter's decoder and its causal
  termination head in place of the metacontroller (:mod:`internalrl.baselines.compile`).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoint import Checkpoint
from ..data import grid_observations
from ..envs import make_batched_env
from ..envs.gridworld import BatchedGridPinpad, GridSpec
from ..envs.tasks import Task
from ..live import LiveRows
from ..metacontroller import Metacontroller
from ..models.sequence_model import SequenceModel
from .internal import rollout_internal
from .policy import RecurrentCodePolicy
from .ppo import clipped_surrogate_loss, trajectory_advantages

METHODS = ("internal", "no-switch", "cotrained", "raw", "compile")


@dataclass
class RLConfig:
    episodes: int = 100_000  # budget per run (paper: 100k steps of batch 1024; we count episodes)
    batch_size: int = 1024  # episodes per PPO iteration
    lr: float = 3e-5
    epochs: int = 2  # passes over each batch [choice]
    minibatches: int = 4  # [choice]
    clip: float = 0.2
    policy_hidden: int = 256
    threshold: float = 0.5  # hardened switch

    def validate(self) -> None:
        checks = [("rl.episodes", self.episodes >= 1), ("rl.batch_size", self.batch_size >= 2), ("rl.lr", self.lr > 0),
                  ("rl.epochs", self.epochs >= 1), ("rl.minibatches", self.minibatches >= 1),
                  ("rl.clip", 0 < self.clip < 1), ("rl.policy_hidden", self.policy_hidden >= 1),
                  ("rl.threshold", 0 < self.threshold < 1)]
        rules = {"rl.episodes": "at least 1", "rl.batch_size": "at least 2", "rl.lr": "positive", "rl.epochs": "at least 1",
                 "rl.minibatches": "at least 1", "rl.clip": "in (0, 1)", "rl.policy_hidden": "at least 1",
                 "rl.threshold": "in (0, 1) (the switch fires when β exceeds it)"}
        for name, ok in checks:
            if not ok:
                raise ValueError(f"{name} must be {rules[name]}, got {getattr(self, name.split('.')[1])!r}")


def _minibatches(n: int, k: int, rng: np.random.Generator):
    perm = rng.permutation(n)
    return [torch.as_tensor(c) for c in np.array_split(perm, min(k, n))]


def _resume(checkpoint: Checkpoint | None, modules: dict, opt, rng, env, cfg: RLConfig,
            desc: str, progress: bool):
    """The PPO loops' shared start: restore the checkpoint (if any) and return (checkpoint, curve,
    episodes seen, iteration, clock start counting earlier runs' seconds, iterations in all, progress bar)."""
    ckpt = checkpoint or Checkpoint.off()
    ckpt.hint = "rl.lr"
    it, extra = ckpt.restore(modules, {"opt": opt}, numpy={"rng": rng, "env": env.rng})
    seen = extra.get("seen", 0)
    bar = tqdm(total=cfg.episodes, initial=seen, desc=desc, unit="ep", disable=not progress, leave=False)
    return (ckpt, [tuple(c) for c in extra.get("curve", [])], seen, it,
            time.perf_counter() - extra.get("seconds", 0.0), -(-cfg.episodes // cfg.batch_size), bar)


def train_internal_rl(base: SequenceModel, meta: Metacontroller, layer: int, spec, task: Task,
                      cfg: RLConfig, seed: int, device, progress: bool = True, desc: str = "internal RL",
                      checkpoint: Checkpoint | None = None, scalars=None):
    """Returns the policy and a curve of (episodes seen, batch success rate, seconds).
    ``checkpoint`` (counted in PPO iterations) makes a killed run resume; ``scalars(episodes, values)``
    (:mod:`internalrl.scalars`) gets each batch's success rate. ``spec``: a ``GridSpec`` or an ``AntSpec``."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    for p in list(base.parameters()) + list(meta.parameters()):
        p.requires_grad_(False)
    policy = RecurrentCodePolicy(base.cfg.width, meta.cfg.code_dim, cfg.policy_hidden).to(device)
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    env = make_batched_env(spec, cfg.batch_size, [task], seed)
    ckpt, curve, seen, it, t0, iterations, bar = _resume(checkpoint, {"policy": policy}, opt, rng, env, cfg, desc, progress)
    while seen < cfg.episodes:
        roll = rollout_internal(base, meta, policy, env, layer, seed * 100_003 + it, device, threshold=cfg.threshold)
        adv = trajectory_advantages(roll.returns)
        t = int(roll.lengths.max())
        for _ in range(cfg.epochs):
            for mb in _minibatches(cfg.batch_size, cfg.minibatches, rng):
                mean, log_std, _ = policy(roll.residuals[mb, :t])
                logp = policy.log_prob(mean, log_std, roll.codes[mb, :t])
                loss = clipped_surrogate_loss(logp, roll.log_probs[mb, :t], adv[mb], roll.decisions[mb, :t], cfg.clip)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        seen += cfg.batch_size
        it += 1
        success = float(roll.returns.mean())
        curve.append((seen, success, time.perf_counter() - t0,
                      float(roll.decisions.sum(1).float().mean())))
        if scalars is not None:
            scalars(seen, {"success": success, "seconds": curve[-1][2], "decisions_per_episode": curve[-1][3]})
        bar.update(cfg.batch_size)
        bar.set_postfix(success=f"{success:.3f}")
        ckpt.maybe_save(it, iterations, lambda: {"curve": curve, "seen": seen, "seconds": time.perf_counter() - t0})
    bar.close()
    ckpt.save(it, {"curve": curve, "seen": seen, "seconds": time.perf_counter() - t0})
    return policy, curve


@torch.no_grad()
def rollout_raw(model: SequenceModel, env, seed: int, device) -> dict:
    """N episodes of the base model as a policy. On the gridworld the observations are kept as the
    layout and the agent's cells (rebuilt by :func:`grid_observations` for training, a fraction of
    the memory); on other environments (the ant) as the observations themselves."""
    gen = torch.Generator(device=device).manual_seed(seed)
    obs = env.reset()
    n = env.num_envs
    state = model.initial_state(n, device)
    horizon = env.spec.horizon
    grid = isinstance(env, BatchedGridPinpad)
    if grid:
        agent = torch.zeros(n, horizon + 1, dtype=torch.long)
        agent[:, 0] = torch.as_tensor(env.agent)
    else:
        observations = torch.zeros(n, horizon, obs.shape[1])
    categorical = model.cfg.action_type == "categorical"
    actions = (torch.zeros(n, horizon, dtype=torch.long) if categorical
               else torch.zeros(n, horizon, model.cfg.action_dim))
    logp = torch.zeros(n, horizon)
    lengths = torch.zeros(n, dtype=torch.long)
    rows = LiveRows(n, device)
    for t in range(horizon):
        keep = rows.shrink(env)
        if keep is not None:
            state.select_(keep)
        live = torch.as_tensor(~env.done)
        idx = rows.idx.cpu()
        obs_rows = torch.as_tensor(obs, device=device)[rows.idx]
        if not grid:
            observations[idx, t] = obs_rows.cpu()
        out = model(obs_rows[:, None], state=state)
        a = model.sample_action(out, gen)
        logp[idx, t] = model.action_log_prob(out, a[:, None])[:, 0].cpu()
        actions[idx, t] = a.cpu()
        obs, *_ = env.step(rows.actions(a))
        if grid:
            agent[:, t + 1] = torch.as_tensor(env.agent)
        lengths += live.long()
        if env.done.all():
            break
    kept = {"layout": torch.as_tensor(env.cell_identity), "agent": agent} if grid else {"obs": observations}
    return {**kept, "actions": actions, "log_probs": logp, "lengths": lengths,
            "returns": torch.as_tensor(env.succeeded.astype(np.float32))}


def train_raw_rl(base: SequenceModel, spec, task: Task, cfg: RLConfig, seed: int, device,
                 progress: bool = True, desc: str = "raw-action RL", checkpoint: Checkpoint | None = None,
                 scalars=None):
    """Finetune a copy of the base model on raw actions with the same PPO.
    ``checkpoint`` (counted in PPO iterations) makes a killed run resume; ``scalars(episodes, values)``
    (:mod:`internalrl.scalars`) gets each batch's success rate."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = copy.deepcopy(base).to(device)
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    env = make_batched_env(spec, cfg.batch_size, [task], seed)
    ckpt, curve, seen, it, t0, iterations, bar = _resume(checkpoint, {"model": model}, opt, rng, env, cfg, desc, progress)
    while seen < cfg.episodes:
        model.eval()
        roll = rollout_raw(model, env, seed * 100_003 + it, device)
        model.train()
        adv = trajectory_advantages(roll["returns"]).to(device)
        t = int(roll["lengths"].max())
        mask = (torch.arange(t)[None] < roll["lengths"][:, None]).to(device)
        for _ in range(cfg.epochs):
            for mb in _minibatches(cfg.batch_size, cfg.minibatches, rng):
                obs = (grid_observations(roll["layout"][mb], roll["agent"][mb, :t], spec) if "agent" in roll
                       else roll["obs"][mb, :t]).to(device)
                out = model(obs)
                logp = model.action_log_prob(out, roll["actions"][mb, :t].to(device))
                loss = clipped_surrogate_loss(logp, roll["log_probs"][mb, :t].to(device), adv[mb.to(device)],
                                              mask[mb.to(device)], cfg.clip)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        seen += cfg.batch_size
        it += 1
        success = float(roll["returns"].mean())
        curve.append((seen, success, time.perf_counter() - t0, float(roll["lengths"].float().mean())))
        if scalars is not None:
            scalars(seen, {"success": success, "seconds": curve[-1][2], "episode_length": curve[-1][3]})
        bar.update(cfg.batch_size)
        bar.set_postfix(success=f"{success:.3f}")
        ckpt.maybe_save(it, iterations, lambda: {"curve": curve, "seen": seen, "seconds": time.perf_counter() - t0})
    bar.close()
    ckpt.save(it, {"curve": curve, "seen": seen, "seconds": time.perf_counter() - t0})
    return model.eval(), curve


@torch.no_grad()
def evaluate_internal_policy(base: SequenceModel, meta: Metacontroller, policy: RecurrentCodePolicy | None, layer: int,
                             spec, task: Task, episodes: int, seed: int, device,
                             threshold: float = 0.5) -> dict:
    """A trained code policy in closed loop (codes sampled, switch hardened at ``threshold``, raw
    actions sampled) on ``episodes`` fresh layouts of ``task``: its success rate, its switches
    against the subgoal changes the episodes reached, and what the codes it chose carry."""
    from ..analysis.switching import closed_loop_switching, code_content

    env = make_batched_env(spec, episodes, [task], seed)
    roll = rollout_internal(base, meta, policy, env, layer, seed, device, threshold=threshold)
    # the walking direction is a raw action on the gridworld; the ant's torques have no such label
    direction = (roll.actions, base.cfg.action_dim) if base.cfg.action_type == "categorical" else None
    return {"episodes": episodes, "success_rate": float(roll.returns.mean()),
            "switching": closed_loop_switching(roll.decisions, roll.subgoals, roll.lengths),
            "codes": code_content(roll.codes, roll.decisions, roll.subgoals, spec.num_subgoals, direction, seed=seed)}
