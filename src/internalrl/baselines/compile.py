"""The CompILE baseline (SPEC §7.4; Kipf et al. 2019, "CompILE: Compositional Imitation
Learning and Execution"), in place of the metacontroller.

**Segmenter** (non-causal, reads raw inputs, not the residual stream):

1. per-step embedding ``x_t = MLP([o_t, a_t])`` (``a_t`` one-hot for the grid; ``use_actions=False``
   drops it);
2. segments are explained one at a time, ``i = 1..M`` (``M = max_segments = 4``). Pass ``i`` runs a
   bidirectional GRU over the inputs not yet explained, ``x_t · r_i(t)``, where
   ``r_i(t) = Π_{j<i} c_j(t)`` is the (soft) probability that step t lies after the earlier
   boundaries;
3. boundary ``b_i`` (``i < M``) is a categorical over positions ``p`` = "segment i+1 starts at step
   p", restricted to ``s_i < p ≤ L`` (``s_i``: the previous hard boundary, ``L``: the episode length;
   ``p = L`` means "no further segment", so an episode has *at most* M segments). Training draws a
   Gumbel-softmax relaxation at temperature τ (optionally straight-through); evaluation takes the
   argmax. ``c_i(t) = Σ_{p≤t} b_i(p)``;
4. segment masks by stick-breaking, ``m_i(t) = r_i(t) (1 − c_i(t))`` with ``c_M ≡ 0``: on every step
   they are non-negative and sum to exactly one (one-hot when the boundaries are hard);
5. per segment a Gaussian posterior over its code, ``(μ_i, log σ_i) = MLP(Σ_t m_i(t) f_t / Σ_t m_i(t))``
   from pass i's features, ``z_i = μ_i + σ_i ε`` (n_z = 8).

**Decoder** = the metacontroller's (SPEC §5 steps 6–7): the code in force at step t,
``z_t = Σ_i m_i(t) z_i``, gives ``U_t = f_hyp(z_t) = A_t B_tᵀ`` (rank 16, small at init) and
``ê_t = e_t + U_t e_t`` at layer L/2 of the FROZEN base model, then its upper half and action head:
``NLL_t = −ln p(a_t | o_{1:t}, U_{1:t})``. [choice] CompILE's own decoder is a memoryless per-step
policy, so it can execute each segment's code over the whole sequence and weight the per-step NLLs by
the masks; here the upper half attends to earlier (controlled) residuals, so we execute the code in
force at each step instead. With hard boundaries this is exactly what internal RL runs; in training
it is the Gumbel-softmax relaxation of it (a convex mixture of codes, like the metacontroller's
``z_t = β_t z̃_t + (1 − β_t) z_{t-1}``).

**Loss** per episode, divided by the number of valid steps in the batch (so ``action_nll`` is per
step, as for the metacontroller)::

    Σ_t NLL_t + α_z Σ_i KL(N(μ_i, σ_i²) ‖ N(0, I)) + α_b Σ_{i<M} KL(q(b_i | s_i) ‖ p(b_i | s_i))
    + switch_weight · (termination BCE, below)

The boundary prior is Poisson-like on segment lengths: ``p(b_i = s_i + ℓ) ∝ Poisson(ℓ; λ)`` for
``ℓ ≥ 1`` (truncated at 0) and the remaining tail mass on ``p = L`` (the segment runs to the end).
[choice] λ = 10 steps, about the grid expert's mean subgoal duration (31.5-step episodes with three
subgoals); α_z = α_b = 0.1 as in Kipf et al.; the optimiser settings are the metacontroller's.

**Causal switch for internal RL [choice].** CompILE's boundaries need the whole episode, so they
cannot fire during a rollout. Beside the segmenter we train a small *termination head* with exactly
the metacontroller's switching-unit interface: ``h_t = GRU(e_t, h_{t-1})`` (n_h = 32) over the
frozen base model's residual ``e_t`` at L/2, and ``β_t = σ(MLP([e_t, h_{t-1}, z_{t-1}]))`` with
``z_{t-1}`` the code in force at the previous step; β_1 = 1. Its inputs are causal (the base model is
causal in ``o_{1:t}``, the code is the past one). It is trained jointly, by binary cross-entropy, to
predict CompILE's sampled hard boundaries (a new segment starts at t), with those targets and the
codes detached, so it imitates the segmentation without shaping it. In RL it is hardened at 0.5
exactly like the metacontroller's switch. The segment limit M is a training-time budget; RL does
not cap the number of switches (the post-training task has six subgoals).

The model exposes what :func:`internalrl.rl.internal.rollout_internal` reads from a
metacontroller: ``cfg.code_dim``, ``cfg.history_dim``, ``gate``, ``history`` and ``control``, so
:func:`internalrl.rl.train.train_internal_rl` runs it unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..metacontroller import HyperDecoder, hyper_decoder, mlp

NEG = -1e9  # logit of a position a boundary may not take (finite: keeps 0 · log 0 terms at 0)


@dataclass
class CompileConfig:
    max_segments: int = 4  # M: at most this many segments per episode
    code_dim: int = 8  # n_z per segment
    hidden: int = 64  # input embedding, bidirectional GRU (per direction) and MLP heads
    use_actions: bool = True  # the segmenter reads (o_t, a_t), as in CompILE; False: o_t only
    gumbel_temperature: float = 1.0  # τ of the Gumbel-softmax boundaries
    straight_through: bool = False  # hard one-hot boundaries forward, relaxed gradients backward
    length_prior_mean: float = 10.0  # λ of the Poisson-like segment-length prior (steps)
    alpha_z: float = 0.1  # weight of KL(z_i ‖ N(0, I)), summed over segments
    alpha_b: float = 0.1  # weight of KL(b_i ‖ length prior), summed over boundaries
    decoder_hidden: int = 32
    rank: int = 16  # 0: full rank
    history_dim: int = 32  # termination head's GRU over the residual
    switch_hidden: int = 64
    switch_weight: float = 1.0  # weight of the termination head's BCE
    steps: int = 64_000
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.03

    def validate(self, width: int) -> None:
        checks = [
            ("compile.max_segments", self.max_segments >= 1, "at least 1"),
            ("compile.code_dim", self.code_dim >= 1, "at least 1"),
            ("compile.hidden", self.hidden >= 1, "at least 1"),
            ("compile.gumbel_temperature", self.gumbel_temperature > 0, "positive"),
            ("compile.length_prior_mean", self.length_prior_mean > 0, "positive"),
            ("compile.alpha_z", self.alpha_z >= 0, "non-negative"),
            ("compile.alpha_b", self.alpha_b >= 0, "non-negative"),
            ("compile.decoder_hidden", self.decoder_hidden >= 1, "at least 1"),
            ("compile.rank", 0 <= self.rank <= width, f"in 0..{width} (0: full)"),
            ("compile.history_dim", self.history_dim >= 1, "at least 1"),
            ("compile.switch_hidden", self.switch_hidden >= 1, "at least 1"),
            ("compile.switch_weight", self.switch_weight >= 0, "non-negative"),
            ("compile.steps", self.steps >= 1, "at least 1"),
            ("compile.batch_size", self.batch_size >= 1, "at least 1"),
            ("compile.lr", self.lr > 0, "positive"),
            ("compile.weight_decay", self.weight_decay >= 0, "non-negative"),
        ]
        for name, ok, what in checks:
            if not ok:
                raise ValueError(f"{name} must be {what}, got {getattr(self, name.split('.')[1])!r}")


@dataclass
class Segmentation:
    boundary_logits: torch.Tensor  # (B, M-1, T+1) masked logits of q(b_i | s_i)
    boundary_sample: torch.Tensor  # (B, M-1, T+1) Gumbel-softmax sample (one-hot in eval)
    boundaries: torch.Tensor  # (B, M-1) long: hard start of segment i+1 (= L: no further segment)
    segment_mask: torch.Tensor  # (B, M, T) m_i(t), zero outside the episode
    mean: torch.Tensor  # (B, M, n_z)
    log_std: torch.Tensor  # (B, M, n_z)
    codes: torch.Tensor  # (B, M, n_z) z_i
    kl_z: torch.Tensor  # (B, M) KL(N(μ_i, σ_i²) ‖ N(0, I))
    kl_b: torch.Tensor  # (B, M-1) KL(q(b_i | s_i) ‖ p(b_i | s_i))

    def hard_segment(self) -> torch.Tensor:
        """(B, T) long: the index of the hard segment each step belongs to."""
        t = self.segment_mask.shape[-1]
        steps = torch.arange(t, device=self.boundaries.device)
        return (steps[None, None] >= self.boundaries[..., None]).sum(1)

    def starts(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) bool: a new segment starts at t (the first step excluded), from the hard boundaries."""
        t = mask.shape[1]
        hit = F.one_hot(self.boundaries.clamp(max=t), t + 1)[..., :t].sum(1) > 0  # (B, T)
        hit[:, 0] = False
        return hit & mask


