# 2026-11-21. Measured: supervised subgoal controllers on a finished run (held-out NLL, where episodes end, per-task controllers, stronger pushes); written up in docs/journal.md (supervised controllers) and docs/results/controllers_upper_bound/.
"""Supervised controllers on a finished run's base model, with held-out NLL and where episodes end.

    python docs/experiments/2026-11-21_controllers_diag.py RUN_DIR LAYER STEPS LR RANK [--per-task] [--scales 1,2,3]
        [--train-tasks TASKS] [--train-episodes 30000]

Trains one rank-RANK controller per subgoal (or, with --per-task, one per pretraining task held
for the whole episode) at LAYER with AdamW and a cosine lr, batch 64, and prints every STEPS/5
steps: the training loss, the held-out action NLL (1024 episodes), and success and the
histogram of colours visited when episodes ended (1024 episodes each) on the pretraining tasks
and (per-subgoal only) the post-training task. With --scales, the trained controllers are then
evaluated with U multiplied by each factor (a stronger or weaker push), and for the post-training
task it prints which wrong colours ended the episodes at each progress. Used for docs/journal.md's
controller diagnostics. With --train-tasks the controllers are trained on expert episodes of other
tasks (for example the post-training task itself): how well a linear controller at LAYER *can* steer
the frozen model through those transitions, when training shows them.
"""
import argparse
import time

import numpy as np
import torch

from internalrl.analysis.controllers import controlled_action_nll, freeze, rollout_with_controllers
from internalrl.config import load_config
from internalrl.controller import SubgoalControllers
from internalrl.data import Trajectories, batch_indices, generate_grid, load_trajectories, make_batch
from internalrl.envs.gridworld import BatchedGridPinpad
from internalrl.envs.tasks import parse_task_set
from internalrl.train import load_model

p = argparse.ArgumentParser()
p.add_argument("run"), p.add_argument("layer", type=int), p.add_argument("steps", type=int)
p.add_argument("lr", type=float), p.add_argument("rank", type=int, help="0: full rank")
p.add_argument("--per-task", action="store_true", help="one controller per task, held all episode")
p.add_argument("--scales", default="", help="comma-separated factors for U after training, e.g. 0,1,2,3")
p.add_argument("--train-tasks", default="", help="train on N fresh expert episodes of these tasks (a task set or task "
               "string, e.g. the post-training task) instead of the run's data: an upper bound, not the paper's protocol")
p.add_argument("--train-episodes", type=int, default=30000)
a = p.parse_args()
torch.manual_seed(0)
cfg = load_config("quick")
spec = cfg.env.spec()
pre = parse_task_set(cfg.env.pretrain_tasks, spec.num_objects)
post = parse_task_set(cfg.env.posttrain_task, spec.num_objects)
data = load_trajectories(f"{a.run}/data")
if a.train_tasks:  # fresh expert episodes of other tasks (held-out NLL is then scored on them too)
    arrays, _ = generate_grid(a.train_episodes, parse_task_set(a.train_tasks, spec.num_objects), spec, seed=7,
                              progress=False)
    data = Trajectories(arrays, {**data.card, "num_episodes": a.train_episodes})
model = freeze(load_model(f"{a.run}/base_model"))
tr, va = data.split(0.05)
lengths = data.arrays["lengths"]
task_id = torch.as_tensor(data.arrays["task_id"].astype(np.int64))


def labels(idx, b):
    if not a.per_task:
        return b.subgoals
    return torch.where(b.mask, task_id[idx][:, None].expand_as(b.subgoals), torch.full_like(b.subgoals, -1))


def nll(b, lab):
    return controlled_action_nll(model, ctl, a.layer, b, lab)


def rollout(tasks, n=1024, seed=5):
    env = BatchedGridPinpad(n, tasks, spec, seed=seed)
    per_task = (lambda e: e.task_index.astype(np.int64)) if a.per_task else None
    return rollout_with_controllers(model, ctl, a.layer, env, seed, "cpu", labels=per_task)


def summary(r):
    return round(r["success_rate"], 3), r["progress_counts"]


vidx = va[:1024]
vb = make_batch(data, vidx)
vl = labels(vidx, vb)
ctl = SubgoalControllers(len(pre) if a.per_task else 4, model.cfg.width, a.rank or None)
opt = torch.optim.AdamW(ctl.parameters(), lr=a.lr, weight_decay=0.0)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.steps)
with torch.no_grad():
    print("held-out NLL before:", round(float(nll(vb, vl)), 4), flush=True)
t0 = time.time()
for s in range(a.steps):
    idx = batch_indices(tr, 64, 0, s, lengths)
    b = make_batch(data, idx)
    loss = nll(b, labels(idx, b))
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    if (s + 1) % max(1, a.steps // 5) == 0:
        with torch.no_grad():
            v = float(nll(vb, vl))
        line = f"{s + 1} train {loss.item():.4f} val {v:.4f} pretrain {summary(rollout(pre))}"
        if not a.per_task:
            line += f" post-training {summary(rollout(post))}"
        print(line, f"t {time.time() - t0:.0f}s", flush=True)

factor = ctl.a if ctl.rank is not None else ctl.u  # U = A Bᵀ (or U) is linear in this factor
trained = factor.detach().clone()
for k in [float(x) for x in a.scales.split(",") if x]:
    with torch.no_grad():
        factor.copy_(trained * k)
    r = rollout(post)
    print(f"U x {k:g}: pretraining {summary(rollout(pre))} | post-training {summary(r)}", flush=True)
    for p, (row, timeouts) in enumerate(zip(r["wrong_colour_counts"], r["timeout_counts"])):
        if sum(row) + timeouts >= 0.05 * r["episodes"]:
            print(f"    post-training episodes ended after {p} colours: wrong colour {row}, timeouts {timeouts}")
