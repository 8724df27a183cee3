"""The linear residual controller ``e ← e + U e`` (SPEC §4, §5 step 7).

``U`` is a real matrix, applied as a matrix–vector product at every step: low rank as
``U = A Bᵀ`` with ``A, B`` of shape ``(width, rank)``, or full rank as ``U`` itself. Supervised
controllers keep one ``(A, B)`` per subgoal; the metacontroller produces ``A_t, B_t`` from its
controller code. Both go through :func:`apply_controller`.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def apply_controller(residual: torch.Tensor, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``e + U e`` for every (batch, time) position.

    residual: (..., W). Low rank: ``a`` and ``b`` (..., W, r), U = a bᵀ. Full rank: ``a`` is U,
    (..., W, W), and ``b`` is None. Leading dimensions of ``a``/``b`` broadcast against the
    residual's."""
    if b is None:
        return residual + (a @ residual.unsqueeze(-1)).squeeze(-1)
    coeff = (residual.unsqueeze(-2) @ b).squeeze(-2)  # (..., r) = Bᵀ e
    return residual + (a @ coeff.unsqueeze(-1)).squeeze(-1)


class SubgoalControllers(nn.Module):
    """One linear controller per subgoal; the subgoal index picks which one acts.

    ``rank=None`` gives full-rank controllers. Initialised near zero, so at the start the
    controlled model is the base model."""

    def __init__(self, num_subgoals: int, width: int, rank: int | None = 16, init_std: float = 1e-3) -> None:
        super().__init__()
        self.num_subgoals, self.width, self.rank = num_subgoals, width, rank
        if rank is None:
            self.u = nn.Parameter(torch.randn(num_subgoals, width, width) * init_std)
        else:
            self.a = nn.Parameter(torch.randn(num_subgoals, width, rank) * init_std)
            self.b = nn.Parameter(torch.randn(num_subgoals, width, rank) / width ** 0.5)

    def matrices(self) -> torch.Tensor:
        """(num_subgoals, W, W) the explicit U of every controller."""
        return self.u if self.rank is None else self.a @ self.b.transpose(-1, -2)

    def forward(self, residual: torch.Tensor, subgoal: torch.Tensor) -> torch.Tensor:
        """residual (..., W), subgoal (...) long; a subgoal of -1 leaves the residual alone."""
        g = subgoal.clamp(min=0)
        if self.rank is None:
            out = apply_controller(residual, self.u[g])
        else:
            out = apply_controller(residual, self.a[g], self.b[g])
        return torch.where((subgoal >= 0).unsqueeze(-1), out, residual)
