"""The base autoregressive model and the interface every later stage leans on.

One token per time step: a linear embedding of the observation ``o_t`` (past actions are not
input). Blocks (a causal transformer, or Hawk's recurrent blocks: ``ModelConfig.backbone``) then
heads: an action head (categorical logits, or a Gaussian mean with a
learned diagonal log-std) and a next-observation head (Bernoulli logits or Gaussian mean).

**Split at layer l.** ``lower(obs, l)`` runs the embedding and ``blocks[:l]`` and returns the
residual stream ``e_{t,l}`` (``l = 0`` is the embedding itself); ``upper(residual, l)`` runs
``blocks[l:]`` and the heads. Whatever sits between them reads and may rewrite the residual.
Both take an optional :class:`ModelState`: without it they process whole sequences, with it
they process the next step(s) and carry a per-block cache, so acting never recomputes the
prefix. ``forward(obs, layer, intervention)`` is the whole-sequence path with a hook in
between; the step-wise path gives the same numbers (tested to 1e-5).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .hawk import HawkBlock
from .transformer import TransformerBlock

BACKBONES = ("transformer", "hawk")


@dataclass
class ModelConfig:
    obs_dim: int = 637
    action_dim: int = 4
    action_type: str = "categorical"  # or "gaussian"
    obs_type: str = "bernoulli"  # or "gaussian"
    width: int = 256
    depth: int = 6
    heads: int = 4
    head_dim: int = 64
    mlp: int = 512
    mlp_type: str = "relu"  # "relu" (paper) or "swiglu" (gated)
    rel_buckets: int = 32
    rel_max_distance: int = 128
    init_scale: float = 0.1  # variance scale of the fan-in initialisation
    max_len: int = 128  # longest sequence the step cache holds
    # "linear": W·o_t; "egocentric": W·(o_t re-indexed around the agent); "conv"; "heading" (dense observations):
    # W·(o_t and each 2-D offset's components along and across the 2-D velocity, and their cosine)
    obs_encoder: str = "linear"
    grid_size: int = 7  # only read by the egocentric and conv encoders
    # only read by the heading encoder: the observation index of the velocity's x (y follows), of the first offset's
    # x, and how many (x, y) offsets follow it (the ant's colours and walls; filled in from the ant's layout)
    heading_velocity: int = 0
    heading_offsets: int = 0
    heading_count: int = 0
    conv_channels: int = 16  # the conv encoder [choice]: channels of its 3x3 layers
    conv_layers: int = 2  # the conv encoder: how many 3x3 layers before the linear map
    # "transformer" (the grid's, Table A4) or "hawk" (Griffin's recurrent block, the ant's, Table A5). Hawk reads
    # width, depth, heads (the RG-LRU gates' diagonal blocks), mlp, mlp_type and lru_width; not head_dim or rel_*
    backbone: str = "transformer"
    lru_width: int = 0  # hawk: channels of the conv + RG-LRU branch; 0 means width (Table A5: LRU width = width)
    # transformer [choice, a departure from the paper; 0 = off, the paper's]: the blocks above layer depth // 2 attend
    # only to the last `upper_window` positions (1: each position to itself). The history then reaches the upper half
    # only through the residual stream at layer depth // 2 (where the controllers and the metacontroller act) of the
    # last (depth - depth // 2) * (upper_window - 1) + 1 steps.
    upper_window: int = 0

    def validate(self) -> None:
        for name in ("obs_dim", "action_dim", "width", "depth", "heads", "head_dim", "mlp", "rel_buckets", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.action_type not in ("categorical", "gaussian"):
            raise ValueError(f"model.action_type must be 'categorical' or 'gaussian', got {self.action_type!r}")
        if self.obs_type not in ("bernoulli", "gaussian"):
            raise ValueError(f"model.obs_type must be 'bernoulli' or 'gaussian', got {self.obs_type!r}")
        if self.rel_max_distance <= self.rel_buckets // 2:
            raise ValueError("model.rel_max_distance must exceed model.rel_buckets / 2")
        if self.init_scale <= 0:
            raise ValueError("model.init_scale must be positive")
        if self.mlp_type not in ("relu", "swiglu"):
            raise ValueError(f"model.mlp_type must be 'relu' or 'swiglu', got {self.mlp_type!r}")
        if self.obs_encoder not in ("linear", "egocentric", "conv", "heading"):
            raise ValueError(f"model.obs_encoder must be 'linear', 'egocentric', 'conv' or 'heading', got "
                             f"{self.obs_encoder!r}")
        if self.obs_encoder == "heading" and not (
                self.heading_count >= 1 and 0 <= self.heading_velocity <= self.obs_dim - 2
                and 0 <= self.heading_offsets and self.heading_offsets + 2 * self.heading_count <= self.obs_dim):
            raise ValueError(f"model.obs_encoder=heading needs a 2-D velocity and at least one 2-D offset inside the "
                             f"{self.obs_dim}-number observation: model.heading_velocity ({self.heading_velocity}), "
                             f"model.heading_offsets ({self.heading_offsets}), model.heading_count "
                             f"({self.heading_count}) (the ant's are filled in from its observation layout)")
        if self.obs_encoder in ("egocentric", "conv") and (self.grid_size < 2 or self.obs_dim % self.grid_size ** 2):
            raise ValueError(f"model.obs_encoder={self.obs_encoder} needs a grid observation: obs_dim ({self.obs_dim}) "
                             f"must be a multiple of grid_size² ({self.grid_size}² = {self.grid_size ** 2})")
        if self.obs_encoder == "conv" and (self.conv_channels < 1 or self.conv_layers < 1):
            raise ValueError("model.conv_channels and model.conv_layers must be at least 1")
        if self.backbone not in BACKBONES:
            raise ValueError(f"model.backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}")
        if self.upper_window < 0:
            raise ValueError(f"model.upper_window must be 0 (the whole past) or positive, got {self.upper_window}")
        if self.upper_window and self.backbone != "transformer":
            raise ValueError("model.upper_window applies to the transformer backbone only; set it to 0 for "
                             f"backbone={self.backbone!r}")
        if self.lru_width < 0:
            raise ValueError(f"model.lru_width must be 0 (the width) or positive, got {self.lru_width}")
        if self.backbone == "hawk" and self.recurrent_width % self.heads:
            name = "model.lru_width" if self.lru_width else "model.width"
            raise ValueError(f"{name} ({self.recurrent_width}) must be divisible by model.heads ({self.heads}) for the "
                             "hawk backbone: its RG-LRU gates are block-diagonal with one block per head")

    @property
    def recurrent_width(self) -> int:
        """Hawk's conv + RG-LRU width (``lru_width``, or ``width`` when that is 0)."""
        return self.lru_width or self.width


