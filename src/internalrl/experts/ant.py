"""The ant expert (SPEC §2): one PPO agent across tasks, guided by grid-level shortest paths.

The expert sees more than the sequence model will: besides the ant-pinpad observation it
gets, for every cell, the direction(s) to move along a grid-level shortest path to the next
colour (never crossing a wall or a wrong colour), computed from the gridworld's distance maps.
Its reward is the *intrinsic* reward ``v · d`` — the torso's horizontal velocity (m/s,
averaged over the control step) along the unit direction ``d`` of its current cell — plus the
task reward.

Expert observation, ``D + 4·G² + 4 + 2`` numbers (41 + 64 + 6 = 111 for the paper's sizes):

* the ant-pinpad observation (:func:`internalrl.envs.ant.obs_layout`);
* per cell (row-major), a multi-hot over *up, down, left, right* of the moves that start a
  shortest safe path to the next colour (a one-hot unless two moves tie; all zero where no
  path exists and on the target itself);
* the same four numbers for the ant's current cell;
* ``d`` rotated into the torso's heading frame (cos, sin relative to the yaw), so that the
  policy need not learn the rotation from the quaternion.

[choice] reward details: ``d`` is the normalised sum of the tied moves (a diagonal when two
tie); the task reward is weighted ``success_bonus = 10``; each correct colour visited earns
``visit_bonus = 1``; a failure (wall, fall, wrong colour) costs ``failure_penalty = 1``; every
step earns ``alive_bonus = 0.05`` and pays a control cost ``0.005·Σa²`` (a larger control
cost and failure penalty collapsed the exploration noise before any locomotion was learned). PPO as in CleanRL's
continuous PPO (Gaussian with state-independent log-std, separate actor and critic MLPs of
128-128 tanh, 64 environments × 64-step segments with auto-reset, 10 epochs of 32
minibatches, GAE λ = 0.95, γ = 0.99, clip 0.2, linearly annealed learning rate 3e-4, running
observation normalisation and return-based reward scaling; a time-limit end bootstraps from
the value of its last observation). All are fields of :class:`AntExpertConfig`.

Datasets: :func:`generate_ant_dataset` rolls the expert out on the plain environment and
keeps only successful episodes, storing the *plain* observations (never the expert's
privileged extras), the actions actually applied (clipped to [-1, 1]) — sampled for D, the
Gaussian mean for D* — and the ground-truth subgoal (next colour) per step.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..envs.ant import AntSpec, BatchedAntPinpad
from ..envs.gridworld import UNREACHABLE
from ..envs.tasks import ANT_POSTTRAIN_TASK, ANT_PRETRAIN_TASKS, Task, parse_task_set, task_str

#: unit vectors (x, y) of the gridworld moves up, down, left, right on the ant's floor
MOVE_XY = np.array([[0.0, 1.0], [0.0, -1.0], [-1.0, 0.0], [1.0, 0.0]])
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "assets" / "ant_expert.safetensors"


# --------------------------------------------------------------------------- guidance
def direction_maps(env: BatchedAntPinpad) -> np.ndarray:
    """(N, cells, 4) bool: from each cell, the moves that start a shortest safe path to the
    environment's next colour. All False where it is unknown (done, free play) or unreachable."""
    n, c = env.num_envs, env.spec.num_cells
    target = env.next_colour()
    known = target >= 0
    k = np.repeat(np.where(known, target, 0), c)
    cells = np.tile(np.arange(c), n)
    legs = env.layout.leg_distances(k, cells, np.repeat(np.arange(n), c)).reshape(n, c, 4)
    best = legs.min(-1, keepdims=True)
    return (legs == best) & (best < UNREACHABLE) & known[:, None, None]


def guidance(env: BatchedAntPinpad) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns ``(maps (N, cells, 4), here (N, 4), direction (N, 2) unit vector or 0)``."""
    maps = direction_maps(env)
    here = maps[np.arange(env.num_envs), np.maximum(env.cell, 0)]
    d = here.astype(np.float64) @ MOVE_XY
    norm = np.linalg.norm(d, axis=1, keepdims=True)
    return maps, here, np.where(norm > 0, d / np.maximum(norm, 1e-9), 0.0)


def expert_observation(env: BatchedAntPinpad, obs: np.ndarray, guide=None) -> np.ndarray:
    """(N, D + 4·cells + 6) the expert's observation (see the module docstring)."""
    maps, here, d = guide if guide is not None else guidance(env)
    w, z = env.qpos[:, 3], env.qpos[:, 6]
    yaw = 2 * np.arctan2(z, w)
    c, s = np.cos(yaw), np.sin(yaw)
    body = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]], axis=1)
    return np.concatenate([obs, maps.reshape(env.num_envs, -1), here, body], axis=1).astype(np.float32)