def length_log_prior(start: torch.Tensor, length: torch.Tensor, size: int, rate: float) -> torch.Tensor:
    """log p(b = p | s) over positions p = 0..size-1, (B, size): a Poisson(λ) on the segment
    length ℓ = p − s truncated to ℓ ≥ 1 for s < p < L, the tail mass on p = L, 0 (unused) elsewhere."""
    p = torch.arange(size, device=start.device)[None]
    ell = (p - start[:, None]).clamp(min=1).float()
    log_pmf = ell * math.log(rate) - rate - torch.lgamma(ell + 1) - math.log1p(-math.exp(-rate))
    inner = (p > start[:, None]) & (p < length[:, None])
    inner_mass = torch.where(inner, log_pmf.exp(), 0.0).sum(1)  # (B,)
    tail = torch.log((1 - inner_mass).clamp(min=1e-12))
    out = torch.where(inner, log_pmf, 0.0)
    return torch.where(p == length[:, None], tail[:, None], out)


class CompILE(HyperDecoder, nn.Module):
    def __init__(self, cfg: CompileConfig, width: int, obs_dim: int, action_dim: int, categorical: bool = True) -> None:
        super().__init__()
        self.cfg, self.width = cfg, width
        self.obs_dim, self.action_dim, self.categorical = obs_dim, action_dim, categorical
        h, nz = cfg.hidden, cfg.code_dim
        self.embed = nn.Sequential(nn.Linear(obs_dim + (action_dim if cfg.use_actions else 0), h), nn.ReLU())
        self.encoder = nn.GRU(h, h, batch_first=True, bidirectional=True)
        self.boundary_head = mlp(2 * h, h, 1)
        self.end_logit = nn.Parameter(torch.zeros(()))  # logit of "no further segment"
        self.posterior = mlp(2 * h, h, 2 * nz)
        # decoder hypernetwork, as the metacontroller's
        self.decoder = hyper_decoder(nz, cfg.decoder_hidden, width, cfg.rank)
        # causal termination head (the switch used in RL)
        self.history_rnn = nn.GRU(width, cfg.history_dim, batch_first=True)
        self.switch_unit = mlp(width + cfg.history_dim + nz, cfg.switch_hidden, 1)

    # decoder: the metacontroller's (HyperDecoder.decode / control)

    # -- causal switch (the metacontroller's interface) ----------------------
    def history(self, residual_t: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        """h_t = GRU(e_t, h_{t-1}) for one step: (B, W), (B, n_h) -> (B, n_h)."""
        out, _ = self.history_rnn(residual_t[:, None], h_prev[None].contiguous())
        return out[:, 0]

    def gate(self, residual_t: torch.Tensor, h_prev: torch.Tensor, z_prev: torch.Tensor, first: bool,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """β_t (B,) from (e_t, h_{t-1}, z_{t-1}); 1 at the first step."""
        if first:
            return torch.ones(residual_t.shape[0], device=residual_t.device)
        return torch.sigmoid(self.switch_unit(torch.cat([residual_t, h_prev, z_prev], -1))[:, 0])

    def switch_logits(self, residual: torch.Tensor, prev_codes: torch.Tensor) -> torch.Tensor:
        """The termination head over a whole sequence: residual (B, T, W), prev_codes (B, T, n_z)
        (z_{t-1} at t) -> logits of β_t (B, T); the same numbers as :meth:`gate` step by step."""
        h, _ = self.history_rnn(residual)  # (B, T, n_h) h_t
        h_prev = F.pad(h[:, :-1], (0, 0, 1, 0))  # h_{t-1}, zeros at t = 0
        return self.switch_unit(torch.cat([residual, h_prev, prev_codes], -1))[..., 0]

    def switch_gates(self, residual: torch.Tensor, prev_codes: torch.Tensor) -> torch.Tensor:
        """β (B, T), with β_1 = 1."""
        beta = torch.sigmoid(self.switch_logits(residual, prev_codes))
        return torch.cat([torch.ones_like(beta[:, :1]), beta[:, 1:]], 1)

    # -- segmenter (non-causal) ---------------------------------------------
    def raw_inputs(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """obs (B, T, D) o_1..o_T and actions (B, T) long or (B, T, A) -> (B, T, D [+ A])."""
        if not self.cfg.use_actions:
            return obs
        if self.categorical:
            actions = F.one_hot(actions.clamp(0, self.action_dim - 1), self.action_dim).to(obs.dtype)
        return torch.cat([obs, actions.to(obs.dtype)], -1)

    def _encode(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True,
                                                   enforce_sorted=False)
        out, _ = self.encoder(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out  # (B, T, 2h), zero outside the episode

    def forward(self, obs: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor,
                generator: torch.Generator | None = None) -> Segmentation:
        """Segment episodes: obs (B, T, D) o_1..o_T, actions (B, T[, A]), mask (B, T). Training mode
        samples Gumbel-softmax boundaries and z; evaluation mode takes argmax boundaries and z = μ."""
        cfg = self.cfg
        b, t = mask.shape
        dev = obs.device
        valid = mask.float()
        lengths = mask.sum(1)  # (B,) L
        x = self.embed(self.raw_inputs(obs, actions))  # (B, T, h)
        positions = torch.arange(t + 1, device=dev)[None]  # (1, T+1)
        end = positions == lengths[:, None]  # (B, T+1) p = L
        start = torch.zeros(b, dtype=torch.long, device=dev)  # s_i, hard
        remaining = torch.ones(b, t, device=dev)  # r_i(t) = Π_{j<i} c_j(t)
        logits_all, samples, hard, masks, means, log_stds, kl_b = [], [], [], [], [], [], []
        for i in range(cfg.max_segments):
            feats = self._encode(x * remaining[..., None], lengths)  # (B, T, 2h)
            if i < cfg.max_segments - 1:
                logit = F.pad(self.boundary_head(feats)[..., 0], (0, 1))  # (B, T+1)
                logit = torch.where(end, self.end_logit.expand_as(logit), logit)
                allowed = ((positions > start[:, None]) & (positions <= lengths[:, None])) | end
                logit = logit.masked_fill(~allowed, NEG)
                if self.training:
                    u = torch.rand(logit.shape, generator=generator, device=dev).clamp(1e-10, 1 - 1e-10)
                    sample = F.softmax((logit - torch.log(-torch.log(u))) / cfg.gumbel_temperature, -1)
                    if cfg.straight_through:
                        one_hot = F.one_hot(sample.argmax(-1), t + 1).to(sample.dtype)
                        sample = one_hot + sample - sample.detach()
                else:
                    sample = F.one_hot(logit.argmax(-1), t + 1).to(logit.dtype)
                log_q = F.log_softmax(logit, -1)
                log_p = length_log_prior(start, lengths, t + 1, cfg.length_prior_mean)
                kl_b.append((log_q.exp() * (log_q - log_p)).sum(-1))
                start = sample.argmax(-1)
                ended = sample.cumsum(-1)[:, :t]  # c_i(t)
                logits_all.append(logit), samples.append(sample), hard.append(start)
            else:
                ended = torch.zeros_like(remaining)
            m = remaining * (1 - ended) * valid  # (B, T) m_i(t)
            pooled = (m[..., None] * feats).sum(1) / m.sum(1, keepdim=True).clamp(min=1e-6)
            mu, log_std = self.posterior(pooled).chunk(2, -1)
            masks.append(m), means.append(mu), log_stds.append(log_std.clamp(-8, 4))
            remaining = remaining * ended
        mean, log_std = torch.stack(means, 1), torch.stack(log_stds, 1)  # (B, M, n_z)
        if self.training:
            noise = torch.randn(mean.shape, generator=generator, device=dev)
            codes = mean + log_std.exp() * noise
        else:
            codes = mean
        kl_z = 0.5 * (mean.pow(2) + (2 * log_std).exp() - 1 - 2 * log_std).sum(-1)
        empty_b = obs.new_zeros(b, 0, t + 1)
        stack = lambda xs, empty: torch.stack(xs, 1) if xs else empty  # noqa: E731
        return Segmentation(
            boundary_logits=stack(logits_all, empty_b), boundary_sample=stack(samples, empty_b),
            boundaries=stack(hard, torch.zeros(b, 0, dtype=torch.long, device=dev)),
            segment_mask=torch.stack(masks, 1), mean=mean, log_std=log_std, codes=codes, kl_z=kl_z,
            kl_b=stack(kl_b, obs.new_zeros(b, 0)))


def compile_loss(base, model: CompILE, layer: int, batch, generator: torch.Generator | None = None) -> dict:
    """The CompILE objective through the frozen base model (see the module docstring)."""
    cfg = model.cfg
    obs = batch.obs[:, :-1]
    with torch.no_grad():
        residual = base.lower(obs, layer)  # (B, T, W)
    seg = model(obs, batch.actions, batch.mask, generator)
    step_codes = torch.einsum("bmt,bmz->btz", seg.segment_mask, seg.codes)  # (B, T, n_z) z_t in force
    heads = base.upper(model.control(residual, step_codes), layer)
    mask = batch.mask.float()
    n = mask.sum().clamp(min=1)
    nll = -(base.action_log_prob(heads, batch.actions) * mask).sum() / n
    kl_z, kl_b = seg.kl_z.sum() / n, seg.kl_b.sum() / n
    # termination head: predict CompILE's hard boundaries from causal inputs, targets detached
    code_now = seg.codes.detach().gather(1, seg.hard_segment()[..., None].expand(-1, -1, cfg.code_dim))  # (B, T, n_z)
    prev_codes = F.pad(code_now[:, :-1], (0, 0, 1, 0))
    target = seg.starts(batch.mask).float()
    logits = model.switch_logits(residual, prev_codes)
    steps = batch.mask.clone()
    steps[:, 0] = False  # the first step always switches
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    switch_loss = (bce * steps).sum() / steps.sum().clamp(min=1)
    loss = nll + cfg.alpha_z * kl_z + cfg.alpha_b * kl_b + cfg.switch_weight * switch_loss
    return {"loss": loss, "action_nll": nll, "kl_z": kl_z, "kl_b": kl_b, "kl": kl_z + kl_b,
            "switch_loss": switch_loss, "out": seg, "step_codes": step_codes, "switch_logits": logits,
            "prev_codes": prev_codes}


def build_compile(cfg: CompileConfig, base) -> CompILE:
    """A CompILE model sized for ``base`` (its width, observation and action spaces)."""
    mc = base.cfg
    return CompILE(cfg, mc.width, mc.obs_dim, mc.action_dim, categorical=mc.action_type == "categorical")


def train_compile(base, data, train_idx, cfg: CompileConfig, layer: int, seed: int, device,
                  progress: bool = True, desc: str = "compile", checkpoint=None):
    """Train on expert data with the base model frozen. Returns the model and a curve of
    (step, action NLL, KL (z + boundaries), termination BCE). ``checkpoint`` makes a killed run resume."""
    from tqdm.auto import tqdm

    from ..checkpoint import Checkpoint
    from ..data import batch_indices, make_batch

    torch.manual_seed(seed)
    model = build_compile(cfg, base).to(device)
    for p in base.parameters():
        p.requires_grad_(False)
    base.eval()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator(device=device).manual_seed(seed)
    lengths = data.arrays["lengths"]
    ckpt = checkpoint or Checkpoint.off(hint="compile.lr")
    start, extra = ckpt.restore({"compile": model}, {"opt": opt}, {"gen": gen})
    curve = [tuple(c) for c in extra.get("curve", [])]
    for step in tqdm(range(start, cfg.steps), desc=desc, disable=not progress, leave=False, initial=start, total=cfg.steps):
        batch = make_batch(data, batch_indices(train_idx, cfg.batch_size, seed, step, lengths)).to(device)
        res = compile_loss(base, model, layer, batch, gen)
        opt.zero_grad(set_to_none=True)
        res["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 25 == 0 or step == cfg.steps - 1:
            curve.append((step, float(res["action_nll"].detach()), float(res["kl"].detach()),
                          float(res["switch_loss"].detach())))
        ckpt.maybe_save(step + 1, cfg.steps, lambda: {"curve": curve})
    ckpt.save(cfg.steps, {"curve": curve})
    return model.eval(), curve


@torch.no_grad()
def evaluate_compile(base, model: CompILE, data, idx, layer: int, device, seed: int = 0, batch_size: int = 256) -> dict:
    """Held-out action NLL and KLs with hard (argmax) boundaries and z = μ; switch metrics against
    ground-truth subgoal changes for CompILE's own (non-causal) boundaries and for the causal
    termination head hardened at 0.5 (fed the codes of CompILE's segments)."""
    from ..analysis.switching import switch_metrics
    from ..data import make_batch

    base.eval()
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    sums = {"action_nll": 0.0, "kl_z": 0.0, "kl_b": 0.0, "switch_loss": 0.0}
    steps = 0.0
    t = data.arrays["actions"].shape[1]
    pad = lambda x, v: F.pad(x, (0, t - x.shape[1]), value=v)  # noqa: E731
    seg_gates, causal_gates, subgoals, masks, segments = [], [], [], [], []
    for i in range(0, len(idx), batch_size):
        batch = make_batch(data, idx[i : i + batch_size]).to(device)
        res = compile_loss(base, model, layer, batch, gen)
        n = float(batch.mask.sum())
        for k in sums:
            sums[k] += float(res[k]) * n
        steps += n
        seg = res["out"]
        starts = seg.starts(batch.mask).float()
        starts[:, 0] = 1.0
        seg_gates.append(pad(starts.cpu(), 0.0))
        beta = torch.sigmoid(res["switch_logits"])
        beta[:, 0] = 1.0
        causal_gates.append(pad(beta.cpu(), 0.0))
        subgoals.append(pad(batch.subgoals.cpu(), -1))
        masks.append(pad(batch.mask.cpu(), False))
        segments.append(((seg.segment_mask > 0.5).sum(-1) > 0).sum(1).float().cpu())
    seg_gates, causal_gates = torch.cat(seg_gates), torch.cat(causal_gates)
    subgoals, masks = torch.cat(subgoals), torch.cat(masks)
    out = {k: v / steps for k, v in sums.items()}
    out["kl"] = out["kl_z"] + out["kl_b"]
    out["segments_per_episode"] = float(torch.cat(segments).mean())
    out["segmenter"] = switch_metrics(seg_gates, subgoals, masks)
    out.update(switch_metrics(causal_gates, subgoals, masks))  # the switch RL uses: headline keys
    valid = masks.clone()
    valid[:, 0] = False
    out["switch_agreement"] = float(((causal_gates > 0.5) == (seg_gates > 0.5))[valid].float().mean())
    out.update({"boundaries": seg_gates, "gates": causal_gates, "subgoals": subgoals, "mask": masks})
    return out
