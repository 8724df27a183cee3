"""Switch metrics: with β hardened at 0.5, how well switch times match the steps
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


def closed_loop_switching(decisions: torch.Tensor, subgoals: torch.Tensor, lengths: torch.Tensor,
                          tolerance: int = 1) -> dict:
    """Switch metrics in closed loop: the decisions a rollout took (N, T) against the subgoal
    changes the episodes actually reached ((N, T) subgoal asked for at each step, -1 once done),
    over the first ``lengths`` (N,) steps of each. Beside :func:`switch_metrics`' keys,
    ``decisions_per_subgoal``: codes taken per subgoal reached (1.0 is one code per subgoal)."""
    steps = torch.arange(decisions.shape[1], device=decisions.device)
    mask = (steps[None] < lengths[:, None]) & (subgoals >= 0)
    out = switch_metrics(decisions.float(), subgoals, mask, tolerance)
    # both per-episode counts include the first step, where a rollout always takes a code
    out["decisions_per_subgoal"] = out["switches_per_episode"] / out["subgoals_per_episode"]
    out["episodes"] = int(decisions.shape[0])
    return out


def code_content(codes: torch.Tensor, decisions: torch.Tensor, subgoals: torch.Tensor, num_subgoals: int,
                 direction: tuple[torch.Tensor, int] | None = None, seed: int = 0, train_fraction: float = 0.7) -> dict:
    """What the codes a policy chose carry: a linear probe from each code (taken where ``decisions``)
    to the subgoal the task asked for then, and, given ``direction = (actions (N, T), number of
    actions)``, one to the raw action taken at that step (the walking direction), fit on ``train_fraction`` of the decisions and scored on the rest, each
    beside the majority-class rate of the held-out decisions. None where too few decisions."""
    from .probes import fit_probe

    take = decisions & (subgoals >= 0)
    labels = {"subgoal": (subgoals[take], num_subgoals)}
    if direction is not None:
        labels["direction"] = (direction[0][take], direction[1])
    x = codes[take].float()
    n = x.shape[0]
    out = {"decisions": int(n)}
    n_train = int(n * train_fraction)
    if n_train < 10 or n - n_train < 10:
        return {**out, **{k: None for k in labels}}
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    tr, te = perm[:n_train], perm[n_train:]
    for name, (y, k) in labels.items():
        y = y.long().cpu()
        with torch.enable_grad():  # callers may hold no_grad for the rollout
            probe = fit_probe(x[tr].cpu(), y[tr], k, seed=seed)
        with torch.no_grad():
            acc = (probe(x[te].cpu()).argmax(-1) == y[te]).float().mean().item()
        out[name] = {"accuracy": acc, "majority_class_rate": torch.bincount(y[te], minlength=k).max().item() / len(te)}
    return out
