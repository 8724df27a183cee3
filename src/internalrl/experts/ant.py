"""The ant expert (SPEC §2): one PPO agent across tasks, guided by grid-level shortest paths.

The expert sees more than the sequence model will: besides the ant-pinpad observation it
gets, for every cell, the direction(s) to move along a grid-level shortest path to the next
colour (never crossing a wall or a wrong colour), computed from the gridworld's distance maps.
Its reward is the *intrinsic* reward ``v · d`` — the torso's horizontal velocity (m/s,
averaged over the control step) along a unit direction ``d`` given by those moves — plus the
task reward.

[choice] ``d`` (``waypoints = True``): the unit vector from the torso to the centre of the
cell the suggested move leads to (normalised sum over tied moves). On a cell's centre line
this is the grid direction; off it, ``d`` also steers back towards the centre line, and the
straight segment to an adjacent cell's centre never leaves the two cells. (``waypoints =
False`` gives the plain grid direction.)

Expert observation, ``D + 4·G² + 4 + 4`` numbers (41 + 64 + 8 = 113 for the paper's sizes):

* the ant-pinpad observation (:func:`internalrl.envs.ant.obs_layout`), its proprioception
  possibly relabelled (below);
* per cell (row-major), a multi-hot over *up, down, left, right* of the moves that start a
  shortest safe path to the next colour (a one-hot unless two moves tie; all zero where no
  path exists and on the target itself);
* the same four numbers for the ant's current cell;
* ``d`` and the torso's horizontal velocity, both rotated into the (relabelled) torso's
  heading frame, so that the policy need not learn the rotation from the quaternion.

[choice] quarter-turn symmetry (``symmetry = True``): the ant's body is symmetric under
rotations by 90° about the vertical (leg 1 → 2 → 3 → 4, ankle signs alternating, see
:data:`ANKLE_SIGN`). Before every decision the legs are relabelled by the quarter turn ``k``
that brings ``d`` within ±45° of the relabelled body's forward axis; the policy sees the
relabelled body (quaternion composed with the turn, hinge angles and velocities permuted
between legs, angular velocity rotated) and its actions are mapped back to the real motors
(:func:`canonical_observation`, :func:`real_actions`; a test checks that the relabelled state
is the same physics). The policy thus only learns to walk roughly forwards and to steer; at a
turn of the path the labels switch instead of the ant having to turn its body. Without it, no
directed motion was learned in 0.5–2.8M steps (docs/ant.md); with it, velocity along ``d``
reached ~0.15 m/s within 0.2M steps.

[choice] tip-over (``tip_limit = 0.3``): a *training* episode also ends, as a failure, when the
z component of the torso's up axis (:func:`uprightness`) falls below 0.3. The environment only
ends episodes on torso height, and without this PPO learned to flip onto its back within ~20
steps and flail. Evaluation and data generation use the plain environment. Optionally
(``height_limit``, off by default) a training episode also ends when the torso rises above a
height below the environment's own limit of 1 m, so that the policy keeps a margin from it.

[choice] reward details: the intrinsic reward is capped at ``velocity_cap = 0.6`` m/s, so that
walking faster earns nothing more (the uncapped expert walked at 0.8 m/s and a quarter of its
training episodes ended with the torso bounced above 1 m; docs/ant.md, run P); the task reward is
weighted ``success_bonus = 10``; each correct colour visited earns ``visit_bonus = 1``; a failure
(wall, fall, wrong colour) costs ``failure_penalty = 5`` (1 until run P); every step earns
``alive_bonus = 0.05`` and pays a control cost ``0.005·Σa²``. PPO as in CleanRL's continuous
PPO (Gaussian with state-independent log-std, clamped to at least ``min_log_std = -1.2`` after every step, separate actor and critic MLPs of
128-128 tanh, 64 environments × 64-step segments with auto-reset, 5 epochs of 8 minibatches,
GAE λ = 0.95, γ = 0.99, clip 0.2, linearly annealed learning rate 3e-4, running observation
normalisation and return-based reward scaling; a time-limit end bootstraps from the value of
its last observation). 5 × 8 instead of CleanRL's 10 × 32 gradient steps per batch: on one
core the update then costs less than the simulation (about 6.8k instead of 3.2k environment
steps per second) and the clip fraction stays near 0.2 instead of 0.3–0.6. All are fields of
:class:`AntExpertConfig` (``--set FIELD=VALUE`` on the command line).

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

from ..config import ConfigError
from ..envs.ant import START_HEIGHT, AntSpec, BatchedAntPinpad, cell_centres
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


def guidance(env: BatchedAntPinpad, waypoints: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns ``(maps (N, cells, 4), here (N, 4), direction (N, 2) unit vector or 0)``.

    With ``waypoints`` (the default) the direction is the normalised sum, over the suggested
    moves of the current cell, of the unit vectors from the torso to the centre of the cell
    that move leads to; without, it is the normalised sum of the moves' grid directions. The
    waypoint direction steers the torso back towards the line of cell centres (the segment from
    anywhere in a cell to an adjacent cell's centre stays inside the two cells), which the
    constant grid direction does not."""
    maps = direction_maps(env)
    here = maps[np.arange(env.num_envs), np.maximum(env.cell, 0)]
    if waypoints:
        centre = cell_centres(env.spec)[np.maximum(env.cell, 0)]  # (N, 2)
        vec = centre[:, None] + MOVE_XY[None] * env.spec.cell_size - env.xy[:, None]  # (N, 4, 2)
        unit = vec / np.maximum(np.linalg.norm(vec, axis=-1, keepdims=True), 1e-9)
        d = (here[..., None] * unit).sum(1)
    else:
        d = here.astype(np.float64) @ MOVE_XY
    norm = np.linalg.norm(d, axis=1, keepdims=True)
    return maps, here, np.where(norm > 1e-9, d / np.maximum(norm, 1e-9), 0.0)


