# 2026-11-21. Measured: per-layer linear probes of the residual for the subgoal, the direction to the next colour and the expert's action; written up in docs/results/code_content/.
"""Which layers of a base model hold the current subgoal, and which the way to walk? Linear
probes on the residual stream, per layer.

    python docs/experiments/2026-11-21_residual_content_diag.py RUN_DIR [--episodes 1500] [--set section.field=value ...]

On held-out expert episodes, every step t is labelled with
* ``subgoal``: the ground-truth subgoal (A..D), as the pipeline's probes;
* ``target direction``: the main compass direction from the agent to the next colour to visit;
* ``expert action``: the action the expert took at t (for reference: the base model's own output).

A softmax regression per label and layer is fit on 70% of the episodes' steps and scored on
the rest, next to the majority-class rate. It asks whether the residual at the controlled layer
carries "which colour next" (what a subgoal code would set) or already "which way" (what the
metacontroller's codes turn out to carry; `internalrl diagnose code-content`).
"""
import argparse

import numpy as np
import torch

from internalrl.analysis.diagnose import compass_direction, linear_probe, load_finished_run
from internalrl.data import make_batch

p = argparse.ArgumentParser()
p.add_argument("run")
p.add_argument("--stage", default="metacontroller")
p.add_argument("--set", action="append", default=[], help="changes to the run's config (e.g. the metacontroller's layer)")
p.add_argument("--episodes", type=int, default=1500)
a = p.parse_args()
r = load_finished_run(a.run, overrides=a.set)
cfg, base, data, val_idx = r.cfg, r.base, r.data, r.val_idx
idx = val_idx[: a.episodes]
spec = cfg.env.spec()

layers, labels = [[] for _ in range(base.depth + 1)], []
with torch.no_grad():
    for chunk in np.array_split(idx, max(1, len(idx) // 250)):
        batch = make_batch(data, chunk)
        stream = base.residual_stream(batch.obs[:, :-1])
        for i, ep in enumerate(chunk):
            n = int(batch.mask[i].sum())
            ident = data.arrays["layout"][ep].astype(np.int64)
            cell_of = {int(ident[c]) - spec.num_walls: c for c in range(spec.num_cells) if ident[c] >= spec.num_walls}
            agent = data.arrays["agent"][ep].astype(np.int64)
            sub = data.arrays["subgoals"][ep].astype(np.int64)
            first_done = False
            for t in range(n):
                if t > 0 and sub[t] != sub[t - 1]:
                    first_done = False
                g = int(sub[t])
                target = cell_of[2 * g + int(first_done)]
                direction = int(compass_direction(int(agent[t]), target, spec.size))
                labels.append((ep, g, direction, int(data.arrays["actions"][ep, t])))
                for l, e in enumerate(stream):
                    layers[l].append(e[i, t].numpy())
                if int(agent[t + 1]) == cell_of[2 * g]:
                    first_done = True

labels = np.array(labels)
layers = [torch.as_tensor(np.array(x)) for x in layers]  # (steps, W) per layer, built once
# split by episode, so the held-out steps come from held-out episodes
episodes = np.unique(labels[:, 0])
rng = np.random.default_rng(0)
test_eps = set(rng.choice(episodes, size=int(0.3 * len(episodes)), replace=False).tolist())
test = np.array([e in test_eps for e in labels[:, 0]])
print(f"{len(labels)} steps from {len(idx)} held-out episodes; layer 0 = the embedding")
for name, col in (("subgoal", 1), ("target direction", 2), ("expert action", 3)):
    accs, maj = [], None
    for l in range(len(layers)):
        acc, maj = linear_probe(layers[l], labels[:, col], test)
        accs.append(acc)
    print(f"  {name:>16}: " + " ".join(f"{x:.3f}" for x in accs) + f"  (majority class {maj:.3f})")
