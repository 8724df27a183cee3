"""The base model as a policy: sample its action head, with the step cache,
on batched environments. Left alone the model does not know which task it is in, so we
measure (b) free play: how often its rollouts spell *some* pretraining task cleanly, and
(c) success on the post-training task, which it has never seen."""
from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from .envs.gridworld import BatchedGridPinpad, GridSpec
from .envs.tasks import Task, task_str
from .live import LiveRows
from .models.sequence_model import SequenceModel


@torch.no_grad()
def rollout_base_model(model: SequenceModel, env: BatchedGridPinpad, *, free_play: bool, seed: int,
                       temperature: float = 1.0, device="cpu", record: int = 0) -> dict:
    """Roll out one batch of episodes in lock-step. Returns success rate, mean episode
    length, which task each success spelled, and the agent's path for ``record`` episodes."""
    gen = torch.Generator(device=device).manual_seed(seed)
    obs = env.reset(free_play=free_play)
    state = model.initial_state(env.num_envs, device)
    paths = [env.agent[:record].copy()]
    visits: list[list[int]] = [[] for _ in range(env.num_envs)]
    failed_at = np.full(env.num_envs, -1)  # progress (colours done) when a wrong colour ended it
    rows = LiveRows(env.num_envs, device)
    for _ in range(env.spec.horizon):
        keep = rows.shrink(env)
        if keep is not None:
            state.select_(keep)
        action = model.act(torch.as_tensor(obs, device=device)[rows.idx], state, gen, temperature)
        obs, _, _, _, info = env.step(rows.actions(action))
        failed_at = np.where(info["failure"], env.progress, failed_at)
        paths.append(env.agent[:record].copy())
        for i in np.flatnonzero(info["visited"] >= 0):
            visits[i].append(int(info["visited"][i]))
        if env.done.all():
            break
    success = env.succeeded
    spelled = np.where(success, env.consistent.argmax(1), -1)
    counts = np.bincount(spelled[success], minlength=len(env.tasks))
    per = env.spec.colours_per_subgoal
    wrong = failed_at >= 0
    spelled_fails = Counter("-".join(map(str, visits[i])) for i in np.flatnonzero(wrong))
    return {
        "success_rate": float(success.mean()),
        # how the other episodes ended: a wrong colour on the way to a subgoal's later colour,
        # a wrong colour when a new subgoal starts, or the horizon
        "failures": {
            "wrong_colour_within_subgoal": float((wrong & (failed_at % per != 0)).mean()),
            "wrong_colour_new_subgoal": float((wrong & (failed_at % per == 0)).mean()),
            "timeout": float((~success & ~wrong).mean()),
        },
        "colours_done_mean": float(env.progress.mean()),
        # the colours visited by the episodes a wrong colour ended, most common first (last one: the wrong one)
        "common_failures": dict(spelled_fails.most_common(8)),
        "episodes": int(env.num_envs),
        "mean_length": float(env.t.mean()),
        "task_counts": {task_str(t): int(c) for t, c in zip(env.tasks, counts) if c},
        "paths": np.stack(paths, 1),  # (record, steps+1) agent cells
        "examples": [{"visited": "-".join(map(str, v)), "success": bool(success[i])} for i, v in enumerate(visits[:record])],
    }


def evaluate_policy(model: SequenceModel, spec: GridSpec, pretrain: list[Task], posttrain: list[Task], *,
                    num_envs: int, seed: int, temperature: float = 1.0, device="cpu") -> dict:
    free_env = BatchedGridPinpad(num_envs, pretrain, spec, seed=seed)
    free = rollout_base_model(model, free_env, free_play=True, seed=seed, temperature=temperature, device=device, record=4)
    post_env = BatchedGridPinpad(num_envs, posttrain, spec, seed=seed + 1)
    post = rollout_base_model(model, post_env, free_play=False, seed=seed + 1, temperature=temperature, device=device)
    return {"free_play": free, "posttrain": post, "free_env": free_env}


@torch.no_grad()
def rollout_ant_base_model(model: SequenceModel, env, *, free_play: bool, seed: int, temperature: float = 1.0,
                           device="cpu") -> dict:
    """The base model as a policy on a :class:`~internalrl.envs.ant.BatchedAntPinpad` batch: one lock-step batch
    of episodes, actions sampled from the Gaussian head (``temperature=0``: its mean), clipped to [-1, 1] by the
    environment. Returns the success rate, colours done, and how the episodes ended (the expert's evaluation's
    categories: success, wrong colour, wall, fell, time limit)."""
    from .experts.ant import OUTCOMES

    gen = torch.Generator(device=device).manual_seed(seed)
    obs = env.reset(free_play=free_play)
    state = model.initial_state(env.num_envs, device)
    outcome = np.full(env.num_envs, OUTCOMES.index("time limit"))
    rows = LiveRows(env.num_envs, device)
    for _ in range(env.spec.horizon):
        keep = rows.shrink(env)
        if keep is not None:
            state.select_(keep)
        action = model.act(torch.as_tensor(obs, device=device)[rows.idx], state, gen, temperature)
        obs, _, terminated, _, info = env.step(rows.actions(action.float()))
        for name, key in (("success", "success"), ("wrong colour", "wrong_colour"), ("wall", "hit_wall"),
                          ("fell", "fell")):
            outcome[terminated & info[key]] = OUTCOMES.index(name)
        if env.done.all():
            break
    success = env.succeeded
    spelled = np.where(success, env.consistent.argmax(1), -1)
    counts = np.bincount(spelled[success], minlength=len(env.tasks))
    ends = np.bincount(outcome, minlength=len(OUTCOMES))
    return {
        "success_rate": float(success.mean()),
        "colours_done_mean": float(env.progress.mean()),
        "outcomes": {k: float(c / env.num_envs) for k, c in zip(OUTCOMES, ends)},
        "episodes": int(env.num_envs),
        "mean_length": float(env.t.mean()),
        "task_counts": {task_str(t): int(c) for t, c in zip(env.tasks, counts) if c},
    }