#: the ant is symmetric under quarter turns about the vertical: leg 1 (+x+y), 2 (-x+y), 3 (-x-y)
#: and 4 (+x-y) map onto each other; the ankle axes alternate in sign (ranges 30..70 degrees for
#: legs 1 and 4, -70..-30 for legs 2 and 3), so an ankle angle changes sign between legs of
#: opposite ``ANKLE_SIGN``. Hinge order in qpos[7:]/qvel[6:]: hip_1, ankle_1, ..., hip_4, ankle_4.
ANKLE_SIGN = np.array([1.0, -1.0, -1.0, 1.0])
#: actuator order of the model: hip_4, ankle_4, hip_1, ankle_1, hip_2, ankle_2, hip_3, ankle_3
ACTUATOR_LEG = np.array([3, 3, 0, 0, 1, 1, 2, 2])
ACTUATOR_ANKLE = np.array([0, 1, 0, 1, 0, 1, 0, 1], dtype=bool)


def _yaw(env: BatchedAntPinpad) -> np.ndarray:
    """Heading of the torso's x axis projected on the floor (exact also when it tilts)."""
    w, x, y, z = env.qpos[:, 3], env.qpos[:, 4], env.qpos[:, 5], env.qpos[:, 6]
    return np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def uprightness(env: BatchedAntPinpad) -> np.ndarray:
    """(N,) z component of the torso's up axis: 1 upright, 0 on its side, -1 on its back."""
    x, y = env.qpos[:, 4], env.qpos[:, 5]
    return 1 - 2 * (x * x + y * y)


