"""The gridworld expert (SPEC §2): a stochastic shortest-path policy from dynamic programming.

At every step it picks uniformly among the actions that lie on a shortest path to the next
colour of its task while never stepping on a wrong colour (the distance maps are computed
once per layout in :class:`~internalrl.envs.gridworld.BatchedGridPinpad`). With probability
``epsilon`` the action is replaced by a uniformly random *non-terminating* action: any action
that does not step onto a wrong colour.
"""
from __future__ import annotations

import numpy as np

from ..envs.gridworld import UNREACHABLE, BatchedGridPinpad


def optimal_action_mask(env: BatchedGridPinpad) -> np.ndarray:
    """(N, 4) bool: the actions on a shortest safe path to each environment's next colour.
    Where no safe path is left (noise led the agent into a sealed pocket) or the next colour
    is unknown, every safe action is allowed."""
    target = env.next_colour()
    known = target >= 0
    legs = env.leg_distances(np.where(known, target, 0), env.agent)  # (N, 4)
    best = legs.min(1, keepdims=True)
    mask = (legs == best) & (best < UNREACHABLE)
    return np.where(known[:, None] & mask.any(1, keepdims=True), mask, safe_action_mask(env))


def safe_action_mask(env: BatchedGridPinpad) -> np.ndarray:
    """(N, 4) bool: actions that do not step onto a wrong colour (bumping a wall is safe)."""
    target = env.next_colour()
    cells = env.neighbours[env.agent]  # (N, 4)
    inside = cells >= 0
    colour = env.cell_colour()[np.arange(env.num_envs)[:, None], np.where(inside, cells, 0)]
    wrong = inside & (colour >= 0) & (colour != target[:, None])
    return ~wrong


def sample_masked(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uniformly chosen True column per row."""
    scores = rng.random(mask.shape) * mask
    return scores.argmax(1)


def expert_actions(env: BatchedGridPinpad, rng: np.random.Generator, epsilon: float = 0.0):
    """Returns ``(actions (N,), optimal mask (N, 4))``."""
    optimal = optimal_action_mask(env)
    actions = sample_masked(optimal, rng)
    if epsilon > 0:
        noisy = rng.random(env.num_envs) < epsilon
        if noisy.any():
            actions = np.where(noisy, sample_masked(safe_action_mask(env), rng), actions)
    return actions, optimal


def task_marginal_probs(env: BatchedGridPinpad) -> np.ndarray:
    """(N, 4) the expert's action distribution averaged over the tasks still consistent with
    each environment's visits: what someone who knows the layout and the visited colours, but
    not the task, would predict."""
    n = env.num_envs
    expected = env.task_table[:, env.progress].T  # (N, K) next colour of every task
    probs = np.zeros((n, 4))
    for k in range(env.task_table.shape[0]):
        legs = env.leg_distances(np.maximum(expected[:, k], 0), env.agent)
        best = legs == legs.min(1, keepdims=True)
        probs += env.consistent[:, k : k + 1] * best / best.sum(1, keepdims=True)
    return probs / np.maximum(probs.sum(1, keepdims=True), 1e-12)


def task_marginal_reference(arrays: dict, tasks, spec) -> dict:
    """How well the expert's action can be predicted by someone who knows the layout and which
    colours were visited, but not the task: the expert's distribution averaged over the tasks
    still consistent with the visits. A fair bar for the base model, which must infer the task
    (it also sees the path, so it can do a little better than this)."""
    n = len(arrays["lengths"])
    env = BatchedGridPinpad(n, tasks, spec, seed=0, require_solvable=False)
    env.reset(free_play=True)
    env.load_layout(arrays["layout"].astype(np.int64), arrays["agent"][:, 0].astype(np.int64))
    correct, logp = [], []
    for t in range(int(arrays["lengths"].max())):
        live = t < arrays["lengths"]
        probs = task_marginal_probs(env)
        action = arrays["actions"][:, t].astype(np.int64)
        correct.append((probs.argmax(1) == action)[live])
        logp.append(np.log(np.maximum(probs[np.arange(n), action], 1e-12))[live])
        env.step(np.where(live, action, 0))
    return {"accuracy": float(np.concatenate(correct).mean()), "nll": float(-np.concatenate(logp).mean())}


def task_marginal_free_play(env: BatchedGridPinpad, seed: int) -> float:
    """Free-play completion of the task-marginal policy (sampling :func:`task_marginal_probs`
    step by step): the rate a base model that has learned exactly "layout + visited colours ->
    expert's mixture" would reach. Resets ``env`` in free play."""
    rng = np.random.default_rng(seed)
    env.reset(free_play=True)
    for _ in range(env.spec.horizon):
        probs = task_marginal_probs(env)
        env.step((probs.cumsum(1) > rng.random((env.num_envs, 1))).argmax(1))
        if env.done.all():
            break
    return float(env.succeeded.mean())
