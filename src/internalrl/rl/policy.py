"""The abstract-action policy π(z | e_{1:t}) of internal RL (SPEC §6): a one-layer recurrent
model reading the residual stream at every raw step, with a Gaussian head over controller
codes z that starts exactly at the N(0, I) prior (zero-initialised head)."""
from __future__ import annotations

import torch
import torch.nn as nn


class RecurrentCodePolicy(nn.Module):
    def __init__(self, width: int, code_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.rnn = nn.GRU(width, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 2 * code_dim)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.hidden = hidden

    def initial_state(self, batch: int, device=None) -> torch.Tensor:
        return torch.zeros(1, batch, self.hidden, device=device)

    def forward(self, residual: torch.Tensor, state: torch.Tensor | None = None):
        """residual (B, T, W) -> mean, log_std (B, T, n_z) and the new state. The same call
        serves one step at a time (T = 1, state carried) and whole sequences."""
        out, state = self.rnn(residual, state)
        mean, log_std = self.head(out).chunk(2, -1)
        return mean, log_std.clamp(-5, 2), state

    @staticmethod
    def log_prob(mean: torch.Tensor, log_std: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return torch.distributions.Normal(mean, log_std.exp()).log_prob(code).sum(-1)
