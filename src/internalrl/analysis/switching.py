"""Switch metrics (issue 4): with β hardened at 0.5, how well switch times match the steps
where the ground-truth subgoal changes."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def switch_metrics(gates: torch.Tensor, subgoals: torch.Tensor, mask: torch.Tensor, tolerance: int = 1) -> dict:
    """gates (B, T) β, subgoals (B, T) ground truth, mask (B, T). The first step (which always
    switches) is left out. A switch counts as correct if a true change lies within
    ``tolerance`` steps of it; a true change counts as found if a switch lies within it."""
    valid = mask.clone()
    valid[:, 0] = False
    switch = (gates > 0.5) & valid
    change = torch.zeros_like(mask)
    change[:, 1:] = (subgoals[:, 1:] != subgoals[:, :-1]) & mask[:, 1:] & mask[:, :-1]
    k = 2 * tolerance + 1

    def near(x: torch.Tensor) -> torch.Tensor:  # (B, T) bool: an x within ±tolerance
        return F.max_pool1d(x.float()[:, None], k, stride=1, padding=tolerance)[:, 0] > 0

    tp_pred = (switch & near(change)).sum().item()
    tp_true = (change & near(switch)).sum().item()
    n_pred, n_true = switch.sum().item(), change.sum().item()
    precision = tp_pred / n_pred if n_pred else None  # None: no switch to judge (JSON null)
    recall = tp_true / n_true if n_true else None
    f1 = 2 * precision * recall / (precision + recall) if precision is not None and recall is not None \
        and precision + recall > 0 else 0.0
    g = gates[valid]
    return {
        "precision": precision, "recall": recall, "f1": f1,
        "switches_per_episode": (switch.sum(1).float() + 1).mean().item(),  # + the first step
        "subgoals_per_episode": (change.sum(1).float() + 1).mean().item(),
        "fraction_beta_intermediate": ((g > 0.1) & (g < 0.9)).float().mean().item() if g.numel() else None,
    }
