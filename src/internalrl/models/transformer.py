"""Causal pre-norm transformer block with bucketed relative-position attention bias
(SPEC §3, Tables A4/A16). One block reads ``x (B, T, width)`` and, when given a
:class:`KVCache`, appends its keys/values so the same code serves a whole sequence
(``cache=None``) and one step at a time (``T == 1`` with a cache)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def relative_bucket(distance: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5-style causal buckets for ``distance = query_pos - key_pos >= 0``: exact buckets for
    small distances, logarithmic ones up to ``max_distance``, the last bucket beyond."""
    exact = num_buckets // 2
    far = exact + (
        torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (num_buckets - exact)
    ).long()
    return torch.where(distance < exact, distance, far.clamp(max=num_buckets - 1))


class KVCache:
    """Keys and values of the positions seen so far, preallocated to ``max_len``."""

    def __init__(self, batch: int, heads: int, head_dim: int, max_len: int, device, dtype) -> None:
        self.k = torch.zeros(batch, heads, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    def select_(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows ``rows`` (an index tensor), in that order."""
        self.k, self.v = self.k[rows], self.v[rows]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = k.shape[2]
        if self.length + n > self.k.shape[2]:
            raise RuntimeError(
                f"sequence longer than the model's max_len ({self.k.shape[2]}); raise model.max_len"
            )
        self.k[:, :, self.length : self.length + n] = k
        self.v[:, :, self.length : self.length + n] = v
        self.length += n
        return self.k[:, :, : self.length], self.v[:, :, : self.length]


class GatedMLP(nn.Module):
    """``W_out (silu(W_gate x) * W_up x)`` (SwiGLU): a product of two projections, so one
    layer can express "feature a AND feature b" conjunctions a ReLU MLP needs many units for."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(width, 2 * hidden)
        self.down = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


def make_mlp(width: int, hidden: int, mlp_type: str) -> nn.Module:
    """The blocks' MLP: ``relu`` (Linear, ReLU, Linear) or ``swiglu`` (:class:`GatedMLP`)."""
    if mlp_type == "relu":
        return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width))
    if mlp_type == "swiglu":
        return GatedMLP(width, hidden)
    raise ValueError(f"mlp_type must be 'relu' or 'swiglu', got {mlp_type!r}")


class TransformerBlock(nn.Module):
    """``window`` > 0 lets each position attend only to itself and the ``window - 1`` positions
    before it (0: the whole past)."""

    def __init__(self, width: int, heads: int, head_dim: int, mlp: int, buckets: int, max_distance: int,
                 mlp_type: str = "relu", window: int = 0) -> None:
        super().__init__()
        self.heads, self.head_dim, self.window = heads, head_dim, window
        self.buckets, self.max_distance = buckets, max_distance
        self.norm_attn = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * heads * head_dim)
        self.out = nn.Linear(heads * head_dim, width)
        self.rel_bias = nn.Embedding(buckets, heads)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = make_mlp(width, mlp, mlp_type)

    def new_cache(self, batch: int, max_len: int, device, dtype) -> KVCache:
        return KVCache(batch, self.heads, self.head_dim, max_len, device, dtype)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(self.norm_attn(x)).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        # q, k, v: (B, heads, T, head_dim)
        if cache is not None:
            k, v = cache.append(k, v)
        offset = k.shape[2] - t
        qpos = torch.arange(offset, offset + t, device=x.device)
        kpos = torch.arange(k.shape[2], device=x.device)
        distance = qpos[:, None] - kpos[None, :]  # (T, Tk)
        bias = self.rel_bias(relative_bucket(distance.clamp(min=0), self.buckets, self.max_distance))
        hidden = distance < 0
        if self.window:
            hidden = hidden | (distance >= self.window)
        bias = bias.permute(2, 0, 1).masked_fill(hidden, float("-inf"))  # (heads, T, Tk)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[None].to(q.dtype))
        x = x + self.out(attn.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))
        return x + self.mlp(self.norm_mlp(x))
