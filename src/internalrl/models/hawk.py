"""Hawk: Griffin's recurrent block as a pre-norm residual backbone (SPEC §3, Tables A5/A15).

One :class:`HawkBlock` is two pre-norm residual sub-blocks, as in Griffin (De et al. 2024):

* temporal mixing: ``x + W_out( gelu(W_gate n) * RG-LRU(conv4(W_in n)) )`` with ``n = RMSNorm(x)``,
  where ``conv4`` is a causal depthwise convolution of width 4 over time;
* an MLP: ``x + MLP(RMSNorm(x))`` (ReLU, as the paper's Table A5; or the gated variant).

**RG-LRU** (real-gated linear recurrent unit), per channel, with ``u_t`` the conv output:

    r_t = sigmoid(W_a u_t + b_a)          recurrence gate
    i_t = sigmoid(W_x u_t + b_x)          input gate
    a_t = a^(c r_t),  a = sigmoid(Λ),  c = 8      i.e. log a_t = −c r_t softplus(−Λ)
    h_t = a_t h_{t−1} + sqrt(1 − a_t²) (i_t u_t),   h_{−1} = 0

``W_a`` and ``W_x`` are block-diagonal with ``heads`` blocks (Griffin's choice: the gates mix
channels only within a head). ``Λ`` is initialised so that ``a^c`` is uniform in
``[0.9, 0.999]`` (Griffin). ``sqrt(1 − a_t²)`` is computed as ``sqrt(max(−expm1(2 log a_t), 1e−6))``:
accurate when ``a_t`` is near 1 and with a bounded derivative there (Griffin bounds it too).

**Two modes, one set of numbers.** Over a whole sequence the recurrence runs as a parallel
(Hillis–Steele) scan of the affine maps ``h ↦ a_t h + b_t``: ``log2 T`` rounds of elementwise
products and sums, no Python loop over time. The scan only multiplies numbers in ``(0, 1)``
and adds, so it cannot overflow (products underflow harmlessly to 0) and needs no float64.
One step (or a chunk of steps) at a time, :class:`RecurrentState` carries the last 3 conv
inputs and ``h`` per block; the same scan then starts from the carried ``h``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .transformer import make_mlp

LRU_C = 8.0  # the constant c of a_t = a^(c r_t) (Griffin)
CONV_WIDTH = 4  # temporal width of the causal conv (Griffin)
MIN_ONE_MINUS_A2 = 1e-6  # floor of 1 - a_t^2 under the square root (bounds its derivative at 500)


class RecurrentState:
    """A Hawk block's state for step-wise use: the last ``CONV_WIDTH - 1`` conv inputs and the
    RG-LRU state ``h``; ``length`` counts the steps consumed (as :class:`KVCache` does)."""

    def __init__(self, batch: int, width: int, device, dtype) -> None:
        self.conv = torch.zeros(batch, CONV_WIDTH - 1, width, device=device, dtype=dtype)
        self.h = torch.zeros(batch, width, device=device, dtype=dtype)
        self.length = 0

    def select_(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows ``rows`` (an index tensor), in that order."""
        self.conv, self.h = self.conv[rows], self.h[rows]


def _scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The inclusive Hillis–Steele scan of ``h_t = a_t h_{t-1} + b_t`` (``h_{-1} = 0``) along dim 1,
    in place on copies: after the round with offset d, position t holds the composition of the
    maps t-2d+1..t (``b``: its offset, ``a``: its product)."""
    a, b = a.clone(), b.clone()
    t, d = a.shape[1], 1
    while d < t:
        b[:, d:] += a[:, d:] * b[:, :-d]  # the product is formed before the add: no overlap hazard
        if 2 * d < t:  # the last round's products are not read
            a[:, d:] = a[:, d:] * a[:, :-d]
        d *= 2
    return b


class _LinearScan(torch.autograd.Function):
    """The scan with its gradient written out: the backward of a linear recurrence is the same
    recurrence run backwards, ``g_t = dL/dh_t + a_{t+1} g_{t+1}``, then ``dL/db_t = g_t`` and
    ``dL/da_t = g_t h_{t-1}``. Autograd through the scan's slices would cost several times more."""

    @staticmethod
    def forward(ctx, a, b, h0):
        b = torch.cat([b[:, :1] + a[:, :1] * h0[:, None], b[:, 1:]], 1)
        h = _scan(a, b)
        ctx.save_for_backward(a, h, h0)
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        a, h, h0 = ctx.saved_tensors
        a_next = torch.cat([a[:, 1:], torch.zeros_like(a[:, :1])], 1)
        g = _scan(a_next.flip(1), grad.flip(1)).flip(1)
        h_prev = torch.cat([h0[:, None], h[:, :-1]], 1)
        return g * h_prev, g, (a[:, 0] * g[:, 0]) if ctx.needs_input_grad[2] else None


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """``h_t = a_t h_{t-1} + b_t`` along dim 1 for every t, with ``h_{-1} = h0`` (default 0).
    ``a, b (B, T, C)``, ``h0 (B, C)`` -> ``h (B, T, C)``: ``log2 T`` rounds of elementwise
    products and sums (no loop over time), differentiable in all three."""
    if h0 is None:
        h0 = a.new_zeros(a.shape[0], a.shape[2])
    return _LinearScan.apply(a, b, h0)


