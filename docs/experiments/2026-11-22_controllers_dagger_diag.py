# 2026-11-22. Measured: linear subgoal controllers trained on the post-training task itself, and on their own rollouts (DAgger): an upper bound on what the supervised controllers can reach; written up in docs/results/controllers_upper_bound/.
"""Can linear subgoal controllers steer a finished run's base model through the post-training task
when they are trained on that task, even on their own rollouts? An upper bound on what the
supervised controllers of SPEC §4 could reach on this base model (not the paper's protocol).

    python docs/experiments/2026-11-22_controllers_dagger_diag.py RUN_DIR [--layer 2] [--rank 16]
        [--start post|pre] [--start-steps 1000] [--rounds 4] [--collect 8192] [--steps 500]

1. Train one controller per subgoal (rank --rank, at --layer) as the pipeline's controllers stage
   does (batch 64, lr 3e-3 with cosine decay, --start-steps steps), on 30,000 fresh expert episodes
   of the post-training task (``--start post``) or on the run's pretraining data (``pre``, the
   paper's protocol).
2. DAgger, --rounds times: roll the controlled model out on --collect post-training episodes,
   label every state it visits with the expert's action for the true task (the DP expert of
   SPEC §2), add these episodes to the training set and train --steps more steps (lr 1e-3).

After each phase it prints success on 1024 episodes of the pretraining tasks and of the
post-training task, and how many post-training episodes ended after k colours (k = 0..12).
Seed 0. With the defaults it took 33 min on one CPU thread whose core two other runs shared.
"""
import argparse
import time

import numpy as np
import torch

from internalrl.analysis.controllers import controlled_action_nll, freeze, rollout_with_controllers, train_controllers
from internalrl.config import load_config
from internalrl.data import (Trajectories, batch_indices, generate_grid, load_trajectories, make_batch,
                            repeat_final_cell)
from internalrl.envs.gridworld import BatchedGridPinpad
from internalrl.envs.tasks import parse_task_set
from internalrl.experts.grid import expert_actions
from internalrl.train import load_model

p = argparse.ArgumentParser()
p.add_argument("run")
p.add_argument("--layer", type=int, default=2)
p.add_argument("--rank", type=int, default=16, help="0: full rank")
p.add_argument("--start", choices=["post", "pre"], default="post")
p.add_argument("--start-steps", type=int, default=1000)
p.add_argument("--rounds", type=int, default=4)
p.add_argument("--collect", type=int, default=8192)
p.add_argument("--steps", type=int, default=500)
a = p.parse_args()
torch.manual_seed(0)
cfg = load_config("quick", [f"controllers.steps={a.start_steps}", f"controllers.rank={a.rank}"])
spec = cfg.env.spec()
pre = parse_task_set(cfg.env.pretrain_tasks, spec.num_objects)
post = parse_task_set(cfg.env.posttrain_task, spec.num_objects)
model = freeze(load_model(f"{a.run}/base_model"))
data = load_trajectories(f"{a.run}/data")
if a.start == "post":
    arrays, _ = generate_grid(30000, post, spec, seed=7, progress=False)
    data = Trajectories(arrays, {**data.card, "num_episodes": 30000})
train_idx, _ = data.split(0.05)
t0 = time.time()
ctl, _ = train_controllers(model, data, train_idx, a.layer, 4, cfg.controllers, 0, "cpu", progress=False)


def report(tag: str) -> None:
    r_pre = rollout_with_controllers(model, ctl, a.layer, BatchedGridPinpad(1024, pre, spec, seed=5), 5, "cpu")
    r_post = rollout_with_controllers(model, ctl, a.layer, BatchedGridPinpad(1024, post, spec, seed=5), 5, "cpu")
    print(f"{tag}: pretraining {r_pre['success_rate']:.3f} | post-training {r_post['success_rate']:.3f}, "
          f"episodes ended after k colours {r_post['progress_counts']} | {time.time() - t0:.0f}s", flush=True)


def collect(n: int, seed: int) -> dict:
    """The controlled model's own post-training episodes, every state labelled by the expert."""
    env = BatchedGridPinpad(n, post, spec, seed=seed)
    rng = np.random.default_rng(seed)
    T = spec.horizon
    rec = {"agent": np.zeros((n, T + 1), np.int8), "actions": np.zeros((n, T), np.int8),
           "optimal": np.zeros((n, T), np.uint8), "subgoals": np.full((n, T), -1, np.int8)}

    def record(e: BatchedGridPinpad) -> None:
        live = ~e.done
        t = e.t[live]
        label, optimal = expert_actions(e, rng)
        rec["agent"][live, t] = e.agent[live]
        rec["actions"][live, t] = label[live]
        rec["optimal"][live, t] = (optimal[live] * (1 << np.arange(4))).sum(1)
        rec["subgoals"][live, t] = e.subgoal()[live]

    rollout_with_controllers(model, ctl, a.layer, env, seed, "cpu", before_step=record)
    lengths = env.t.astype(np.int16)
    rows = np.arange(n)
    rec["agent"][rows, lengths] = env.agent  # o_{T+1}
    rec["agent"] = repeat_final_cell(rec["agent"], lengths)  # past the end, as the dataset does
    return {**rec, "layout": env.cell_identity.astype(np.int8), "task_id": np.zeros(n, np.int16), "lengths": lengths}


def concat(x: dict, y: dict) -> dict:
    """Two datasets' arrays as one, time axes padded to the longer."""
    T = max(x["actions"].shape[1], y["actions"].shape[1])

    def pad(arr, key):
        width = T + 1 if key == "agent" else T
        if arr.ndim < 2 or arr.shape[1] == width or key in ("layout",):
            return arr
        fill = np.repeat(arr[:, -1:], width - arr.shape[1], 1) if key == "agent" else \
            np.full((arr.shape[0], width - arr.shape[1]), -1 if key == "subgoals" else 0, arr.dtype)
        return np.concatenate([arr, fill], 1)

    return {k: np.concatenate([pad(x[k], k), pad(y[k], k)]) for k in x}


report(f"start: {a.start} data, {a.start_steps} steps")
arrays = {k: v[train_idx] for k, v in data.arrays.items()}
opt = torch.optim.AdamW(ctl.parameters(), lr=1e-3, weight_decay=0.0)
for rnd in range(a.rounds):
    arrays = concat(arrays, collect(a.collect, 100 + rnd))
    d = Trajectories(arrays, data.card)
    every = np.arange(d.num_episodes)
    ctl.train()
    for s in range(a.steps):
        batch = make_batch(d, batch_indices(every, 64, rnd, s, d.arrays["lengths"]))
        loss = controlled_action_nll(model, ctl, a.layer, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ctl.eval()
    report(f"DAgger round {rnd + 1}: {d.num_episodes} episodes")
