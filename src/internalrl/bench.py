"""Throughput benchmarks (no thresholds: numbers to read and report).

* batched environment steps/s with the DP expert acting;
* pretraining tokens/s of the base model;
* base-model acting steps/s on N environments with the step cache (and, for contrast, the
  same number of steps recomputing the whole prefix each step);
* raw environment steps/s of an internal-RL rollout (base model, metacontroller and code
  policy in the loop) on the post-training task.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .config import Config
from .data import Batch, Trajectories, batch_indices, generate_grid, make_batch
from .envs.gridworld import BatchedGridPinpad
from .envs.tasks import parse_task_set
from .experts.grid import expert_actions
from .models.sequence_model import SequenceModel
from .train import resolve_device, train_step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_env_with_resets(cfg: Config, num_envs: int, seconds: float = 3.0) -> dict:
    """Environment steps/s counting only live environments, resets included in the time."""
    spec = cfg.env.spec()
    tasks = parse_task_set(cfg.env.pretrain_tasks, spec.num_objects)
    env = BatchedGridPinpad(num_envs, tasks, spec, seed=0)
    rng = np.random.default_rng(0)
    live, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        env.reset()
        while not env.done.all():
            live += int((~env.done).sum())
            a, _ = expert_actions(env, rng)
            env.step(a)
    return {"env_steps_per_s": live / (time.perf_counter() - t0), "num_envs": num_envs}


def _expert_episodes(cfg: Config, n: int) -> Trajectories:
    """``n`` grid expert episodes on the pretraining tasks (seed 0)."""
    spec = cfg.env.spec()
    arrays, _ = generate_grid(n, parse_task_set(cfg.env.pretrain_tasks, spec.num_objects), spec, seed=0, progress=False)
    return Trajectories(arrays, {"obs_format": "grid", "env": spec.__dict__})


def bench_train(cfg: Config, steps: int = 10) -> dict:
    device = resolve_device(cfg.train.device)
    data = _expert_episodes(cfg, max(8 * cfg.train.batch_size, 2048))
    torch.manual_seed(0)
    model = SequenceModel(cfg.model).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    tokens, elapsed = 0, 0.0
    for i in range(steps + 2):
        idx = batch_indices(np.arange(data.num_episodes), cfg.train.batch_size, 0, i, data.arrays["lengths"])
        batch = make_batch(data, idx).to(device)
        _sync(device)
        t0 = time.perf_counter()
        train_step(model, opt, batch, cfg.train)
        _sync(device)
        if i >= 2:  # the first steps warm up allocators
            elapsed += time.perf_counter() - t0
            tokens += int(batch.mask.sum())
    return {"tokens_per_s": tokens / elapsed, "train_steps_per_s": steps / elapsed, "batch_size": cfg.train.batch_size}


@torch.no_grad()
def bench_acting(cfg: Config, num_envs: int, uncached_steps: int = 10) -> dict:
    device = resolve_device(cfg.train.device)
    spec = cfg.env.spec()
    tasks = parse_task_set(cfg.env.pretrain_tasks, spec.num_objects)
    torch.manual_seed(0)
    model = SequenceModel(cfg.model).to(device).eval()
    env = BatchedGridPinpad(num_envs, tasks, spec, seed=0, require_solvable=False)
    gen = torch.Generator(device=device).manual_seed(0)
    obs = env.reset(free_play=True)
    state = model.initial_state(num_envs, device)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(spec.horizon):  # an untrained model rarely ends an episode: a full horizon
        a = model.act(torch.as_tensor(obs, device=device), state, gen)
        obs, *_ = env.step(a.cpu().numpy())
    _sync(device)
    cached = num_envs * spec.horizon / (time.perf_counter() - t0)
    # the same policy without a cache: every step re-runs the whole prefix
    history = [torch.as_tensor(env.reset(free_play=True), device=device)]
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(uncached_steps):
        out = model(torch.stack(history, 1))
        a = model.sample_action(out, gen)
        obs, *_ = env.step(a.cpu().numpy())
        history.append(torch.as_tensor(obs, device=device))
    _sync(device)
    uncached_first = num_envs * uncached_steps / (time.perf_counter() - t0)
    return {"num_envs": num_envs, "cached_env_steps_per_s": cached,
            f"uncached_env_steps_per_s_first_{uncached_steps}_steps": uncached_first}


def bench_internal(cfg: Config, num_envs: int) -> dict:
    """Raw environment steps/s of an internal-RL rollout: base model (cached), metacontroller
    switch and decoder, and the code policy all in the loop, on the post-training task."""
    from .metacontroller import Metacontroller
    from .rl.internal import rollout_internal
    from .rl.policy import RecurrentCodePolicy

    device = resolve_device(cfg.train.device)
    spec = cfg.env.spec()
    torch.manual_seed(0)
    base = SequenceModel(cfg.model).to(device).eval()
    meta = Metacontroller(cfg.metacontroller, cfg.model.width).to(device).eval()
    policy = RecurrentCodePolicy(cfg.model.width, cfg.metacontroller.code_dim, cfg.rl.policy_hidden).to(device)
    env = BatchedGridPinpad(num_envs, parse_task_set(cfg.env.posttrain_task, spec.num_objects), spec, seed=0)
    _sync(device)
    t0 = time.perf_counter()
    roll = rollout_internal(base, meta, policy, env, cfg.meta_layer(), 0, device, threshold=cfg.rl.threshold)
    _sync(device)
    steps = int(roll.lengths.sum())
    return {"num_envs": num_envs, "raw_env_steps": steps, "raw_env_steps_per_s": steps / (time.perf_counter() - t0),
            "decisions_per_episode": float(roll.decisions.sum()) / num_envs}


def bench_metacontroller_train(cfg: Config, batch, steps: int = 3) -> dict:
    """Metacontroller training steps/s (base model frozen, ``cfg.metacontroller``'s batch) on ``batch``: its
    recurrences step through every time step, so the cost grows with the episode length."""
    from .metacontroller import Metacontroller, metacontroller_loss

    device = resolve_device(cfg.train.device)
    torch.manual_seed(0)
    base = SequenceModel(cfg.model).to(device).eval().requires_grad_(False)
    meta = Metacontroller(cfg.metacontroller, cfg.model.width).to(device)
    opt = torch.optim.AdamW(meta.parameters(), lr=cfg.metacontroller.lr)
    batch = batch.to(device)
    elapsed = 0.0
    for i in range(steps + 1):
        _sync(device)
        t0 = time.perf_counter()
        res = metacontroller_loss(base, meta, cfg.meta_layer(), batch, cfg.metacontroller.alpha)
        opt.zero_grad(set_to_none=True)
        res["loss"].backward()
        opt.step()
        _sync(device)
        if i >= 1:  # the first step warms up allocators
            elapsed += time.perf_counter() - t0
    return {"train_steps_per_s": steps / elapsed, "batch_size": batch.actions.shape[0],
            "sequence_length": batch.actions.shape[1]}


def run_benchmarks(cfg: Config, num_envs: int = 1024) -> dict:
    device = resolve_device(cfg.train.device)
    out = {"device": str(device), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(0)
    out["env_expert"] = [bench_env_with_resets(cfg, n) for n in (1, 64, num_envs, 4 * num_envs)]
    out["pretraining"] = bench_train(cfg)
    out["acting"] = bench_acting(cfg, num_envs)
    out["internal_rl_rollout"] = bench_internal(cfg, num_envs)
    data = _expert_episodes(cfg, cfg.metacontroller.batch_size)
    out["metacontroller_training"] = bench_metacontroller_train(cfg, make_batch(data, np.arange(data.num_episodes)))
    return out


# ------------------------------------------------------------------ the ant: Hawk beside a transformer
ANT_BENCH_LENGTH = 300  # [choice] tokens per training sequence: about an ant episode's mean length in D


def same_width_transformer(model_cfg):
    """The transformer of ``model_cfg``'s width, depth, MLP and heads (head_dim = width / heads)."""
    from dataclasses import replace

    heads = model_cfg.heads if model_cfg.width % model_cfg.heads == 0 else 1
    return replace(model_cfg, backbone="transformer", heads=heads, head_dim=model_cfg.width // heads)


def _random_ant_batch(model_cfg, batch_size: int, length: int) -> Batch:
    """Ant-shaped episodes of random numbers (seed 0): the cost of a training step does not depend on them."""
    g = torch.Generator().manual_seed(0)
    return Batch(torch.randn(batch_size, length + 1, model_cfg.obs_dim, generator=g),
                 torch.randn(batch_size, length, model_cfg.action_dim, generator=g).clamp(-1, 1),
                 torch.ones(batch_size, length, dtype=torch.bool), torch.zeros(batch_size, length, dtype=torch.long))


def bench_ant_train(cfg: Config, model_cfg, steps: int = 5, length: int = ANT_BENCH_LENGTH) -> dict:
    """Training tokens/s of one backbone on ant-shaped batches (random numbers: the cost does not depend on them)."""
    device = resolve_device(cfg.train.device)
    torch.manual_seed(0)
    model = SequenceModel(model_cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    b = cfg.train.batch_size
    batch = _random_ant_batch(model_cfg, b, length).to(device)
    elapsed = 0.0
    for i in range(steps + 1):
        _sync(device)
        t0 = time.perf_counter()
        train_step(model, opt, batch, cfg.train)
        _sync(device)
        if i >= 1:  # the first step warms up allocators
            elapsed += time.perf_counter() - t0
    return {"tokens_per_s": steps * b * length / elapsed, "train_steps_per_s": steps / elapsed, "batch_size": b,
            "sequence_length": length, "parameters": sum(p.numel() for p in model.parameters())}


@torch.no_grad()
def bench_ant_acting(cfg: Config, model_cfg, num_envs: int, with_env: bool) -> dict:
    """Steps/s of one backbone acting, one cached step at a time, on ``num_envs`` environments: the model alone
    on random observations for the whole horizon, or with the ant-pinpad stepping until every episode has ended
    (live environment steps only; the model computes every row, as a rollout without row dropping does)."""
    from .envs.ant import BatchedAntPinpad

    device = resolve_device(cfg.train.device)
    spec = cfg.env.spec()
    torch.manual_seed(0)
    model = SequenceModel(model_cfg).to(device).eval()
    gen = torch.Generator(device=device).manual_seed(0)
    state = model.initial_state(num_envs, device)
    if with_env:
        env = BatchedAntPinpad(num_envs, parse_task_set(cfg.env.pretrain_tasks, spec.num_objects), spec, seed=0)
        obs = env.reset(free_play=True)
    else:
        obs_all = torch.randn(spec.horizon, num_envs, model_cfg.obs_dim, generator=torch.Generator().manual_seed(0))
    steps = 0
    _sync(device)
    t0 = time.perf_counter()
    for t in range(spec.horizon):
        o = torch.as_tensor(obs, device=device) if with_env else obs_all[t].to(device)
        a = model.act(o, state, gen)
        if with_env:
            steps += int((~env.done).sum())
            obs, *_ = env.step(a.cpu().numpy())
            if env.done.all():  # an untrained model's ant falls within tens of steps
                break
        else:
            steps += num_envs
    _sync(device)
    key = "env_steps_per_s" if with_env else "model_steps_per_s"
    return {key: steps / (time.perf_counter() - t0), "num_envs": num_envs, "steps": steps}


def run_ant_benchmarks(cfg: Config, num_envs: int = 256, progress: bool = True) -> dict:
    """The configured backbone (Hawk for the ant presets) beside a transformer of the same width: training
    tokens/s, and acting steps/s on ``num_envs`` environments (the model alone, and with the ant stepping)."""
    device = resolve_device(cfg.train.device)
    out = {"device": str(device), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(0)
    models = {cfg.model.backbone: cfg.model}
    if cfg.model.backbone != "transformer":
        models["transformer"] = same_width_transformer(cfg.model)
    for name, mc in models.items():
        if progress:
            print(f"[internalrl] bench: {name} (width {mc.width}, depth {mc.depth})", flush=True)
        out[name] = {"pretraining": bench_ant_train(cfg, mc),
                     "acting_model_only": bench_ant_acting(cfg, mc, num_envs, with_env=False),
                     "acting_with_env": bench_ant_acting(cfg, mc, num_envs, with_env=True)}
    if progress:
        print("[internalrl] bench: metacontroller training", flush=True)
    out["metacontroller_training"] = bench_metacontroller_train(
        cfg, _random_ant_batch(cfg.model, cfg.metacontroller.batch_size, ANT_BENCH_LENGTH))
    return out
