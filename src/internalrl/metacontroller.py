"""The metacontroller (SPEC §5, paper Appendix D.2, Tables A9/A10).

At layer l it reads the residual stream ``e_t`` of a frozen base model and writes a linear
controller back into it:

1. history GRU            ``h_t = GRU(e_t, h_{t-1})``                          (n_h = 32)
2. sequence embedder      ``s = f_emb(e_{1:T})``, non-causal: a GRU read both ways, pooled (n_s = 32)
3. encoder                ``(μ_t, log σ_t) = f_enc(e_t, h_{t-1}, s)``; ``z̃_t = μ_t + σ_t ε``  (n_z = 8)
4. switching unit         ``β_t = f_switch(e_t, h_{t-1}, z_{t-1}) ∈ [0, 1]``, causal, no ``s``; β_1 = 1
5. temporal integration   ``z_t = β_t z̃_t + (1 − β_t) z_{t-1}``
6. decoder hypernetwork   ``U_t = f_hyp(z_t) = A_t B_tᵀ`` (rank r) or full ``U_t``, small at init
7. controller             ``ê_t = e_t + U_t e_t``, then blocks l+1..L and the heads.

Loss per step: ``−ln p(a_t | …) + α · KL(N(μ_t, σ_t²) ‖ N(0, I))``: the KL at every step, not
weighted by β, and nothing on β itself.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .controller import apply_controller


@dataclass
class MetacontrollerConfig:
    layer: int = -1  # -1: depth // 2
    history_dim: int = 32  # n_h
    sequence_dim: int = 32  # n_s
    code_dim: int = 8  # n_z
    encoder_hidden: int = 64
    switch_hidden: int = 64
    decoder_hidden: int = 32
    rank: int = 16  # 0: full rank
    switch: str = "sigmoid"  # sigmoid | gumbel | always (β ≡ 1: no temporal abstraction)
    gumbel_temperature: float = 0.5
    # [choice] the last this fraction of `steps` trains with logistic noise on the switch logit (the Gumbel
    # switch, at gumbel_temperature): a β that is neither 0 nor 1 then gives a noisy code, so the switch
    # learns to decide. 0: off. Aligned sigmoid switches keep their places and turn near-binary (docs/journal.md).
    binarize_fraction: float = 0.0
    alpha: float = 0.17  # KL weight
    kl_free_steps: int = 0  # [choice] train with α = 0 for these first steps, so the code gets used at all
    kl_warmup_steps: int = 0  # [choice] then ramp the KL weight linearly from 0 to alpha over these steps (0: off)
    steps: int = 64_000
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.03
    cotrain: bool = False  # train the base model jointly (the co-trained baseline)
    cotrain_steps: int = 0  # [choice] at most this many steps for the co-trained variant; 0: the same as steps
    base_lr: float = 3e-4  # learning rate of the base model when co-training

    def validate(self, width: int, depth: int) -> None:
        checks = [
            ("metacontroller.layer", -1 <= self.layer <= depth, f"-1 or in 0..{depth}"),
            ("metacontroller.code_dim", self.code_dim >= 1, "at least 1"),
            ("metacontroller.history_dim", self.history_dim >= 1, "at least 1"),
            ("metacontroller.sequence_dim", self.sequence_dim >= 1, "at least 1"),
            ("metacontroller.rank", 0 <= self.rank <= width, f"in 0..{width} (0: full)"),
            ("metacontroller.switch", self.switch in ("sigmoid", "gumbel", "always"), "sigmoid, gumbel or always"),
            ("metacontroller.alpha", self.alpha >= 0, "non-negative"),
            ("metacontroller.kl_free_steps", self.kl_free_steps >= 0, "non-negative"),
            ("metacontroller.kl_warmup_steps", self.kl_warmup_steps >= 0, "non-negative"),
            ("metacontroller.steps", self.steps >= 1, "at least 1"),
            ("metacontroller.cotrain_steps", self.cotrain_steps >= 0, "non-negative (0: the same as steps)"),
            ("metacontroller.batch_size", self.batch_size >= 1, "at least 1"),
            ("metacontroller.lr", self.lr > 0, "positive"),
            ("metacontroller.base_lr", self.base_lr > 0, "positive"),
            ("metacontroller.weight_decay", self.weight_decay >= 0, "non-negative"),
            ("metacontroller.encoder_hidden", self.encoder_hidden >= 1, "at least 1"),
            ("metacontroller.switch_hidden", self.switch_hidden >= 1, "at least 1"),
            ("metacontroller.decoder_hidden", self.decoder_hidden >= 1, "at least 1"),
            ("metacontroller.gumbel_temperature", self.gumbel_temperature > 0, "positive"),
            ("metacontroller.binarize_fraction", 0 <= self.binarize_fraction <= 1, "in [0, 1]"),
        ]
        for name, ok, what in checks:
            if not ok:
                raise ValueError(f"{name} must be {what}, got {getattr(self, name.split('.')[1])!r}")


def cotrained_config(cfg: MetacontrollerConfig) -> MetacontrollerConfig:
    """The co-trained variant of ``cfg``: base model trained jointly, for ``cotrain_steps`` steps
    (never more than ``steps``; 0: ``steps``)."""
    from dataclasses import replace

    return replace(cfg, cotrain=True, steps=min(cfg.cotrain_steps or cfg.steps, cfg.steps))


def mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, out))


def gru_sequence(x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor, b_hh: torch.Tensor,
                 reverse_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The hidden states of a GRU (``nn.GRU``'s and ``nn.GRUCell``'s equations and parameter layout)
    over ``x`` (B, T, in) from h = 0: (B, T, hidden), state t after reading step t. With
    ``reverse_mask`` (B, T; valid steps first) it reads each sequence backwards from its last valid
    step, as ``nn.GRU``'s reverse direction does on a packed sequence (the state stays 0 over the
    padding; outputs there are 0).

    The input projections of every step come from one matrix product and one ``unbind``; only the
    hidden projection runs per step. Indexing ``[:, t]`` inside the loop (as ``nn.GRU``'s CPU path
    does) makes the backward pass add T full-size gradients: quadratic in T, a third of the
    metacontroller's training time on the ant's 300-step episodes."""
    h = x.new_zeros(x.shape[0], w_hh.shape[1])
    gates = F.linear(x, w_ih, b_ih).unbind(1)
    keep = reverse_mask.unbind(1) if reverse_mask is not None else None
    order = range(len(gates) - 1, -1, -1) if reverse_mask is not None else range(len(gates))
    states = [None] * len(gates)
    for t in order:
        i_r, i_z, i_n = gates[t].chunk(3, -1)
        h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, -1)
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        h = torch.lerp(torch.tanh(i_n + r * h_n), h, z)  # (1 - z) n + z h
        if keep is not None:
            h = h * keep[t][:, None]
        states[t] = h
    return torch.stack(states, 1)