class HeadOutput:
    """The heads at every step: ``action`` (B, T, A) logits (categorical) or mean (gaussian),
    ``action_log_std`` (A,) for a gaussian action head, and ``next_obs`` (B, T, D) logits
    (bernoulli) or mean (gaussian). The next-observation head, the widest layer of a small
    model, runs only when ``next_obs`` is first read: acting, control and the metacontroller
    need the action head alone."""

    def __init__(self, action: torch.Tensor, features: torch.Tensor, obs_head: nn.Module,
                 action_log_std: torch.Tensor | None = None) -> None:
        self.action, self.action_log_std = action, action_log_std
        self._features, self._obs_head, self._next_obs = features, obs_head, None

    @property
    def next_obs(self) -> torch.Tensor:
        if self._next_obs is None:
            self._next_obs = self._obs_head(self._features)
        return self._next_obs


@dataclass
class ModelState:
    """Per-block caches for step-wise use; ``position`` counts the steps consumed. A cache is whatever
    its block keeps between calls: a :class:`~internalrl.models.transformer.KVCache` (keys and values
    so far) for the transformer, a :class:`~internalrl.models.hawk.RecurrentState` (conv inputs and
    RG-LRU state) for Hawk; each has ``length`` and ``select_(rows)``."""

    caches: list = field(default_factory=list)

    @property
    def position(self) -> int:
        return self.caches[-1].length if self.caches else 0

    def select_(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows ``rows`` of every cache (see :class:`internalrl.live.LiveRows`)."""
        for cache in self.caches:
            cache.select_(rows)


#: An intervention rewrites the residual stream between lower and upper: (B, T, W) -> (B, T, W).
Intervention = Callable[[torch.Tensor], torch.Tensor]


class EgocentricGrid(nn.Module):
    """A fixed re-indexing of a gridworld observation around the agent (no parameters).

    The ``(G, G, C)`` observation (last channel: the agent) is padded to ``3G-2`` cells a side
    with an extra "outside the grid" channel, and the ``(2G-1)²`` window centred on the agent is
    cut out, dropping the agent channel: ``(2G-1)² · C`` numbers. "Colour k is just above the
    agent" becomes one input, which a linear embedding can use directly. Nothing is lost: the
    "outside" cells give the agent's absolute position, so the window determines ``o_t``."""

    def __init__(self, grid_size: int, obs_dim: int) -> None:
        super().__init__()
        g = grid_size
        self.g, self.c = g, obs_dim // (g * g)
        p, s = 3 * g - 2, 2 * g - 1
        rows, cols = torch.arange(g * g) // g, torch.arange(g * g) % g
        dr, dc = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
        # window of agent cell (r, c) covers padded rows r..r+2G-2 and cols c..c+2G-2
        index = (rows[:, None] + dr.reshape(1, -1)) * p + (cols[:, None] + dc.reshape(1, -1))
        self.register_buffer("index", index, persistent=False)  # (G*G, S*S)
        self.out_dim = s * s * self.c

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        g, c = self.g, self.c
        lead = obs.shape[:-1]
        grid = obs.reshape(-1, g, g, c)
        agent = grid[..., c - 1].reshape(-1, g * g).argmax(-1)  # (N,)
        content = torch.cat([grid[..., : c - 1], torch.zeros_like(grid[..., :1])], -1)  # last: outside flag
        padded = F.pad(content.permute(0, 3, 1, 2), (g - 1, g - 1, g - 1, g - 1)).permute(0, 2, 3, 1)
        outside = torch.ones(padded.shape[1:3], device=obs.device, dtype=obs.dtype)
        outside[g - 1 : 2 * g - 1, g - 1 : 2 * g - 1] = 0
        padded = padded.clone()
        padded[..., c - 1] = outside
        flat = padded.reshape(padded.shape[0], -1, c)
        window = flat.gather(1, self.index[agent][..., None].expand(-1, -1, c))  # (N, S*S, C)
        return window.reshape(*lead, -1)


class EgocentricEmbedding(nn.Module):
    """``Linear(EgocentricGrid(o_t))`` computed sparsely, with the same numbers.

    A gridworld observation holds every wall and colour identity exactly once, so the window
    has one 1 per identity plus the "outside" cells, which depend only on the agent's cell. The
    embedding is therefore a sum of ``W + O`` table columns (one gather) plus a precomputed
    outside term: about 12 columns a token instead of a 2197-column matrix product. Both
    lookups have deterministic backward passes on CPU at any thread count."""

    def __init__(self, grid_size: int, obs_dim: int, width: int) -> None:
        super().__init__()
        self.window = EgocentricGrid(grid_size, obs_dim)
        self.linear = nn.Linear(self.window.out_dim, width)
        g = self.window.g
        s, p = 2 * g - 1, 3 * g - 2
        # rel[agent, cell]: window position of grid cell `cell` seen from agent cell `agent`
        ar, ac = torch.arange(g * g) // g, torch.arange(g * g) % g
        rel = (ar[None, :] - ar[:, None] + g - 1) * s + (ac[None, :] - ac[:, None] + g - 1)
        self.register_buffer("rel", rel, persistent=False)  # (G*G, G*G)
        # outside[agent, window position]: 1 where the window leaves the grid
        win = self.window.index  # (G*G, S*S) padded-grid index of each window position
        pr, pc = win // p, win % p
        inside = (pr >= g - 1) & (pr < 2 * g - 1) & (pc >= g - 1) & (pc < 2 * g - 1)
        self.register_buffer("outside", (~inside).float(), persistent=False)  # (G*G, S*S)
        self.register_buffer("cell_numbers", torch.arange(g * g, dtype=torch.float32), persistent=False)
        self.register_buffer("identity_offsets", torch.arange(self.window.c - 1), persistent=False)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        g, c = self.window.g, self.window.c
        lead = obs.shape[:-1]
        grid = obs.reshape(-1, g * g, c)
        # every channel is one-hot over the cells (or absent), so the cell holding it is the
        # sum of cell numbers it weights: one small matrix product instead of strided argmaxes
        cell = (self.cell_numbers.to(grid.dtype) @ grid).round().long()  # (N, C): 0 when absent
        present = grid[..., : c - 1].sum(1)  # (N, C-1): 1 where the identity is on the grid
        agent = cell[:, c - 1]
        column = self.rel[agent[:, None], cell[:, : c - 1]] * c + self.identity_offsets  # (N, C-1)
        weight = self.linear.weight  # (width, S*S*C)
        picked = F.embedding_bag(column, weight.t(), per_sample_weights=present, mode="sum")  # (N, width)
        outside_cols = weight.view(weight.shape[0], -1, c)[..., c - 1]  # (width, S*S)
        outside = self.outside @ outside_cols.t()  # (G*G, width)
        # F.embedding, not outside[agent]: the backward of advanced indexing accumulates with
        # several threads in a varying order (same seed, different weights); embedding's does not
        out = picked + F.embedding(agent, outside) + self.linear.bias
        return out.reshape(*lead, -1)


class HeadingEmbedding(nn.Module):
    """``Linear(o_t, along_k, across_k, cos_k)`` for a dense observation holding a 2-D velocity and
    2-D offsets (the ant's: the torso's velocity, and each colour's and wall's cell centre minus the
    torso) [choice; the paper embeds o_t linearly]: each offset's components along and across the
    direction of motion and the cosine between the two. Which colour lies ahead is a product of
    velocity and offset, which no linear map of o_t holds (docs/ant.md); here it is one input."""

    def __init__(self, obs_dim: int, width: int, velocity: int, offsets: int, count: int) -> None:
        super().__init__()
        self.velocity, self.offsets, self.count = velocity, offsets, count
        self.linear = nn.Linear(obs_dim + 3 * count, width)

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """(..., 3 * count): along, across and cosine of every offset (0 for a still torso)."""
        v = obs[..., self.velocity : self.velocity + 2]
        u = v / v.norm(dim=-1, keepdim=True).clamp(min=1e-3)
        p = obs[..., self.offsets : self.offsets + 2 * self.count].unflatten(-1, (self.count, 2))
        along = (p * u[..., None, :]).sum(-1)
        across = p[..., 0] * u[..., None, 1] - p[..., 1] * u[..., None, 0]
        cos = along / p.norm(dim=-1).clamp(min=1e-3)
        return torch.cat([along, across, cos], -1)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.cat([obs, self.features(obs)], -1))


