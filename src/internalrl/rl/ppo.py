"""Critic-free PPO (SPEC §6, Algorithm 3): one advantage per trajectory,
``(R − mean_batch R) / (std_batch R + 1e-3)``, and the clipped surrogate over every decision
the trajectory took."""
from __future__ import annotations

import torch


def trajectory_advantages(returns: torch.Tensor) -> torch.Tensor:
    """(N,) returns -> (N,) batch-normalised advantages."""
    return (returns - returns.mean()) / (returns.std(unbiased=False) + 1e-3)


def clipped_surrogate_loss(new_logp: torch.Tensor, old_logp: torch.Tensor, advantage: torch.Tensor,
                           decisions: torch.Tensor, clip: float = 0.2) -> torch.Tensor:
    """new/old_logp (N, T) log-probabilities of the actions taken, advantage (N,), decisions
    (N, T) bool: where an action was taken. Returns the loss to minimise."""
    ratio = torch.exp(new_logp - old_logp)
    adv = advantage[:, None]
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    d = decisions.float()
    return -(surrogate * d).sum() / d.sum().clamp(min=1)
