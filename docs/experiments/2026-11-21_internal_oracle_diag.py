# 2026-11-21. Measured: the internal environment with an oracle giving each subgoal's mean metacontroller code, against prior codes; written up in docs/journal.md (what the codes carry), docs/results/metacontroller_binarize/ and docs/results/metacontroller_layers_0_1/.
"""How good can internal RL get with a finished run's metacontroller? Roll out the internal
environment with an oracle choosing the codes instead of a policy.

    python docs/experiments/2026-11-21_internal_oracle_diag.py RUN_DIR [--stage metacontroller] [--episodes 1024]
        [--tasks grid-pretrain,0-1-2-3,0-1-2-3-4-5-6-7-0-1-2-3] [--set section.field=value ...]

The oracle's code for subgoal g is the mean code z the frozen metacontroller holds while the
ground-truth subgoal is g, over 1000 held-out expert episodes (encoder means, no sampling noise).
At every decision (the first step and wherever the hardened switch fires, as in internal RL)
the oracle gives each environment the code of its current subgoal. Also rolled out: codes
drawn from the N(0, I) prior at every decision, which is where an internal-RL policy starts.
Prints success, decisions per episode and where episodes end (colours visited) per task set.
--set takes the overrides the run was made with (its metacontroller config).
"""
import argparse

import numpy as np
import torch

from internalrl.analysis.diagnose import load_finished_run
from internalrl.data import make_batch
from internalrl.envs.gridworld import BatchedGridPinpad
from internalrl.envs.tasks import parse_task_set
from internalrl.rl.internal import rollout_internal

p = argparse.ArgumentParser()
p.add_argument("run")
p.add_argument("--stage", default="metacontroller")
p.add_argument("--set", action="append", default=[], help="changes to the run's config (e.g. the metacontroller's layer)")
p.add_argument("--episodes", type=int, default=1024)
p.add_argument("--tasks", default="grid-pretrain,0-1-2-3,0-1-2-3-4-5-6-7-0-1-2-3")
a = p.parse_args()
r = load_finished_run(a.run, a.stage, a.set)
cfg, base, meta, data, val_idx = r.cfg, r.base, r.meta, r.data, r.val_idx
spec = cfg.env.spec()
layer = cfg.meta_layer()
batch = make_batch(data, val_idx[:1000])
with torch.no_grad():
    residual = base.lower(batch.obs[:, :-1], layer)
    out = meta(residual, batch.mask, noise=torch.zeros(*residual.shape[:2], meta.cfg.code_dim))
sub = batch.subgoals
means = torch.stack([out.code[(sub == g) & batch.mask].mean(0) for g in range(spec.num_subgoals)])
spread = torch.stack([out.code[(sub == g) & batch.mask].std(0).mean() for g in range(spec.num_subgoals)])
print("mean code norm per subgoal:", [round(float(x), 2) for x in means.norm(dim=1)],
      "| within-subgoal std:", [round(float(x), 2) for x in spread],
      "| distance between subgoal means:", round(float(torch.cdist(means, means).sum() / 12), 2))


def oracle(t, env):
    return means[torch.as_tensor(env.subgoal()).clamp(min=0)]


def prior(t, env, gen=torch.Generator().manual_seed(0)):
    return torch.randn(env.num_envs, meta.cfg.code_dim, generator=gen)


for name in a.tasks.split(","):
    tasks = parse_task_set(name, spec.num_objects)
    for label, fn in (("oracle codes", oracle), ("prior codes", prior)):
        env = BatchedGridPinpad(a.episodes, tasks, spec, seed=7)
        roll = rollout_internal(base, meta, None, env, layer, seed=7, device="cpu", codes=fn)
        counts = np.bincount(env.progress, minlength=int(env.task_len.max()) + 1).tolist()
        print(f"{name:>28} {label}: success {env.succeeded.mean():.3f}, decisions/episode "
              f"{roll.decisions.sum(1).float().mean():.2f}, episodes ending after k colours {counts}", flush=True)
