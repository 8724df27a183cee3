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