@dataclass
class MetaOutput:
    residual: torch.Tensor  # (B, T, W) controlled residual ê
    switch_gate: torch.Tensor  # (B, T) β
    code: torch.Tensor  # (B, T, n_z) z
    mean: torch.Tensor  # (B, T, n_z) μ
    log_std: torch.Tensor  # (B, T, n_z)
    kl: torch.Tensor  # (B, T) KL(N(μ, σ²) ‖ N(0, I))


#: [choice] scale of U's dependence on z at init: |U e| is about 0.1 |e| for a code drawn from the prior
DECODER_INIT_GAIN = 0.25


def hyper_decoder(code_dim: int, hidden: int, width: int, rank: int) -> nn.Sequential:
    """The decoder hypernetwork z -> U (flattened): ``A, B`` of shape (W, r) for ``rank > 0``,
    the full (W, W) matrix for ``rank == 0``.

    [choice] initialisation: U is small but depends on z. B starts as a random projection
    (entries ~ N(0, 1/W)) and A as small z-dependent weights, so U = A Bᵀ perturbs the residual
    by about a tenth of its norm. Starting both factors at zero would put training on a saddle:
    the gradient reaching the encoder through A Bᵀ is then second-order small (≈ 1e-7), the
    code stays unused, and the KL term pulls it onto the prior before it is ever learned."""
    out = width * width if rank == 0 else 2 * width * rank
    net = mlp(code_dim, hidden, out)
    last = net[-1]
    with torch.no_grad():
        nn.init.zeros_(last.bias)
        if rank == 0:
            last.weight.normal_(0, DECODER_INIT_GAIN / (hidden * width) ** 0.5)
        else:
            n = width * rank  # rows of A first, then rows of B (see HyperDecoder.decode)
            last.weight[:n].normal_(0, DECODER_INIT_GAIN / (hidden * rank) ** 0.5)
            last.weight[n:].normal_(0, 1 / (hidden * width) ** 0.5)
            last.bias[n:].normal_(0, 1 / width ** 0.5)
    return net


