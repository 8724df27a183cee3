"""The internal environment (Algorithms 1–2): base model + switching unit + decoder + the
batched environment (the gridworld or the ant-pinpad), seen by a policy that picks controller codes z.

At every raw step the base model's lower half reads the observation (with its cache) and the
policy reads the residual ``e_t``. A new code is taken at the first step and wherever the
hardened switch ``β_t > 0.5`` fires; otherwise the code in force stays, and so does
``U = f_hyp(z)``. The controlled residual goes through the upper half, a raw action is sampled
from the base model's head, and the environment steps. The base-model cache, the switching
unit's history GRU and the code ``z_{t-1}`` it reads carry across raw steps exactly as in
training. The reward is summed over the raw steps of a decision (with reward only at the end
of an episode, each trajectory's return is its success)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..live import LiveRows
from ..metacontroller import Metacontroller
from ..models.sequence_model import SequenceModel
from .policy import RecurrentCodePolicy


@dataclass
class InternalRollout:
    residuals: torch.Tensor  # (N, T, W) e_t at the controlled layer (policy input)
    decisions: torch.Tensor  # (N, T) bool: a new code was taken at t
    codes: torch.Tensor  # (N, T, n_z) the code taken (where decisions)
    log_probs: torch.Tensor  # (N, T) log π(code) at decisions
    returns: torch.Tensor  # (N,) summed reward
    lengths: torch.Tensor  # (N,) raw steps
    action_log_probs: torch.Tensor  # (N, T) log p(a_t) of the raw actions under the controlled model
    subgoals: torch.Tensor  # (N, T) long: the subgoal the task asked for at t (-1 once done)
    actions: torch.Tensor  # (N, T) long (categorical actions) or (N, T, A) float (Gaussian): the raw action taken at t


@torch.no_grad()
def rollout_internal(base: SequenceModel, meta: Metacontroller, policy: RecurrentCodePolicy | None,
                     env, layer: int, seed: int, device, *,
                     codes: torch.Tensor | Callable[[int, object], torch.Tensor] | None = None,
                     actions: torch.Tensor | None = None, threshold: float = 0.5,
                     reset: bool = True,
                     override: Callable[[int, object], tuple[torch.Tensor, torch.Tensor]] | None = None) -> InternalRollout:
    """Roll out N episodes in lock-step. ``codes`` (N, T, n_z) replaces the policy's samples
    and ``actions`` (N, T) the sampled raw actions (for replaying a recorded trajectory).
    ``codes`` may also be a function ``(t, env) -> (N, n_z)`` choosing the codes as the
    episodes go (e.g. an oracle that knows each environment's subgoal). The environments are
    reset first, unless ``reset`` is False or ``actions`` replays a recording: then the episodes
    start from the layouts already in ``env`` (e.g. set with ``env.load_layout``).
    ``override(t, env) -> (mask (N,), codes (N, n_z))`` puts ``codes`` in force wherever ``mask``
    holds, whatever the switch says (latent code injection); those steps are not decisions."""
    n, horizon = env.num_envs, env.spec.horizon
    gen = torch.Generator(device=device).manual_seed(seed)
    nz = meta.cfg.code_dim
    obs = env.reset() if reset and actions is None else env.observation()
    rows = LiveRows(n, device)  # the environments still computed; finished ones are dropped as they pile up
    state = base.initial_state(n, device)
    h = torch.zeros(n, meta.cfg.history_dim, device=device)
    z = torch.zeros(n, nz, device=device)
    pol_state = policy.initial_state(n, device) if policy is not None else None
    categorical = base.cfg.action_type == "categorical"
    act_shape = () if categorical else (base.cfg.action_dim,)
    out = InternalRollout(
        residuals=torch.zeros(n, horizon, base.cfg.width, device=device),
        decisions=torch.zeros(n, horizon, dtype=torch.bool, device=device),
        codes=torch.zeros(n, horizon, nz, device=device),
        log_probs=torch.zeros(n, horizon, device=device),
        returns=torch.zeros(n, device=device),
        lengths=torch.zeros(n, dtype=torch.long, device=device),
        action_log_probs=torch.zeros(n, horizon, device=device),
        subgoals=torch.full((n, horizon), -1, dtype=torch.long, device=device),
        actions=torch.zeros(n, horizon, *act_shape, dtype=torch.long if categorical else torch.float32,
                            device=device),
    )
    for t in range(horizon):
        keep = rows.shrink(env)
        if keep is not None:
            state.select_(keep)
            h, z = h[keep], z[keep]
            pol_state = pol_state[:, keep] if pol_state is not None else None
        idx, live = rows.idx, rows.live(env)
        e = base.lower(torch.as_tensor(obs, device=device)[idx, None], layer, state)[:, 0]  # (rows, W)
        beta = meta.gate(e, h, z, first=(t == 0))
        fire = (beta > threshold) & live
        if override is not None:
            forced, forced_codes = override(t, env)
            forced = torch.as_tensor(forced, device=device)[idx] & live
            fire = fire & ~forced
        if codes is not None:
            proposal = (codes(t, env) if callable(codes) else codes[:, t])[idx]
        else:
            mean, log_std, pol_state = policy(e[:, None], pol_state)
            mean, log_std = mean[:, 0], log_std[:, 0]
            proposal = mean + log_std.exp() * torch.randn(mean.shape, generator=gen, device=device)
            out.log_probs[idx, t] = torch.where(fire, policy.log_prob(mean, log_std, proposal), 0.0)
        z = torch.where(fire[:, None], proposal, z)
        if override is not None:
            z = torch.where(forced[:, None], forced_codes.to(device)[idx], z)
        out.residuals[idx, t], out.decisions[idx, t] = e, fire
        out.subgoals[idx, t] = torch.as_tensor(env.subgoal(), device=device)[idx]
        out.codes[idx, t] = torch.where(fire[:, None], proposal, 0.0)
        heads = base.upper(meta.control(e, z)[:, None], layer, state)
        a = base.sample_action(heads, gen) if actions is None else actions[idx, t]
        out.action_log_probs[idx, t] = torch.where(live, base.action_log_prob(heads, a[:, None])[:, 0], 0.0)
        out.actions[idx, t] = torch.where(live.view(-1, *(1,) * len(act_shape)), a, 0)
        h = meta.history(e, h)
        out.lengths[idx] += live.long()
        obs, reward, *_ = env.step(rows.actions(a))
        out.returns += torch.as_tensor(reward, device=device)
        if env.done.all():
            break
    return out