class BlockDiagonalLinear(nn.Module):
    """``heads`` independent ``(width/heads) -> out_per_head * (width/heads)`` maps, one per block of channels.
    Returns ``out_per_head`` tensors of shape ``(..., width)``."""

    def __init__(self, width: int, heads: int, out_per_head: int = 1) -> None:
        super().__init__()
        self.heads, self.block, self.outs = heads, width // heads, out_per_head
        self.weight = nn.Parameter(torch.empty(heads, self.block, out_per_head * self.block))
        self.bias = nn.Parameter(torch.zeros(heads, out_per_head * self.block))
        nn.init.normal_(self.weight, std=1 / math.sqrt(self.block))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        lead = x.shape[:-1]
        y = torch.einsum("...hi,hij->...hj", x.reshape(*lead, self.heads, self.block), self.weight) + self.bias
        y = y.reshape(*lead, self.heads, self.outs, self.block)
        return [y[..., k, :].reshape(*lead, self.heads * self.block) for k in range(self.outs)]


class RGLRU(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.gates = BlockDiagonalLinear(width, heads, out_per_head=2)  # recurrence gate, input gate
        # a^c uniform in [0.9, 0.999] (Griffin): a = u^(1/c), Λ = logit(a)
        a = torch.empty(width).uniform_(0.9, 0.999) ** (1 / LRU_C)
        self.a_logit = nn.Parameter(torch.log(a) - torch.log1p(-a))

    def forward(self, u: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
        """``u (B, T, C)`` -> ``h (B, T, C)``, starting from ``h0`` (B, C) or 0."""
        gate_r, gate_i = self.gates(u)
        log_a = -LRU_C * torch.sigmoid(gate_r) * F.softplus(-self.a_logit)  # log a_t <= 0
        scale = torch.sqrt(torch.clamp(-torch.expm1(2 * log_a), min=MIN_ONE_MINUS_A2))  # sqrt(1 - a_t^2)
        return linear_scan(torch.exp(log_a), scale * torch.sigmoid(gate_i) * u, h0)


class HawkBlock(nn.Module):
    """Temporal mixing (gated branch times conv + RG-LRU branch), then an MLP; both pre-norm residual."""

    def __init__(self, width: int, lru_width: int, heads: int, mlp: int, mlp_type: str = "relu") -> None:
        super().__init__()
        self.lru_width = lru_width
        self.norm_mix = nn.RMSNorm(width)
        self.in_proj = nn.Linear(width, 2 * lru_width)  # the gate branch and the recurrent branch
        self.conv = nn.Conv1d(lru_width, lru_width, CONV_WIDTH, groups=lru_width)  # causal: left-padded below
        self.lru = RGLRU(lru_width, heads)
        self.out_proj = nn.Linear(lru_width, width)
        self.norm_mlp = nn.RMSNorm(width)
        self.mlp = make_mlp(width, mlp, mlp_type)

    def new_cache(self, batch: int, max_len: int, device, dtype) -> RecurrentState:
        return RecurrentState(batch, self.lru_width, device, dtype)  # max_len: a recurrence has no limit

    def forward(self, x: torch.Tensor, cache: RecurrentState | None = None) -> torch.Tensor:
        gate, u = self.in_proj(self.norm_mix(x)).chunk(2, dim=-1)  # (B, T, C) each
        b, t, c = u.shape
        past = cache.conv if cache is not None else u.new_zeros(b, CONV_WIDTH - 1, c)
        window = torch.cat([past, u], 1)  # (B, 3 + T, C)
        u = self.conv(window.transpose(1, 2)).transpose(1, 2)  # (B, T, C): step t sees inputs t-3..t
        h = self.lru(u, None if cache is None else cache.h)
        if cache is not None:
            cache.conv, cache.h = window[:, -(CONV_WIDTH - 1):], h[:, -1]
            cache.length += t
        x = x + self.out_proj(F.gelu(gate) * h)
        return x + self.mlp(self.norm_mlp(x))