def _rotate(xy: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotate (N, 2) vectors by -angle (world frame -> frame turned by angle)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([c * xy[:, 0] + s * xy[:, 1], -s * xy[:, 0] + c * xy[:, 1]], axis=1)


#: [choice] hysteresis of the relabelling: the previous quarter turn is kept while ``d`` stays
#: within this angle of its forward axis (so the labels do not flicker around ±45°)
KEEP_TURN = np.deg2rad(65.0)


def quarter_turns(env: BatchedAntPinpad, d: np.ndarray, prev: np.ndarray | None = None) -> np.ndarray:
    """(N,) k in 0..3: the quarter turn that brings the direction ``d`` within ±45° of the
    forward (+x) axis of the relabelled body (0 where there is no direction). Where ``prev``
    (the last step's k, -1 for none) is given and ``d`` is still within :data:`KEEP_TURN` of
    its forward axis, it is kept."""
    body = _rotate(d, _yaw(env))
    phi = np.arctan2(body[:, 1], body[:, 0])
    k = np.round(phi / (np.pi / 2)).astype(np.int64) % 4
    if prev is not None:
        off = np.angle(np.exp(1j * (phi - prev * (np.pi / 2))))
        k = np.where((prev >= 0) & (np.abs(off) <= KEEP_TURN), prev, k)
    return np.where(np.linalg.norm(d, axis=1) > 0, k, np.maximum(prev, 0) if prev is not None else 0)


def _joint_map(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 8) source hinge index and sign: relabelled hinge i = sign · real hinge src[i]."""
    j = np.arange(4)[None, :]
    r = (j + k[:, None]) % 4  # real leg behind relabelled leg j
    src = np.stack([2 * r, 2 * r + 1], axis=2).reshape(len(k), 8)
    sign = np.stack([np.ones_like(r, dtype=np.float64), ANKLE_SIGN[j] * ANKLE_SIGN[r]], axis=2).reshape(len(k), 8)
    return src, sign


def real_actions(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Map actions of the relabelled ant (actuator order) back to the real actuators."""
    a = np.asarray(a)
    r = ACTUATOR_LEG[None, :]  # real leg of each actuator
    j = (r - k[:, None]) % 4  # relabelled leg driving it
    slot = np.where(ACTUATOR_ANKLE[None, :], 2 * ((j + 1) % 4) + 1, 2 * ((j + 1) % 4))  # actuator slot of leg j
    sign = np.where(ACTUATOR_ANKLE[None, :], ANKLE_SIGN[j] * ANKLE_SIGN[r], 1.0)
    return np.take_along_axis(a, slot, axis=1) * sign


def canonical_observation(env: BatchedAntPinpad, obs: np.ndarray, guide=None, symmetry: bool = True,
                          k: np.ndarray | None = None, prev: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(expert observation (N, D + 4·cells + 8), k (N,))``. With ``symmetry`` the ant is
    relabelled by ``k`` quarter turns (:func:`quarter_turns`) so that the direction to move lies
    within ±45° of its forward axis: the proprioception is that of the turned body (quaternion
    composed with the turn, hinges permuted between legs with the ankle signs, angular velocity
    rotated), and the policy's actions are mapped back with :func:`real_actions`. ``k`` overrides
    the quarter turns (for tests); ``prev`` is the last step's k (-1 after a reset), for the
    hysteresis of :func:`quarter_turns`."""
    from ..envs.ant import symlog

    maps, here, d = guide if guide is not None else guidance(env)
    n = env.num_envs
    if k is None:
        k = quarter_turns(env, d, prev) if symmetry else np.zeros(n, dtype=np.int64)
    turn = k * (np.pi / 2)
    yaw = _yaw(env) + turn
    qpos, qvel = env.qpos, env.qvel
    if symmetry:
        w1, x1, y1, z1 = qpos[:, 3], qpos[:, 4], qpos[:, 5], qpos[:, 6]
        w2, z2 = np.cos(turn / 2), np.sin(turn / 2)
        quat = np.stack([w1 * w2 - z1 * z2, x1 * w2 + y1 * z2, y1 * w2 - x1 * z2, w1 * z2 + z1 * w2], axis=1)
        src, sign = _joint_map(k)
        joints = np.take_along_axis(qpos[:, 7:15], src, axis=1) * sign
        jvel = np.take_along_axis(qvel[:, 6:14], src, axis=1) * sign
        ang = np.concatenate([_rotate(qvel[:, 3:5], turn), qvel[:, 5:6]], axis=1)
        proprio = symlog(np.concatenate([qpos[:, 2:3], quat, joints, qvel[:, 0:3], ang, jvel], axis=1))
        obs = np.concatenate([proprio.astype(np.float32), obs[:, proprio.shape[1]:]], axis=1)
    body = _rotate(d, yaw)
    vel = _rotate(qvel[:, :2], yaw)
    eo = np.concatenate([obs, maps.reshape(n, -1), here, body, vel], axis=1).astype(np.float32)
    return eo, k


def expert_observation(env: BatchedAntPinpad, obs: np.ndarray, guide=None, symmetry: bool = False) -> np.ndarray:
    """(N, D + 4·cells + 8) the expert's observation (see the module docstring)."""
    return canonical_observation(env, obs, guide, symmetry)[0]


def expert_obs_dim(spec: AntSpec) -> int:
    return spec.obs_dim + 4 * spec.num_cells + 8


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

    def __init__(self, obs_dim: int, hidden: int = 128, act_dim: int = 8, symmetry: bool = False,
                 waypoints: bool = True) -> None:
        super().__init__()
        self.obs_dim, self.hidden = obs_dim, hidden
        self.symmetry, self.waypoints = symmetry, waypoints  # how its observation is built
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
    from ..train import save_weights

    header = {"obs_dim": str(policy.obs_dim), "hidden": str(policy.hidden), "symmetry": str(int(policy.symmetry)),
              "waypoints": str(int(policy.waypoints)), **{k: str(v) for k, v in (meta or {}).items()}}
    save_weights(policy, Path(path), header)


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
        policy = AntExpertPolicy(int(meta["obs_dim"]), int(meta["hidden"]), symmetry=meta.get("symmetry") == "1",
                                 waypoints=meta.get("waypoints", "0") == "1")
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
    cell_size: float = AntSpec.cell_size
    hidden: int = 128
    lr: float = 3e-4
    anneal_lr: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    update_epochs: int = 5
    num_minibatches: int = 8
    clip: float = 0.2
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    init_log_std: float = -0.5
    min_log_std: float = -1.2  # the log-std is clamped to at least this after every step
    waypoints: bool = True  # direction towards the next cell's centre (see guidance)
    symmetry: bool = True  # relabel the legs by quarter turns (see canonical_observation)
    tip_limit: float = 0.3  # training episodes end (as a failure) when uprightness() falls below this
    height_limit: float = float("inf")  # training episodes end (as a failure) when the torso rises above this
    max_grad_norm: float = 0.5
    success_bonus: float = 10.0
    visit_bonus: float = 1.0
    failure_penalty: float = 5.0
    alive_bonus: float = 0.05
    ctrl_cost: float = 0.005
    velocity_cap: float = 0.6  # the intrinsic reward is min(v · d, velocity_cap) (m/s); inf: uncapped

    def __post_init__(self) -> None:
        for name in ("total_steps", "num_envs", "num_steps", "horizon", "hidden", "update_epochs", "num_minibatches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"AntExpertConfig.{name} must be at least 1, got {getattr(self, name)}")
        if not self.height_limit > START_HEIGHT:
            raise ConfigError(f"AntExpertConfig.height_limit must be above the start height {START_HEIGHT}, "
                              f"got {self.height_limit}")
        if not self.velocity_cap > 0:
            raise ConfigError(f"AntExpertConfig.velocity_cap must be positive (m/s), got {self.velocity_cap}")
        if not 0 < self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ConfigError("AntExpertConfig.gamma must be in (0, 1] and gae_lambda in [0, 1]")


def training_end(env: BatchedAntPinpad, cfg: AntExpertConfig) -> np.ndarray:
    """(N,) the running training episodes that end early, as failures, although the environment
    goes on: tipped over (``tip_limit``) or torso above ``height_limit``."""
    return ~env.done & ((uprightness(env) < cfg.tip_limit) | (env.height > cfg.height_limit))


def shaped_reward(env: BatchedAntPinpad, cfg: AntExpertConfig, xy_before: np.ndarray, d: np.ndarray,
                  actions: np.ndarray, reward: np.ndarray, info: dict) -> np.ndarray:
    """Intrinsic ``v · d`` plus the weighted task reward and the shaping terms of
    :class:`AntExpertConfig` (see the module docstring)."""
    v = (env.xy - xy_before) / env.spec.control_dt
    progress = (info["visited"] >= 0) & ~info["failure"]
    return (np.minimum((v * d).sum(1), cfg.velocity_cap) + cfg.success_bonus * reward + cfg.visit_bonus * progress
            - cfg.failure_penalty * info["failure"] + cfg.alive_bonus
            - cfg.ctrl_cost * (np.clip(actions, -1, 1) ** 2).sum(1))


def train_ant_expert(cfg: AntExpertConfig, out: str | Path, progress: bool = True,
                     init: str | Path | None = None) -> dict:
    """Train the PPO expert; writes ``out`` (``.safetensors``, refreshed every 20 updates)
    and ``out`` with suffix ``.metrics.jsonl`` (one JSON line per update: statistics of the
    episodes that ended during it). Same seed and ``total_steps`` → same weights (one thread)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    spec = AntSpec(horizon=cfg.horizon, cell_size=cfg.cell_size)
    tasks = parse_task_set(list(cfg.tasks), spec.num_objects)
    n, S = cfg.num_envs, cfg.num_steps
    env = BatchedAntPinpad(n, tasks, spec, seed=rng)
    if init is not None:
        policy = load_ant_expert(init).train()
        if (policy.obs_dim != expert_obs_dim(spec) or policy.hidden != cfg.hidden
                or policy.symmetry != cfg.symmetry or policy.waypoints != cfg.waypoints):
            raise ConfigError(f"--init weights {init} do not match this configuration (observation size, hidden, "
                              "symmetry or waypoints differ)")
    else:
        policy = AntExpertPolicy(expert_obs_dim(spec), cfg.hidden, symmetry=cfg.symmetry, waypoints=cfg.waypoints)
        with torch.no_grad():
            policy.log_std.fill_(cfg.init_log_std)
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=1e-5)
    gen = torch.Generator().manual_seed(cfg.seed)
    ret_norm = RunningNorm(1)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.with_suffix(".metrics.jsonl").open("w")
    steps, update, start = 0, 0, time.time()
    obs = env.reset()
    guide = guidance(env, cfg.waypoints)
    disc_ret = np.zeros(n)
    intrinsic = np.zeros(n)
    turns = np.full(n, -1, dtype=np.int64)  # the relabelling's last quarter turn (-1: none yet)
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
        boot_buf = np.zeros((S, n), np.float32)
        end_buf = np.zeros((S, n), bool)  # the episode ended at this step (terminated or truncated)
        raw_ret = np.zeros((S, n))
        along = np.zeros((S, n))  # v · d of every step (not only of ended episodes)
        ended = {k: [] for k in ("success", "progress", "length", "intrinsic", "wall", "fell", "wrong", "tipped",
                                 "truncated")}
        for t in range(S):
            eo, k = canonical_observation(env, obs, guide, cfg.symmetry, prev=turns)
            turns = k
            ob_buf[t] = eo
            with torch.no_grad():
                x = torch.as_tensor(eo)
                dist = policy.dist(x)
                a = dist.mean + dist.stddev * torch.randn(dist.mean.shape, generator=gen)
                logp_buf[t] = dist.log_prob(a).sum(-1).numpy()
                val_buf[t] = policy.value(x).numpy()
            a = a.numpy()
            act_buf[t] = a
            a = real_actions(a, k)
            xy_before, d = env.xy.copy(), guide[2]
            obs, reward, term, trunc, info = env.step(a)
            tipped = training_end(env, cfg)
            if tipped.any():
                info = {**info, "failure": info["failure"] | tipped}
                term = term | tipped
                env.done |= tipped
            r = shaped_reward(env, cfg, xy_before, d, a, reward, info)
            along[t] = (((env.xy - xy_before) / spec.control_dt) * d).sum(1)
            intrinsic += along[t]
            if trunc.any():  # bootstrap a time-limit end from the value of its last observation
                with torch.no_grad():
                    v_end = policy.value(torch.as_tensor(expert_observation(
                        env, obs, guidance(env, cfg.waypoints), cfg.symmetry))).numpy()
                boot_buf[t] = cfg.gamma * np.where(trunc, v_end, 0.0)  # already in normalised units
            rew_buf[t] = r
            disc_ret = disc_ret * cfg.gamma + r
            raw_ret[t] = disc_ret
            done = term | trunc
            end_buf[t] = done
            if done.any():
                i = np.flatnonzero(done)
                for key, arr in (("success", info["success"]), ("progress", env.progress), ("length", env.t),
                                 ("intrinsic", intrinsic / np.maximum(env.t, 1)), ("wall", info["hit_wall"]),
                                 ("fell", info["fell"]), ("wrong", info["wrong_colour"]), ("tipped", tipped),
                                 ("truncated", trunc)):
                    ended[key].extend(np.asarray(arr, dtype=np.float64)[i].tolist())
                disc_ret[i] = 0
                intrinsic[i] = 0
                turns[i] = -1
                obs = env.reset(indices=i)
            guide = guidance(env, cfg.waypoints)
        with torch.no_grad():
            val_buf[S] = policy.value(torch.as_tensor(canonical_observation(
                env, obs, guide, cfg.symmetry, prev=turns)[0])).numpy()
        ret_norm.update(torch.as_tensor(raw_ret.reshape(-1, 1)))
        rew = rew_buf / float(torch.sqrt(ret_norm.var + 1e-8)) + boot_buf
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
                with torch.no_grad():
                    policy.log_std.clamp_(min=cfg.min_log_std)
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
# How an evaluation episode ends; "fell" is the torso leaving AntSpec's healthy height range (too low or too high).
OUTCOMES = ("success", "wrong colour", "wall", "fell", "time limit")
_ENDING_INFO = tuple((OUTCOMES.index(name), key) for name, key in (
    ("success", "success"), ("wrong colour", "wrong_colour"), ("wall", "hit_wall"), ("fell", "fell")))


def rollout_expert(policy: AntExpertPolicy, env: BatchedAntPinpad, mean_actions: bool,
                   generator: torch.Generator, record: bool = False):
    """Run one lock-step batch of episodes. Returns a dict with ``success (N,)``, ``lengths (N,)``,
    ``progress (N,)``, ``outcome (N,)`` (an index into :data:`OUTCOMES`: how each episode ended)
    and, when ``record``, ``observations (N, T+1, D)``, ``actions (N, T, 8)`` (clipped) and
    ``subgoals (N, T)``."""
    spec, n = env.spec, env.num_envs
    obs = env.reset()
    turns = np.full(n, -1, dtype=np.int64)
    outcome = np.full(n, OUTCOMES.index("time limit"), dtype=np.int64)
    if record:
        observations = np.zeros((n, spec.horizon + 1, spec.obs_dim), np.float32)
        actions = np.zeros((n, spec.horizon, 8), np.float32)
        subgoals = np.full((n, spec.horizon), -1, np.int8)
        observations[:, 0] = obs
    for t in range(spec.horizon):
        if env.done.all():
            break
        eo, turns = canonical_observation(env, obs, guidance(env, policy.waypoints), policy.symmetry, prev=turns)
        a = real_actions(policy.act(eo, mean_actions=mean_actions, generator=generator), turns)
        a = np.clip(a, -1.0, 1.0)
        active = ~env.done
        if record:
            subgoals[:, t] = np.where(active, env.subgoal(), -1)
            actions[active, t] = a[active]
        obs, _, terminated, _, info = env.step(a)
        for index, key in _ENDING_INFO:
            outcome[terminated & info[key]] = index
        if record:
            observations[active, t + 1] = obs[active]
    out = {"success": env.succeeded.copy(), "lengths": env.t.copy(), "progress": env.progress.copy(),
           "outcome": outcome}
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
    succ, prog, ends, done = [], [], [], 0
    while done < num_episodes:
        r = rollout_expert(policy, env, mean_actions, gen)
        take = min(env.num_envs, num_episodes - done)
        succ.append(r["success"][:take])
        prog.append(r["progress"][:take])
        ends.append(r["outcome"][:take])
        done += take
    s = np.concatenate(succ)
    counts = np.bincount(np.concatenate(ends), minlength=len(OUTCOMES))
    return {"episodes": int(len(s)), "success_rate": float(s.mean()),
            "mean_progress": float(np.concatenate(prog).mean()), "tasks": [task_str(t) for t in tasks],
            "mean_actions": mean_actions, "outcomes": {k: float(c / len(s)) for k, c in zip(OUTCOMES, counts)}}


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
def _overrides(items: Sequence[str]) -> dict:
    """``["field=value", ...]`` to typed :class:`AntExpertConfig` keyword arguments (typed as
    the gridworld config's overrides are; ``tasks`` takes a comma-separated list)."""
    from dataclasses import fields

    from ..config import ConfigError, coerce

    defaults = {f.name: f.default for f in fields(AntExpertConfig)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in defaults:
            raise SystemExit(f"--set wants FIELD=VALUE with FIELD one of {sorted(defaults)}; got {item!r}")
        if isinstance(defaults[key], tuple):
            out[key] = tuple(v for v in value.split(",") if v)
            continue
        try:
            out[key] = coerce(value, defaults[key], key)
        except ConfigError as e:
            raise SystemExit(f"--set {e}") from None
    return out


def main(argv: Sequence[str] | None = None, prog: str = "python -m internalrl.experts.ant") -> None:
    """``python -m internalrl.experts.ant train|eval ...`` (also ``internalrl ant-expert ...``)"""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog=prog, description="Ant-pinpad PPO expert")
    sub = p.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train")
    tr.add_argument("--out", default="runs/ant_expert.safetensors",
                    help="weights to write (default runs/ant_expert.safetensors; the shipped expert is "
                         "src/internalrl/assets/ant_expert.safetensors)")
    tr.add_argument("--overwrite", action="store_true", help="replace existing weights at --out")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--total-steps", type=int, default=AntExpertConfig.total_steps)
    tr.add_argument("--max-seconds", type=float, default=float("inf"))
    tr.add_argument("--num-envs", type=int, default=AntExpertConfig.num_envs)
    tr.add_argument("--init", default=None, help="start from these weights (e.g. a curriculum stage)")
    tr.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override an AntExpertConfig field (repeatable), e.g. --set min_log_std=-1")
    ev = sub.add_parser("eval")
    ev.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    ev.add_argument("--episodes", type=int, default=256)
    ev.add_argument("--seed", type=int, default=1)
    ev.add_argument("--cell-size", type=float, default=AntSpec.cell_size,
                    help="floor cell size in metres (default: the environment's)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.cmd == "train":
        out = Path(args.out)
        if out.suffix != ".safetensors":
            raise ConfigError(f"--out must end in .safetensors, got {out}")
        if out.exists() and not args.overwrite:
            raise ConfigError(f"{out} already exists; pass another --out, or --overwrite to replace it")
        kwargs = dict(seed=args.seed, total_steps=args.total_steps, max_seconds=args.max_seconds,
                      num_envs=args.num_envs)
        cfg = AntExpertConfig(**{**kwargs, **_overrides(args.set)})  # --set FIELD=VALUE wins over a flag
        summary = train_ant_expert(cfg, out, init=args.init)
        summary["command"] = " ".join(["python -m internalrl.experts.ant", *(argv or sys.argv[1:])])
        summary["torch_threads"] = torch.get_num_threads()
        if math.isinf(summary["config"]["max_seconds"]):
            summary["config"]["max_seconds"] = None
        out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
        print(json.dumps({k: v for k, v in summary.items() if k != "config"}))
    else:
        policy = load_ant_expert(args.weights)
        res = {}
        for name in ("ant-pretrain", "ant-posttrain"):
            for mean in (False, True):
                r = evaluate_ant_expert(policy, name, args.episodes, seed=args.seed, mean_actions=mean,
                                        spec=AntSpec(cell_size=args.cell_size))
                res[f"{name}/{'mean' if mean else 'sampled'}"] = r
                print(name, "mean" if mean else "sampled", f"success {r['success_rate']:.3f}",
                      f"progress {r['mean_progress']:.2f}", f"({r['episodes']} episodes);",
                      ", ".join(f"{k} {v:.3f}" for k, v in r["outcomes"].items() if k != "success"), flush=True)
        print(json.dumps(res))


if __name__ == "__main__":
    import sys

    from ..errors import USER_ERRORS

    try:
        main()
    except USER_ERRORS as e:  # reported as `internalrl ant-expert` reports them
        sys.exit(f"python -m internalrl.experts.ant: error: {e}")