class HyperDecoder:
    """The decoder hypernetwork's read-out, shared by every model that turns a code z into a
    controller U (the metacontroller, CompILE). Needs ``self.decoder`` (from
    :func:`hyper_decoder`), ``self.width`` and ``self.cfg.rank``."""

    def decode(self, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """U = f_hyp(z): (…, W, r) factors A, B, or the full (…, W, W) matrix and None."""
        flat = self.decoder(code)
        w, r = self.width, self.cfg.rank
        if r == 0:
            return flat.view(*code.shape[:-1], w, w), None
        a, b = flat.split(w * r, -1)
        return a.view(*code.shape[:-1], w, r), b.view(*code.shape[:-1], w, r)

    def control(self, residual: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """ê = e + U e with U = f_hyp(z), for residual (…, W) and code (…, n_z).

        For rank r the hypernetwork's last layer is linear in its hidden units u, so
        ``Bᵀ e`` and ``A (Bᵀ e)`` are contracted straight from (u, e) through that layer's
        weights, without building the (…, W, r) factors of every step: the same numbers as
        ``apply_controller(e, *decode(z))`` (a test checks it) at a third of the cost."""
        w, r = self.width, self.cfg.rank
        if r == 0:
            return apply_controller(residual, *self.decode(code))
        last = self.decoder[-1]
        u = self.decoder[:-1](code)  # (…, H)
        hidden = u.shape[-1]
        w_a, w_b = last.weight.split(w * r, 0)  # rows (w, j) of A, then of B, each (W·r, H)
        b_a, b_b = last.bias.split(w * r, 0)
        # (Bᵀ e)_j = Σ_w B_wj e_w,  B_wj = Σ_k w_b[(w,j),k] u_k + b_b[(w,j)]
        e_wb = (residual @ w_b.view(w, r * hidden)).view(*residual.shape[:-1], r, hidden)
        coeff = (e_wb * u.unsqueeze(-2)).sum(-1) + residual @ b_b.view(w, r)  # (…, r)
        # (A c)_w = Σ_j A_wj c_j,  A_wj = Σ_k w_a[(w,j),k] u_k + b_a[(w,j)]
        outer = coeff.unsqueeze(-1) * u.unsqueeze(-2)
        outer = outer.reshape(*outer.shape[:-2], r * hidden)
        return residual + outer @ w_a.view(w, r * hidden).T + coeff @ b_a.view(w, r).T


class Metacontroller(HyperDecoder, nn.Module):
    def __init__(self, cfg: MetacontrollerConfig, width: int) -> None:
        super().__init__()
        self.cfg, self.width = cfg, width
        nh, ns, nz = cfg.history_dim, cfg.sequence_dim, cfg.code_dim
        self.history = nn.GRUCell(width, nh)
        self.sequence_rnn = nn.GRU(width, ns, batch_first=True, bidirectional=True)
        self.sequence_out = nn.Linear(2 * ns, ns)
        self.encoder = mlp(width + nh + ns, cfg.encoder_hidden, 2 * nz)
        self.switch_unit = mlp(width + nh + nz, cfg.switch_hidden, 1)
        self.decoder = hyper_decoder(nz, cfg.decoder_hidden, width, cfg.rank)
        self.noisy_switch = cfg.switch == "gumbel"  # logistic noise on the switch logit while training

    # -- parts -------------------------------------------------------------
    def sequence_embedding(self, residual: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """s = f_emb(e_{1:T}): both directions over the valid steps, mean-pooled. (B, n_s)"""
        rnn = self.sequence_rnn  # its parameters, run by gru_sequence (nn.GRU's CPU backward is quadratic in T)
        out = torch.cat([gru_sequence(residual, rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0),
                         gru_sequence(residual, rnn.weight_ih_l0_reverse, rnn.weight_hh_l0_reverse,
                                      rnn.bias_ih_l0_reverse, rnn.bias_hh_l0_reverse, reverse_mask=mask)], -1)
        m = mask[..., None].float()
        pooled = (out * m).sum(1) / m.sum(1).clamp(min=1)
        return self.sequence_out(pooled)

    def history_states(self, residual: torch.Tensor) -> torch.Tensor:
        """h_{t-1} for every step t of ``residual`` (B, T, W), h_0 = 0: the history GRU cell run over
        the sequence (:func:`gru_sequence`; the same numbers as stepping ``self.history``, to float
        rounding). (B, T, n_h)"""
        cell = self.history
        states = gru_sequence(residual, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
        return F.pad(states[:, :-1], (0, 0, 1, 0))

    def gate(self, residual_t: torch.Tensor, h_prev: torch.Tensor, z_prev: torch.Tensor, first: bool,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """β_t (B,) from (e_t, h_{t-1}, z_{t-1}); 1 at the first step and for switch='always'."""
        if first or self.cfg.switch == "always":
            return torch.ones(residual_t.shape[0], device=residual_t.device)
        logit = self.switch_unit(torch.cat([residual_t, h_prev, z_prev], -1))[:, 0]
        return self.gate_from_logit(logit, generator)

    def gate_from_logit(self, logit: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """β from the switch unit's logit: a sigmoid, with logistic noise and a temperature while
        training with switch='gumbel' or in the binarizing phase (``binarize_fraction``)."""
        if self.noisy_switch and self.training:
            u = torch.rand(logit.shape, generator=generator, device=logit.device).clamp(1e-6, 1 - 1e-6)
            logit = (logit + torch.log(u) - torch.log1p(-u)) / self.cfg.gumbel_temperature
        return torch.sigmoid(logit)

    # -- whole sequence (training) ------------------------------------------
    def forward(self, residual: torch.Tensor, mask: torch.Tensor, sequence: torch.Tensor | None = None,
                noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> MetaOutput:
        """residual (B, T, W) at the controlled layer, mask (B, T). ``sequence`` overrides s
        and ``noise`` (B, T, n_z) the ε of the proposals (both for tests)."""
        b, t, _ = residual.shape
        nz = self.cfg.code_dim
        s = self.sequence_embedding(residual, mask) if sequence is None else sequence
        if noise is None:
            noise = torch.randn(b, t, nz, generator=generator, device=residual.device)
        # Only the switch and the integration depend on the previous code; the history GRU reads
        # e alone, the encoder (e_t, h_{t-1}, s), so both run ahead over every step and the loop
        # below does less per step (the same numbers as step by step: the internal-RL parity test).
        h_prev = self.history_states(residual)
        mean, log_std = self.encoder(torch.cat([residual, h_prev, s[:, None].expand(b, t, -1)], -1)).chunk(2, -1)
        log_std = log_std.clamp(-8, 4)
        proposals = mean + log_std.exp() * noise
        first_layer = self.switch_unit[0]  # its (e, h) columns for every step at once, the z columns per step
        w_eh, w_z = first_layer.weight.split([first_layer.in_features - nz, nz], 1)
        switch_pre = F.linear(torch.cat([residual, h_prev], -1), w_eh, first_layer.bias)
        z = residual.new_zeros(b, nz)
        gates, codes = [], []
        # unbind once: indexing [:, i] in the loop would make the backward pass add T full-size
        # gradients, one per slice (quadratic in T)
        for i, (pre, proposal) in enumerate(zip(switch_pre.unbind(1), proposals.unbind(1))):
            if i == 0 or self.cfg.switch == "always":
                beta = residual.new_ones(b)
            else:
                logit = self.switch_unit[2](F.relu(pre + F.linear(z, w_z)))[:, 0]
                beta = self.gate_from_logit(logit, generator)
            z = beta[:, None] * proposal + (1 - beta[:, None]) * z
            gates.append(beta), codes.append(z)
        gates, codes = torch.stack(gates, 1), torch.stack(codes, 1)
        kl = 0.5 * (mean.pow(2) + (2 * log_std).exp() - 1 - 2 * log_std).sum(-1)
        return MetaOutput(self.control(residual, codes), gates, codes, mean, log_std, kl)


def metacontroller_loss(base, meta: Metacontroller, layer: int, batch, alpha: float,
                        generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Action NLL through the controlled base model, plus α · KL at every valid step."""
    residual = base.lower(batch.obs[:, :-1], layer)
    out = meta(residual, batch.mask, generator=generator)
    heads = base.upper(out.residual, layer)
    mask = batch.mask.float()
    n = mask.sum().clamp(min=1)
    nll = -(base.action_log_prob(heads, batch.actions) * mask).sum() / n
    kl = (out.kl * mask).sum() / n
    return {"loss": nll + alpha * kl, "action_nll": nll, "kl": kl, "out": out}


def kl_weight(cfg: MetacontrollerConfig, step: int) -> float:
    """α at training step ``step``: 0 for the first ``kl_free_steps``, then ramped up linearly
    over ``kl_warmup_steps``. Even a small α from the first step keeps the code on the prior:
    the decoder has not yet learned to use it, so any information costs more KL than it saves
    NLL (measured: at α = 0.17 with a ramp from step 0, KL 1e-4/step; after 300 free steps,
    KL 0.12/step and a much lower NLL)."""
    step -= cfg.kl_free_steps
    if step < 0:
        return 0.0
    if cfg.kl_warmup_steps <= 0:
        return cfg.alpha
    return cfg.alpha * min(1.0, step / cfg.kl_warmup_steps)


def binarize_start(cfg: MetacontrollerConfig) -> int:
    """The first step of the binarizing phase (noisy switch); ``cfg.steps`` when it is off."""
    return cfg.steps - round(cfg.binarize_fraction * cfg.steps)


def train_metacontroller(base, data, train_idx, cfg: MetacontrollerConfig, layer: int, seed: int, device,
                         progress: bool = True, desc: str = "metacontroller", monitor=None, monitor_every: int = 0,
                         checkpoint=None, scalars=None):
    """Train on expert data with the base model frozen (or jointly, with ``cfg.cotrain``).
    Returns the metacontroller and a curve of (step, action NLL, KL). With ``monitor`` (a
    function of the metacontroller returning a dict of numbers, e.g. held-out switch metrics),
    it is also called every ``monitor_every`` steps and after the last, and each call's
    ``{"step": …, **monitor(meta)}`` is appended to ``meta.monitored``. Monitoring draws on no
    random stream of the training, so the trained weights are the same with or without it.
    ``checkpoint`` (a :class:`~internalrl.checkpoint.Checkpoint`) makes a killed run resume.
    ``scalars(step, values)`` (:mod:`internalrl.scalars`) gets the curve's points and the monitored ones."""
    from tqdm.auto import tqdm

    from .checkpoint import Checkpoint
    from .data import batch_indices, make_batch

    torch.manual_seed(seed)
    meta = Metacontroller(cfg, base.cfg.width).to(device)
    groups = [{"params": meta.parameters(), "lr": cfg.lr}]
    for p in base.parameters():
        p.requires_grad_(cfg.cotrain)
    if cfg.cotrain:
        groups.append({"params": base.parameters(), "lr": cfg.base_lr})
        base.train()
    else:
        base.eval()
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    gen = torch.Generator(device=device).manual_seed(seed)
    lengths = data.arrays["lengths"]
    ckpt = checkpoint or Checkpoint.off()
    ckpt.hint = "metacontroller.lr" + (" or metacontroller.base_lr" if cfg.cotrain else "")
    start, extra = ckpt.restore({"meta": meta, **({"base": base} if cfg.cotrain else {})}, {"opt": opt}, {"gen": gen})
    curve, monitored = [tuple(c) for c in extra.get("curve", [])], extra.get("monitored", [])
    binarize_from = binarize_start(cfg)
    for step in tqdm(range(start, cfg.steps), desc=desc, disable=not progress, leave=False, initial=start, total=cfg.steps):
        batch = make_batch(data, batch_indices(train_idx, cfg.batch_size, seed, step, lengths)).to(device)
        meta.noisy_switch = cfg.switch == "gumbel" or step >= binarize_from
        res = metacontroller_loss(base, meta, layer, batch, kl_weight(cfg, step), gen)
        opt.zero_grad(set_to_none=True)
        res["loss"].backward()
        torch.nn.utils.clip_grad_norm_(meta.parameters(), 1.0)
        opt.step()
        if step % 25 == 0 or step == cfg.steps - 1:
            curve.append((step, float(res["action_nll"].detach()), float(res["kl"].detach())))
            if scalars is not None:
                scalars(step, {"action_nll": curve[-1][1], "kl": curve[-1][2], "kl_weight": kl_weight(cfg, step)})
        if monitor is not None and ((monitor_every > 0 and (step + 1) % monitor_every == 0) or step == cfg.steps - 1):
            monitored.append({"step": step + 1, **monitor(meta)})
            if scalars is not None:
                scalars(step + 1, {f"heldout_{'switch_' if k in ('f1', 'precision', 'recall') else ''}{k}": v
                                   for k, v in monitored[-1].items() if k != "step"})
            meta.train()
            base.train(cfg.cotrain)
        ckpt.maybe_save(step + 1, cfg.steps, lambda: {"curve": curve, "monitored": monitored})
    ckpt.save(cfg.steps, {"curve": curve, "monitored": monitored})
    meta.monitored = monitored
    meta.noisy_switch = cfg.switch == "gumbel"
    for p in base.parameters():
        p.requires_grad_(False)
    return meta.eval(), curve


@torch.no_grad()
def evaluate_metacontroller(base, meta: Metacontroller, data, idx, layer: int, device, seed: int = 0,
                            batch_size: int = 256) -> dict:
    """Action NLL, KL and switch metrics on held-out episodes; also returns the gates."""
    from .analysis.switching import switch_metrics
    from .data import make_batch

    base.eval()
    meta.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    nll = kl = steps = 0.0
    gates, subgoals, masks = [], [], []
    for i in range(0, len(idx), batch_size):
        batch = make_batch(data, idx[i : i + batch_size]).to(device)
        res = metacontroller_loss(base, meta, layer, batch, meta.cfg.alpha, gen)
        n = float(batch.mask.sum())
        nll += float(res["action_nll"]) * n
        kl += float(res["kl"]) * n
        steps += n
        t = data.arrays["actions"].shape[1]
        pad = lambda x, v: F.pad(x, (0, t - x.shape[1]), value=v)  # noqa: E731
        gates.append(pad(res["out"].switch_gate.cpu(), 0.0))
        subgoals.append(pad(batch.subgoals.cpu(), -1))
        masks.append(pad(batch.mask.cpu(), False))
    gates, subgoals, masks = torch.cat(gates), torch.cat(subgoals), torch.cat(masks)
    return {"action_nll": nll / steps, "kl": kl / steps, **switch_metrics(gates, subgoals, masks),
            "gates": gates, "subgoals": subgoals, "mask": masks}
