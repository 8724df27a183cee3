# 2026-11-21. Measured: the metacontroller's switch metrics while it trains (KL schedules, straight-through switch, learning rates, continuing with a noisy switch); written up in docs/journal.md, docs/results/metacontroller_8000steps/, metacontroller_lr/ and metacontroller_binarize/.
"""Train a metacontroller on a finished run's base model and print its switch metrics as it trains.

    python docs/experiments/2026-11-21_metacontroller_diag.py RUN_DIR [--steps 1500] [--alpha 0.17]
        [--free 0] [--warmup 0] [--switch sigmoid|gumbel] [--hard] [--lr 1e-3] [--layer 2]
        [--switch-bias 0] [--evals 6] [--temperature 0.5] [--init RUN_DIR/metacontroller/frozen.safetensors]

The quick preset's metacontroller (batch 64) at layer --layer, with α = 0 for --free steps, then
ramped over --warmup steps, at a constant lr. --hard hardens β at 0.5 in the forward pass with the sigmoid's
gradient (straight-through), as the switch acts in internal RL. --evals times during training it
prints the training NLL and KL, and on 512 held-out episodes: action NLL, KL per step, switch
F1 / precision / recall against subgoal changes (β hardened at 0.5, ±1 step), switches per
episode and the fraction of β in (0.1, 0.9). --init continues a trained metacontroller (a fresh optimizer,
α from the first step), e.g. with --switch gumbel to see what the binarizing phase does to it.
Used for the metacontroller diagnostics in docs/journal.md.
"""
import argparse
import time

import torch

from internalrl.analysis.controllers import freeze
from internalrl.data import batch_indices, load_trajectories, make_batch
from internalrl.metacontroller import (Metacontroller, MetacontrollerConfig, evaluate_metacontroller,
                                       kl_weight, metacontroller_loss)
from internalrl.train import load_model

p = argparse.ArgumentParser()
p.add_argument("run")
p.add_argument("--steps", type=int, default=1500)
p.add_argument("--alpha", type=float, default=0.17)
p.add_argument("--free", type=int, default=0, help="steps with α = 0 (metacontroller.kl_free_steps)")
p.add_argument("--warmup", type=int, default=0, help="steps of the α ramp (metacontroller.kl_warmup_steps)")
p.add_argument("--switch", default="sigmoid")
p.add_argument("--hard", action="store_true", help="straight-through hardened β")
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--batch", type=int, default=64)
p.add_argument("--layer", type=int, default=2)
p.add_argument("--evals", type=int, default=6, help="how many times to score on held-out episodes")
p.add_argument("--switch-bias", type=float, default=0.0, help="initial bias of the switch unit's logit")
p.add_argument("--temperature", type=float, default=0.5, help="the Gumbel switch's temperature")
p.add_argument("--init", help="start from these metacontroller weights (e.g. RUN/metacontroller/frozen.safetensors)")
a = p.parse_args()
data = load_trajectories(f"{a.run}/data")
base = freeze(load_model(f"{a.run}/base_model"))
train_idx, val_idx = data.split(0.05)
lengths = data.arrays["lengths"]
cfg = MetacontrollerConfig(steps=a.steps, batch_size=a.batch, lr=a.lr, alpha=a.alpha, switch=a.switch,
                           kl_free_steps=a.free, kl_warmup_steps=a.warmup,
                           gumbel_temperature=a.temperature)
torch.manual_seed(0)
meta = Metacontroller(cfg, base.cfg.width)
if a.init:
    from safetensors.torch import load_file

    meta.load_state_dict(load_file(a.init))
    ev = evaluate_metacontroller(base, meta, data, val_idx[:512], a.layer, "cpu")
    print(f"0 (--init) held-out nll {ev['action_nll']:.4f} kl {ev['kl']:.4f} f1 {ev['f1']:.3f} "
          f"switches/ep {ev['switches_per_episode']:.2f} beta in (0.1,0.9) {ev['fraction_beta_intermediate']:.3f}", flush=True)
    meta.train()
else:
    with torch.no_grad():
        meta.switch_unit[-1].bias.fill_(a.switch_bias)
if a.hard:
    soft_gate = meta.gate_from_logit

    def hard_gate(logit, generator=None):
        beta = soft_gate(logit, generator)
        return beta + ((beta > 0.5).float() - beta).detach()

    meta.gate_from_logit = hard_gate
opt = torch.optim.AdamW(meta.parameters(), lr=a.lr, weight_decay=cfg.weight_decay)
gen = torch.Generator().manual_seed(0)
t0 = time.time()
for step in range(a.steps):
    batch = make_batch(data, batch_indices(train_idx, a.batch, 0, step, lengths))
    res = metacontroller_loss(base, meta, a.layer, batch, kl_weight(cfg, step), gen)
    opt.zero_grad()
    res["loss"].backward()
    torch.nn.utils.clip_grad_norm_(meta.parameters(), 1.0)
    opt.step()
    if (step + 1) % max(1, a.steps // a.evals) == 0:
        ev = evaluate_metacontroller(base, meta, data, val_idx[:512], a.layer, "cpu")
        meta.train()
        print(f"{step + 1} train nll {res['action_nll']:.4f} kl {res['kl']:.4f} | held-out nll {ev['action_nll']:.4f} "
              f"kl {ev['kl']:.4f} f1 {ev['f1']:.3f} precision {ev['precision']} recall {ev['recall']:.3f} "
              f"switches/ep {ev['switches_per_episode']:.2f} beta in (0.1,0.9) {ev['fraction_beta_intermediate']:.3f} "
              f"t {time.time() - t0:.0f}s", flush=True)

# Where β is large: its mean at the steps where the ground-truth subgoal changes (and the first
# step) against all other steps, and the switch F1 at the best threshold instead of 0.5.
from internalrl.analysis.switching import switch_metrics  # noqa: E402

gates, sub, mask = ev["gates"], ev["subgoals"], ev["mask"]
change = torch.zeros_like(mask)
change[:, 1:] = (sub[:, 1:] != sub[:, :-1]) & mask[:, 1:]
later = mask.clone()
later[:, 0] = False
print(f"mean beta at subgoal changes {gates[change].mean():.3f}, elsewhere after step 1 "
      f"{gates[later & ~change].mean():.3f}")
best = max(((float(switch_metrics((gates > th).float(), sub, mask)["f1"] or 0.0), th)
            for th in (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)))
print(f"best F1 over thresholds 0.05..0.5: {best[0]:.3f} at beta > {best[1]}")
fires = (gates > 0.5) & later
print("switch rate by step 1..8 (first step excluded):", " ".join(f"{float(fires[:, i].float().sum() / mask[:, i].sum()):.2f}"
                                                                 for i in range(1, 9)))
print("share of switches at a subgoal change (±1):",
      f"{float((fires & (change | change.roll(1, 1) | change.roll(-1, 1))).sum() / fires.sum().clamp(min=1)):.2f}")
