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


def per_task_expert_probs(env: BatchedGridPinpad) -> np.ndarray:
    """(N, K, 4) the expert's action distribution if the task were task k, given the colours
    visited so far (rows of tasks inconsistent with the visits are meaningless; weight them 0)."""
    expected = env.task_table[:, env.progress].T  # (N, K) next colour of every task
    probs = np.zeros((env.num_envs, env.task_table.shape[0], 4))
    for k in range(env.task_table.shape[0]):
        legs = env.leg_distances(np.maximum(expected[:, k], 0), env.agent)
        best = legs == legs.min(1, keepdims=True)
        probs[:, k] = best / best.sum(1, keepdims=True)
    return probs


def _mixture(per_task: np.ndarray, weights: np.ndarray) -> np.ndarray:
    probs = (weights[..., None] * per_task).sum(1)
    return probs / np.maximum(probs.sum(1, keepdims=True), 1e-12)


def task_marginal_probs(env: BatchedGridPinpad) -> np.ndarray:
    """(N, 4) the expert's action distribution averaged over the tasks still consistent with
    each environment's visits: what someone who knows the layout and the visited colours, but
    not the task, would predict."""
    return _mixture(per_task_expert_probs(env), env.consistent.astype(float))


def _mixtures_along(arrays: dict, tasks, spec):
    """Replay the episodes of ``arrays`` step by step; yield, for every step t, ``(live, action,
    marginal, posterior)``: which episodes are still running, the expert's action, and two (N, 4)
    predictions: the expert averaged over the tasks consistent with the visits, and the
    Bayes-optimal predictor given o_{1:t} (tasks weighted by the posterior ∝ Π_s p_task(a_s))."""
    n = len(arrays["lengths"])
    env = BatchedGridPinpad(n, tasks, spec, seed=0, require_solvable=False)
    env.reset(free_play=True)
    env.load_layout(arrays["layout"].astype(np.int64), arrays["agent"][:, 0].astype(np.int64))
    posterior = np.ones((n, len(tasks)))
    rows = np.arange(n)
    for t in range(int(arrays["lengths"].max())):
        live = t < arrays["lengths"]
        action = arrays["actions"][:, t].astype(np.int64)
        per_task = per_task_expert_probs(env)
        yield live, action, _mixture(per_task, env.consistent.astype(float)), _mixture(per_task, posterior * env.consistent)
        taken = per_task[rows, :, action]  # (N, K) likelihood of the action under each task
        posterior = np.where(live[:, None], posterior * taken, posterior)
        posterior /= np.maximum(posterior.sum(1, keepdims=True), 1e-300)
        env.step(np.where(live, action, 0))


def task_marginal_reference(arrays: dict, tasks, spec) -> dict:
    """Two bars for a model that must infer the task, scored on expert data ``arrays``:

    * ``accuracy``/``nll``: the expert's distribution averaged over the tasks consistent with the
      colours visited (it knows the layout and the visits, but ignores the path);
    * ``posterior_accuracy``/``posterior_nll``: the Bayes-optimal predictor given everything the
      model sees, o_{1:t}: the expert's distribution averaged over tasks weighted by the
      posterior ∝ Π_s p_task(a_s) of the path so far (tasks drawn uniformly). No model can do
      better in expectation; its rollouts are expert episodes, so its free play is 1."""
    n = len(arrays["lengths"])
    scores: dict[str, list] = {"correct": [], "logp": [], "post_correct": [], "post_logp": []}
    rows = np.arange(n)
    for live, action, marginal, posterior in _mixtures_along(arrays, tasks, spec):
        for name, probs in (("", marginal), ("post_", posterior)):
            scores[name + "correct"].append((probs.argmax(1) == action)[live])
            scores[name + "logp"].append(np.log(np.maximum(probs[rows, action], 1e-12))[live])
    mean = {k: float(np.concatenate(v).mean()) for k, v in scores.items()}
    return {"accuracy": mean["correct"], "nll": -mean["logp"],
            "posterior_accuracy": mean["post_correct"], "posterior_nll": -mean["post_logp"]}


def posterior_action_targets(arrays: dict, tasks, spec, chunk: int = 8192, progress: bool = False) -> np.ndarray:
    """(N, T, 4) float16: at every step of every episode the Bayes-optimal next-action
    distribution given o_{1:t} (zeros past an episode's end). Trained against these soft targets
    a model has the likelihood's optimum with none of the noise of the expert's sampled action."""
    n, t_max = arrays["actions"].shape[:2]
    out = np.zeros((n, t_max, 4), dtype=np.float16)
    from tqdm.auto import tqdm

    for start in tqdm(range(0, n, chunk), desc="soft targets", disable=not progress, leave=False):
        part = {k: v[start:start + chunk] for k, v in arrays.items() if k in ("layout", "agent", "actions", "lengths")}
        for t, (live, _, _, posterior) in enumerate(_mixtures_along(part, tasks, spec)):
            out[start:start + chunk, t] = np.where(live[:, None], posterior, 0.0)
    return out


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
