"""Latent code injection (paper Fig. A4): do the metacontroller's codes, drawn from its prior,
mean "go for this subgoal" once put in force by hand?

1. **A code bank.** The frozen metacontroller runs with codes drawn from the N(0, I) prior and
   its own learned switch, in free play on the pretraining tasks. Every subgoal an episode
   completed (one colour on the ant, one pair on the gridworld) gives the code that was in force
   when it was completed: the bank of that subgoal. [choice] The paper banks the codes of
   rollouts that visited only one colour; those are in this bank (counted apart as
   ``single_subgoal_episodes``), but on the gridworld they are too rare to fill it (3 of 1024
   episodes of the shipped model), so every completed subgoal counts.
2. **Mid-episode.** In new layouts, the same prior rollouts; at step ``inject_step`` each live
   episode is given a target subgoal (uniform) and a code of that subgoal from the bank, which
   stays in force until the episode visits its next colour [choice: held, not overwritten by the
   switch]. Success: the next subgoal the episode reaches is the target. Without injection, the
   same targets scored on the prior rollout alone.
3. **At an unseen transition.** On the post-training task, right after the first subgoal is
   completed (its transition to the second never occurs in pretraining), the second subgoal's
   code is injected and held until that subgoal is reached or the episode ends. Success: the
   second subgoal is reached, over the episodes that completed the first.

The paper reports on the ant 23% -> 36% (mid-episode) and 10% -> 24% (after colour 0).
"""
from __future__ import annotations

import numpy as np
import torch

from ..envs import make_batched_env


class VisitRecorder:
    """An environment whose ``step`` also records each episode's visits as ``(step, colour)``."""

    def __init__(self, env) -> None:
        self.env = env
        self.visits: list[list[tuple[int, int]]] = [[] for _ in range(env.num_envs)]
        self.steps = 0

    def __getattr__(self, name):
        return getattr(self.env, name)

    def step(self, actions):
        obs, reward, terminated, truncated, info = self.env.step(actions)
        for i in np.flatnonzero(info["visited"] >= 0):
            self.visits[i].append((self.steps, int(info["visited"][i])))
        self.steps += 1
        return obs, reward, terminated, truncated, info


def reached_subgoals(visits: list[tuple[int, int]], cps: int) -> list[tuple[int, int]]:
    """``(step, subgoal)`` of each subgoal an episode completed: every ``cps`` consecutive visits that
    spell one subgoal's colours in order, stamped with the step of its last colour."""
    out = []
    for k in range(0, len(visits) - cps + 1, cps):
        colours = [c for _, c in visits[k : k + cps]]
        g = colours[0] // cps
        if colours == list(range(g * cps, g * cps + cps)):
            out.append((visits[k + cps - 1][0], g))
        else:
            break
    return out


def _in_force(roll, i: int, t: int) -> torch.Tensor:
    """The code in force in episode ``i`` at step ``t``: the last one taken at or before ``t``."""
    taken = roll.decisions[i, : t + 1].nonzero()
    return roll.codes[i, int(taken[-1])]


def _prior(n: int, nz: int, seed: int, device):
    gen = torch.Generator(device=device).manual_seed(seed)
    return lambda t, env: torch.randn(n, nz, generator=gen, device=device)