def expert_obs_dim(spec: AntSpec) -> int:
    return spec.obs_dim + 4 * spec.num_cells + 6


# --------------------------------------------------------------------------- policy
class RunningNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.double()
        bm, bv, bc = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta, tot = bm - self.mean, self.count + bc
        self.mean += delta * bc / tot
        self.var.copy_((self.var * self.count + bv * bc + delta ** 2 * self.count * bc / tot) / tot)
        self.count.copy_(tot)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.double() - self.mean) / torch.sqrt(self.var + 1e-8)).clamp(-10, 10).float()


def _mlp(sizes: Sequence[int], out_std: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(a, b)
        last = i == len(sizes) - 2
        nn.init.orthogonal_(lin.weight, out_std if last else math.sqrt(2))
        nn.init.zeros_(lin.bias)
        layers += [lin] if last else [lin, nn.Tanh()]
    return nn.Sequential(*layers)


class AntExpertPolicy(nn.Module):
    """Gaussian policy and value function over the expert observation."""

    def __init__(self, obs_dim: int, hidden: int = 128, act_dim: int = 8) -> None:
        super().__init__()
        self.obs_dim, self.hidden = obs_dim, hidden
        self.norm = RunningNorm(obs_dim)
        self.actor = _mlp([obs_dim, hidden, hidden, act_dim], 0.01)
        self.critic = _mlp([obs_dim, hidden, hidden, 1], 1.0)
        self.log_std = nn.Parameter(torch.full((act_dim,), -0.5))

    def dist(self, obs: torch.Tensor) -> torch.distributions.Normal:
        mean = self.actor(self.norm(obs))
        return torch.distributions.Normal(mean, self.log_std.exp().expand_as(mean))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(self.norm(obs)).squeeze(-1)

    @torch.no_grad()
    def act(self, obs: np.ndarray, mean_actions: bool = False, generator: torch.Generator | None = None) -> np.ndarray:
        d = self.dist(torch.as_tensor(obs))
        if mean_actions:
            return d.mean.numpy()
        return (d.mean + d.stddev * torch.randn(d.mean.shape, generator=generator)).numpy()


def save_policy(policy: AntExpertPolicy, path: str | Path, meta: dict | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous() for k, v in policy.state_dict().items()}
    header = {"obs_dim": str(policy.obs_dim), "hidden": str(policy.hidden), **{k: str(v) for k, v in (meta or {}).items()}}
    save_file(tensors, str(path), metadata=header)


def load_ant_expert(path: str | Path | None = None) -> AntExpertPolicy:
    """Load expert weights (default: the shipped ``assets/ant_expert.safetensors``)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ..train import CheckpointError

    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not path.exists():
        raise CheckpointError(f"no ant expert weights at {path}; train one with `internalrl ant-expert train`")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        policy = AntExpertPolicy(int(meta["obs_dim"]), int(meta["hidden"]))
        policy.load_state_dict(load_file(str(path)))
    except Exception as e:
        raise CheckpointError(f"the ant expert weights at {path} are corrupt or from another version "
                              f"({type(e).__name__}); retrain with `internalrl ant-expert train`") from None
    return policy.eval()


# --------------------------------------------------------------------------- training
@dataclass
class AntExpertConfig:
    seed: int = 0
    total_steps: int = 5_000_000  # environment (control) steps
    max_seconds: float = float("inf")  # wall-clock cap; stops after the current update
    num_envs: int = 64
    num_steps: int = 64  # rollout segment per environment and update (environments auto-reset)
    tasks: tuple[str, ...] = ANT_PRETRAIN_TASKS + (ANT_POSTTRAIN_TASK,)
    horizon: int = 500
    hidden: int = 128
    lr: float = 3e-4
    anneal_lr: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    update_epochs: int = 10
    num_minibatches: int = 32
    clip: float = 0.2
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    max_grad_norm: float = 0.5
    success_bonus: float = 10.0
    visit_bonus: float = 1.0
    failure_penalty: float = 1.0
    alive_bonus: float = 0.05
    ctrl_cost: float = 0.005

    def __post_init__(self) -> None:
        for name in ("total_steps", "num_envs", "num_steps", "horizon", "hidden", "update_epochs", "num_minibatches"):
            if getattr(self, name) < 1:
                raise ValueError(f"AntExpertConfig.{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ValueError("AntExpertConfig.gamma must be in (0, 1] and gae_lambda in [0, 1]")


def shaped_reward(env: BatchedAntPinpad, cfg: AntExpertConfig, xy_before: np.ndarray, d: np.ndarray,
                  actions: np.ndarray, reward: np.ndarray, info: dict) -> np.ndarray:
    """Intrinsic ``v · d`` plus the weighted task reward and the shaping terms of
    :class:`AntExpertConfig` (see the module docstring)."""
    v = (env.xy - xy_before) / env.spec.control_dt
    progress = (info["visited"] >= 0) & ~info["failure"]
    return ((v * d).sum(1) + cfg.success_bonus * reward + cfg.visit_bonus * progress
            - cfg.failure_penalty * info["failure"] + cfg.alive_bonus
            - cfg.ctrl_cost * (np.clip(actions, -1, 1) ** 2).sum(1))


def train_ant_expert(cfg: AntExpertConfig, out: str | Path, progress: bool = True) -> dict:
    """Train the PPO expert; writes ``out`` (``.safetensors``, refreshed every 20 updates)
    and ``out`` with suffix ``.metrics.jsonl`` (one JSON line per update: statistics of the
    episodes that ended during it). Same seed and ``total_steps`` → same weights (one thread)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    spec = AntSpec(horizon=cfg.horizon)
    tasks = parse_task_set(list(cfg.tasks), spec.num_objects)
    n, S = cfg.num_envs, cfg.num_steps
    env = BatchedAntPinpad(n, tasks, spec, seed=rng)
    policy = AntExpertPolicy(expert_obs_dim(spec), cfg.hidden)
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=1e-5)
    gen = torch.Generator().manual_seed(cfg.seed)
    ret_norm = RunningNorm(1)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.with_suffix(".metrics.jsonl").open("w")
    steps, update, start = 0, 0, time.time()
    obs = env.reset()
    guide = guidance(env)
    disc_ret = np.zeros(n)
    intrinsic = np.zeros(n)
    bar = tqdm(total=cfg.total_steps, desc="ant expert PPO", unit="step", disable=not progress)
    while steps < cfg.total_steps and time.time() - start < cfg.max_seconds:
        if cfg.anneal_lr:
            for g in opt.param_groups:
                g["lr"] = cfg.lr * max(0.0, 1 - steps / cfg.total_steps)
        ob_buf = np.zeros((S, n, policy.obs_dim), np.float32)
        act_buf = np.zeros((S, n, 8), np.float32)
        logp_buf = np.zeros((S, n), np.float32)
        val_buf = np.zeros((S + 1, n), np.float32)
        rew_buf = np.zeros((S, n), np.float32)
        end_buf = np.zeros((S, n), bool)  # the episode ended at this step (terminated or truncated)
        raw_ret = np.zeros((S, n))
        along = np.zeros((S, n))  # v · d of every step (not only of ended episodes)
        ended = {k: [] for k in ("success", "progress", "length", "intrinsic", "wall", "fell", "wrong", "truncated")}
        for t in range(S):
            eo = expert_observation(env, obs, guide)
            ob_buf[t] = eo
            with torch.no_grad():
                x = torch.as_tensor(eo)
                dist = policy.dist(x)
                a = dist.mean + dist.stddev * torch.randn(dist.mean.shape, generator=gen)
                logp_buf[t] = dist.log_prob(a).sum(-1).numpy()
                val_buf[t] = policy.value(x).numpy()
            a = a.numpy()
            act_buf[t] = a
            xy_before, d = env.xy.copy(), guide[2]
            obs, reward, term, trunc, info = env.step(a)
            r = shaped_reward(env, cfg, xy_before, d, a, reward, info)
            along[t] = (((env.xy - xy_before) / spec.control_dt) * d).sum(1)
            intrinsic += along[t]
            if trunc.any():  # bootstrap a time-limit end from the value of its last observation
                with torch.no_grad():
                    v_end = policy.value(torch.as_tensor(expert_observation(env, obs))).numpy()
                r = r + cfg.gamma * np.where(trunc, v_end, 0.0)
            rew_buf[t] = r
            disc_ret = disc_ret * cfg.gamma + r
            raw_ret[t] = disc_ret
            done = term | trunc
            end_buf[t] = done
            if done.any():
                i = np.flatnonzero(done)
                for key, arr in (("success", info["success"]), ("progress", env.progress), ("length", env.t),
                                 ("intrinsic", intrinsic / np.maximum(env.t, 1)), ("wall", info["hit_wall"]),
                                 ("fell", info["fell"]), ("wrong", info["wrong_colour"]), ("truncated", trunc)):
                    ended[key].extend(np.asarray(arr, dtype=np.float64)[i].tolist())
                disc_ret[i] = 0
                intrinsic[i] = 0
                obs = env.reset(indices=i)
            guide = guidance(env)
        with torch.no_grad():
            val_buf[S] = policy.value(torch.as_tensor(expert_observation(env, obs, guide))).numpy()
        ret_norm.update(torch.as_tensor(raw_ret.reshape(-1, 1)))
        rew = rew_buf / float(torch.sqrt(ret_norm.var + 1e-8))
        adv = np.zeros((S, n), np.float32)
        last = np.zeros(n, np.float32)
        for t in reversed(range(S)):
            cont = (~end_buf[t]).astype(np.float32)
            delta = rew[t] + cfg.gamma * val_buf[t + 1] * cont - val_buf[t]
            last = delta + cfg.gamma * cfg.gae_lambda * cont * last
            adv[t] = last
        ret = adv + val_buf[:S]
        b_obs = torch.as_tensor(ob_buf.reshape(S * n, -1))
        b_act = torch.as_tensor(act_buf.reshape(S * n, -1))
        b_logp = torch.as_tensor(logp_buf.reshape(-1))
        b_adv = torch.as_tensor(adv.reshape(-1))
        b_ret = torch.as_tensor(ret.reshape(-1))
        batch = S * n
        mbs = max(1, batch // cfg.num_minibatches)
        stats = []
        perm_gen = torch.Generator().manual_seed(cfg.seed * 100003 + update)
        for _ in range(cfg.update_epochs):
            perm = torch.randperm(batch, generator=perm_gen)
            for i in range(0, batch, mbs):
                mb = perm[i : i + mbs]
                dist = policy.dist(b_obs[mb])
                logp = dist.log_prob(b_act[mb]).sum(-1)
                ratio = (logp - b_logp[mb]).exp()
                a_mb = b_adv[mb]
                a_mb = (a_mb - a_mb.mean()) / (a_mb.std() + 1e-8)
                pg = torch.max(-a_mb * ratio, -a_mb * ratio.clamp(1 - cfg.clip, 1 + cfg.clip)).mean()
                v_loss = 0.5 * ((policy.value(b_obs[mb]) - b_ret[mb]) ** 2).mean()
                ent = dist.entropy().sum(-1).mean()
                loss = pg + cfg.vf_coef * v_loss - cfg.ent_coef * ent
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
                opt.step()
                stats.append([pg.item(), v_loss.item(), ent.item(), ((ratio - 1).abs() > cfg.clip).float().mean().item()])
        # the normaliser moves after the update so that the stored log-probs stay exact
        policy.norm.update(b_obs)
        steps += batch
        update += 1
        bar.update(batch)
        s = np.mean(stats, 0)
        row = {"update": update, "steps": steps, "seconds": round(time.time() - start, 1),
               "episodes": len(ended["success"]), "velocity_along_path": float(along.mean()),
               **{k: (float(np.mean(v)) if v else None) for k, v in ended.items()},
               "policy_loss": float(s[0]), "value_loss": float(s[1]), "entropy": float(s[2]),
               "clip_frac": float(s[3]), "log_std": float(policy.log_std.detach().mean())}
        log.write(json.dumps(row) + "\n")
        log.flush()
        if row["episodes"]:
            bar.set_postfix(success=f"{row['success']:.2f}", prog=f"{row['progress']:.2f}", len=f"{row['length']:.0f}")
        if update % 20 == 0:
            save_policy(policy, out, {"steps": steps, "seed": cfg.seed})
    bar.close()
    log.close()
    wall = time.time() - start
    save_policy(policy, out, {"steps": steps, "seed": cfg.seed})
    return {"steps": steps, "updates": update, "wall_seconds": round(wall, 1), "config": asdict(cfg)}


# --------------------------------------------------------------------------- evaluation / data
def rollout_expert(policy: AntExpertPolicy, env: BatchedAntPinpad, mean_actions: bool,
                   generator: torch.Generator, record: bool = False):
    """Run one lock-step batch of episodes. Returns a dict with ``success (N,)`` and, when
    ``record``, ``observations (N, T+1, D)``, ``actions (N, T, 8)`` (clipped),
    ``subgoals (N, T)`` and ``lengths (N,)``."""
    spec, n = env.spec, env.num_envs
    obs = env.reset()
    if record:
        observations = np.zeros((n, spec.horizon + 1, spec.obs_dim), np.float32)
        actions = np.zeros((n, spec.horizon, 8), np.float32)
        subgoals = np.full((n, spec.horizon), -1, np.int8)
        observations[:, 0] = obs
    for t in range(spec.horizon):
        if env.done.all():
            break
        a = policy.act(expert_observation(env, obs), mean_actions=mean_actions, generator=generator)
        a = np.clip(a, -1.0, 1.0)
        active = ~env.done
        if record:
            subgoals[:, t] = np.where(active, env.subgoal(), -1)
            actions[active, t] = a[active]
        obs, _, _, _, info = env.step(a)
        if record:
            observations[active, t + 1] = obs[active]
    out = {"success": env.succeeded.copy(), "lengths": env.t.copy(), "progress": env.progress.copy()}
    if record:
        out.update(observations=observations, actions=actions, subgoals=subgoals)
    return out


def evaluate_ant_expert(policy: AntExpertPolicy, tasks: Sequence[Task] | str, num_episodes: int = 256,
                        seed: int = 0, mean_actions: bool = False, spec: AntSpec = AntSpec(),
                        num_envs: int = 64) -> dict:
    """Success rate of the expert on ``tasks`` (each episode draws a task uniformly)."""
    if isinstance(tasks, str):
        tasks = parse_task_set(tasks, spec.num_objects)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    env = BatchedAntPinpad(min(num_envs, num_episodes), tasks, spec, seed=rng)
    succ, prog, done = [], [], 0
    while done < num_episodes:
        r = rollout_expert(policy, env, mean_actions, gen)
        take = min(env.num_envs, num_episodes - done)
        succ.append(r["success"][:take])
        prog.append(r["progress"][:take])
        done += take
    s = np.concatenate(succ)
    return {"episodes": int(len(s)), "success_rate": float(s.mean()),
            "mean_progress": float(np.concatenate(prog).mean()), "tasks": [task_str(t) for t in tasks],
            "mean_actions": mean_actions}


def generate_ant_dataset(num_episodes: int, tasks: Sequence[Task] | str, seed: int,
                         policy: AntExpertPolicy | None = None, mean_actions: bool = False,
                         spec: AntSpec = AntSpec(), num_envs: int = 64, max_rollouts: int | None = None,
                         progress: bool = True) -> tuple[dict[str, np.ndarray], dict]:
    """Roll out the expert until ``num_episodes`` successful episodes are collected (or
    ``max_rollouts`` episodes, default ``50 × num_episodes``, have been tried). D: sampled
    actions (``mean_actions=False``); D*: the Gaussian mean (``mean_actions=True``).

    Returns ``(arrays, stats)`` in :mod:`internalrl.data`'s ``"dense"`` format:
    ``observations (N, Tmax+1, D) float32``, ``actions (N, Tmax, 8) float32``, ``lengths (N,)``,
    ``subgoals (N, Tmax)`` (next colour, -1 past the end) and ``task_id (N,)``. Padded steps
    repeat the final observation and hold zero actions."""
    if isinstance(tasks, str):
        tasks = parse_task_set(tasks, spec.num_objects)
    policy = policy if policy is not None else load_ant_expert()
    max_rollouts = max_rollouts if max_rollouts is not None else 50 * num_episodes
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    env = BatchedAntPinpad(min(num_envs, max(1, num_episodes)), tasks, spec, seed=rng)
    kept: dict[str, list[np.ndarray]] = {k: [] for k in ("observations", "actions", "subgoals", "task_id", "lengths")}
    total, tried, succeeded = 0, 0, 0
    bar = tqdm(total=num_episodes, desc="ant expert episodes", unit="ep", disable=not progress)
    while total < num_episodes and tried < max_rollouts:
        r = rollout_expert(policy, env, mean_actions, gen, record=True)
        tried += env.num_envs
        succeeded += int(r["success"].sum())
        take = np.flatnonzero(r["success"])[: num_episodes - total]
        for key, arr in (("observations", r["observations"]), ("actions", r["actions"]),
                         ("subgoals", r["subgoals"]), ("task_id", env.task_index.astype(np.int16)),
                         ("lengths", r["lengths"].astype(np.int16))):
            kept[key].append(arr[take])
        total += len(take)
        bar.update(len(take))
    bar.close()
    arrays = {k: np.concatenate(v) for k, v in kept.items()}
    if total:
        tmax = int(arrays["lengths"].max())
        arrays["observations"] = arrays["observations"][:, : tmax + 1]
        arrays["actions"] = arrays["actions"][:, :tmax]
        arrays["subgoals"] = arrays["subgoals"][:, :tmax]
        idx = np.minimum(np.arange(tmax + 1)[None, :], arrays["lengths"][:, None].astype(np.int64))
        arrays["observations"] = np.take_along_axis(arrays["observations"], idx[..., None], 1)
    stats = {
        "expert_episodes_rolled_out": tried,
        "expert_episodes_succeeded": succeeded,
        "expert_episodes_failed": tried - succeeded,
        "expert_success_rate": succeeded / max(1, tried),
        "episodes_kept": total,
        "mean_actions": mean_actions,
        "complete": total >= num_episodes,
    }
    return arrays, stats


def write_ant_dataset(folder: str | Path, arrays: dict[str, np.ndarray], stats: dict, tasks: Sequence[Task],
                      spec: AntSpec = AntSpec(), extra: dict | None = None) -> None:
    """Save a dataset from :func:`generate_ant_dataset` with :func:`internalrl.data.save_trajectories`."""
    from ..data import DataError, data_card, save_trajectories

    if len(arrays["lengths"]) == 0:
        raise DataError("the expert produced no successful episode; nothing to save "
                        f"(tried {stats.get('expert_episodes_rolled_out')} episodes)")
    card = data_card(arrays, list(tasks), {"obs_format": "dense", "env_kind": "ant", "env": asdict(spec),
                                           "generation": stats, **(extra or {})})
    save_trajectories(folder, arrays, card)


# --------------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> None:
    """``python -m internalrl.experts.ant train|eval ...``"""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m internalrl.experts.ant", description="Ant-pinpad PPO expert")
    sub = p.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train")
    tr.add_argument("--out", default=str(DEFAULT_WEIGHTS))
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--total-steps", type=int, default=AntExpertConfig.total_steps)
    tr.add_argument("--max-seconds", type=float, default=float("inf"))
    tr.add_argument("--num-envs", type=int, default=AntExpertConfig.num_envs)
    ev = sub.add_parser("eval")
    ev.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    ev.add_argument("--episodes", type=int, default=256)
    ev.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.cmd == "train":
        cfg = AntExpertConfig(seed=args.seed, total_steps=args.total_steps, max_seconds=args.max_seconds,
                              num_envs=args.num_envs)
        summary = train_ant_expert(cfg, args.out)
        summary["command"] = " ".join(["python -m internalrl.experts.ant", *(argv or sys.argv[1:])])
        summary["torch_threads"] = torch.get_num_threads()
        if math.isinf(summary["config"]["max_seconds"]):
            summary["config"]["max_seconds"] = None
        Path(args.out).with_suffix(".json").write_text(json.dumps(summary, indent=2))
        print(json.dumps({k: v for k, v in summary.items() if k != "config"}))
    else:
        policy = load_ant_expert(args.weights)
        res = {}
        for name in ("ant-pretrain", "ant-posttrain"):
            for mean in (False, True):
                r = evaluate_ant_expert(policy, name, args.episodes, seed=args.seed, mean_actions=mean)
                res[f"{name}/{'mean' if mean else 'sampled'}"] = r
                print(name, "mean" if mean else "sampled", f"success {r['success_rate']:.3f}",
                      f"progress {r['mean_progress']:.2f}", f"({r['episodes']} episodes)", flush=True)
        print(json.dumps(res))


if __name__ == "__main__":
    main()