class ConvEmbedding(nn.Module):
    """A convolutional stem over the ``(G, G, C)`` grid observation (allocentric), then a linear
    map to the model width [choice; the paper embeds o_t linearly].

    ``conv_layers`` 3x3 convolutions (zero padding, ReLU) give every cell features of its
    neighbourhood, e.g. "colour k is next to the agent" or "a wall lies between", which the
    flat linear map must otherwise build from single cells; the agent's own channel stays in
    the input, so the features can be relative to it."""

    def __init__(self, grid_size: int, obs_dim: int, width: int, channels: int = 16, layers: int = 2) -> None:
        super().__init__()
        self.g, self.c = grid_size, obs_dim // (grid_size * grid_size)
        convs, c_in = [], self.c
        for _ in range(layers):
            convs += [nn.Conv2d(c_in, channels, 3, padding=1), nn.ReLU()]
            c_in = channels
        self.convs = nn.Sequential(*convs)
        self.linear = nn.Linear(channels * grid_size * grid_size, width)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        lead = obs.shape[:-1]
        grid = obs.reshape(-1, self.g, self.g, self.c).permute(0, 3, 1, 2)
        return self.linear(self.convs(grid).flatten(1)).reshape(*lead, -1)


class SequenceModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        if cfg.obs_encoder == "egocentric":
            self.embed = EgocentricEmbedding(cfg.grid_size, cfg.obs_dim, cfg.width)
        elif cfg.obs_encoder == "conv":
            self.embed = ConvEmbedding(cfg.grid_size, cfg.obs_dim, cfg.width, cfg.conv_channels, cfg.conv_layers)
        elif cfg.obs_encoder == "heading":
            self.embed = HeadingEmbedding(cfg.obs_dim, cfg.width, cfg.heading_velocity, cfg.heading_offsets,
                                          cfg.heading_count)
        else:
            self.embed = nn.Linear(cfg.obs_dim, cfg.width)
        if cfg.backbone == "hawk":
            self.blocks = nn.ModuleList(HawkBlock(cfg.width, cfg.recurrent_width, cfg.heads, cfg.mlp, cfg.mlp_type)
                                        for _ in range(cfg.depth))
        else:
            self.blocks = nn.ModuleList(
                TransformerBlock(cfg.width, cfg.heads, cfg.head_dim, cfg.mlp, cfg.rel_buckets, cfg.rel_max_distance,
                                 cfg.mlp_type, window=cfg.upper_window if i >= cfg.depth // 2 else 0)
                for i in range(cfg.depth)
            )
        self.final_norm = nn.LayerNorm(cfg.width)
        self.action_head = nn.Linear(cfg.width, cfg.action_dim)
        self.obs_head = nn.Linear(cfg.width, cfg.obs_dim)
        self.action_log_std = nn.Parameter(torch.zeros(cfg.action_dim)) if cfg.action_type == "gaussian" else None
        self._init(cfg.init_scale)

    def _init(self, scale: float) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=math.sqrt(scale / m.in_features))
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.zeros_(m.weight)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer <= self.depth:
            raise ValueError(f"layer must be in 0..{self.depth}, got {layer}")

    # ------------------------------------------------------------ split API
    def initial_state(self, batch: int, device=None) -> ModelState:
        p = next(self.parameters())
        device = p.device if device is None else device
        return ModelState([blk.new_cache(batch, self.cfg.max_len, device, p.dtype) for blk in self.blocks])

    def run_blocks(self, x: torch.Tensor, start: int, stop: int, state: ModelState | None = None) -> torch.Tensor:
        for i in range(start, stop):
            x = self.blocks[i](x, None if state is None else state.caches[i])
        return x

    def lower(self, obs: torch.Tensor, layer: int, state: ModelState | None = None) -> torch.Tensor:
        """obs (B, T, D) -> residual e_{·,layer} (B, T, W)."""
        self._check_layer(layer)
        return self.run_blocks(self.embed(obs), 0, layer, state)

    def upper(self, residual: torch.Tensor, layer: int, state: ModelState | None = None) -> HeadOutput:
        """residual (B, T, W) at ``layer`` -> heads."""
        self._check_layer(layer)
        return self.heads(self.run_blocks(residual, layer, self.depth, state))

    def heads(self, x: torch.Tensor) -> HeadOutput:
        h = self.final_norm(x)
        return HeadOutput(self.action_head(h), h, self.obs_head, self.action_log_std)

    def forward(self, obs: torch.Tensor, layer: int | None = None, intervention: Intervention | None = None,
                state: ModelState | None = None) -> HeadOutput:
        layer = self.depth if layer is None else layer
        residual = self.lower(obs, layer, state)
        if intervention is not None:
            residual = intervention(residual)
        return self.upper(residual, layer, state)

    def residual_stream(self, obs: torch.Tensor) -> list[torch.Tensor]:
        """The residual after the embedding and after every block: depth+1 tensors (B, T, W)."""
        x = self.embed(obs)
        out = [x]
        for blk in self.blocks:
            x = blk(x)
            out.append(x)
        return out

    # ------------------------------------------------------- distributions
    def action_log_prob(self, out: HeadOutput, actions: torch.Tensor) -> torch.Tensor:
        """(B, T) log p(a_t | o_{1:t})."""
        if self.cfg.action_type == "categorical":
            # log_softmax + gather: Categorical(logits).log_prob without its argument checks
            # (about a millisecond per training step on CPU)
            return F.log_softmax(out.action, -1).gather(-1, actions[..., None])[..., 0]
        return torch.distributions.Normal(out.action, out.action_log_std.exp()).log_prob(actions).sum(-1)

    def obs_log_prob(self, out: HeadOutput, next_obs: torch.Tensor) -> torch.Tensor:
        """(B, T) log p(o_{t+1} | o_{1:t}), summed over observation dimensions."""
        if self.cfg.obs_type == "bernoulli":
            return -F.binary_cross_entropy_with_logits(out.next_obs, next_obs, reduction="none").sum(-1)
        return torch.distributions.Normal(out.next_obs, 1.0).log_prob(next_obs).sum(-1)

    def sample_action(self, out: HeadOutput, generator: torch.Generator | None = None,
                      temperature: float = 1.0) -> torch.Tensor:
        """Sample from the action head, for the last time step of ``out`` -> (B,) or (B, A).
        ``temperature=0`` is greedy: the most likely action (the Gaussian's mean), no randomness drawn."""
        head = out.action[:, -1]
        if temperature <= 0:
            return head.argmax(-1) if self.cfg.action_type == "categorical" else head
        if self.cfg.action_type == "categorical":
            probs = F.softmax(head.float() / temperature, -1)
            return torch.multinomial(probs, 1, generator=generator)[:, 0]
        noise = torch.randn(head.shape, generator=generator, device=head.device)
        return head + temperature * out.action_log_std.exp() * noise

    @torch.no_grad()
    def act(self, obs_t: torch.Tensor, state: ModelState, generator: torch.Generator | None = None,
            temperature: float = 1.0) -> torch.Tensor:
        """One cached step of the base model as a policy: obs_t (B, D) -> sampled action."""
        return self.sample_action(self(obs_t[:, None], state=state), generator, temperature)