@torch.no_grad()
def latent_code_injection(base, meta, layer: int, spec, pretrain_tasks, posttrain_task, episodes: int, seed: int,
                          device, inject_step: int = 30, threshold: float = 0.5) -> dict:
    from ..rl.internal import rollout_internal

    cps, k, nz = spec.colours_per_subgoal, spec.num_subgoals, meta.cfg.code_dim
    rng = np.random.default_rng(seed)

    def rollout(tasks, s, free_play, override=None):
        env = VisitRecorder(make_batched_env(spec, episodes, tasks, s))
        env.reset(free_play=free_play)
        roll = rollout_internal(base, meta, None, env, layer, s, device, codes=_prior(episodes, nz, s, device),
                                threshold=threshold, reset=False, override=override)
        return env, roll

    # 1. the bank: the code in force when each subgoal was completed
    env, roll = rollout(pretrain_tasks, seed, True)
    bank: list[list[torch.Tensor]] = [[] for _ in range(k)]
    single = 0
    for i in range(episodes):
        done = reached_subgoals(env.visits[i], cps)
        single += len(done) == 1 and len(env.visits[i]) == cps
        for t, g in done:
            bank[g].append(_in_force(roll, i, t).cpu())
    sizes = [len(b) for b in bank]
    out = {"episodes": episodes, "inject_step": inject_step,
           "bank": {"single_subgoal_episodes": int(single), "codes_per_subgoal": sizes}}

    def pick(targets: np.ndarray) -> torch.Tensor:
        codes = torch.zeros(len(targets), nz)
        for i, g in enumerate(targets):
            if g >= 0 and bank[g]:
                codes[i] = bank[g][rng.integers(len(bank[g]))]
        return codes.to(device)

    # 2. mid-episode, new layouts: a target subgoal with a bank code at step inject_step, held to the next visit
    have = np.array([bool(b) for b in bank])
    targets = rng.choice(np.flatnonzero(have), size=episodes) if have.any() else np.full(episodes, -1)
    codes = pick(targets)
    none = torch.zeros(episodes, dtype=torch.bool)
    arms = {}
    for label in ("without", "with"):
        at: dict = {}  # who is live at the injection step, and how many visits each has made by then

        def mid(t, env, inject=(label == "with")):
            if t == inject_step:
                at.update(live=~env.done.copy(), visits=np.array([len(v) for v in env.visits]))
            if not inject or not at:
                return none, codes
            fresh = np.array([len(v) for v in env.visits]) == at["visits"]
            return torch.as_tensor(at["live"] & fresh & (targets >= 0)), codes

        env, _ = rollout(pretrain_tasks, seed + 1, True, mid)
        hits = ([next_subgoal(env.visits[i], at["visits"][i], cps) == targets[i]
                 for i in np.flatnonzero(at["live"] & (targets >= 0))] if at else [])
        arms[label] = (len(hits), float(np.mean(hits)) if hits else None)
    out["mid_episode"] = {"episodes": arms["with"][0], "success_without": arms["without"][1],
                          "success_with": arms["with"][1], "subgoals_without_codes": int(k - have.sum())}

    # 3. right after the post-training task's first subgoal: inject the second's code, held until it is reached
    first = posttrain_task[0] // cps
    second = posttrain_task[cps] // cps if len(posttrain_task) > cps else None
    if second is None or not bank[second]:
        out["unseen_transition"] = {"from": first, "to": second, "episodes": 0, "success_without": None,
                                    "success_with": None}
        return out
    code2 = pick(np.full(episodes, second))

    def transition(t, env):
        return torch.as_tensor((env.progress >= cps) & (env.progress < 2 * cps)), code2

    arms = {}
    for label, override in (("without", None), ("with", transition)):
        env, _ = rollout([tuple(posttrain_task)], seed + 2, False, override)
        reached_first = env.progress >= cps
        n_first = int(reached_first.sum())
        arms[label] = (n_first, float((env.progress[reached_first] >= 2 * cps).mean()) if n_first else None)
    out["unseen_transition"] = {"from": int(first), "to": int(second), "episodes_without": arms["without"][0],
                                "episodes": arms["with"][0], "success_without": arms["without"][1],
                                "success_with": arms["with"][1]}
    return out


def next_subgoal(visits: list[tuple[int, int]], start: int, cps: int) -> int:
    """The subgoal spelled by the ``cps`` visits after the first ``start`` ones, or -1 (none, or not one subgoal)."""
    nxt = [c for _, c in visits[start : start + cps]]
    if len(nxt) < cps:
        return -1
    g = nxt[0] // cps
    return g if nxt == list(range(g * cps, g * cps + cps)) else -1
