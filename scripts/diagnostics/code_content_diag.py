"""What does a finished run's metacontroller code z carry? Decode it with linear probes.

    python scripts/diagnostics/code_content_diag.py RUN_DIR [--stage metacontroller] [--episodes 4000]
        [--set section.field=value ...]

On held-out expert episodes the frozen metacontroller runs with its encoder means (no sampling
noise). For every ground-truth segment (one per colour pair of the task) the code held at the
segment's last step is paired with labels:

* ``subgoal``: the segment's subgoal (A..D): what an abstract "do subgoal g" code would carry;
* ``alternative``: for segments after the first, which of the two successors that pretraining
  allows after the previous subgoal (0: the lower-lettered one): a code relative to the
  base model's own belief;
* ``direction``: the main compass direction from the agent to the segment's first colour
  when the segment starts: a code that steers moves rather than goals;
* ``first action``: the expert's action at the segment's first step.

A softmax regression per label is fit on 70% of the segments and scored on the rest, next to
the majority-class rate. Segments after the first are scored separately from the first,
where the task's first subgoal has four options and no predecessor.
"""
import argparse

import numpy as np
import torch

from finished_run import add_run_arguments, compass_direction, linear_probe, load_run
from internalrl.data import make_batch
from internalrl.envs.tasks import parse_task_set

p = argparse.ArgumentParser()
add_run_arguments(p)
p.add_argument("--episodes", type=int, default=4000)
a = p.parse_args()
cfg, base, meta, data, val_idx = load_run(a)
spec = cfg.env.spec()
layer = cfg.meta_layer()
tasks = parse_task_set(cfg.env.pretrain_tasks, spec.num_objects)
val_idx = val_idx[: a.episodes]

# successors of each subgoal in the pretraining tasks
succ = {g: set() for g in range(spec.num_subgoals)}
for t in tasks:
    gs = [c // 2 for c in t[::2]]
    for x, y in zip(gs, gs[1:]):
        succ[x].add(y)

codes, rows = [], []
with torch.no_grad():
    for chunk in np.array_split(val_idx, max(1, len(val_idx) // 500)):
        batch = make_batch(data, chunk)
        residual = base.lower(batch.obs[:, :-1], layer)
        out = meta(residual, batch.mask, noise=torch.zeros(*residual.shape[:2], meta.cfg.code_dim))
        sub = batch.subgoals.numpy()
        agent = data.arrays["agent"][chunk].astype(np.int64)
        for i, ep in enumerate(chunk):
            ident = data.arrays["layout"][ep].astype(np.int64)
            cells = {int(ident[c]) - spec.num_walls: c for c in range(spec.num_cells) if ident[c] >= spec.num_walls}
            n = int(batch.mask[i].sum())
            s = sub[i, :n]
            starts = [0] + [t for t in range(1, n) if s[t] != s[t - 1]]
            # no pretraining task repeats a subgoal back to back, so every change of label starts a segment
            for k, t0 in enumerate(starts):
                t1 = (starts[k + 1] if k + 1 < len(starts) else n) - 1
                g = int(s[t0])
                target = cells[2 * g]
                direction = int(compass_direction(int(agent[i, t0]), target, spec.size))
                alt = -1
                if k > 0:
                    prev = int(s[starts[k - 1]])
                    options = sorted(succ[prev])
                    alt = options.index(g) if g in options else -1
                codes.append(out.code[i, t1].numpy())
                rows.append((k, g, alt, direction, int(batch.actions[i, t0])))

codes = torch.as_tensor(np.array(codes), dtype=torch.float32)
rows = np.array(rows)
print(f"{len(rows)} segments from {len(val_idx)} episodes; code norm {codes.norm(dim=1).mean():.2f}")


def probe(x: torch.Tensor, y: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Fit on a random 70% of the segments, score on the rest."""
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    test = np.zeros(len(y), dtype=bool)
    test[perm[int(0.7 * len(y)):].numpy()] = True
    return linear_probe(x, y, test, seed)


for name, sel in (("first segment", rows[:, 0] == 0), ("later segments", rows[:, 0] > 0)):
    print(f"{name} ({int(sel.sum())}):")
    for label, col in (("subgoal", 1), ("alternative", 2), ("direction", 3), ("first action", 4)):
        ok = sel & (rows[:, col] >= 0)
        if label == "alternative" and name == "first segment":
            continue
        acc, maj = probe(codes[ok], rows[ok, col])
        print(f"  {label:>11}: probe accuracy {acc:.3f} (majority class {maj:.3f})")
