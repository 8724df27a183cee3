"""Can *any* codes steer a finished run's metacontroller decoder through a task? A
cross-entropy search over code tables, with an oracle choosing which row to use.

    python scripts/diagnostics/internal_code_search.py RUN_DIR [--task 0-1-2-3] [--index subgoal|direction|both]
        [--iterations 12] [--population 24] [--episodes 256] [--set section.field=value ...]

Internal RL's policy must produce, at each decision, a code that the decoder turns into a
controller steering the base model. `internal_oracle_diag.py` hands it the metacontroller's own
mean code per subgoal; this searches for the best codes directly. The code table has one
row per oracle index, chosen at every decision (the first step and wherever the hardened
switch fires, as in internal RL):

- ``subgoal``: the environment's ground-truth subgoal (4 rows): are there subgoal codes?
- ``direction``: the main compass direction from the agent to the next colour (4 rows): are
  there "head that way" codes (what the codes were found to carry)?
- ``both``: subgoal × direction (16 rows).

Each iteration draws ``population`` tables around the current mean (Gaussian, per-entry
scale starting at the prior's 1), rolls every one out on the same ``episodes`` layouts
(all candidates in one batched rollout), and refits the mean and scale to the best quarter
by mean progress (colours visited in order / task length; success alone is too sparse to
rank at the start). Prints each iteration's best and mean success, then the final mean
table's success on 1024 fresh episodes next to the all-zero table and prior samples.
"""
import argparse
import time

import numpy as np
import torch

from finished_run import add_run_arguments, compass_direction, load_run
from internalrl.envs.gridworld import BatchedGridPinpad
from internalrl.envs.tasks import parse_task_set
from internalrl.rl.internal import rollout_internal

p = argparse.ArgumentParser()
add_run_arguments(p)
p.add_argument("--task", default="0-1-2-3")
p.add_argument("--index", choices=("subgoal", "direction", "both"), default="subgoal")
p.add_argument("--iterations", type=int, default=12)
p.add_argument("--population", type=int, default=24)
p.add_argument("--episodes", type=int, default=256)
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()
cfg, base, meta, data, val_idx = load_run(a)
spec = cfg.env.spec()
layer = cfg.meta_layer()
tasks = parse_task_set(a.task, spec.num_objects)
nz = meta.cfg.code_dim
rows = {"subgoal": spec.num_subgoals, "direction": 4, "both": 4 * spec.num_subgoals}[a.index]


def direction(env: BatchedGridPinpad) -> np.ndarray:
    """(N,) the main compass direction from the agent to the next colour."""
    target = env.colour_cell[np.arange(env.num_envs), np.maximum(env.next_colour(), 0)]
    return compass_direction(env.agent, target, spec.size)


def row_index(env: BatchedGridPinpad) -> np.ndarray:
    sub = np.maximum(env.subgoal(), 0)
    if a.index == "subgoal":
        return sub
    if a.index == "direction":
        return direction(env)
    return sub * 4 + direction(env)


def evaluate(tables: torch.Tensor, episodes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """tables (C, rows, nz) -> per-candidate success and mean progress fraction, each
    candidate on the same ``episodes`` layouts (env seed ``seed``)."""
    c = tables.shape[0]
    # the same layouts for every candidate: sample them once (solvable), copy them into every block
    one = BatchedGridPinpad(episodes, tasks, spec, seed=seed)
    one.reset()
    env = BatchedGridPinpad(c * episodes, tasks, spec, seed=seed, require_solvable=False)
    env.reset(task_index=np.tile(one.task_index, c))  # the tasks; its own layouts are replaced below
    env.load_layout(np.tile(one.cell_identity, (c, 1)), np.tile(one.agent, c))
    owner = torch.arange(c).repeat_interleave(episodes)

    def codes(t, e):
        return tables[owner, torch.as_tensor(row_index(e))]

    with torch.no_grad():
        rollout_internal(base, meta, None, env, layer, seed=seed, device="cpu", codes=codes, reset=False)
    success = env.succeeded.reshape(c, episodes).mean(1)
    progress = (env.progress / env.task_len[env.task_index]).reshape(c, episodes).mean(1)
    return success, progress


gen = torch.Generator().manual_seed(a.seed)
mean = torch.zeros(rows, nz)
scale = torch.ones(rows, nz)
elite_n = max(2, a.population // 4)
t0 = time.perf_counter()
print(f"task {a.task}, index {a.index} ({rows} rows x {nz}), population {a.population}, {a.episodes} episodes each",
      flush=True)
for it in range(a.iterations):
    cand = mean + scale * torch.randn(a.population, rows, nz, generator=gen)
    cand[0] = mean  # keep the current mean in the race
    success, progress = evaluate(cand, a.episodes, seed=1000 + it)
    order = np.argsort(-progress, kind="stable")[:elite_n]
    elite = cand[torch.as_tensor(order)]
    mean, scale = elite.mean(0), elite.std(0).clamp(min=0.05)
    print(f"iter {it:2d}: mean-table success {success[0]:.3f} progress {progress[0]:.3f} | best success "
          f"{success.max():.3f} | population mean {success.mean():.3f} | code-table norm {mean.norm():.2f} "
          f"| {time.perf_counter() - t0:.0f} s", flush=True)

final = torch.stack([mean, torch.zeros(rows, nz)] + [torch.randn(rows, nz, generator=gen) for _ in range(4)])
success, progress = evaluate(final, 1024, seed=999_999)
print(f"final (1024 fresh episodes): searched table success {success[0]:.3f} (progress {progress[0]:.3f}); "
      f"all-zero codes {success[1]:.3f} ({progress[1]:.3f}); prior-drawn tables "
      f"{', '.join(f'{s:.3f}' for s in success[2:])}")
print("searched table row norms:", [round(float(x), 2) for x in mean.norm(dim=1)])
