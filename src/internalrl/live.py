"""Lock-step rollouts that stop computing finished episodes.

A batched rollout steps its environments together until the last episode ends. Most end far
sooner: on the post-training task the quick base model's episodes last about 10 steps on
average, but one that wanders runs to the horizon (100). Running the model on every row until
then wastes most of the work. :class:`LiveRows` holds the environments whose rows are still
computed; once fewer than half of those are live, :meth:`LiveRows.shrink` drops the finished
ones, and the caller cuts its model state and per-row tensors to the same rows. Every row's
computation stays that of the full batch (up to float rounding of a smaller matrix product;
a test replays recorded episodes both ways), and environments that are done are never stepped
anyway. What changes is which random numbers a sampled action or code draws, since the
generator fills a smaller batch.
"""
from __future__ import annotations

import numpy as np
import torch


class LiveRows:
    def __init__(self, num_envs: int, device, min_live_fraction: float = 0.5) -> None:
        self.num_envs = num_envs
        self.idx = torch.arange(num_envs, device=device)  # environment of each computed row
        self.min_live_fraction = min_live_fraction

    def live(self, env) -> torch.Tensor:
        """(rows,) bool: which computed rows' environments are still running."""
        return torch.as_tensor(~env.done, device=self.idx.device)[self.idx]

    def shrink(self, env) -> torch.Tensor | None:
        """Drop the finished rows once fewer than ``min_live_fraction`` of them are live.
        Returns the kept positions among the current rows (index every per-row tensor and
        the model state with it), or None when nothing changed."""
        live = self.live(env)
        n = int(live.sum())
        if n == 0 or n >= self.min_live_fraction * len(self.idx):
            return None
        keep = live.nonzero()[:, 0]
        self.idx = self.idx[keep]
        return keep

    def actions(self, rows_actions: torch.Tensor) -> np.ndarray:
        """Actions for every environment from those of the computed rows (finished
        environments ignore theirs)."""
        rows_actions = rows_actions.cpu().numpy()
        full = np.zeros((self.num_envs, *rows_actions.shape[1:]), dtype=rows_actions.dtype)
        full[self.idx.cpu().numpy()] = rows_actions
        return full
