"""How the base model's free-play episodes fail: which wrong colour ended each one.

    python scripts/diagnostics/free_play_failures.py RUN_DIR [--episodes 4096] [--seed 0] [--set section.field=value ...]

Rolls the base model out in free play (no task given, as the pipeline's `eval_base` stage does)
and sorts every episode that a wrong colour ended by what that colour was, given the colours
visited before it:

* at the start of a new subgoal (the previous pair complete, or the episode's first colour):
  - ``cyclic successor``: the colour after the last one (3 → 4, 7 → 0): the first colour of the
    next pair in 0-1-2-3-4-5-6-7 order, i.e. one of the post-training transitions A→B, B→C,
    C→D, D→A, which no pretraining task contains;
  - ``back onto the pair just done``: one of the two colours just visited;
  - ``a pair's second colour``: an odd colour, without its pair's first;
  - ``another pair``: the first colour of a pair that no pretraining task allows here;
* inside a subgoal (the pair's first colour visited, its second not yet):
  - ``back onto the first colour``: stepped off the colour just visited and back on;
  - ``another colour``: any other colour on the way.

It also reports the action probability the model gave to the failing step and, for the steps
where some move would land on a wrong colour, the mean probability the model put on such moves.
"""
import argparse
from collections import Counter

import numpy as np
import torch

from finished_run import add_run_arguments, load_base_run
from internalrl.envs.gridworld import BatchedGridPinpad
from internalrl.envs.tasks import parse_task_set
from internalrl.live import LiveRows

p = argparse.ArgumentParser()
add_run_arguments(p)
p.add_argument("--episodes", type=int, default=4096)
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()
cfg, base, _, _ = load_base_run(a)
spec = cfg.env.spec()
tasks = parse_task_set(cfg.env.pretrain_tasks, spec.num_objects)
env = BatchedGridPinpad(a.episodes, tasks, spec, seed=a.seed)
obs = env.reset(free_play=True)
gen = torch.Generator().manual_seed(a.seed)
state = base.initial_state(env.num_envs, "cpu")
rows = LiveRows(env.num_envs, "cpu")
visits = [[] for _ in range(env.num_envs)]
fail_prob = np.full(env.num_envs, np.nan)  # the probability of the action that ended the episode on a wrong colour
with torch.no_grad():
    for _ in range(spec.horizon):
        keep = rows.shrink(env)
        if keep is not None:
            state.select_(keep)
        live = rows.idx.numpy()
        out = base(torch.as_tensor(obs)[rows.idx][:, None], state=state)  # one cached step
        probs = torch.softmax(out.action[:, -1], -1)
        action = torch.multinomial(probs, 1, generator=gen)[:, 0]
        obs, _, _, _, info = env.step(rows.actions(action))
        failed = info["failure"][live]
        fail_prob[live[failed]] = probs[failed, action[failed]].numpy()
        for i in np.flatnonzero(info["visited"] >= 0):
            visits[i].append(int(info["visited"][i]))
        if env.done.all():
            break

per = spec.colours_per_subgoal
n_col = spec.num_objects
kinds = Counter()
for i in np.flatnonzero(~np.isnan(fail_prob)):
    *before, wrong = visits[i]
    if len(before) % per == 0:  # a new subgoal starts
        if before and wrong == (before[-1] + 1) % n_col:
            kinds["new subgoal: cyclic successor (an A→B-type transition)"] += 1
        elif before and wrong in before[-per:]:
            kinds["new subgoal: back onto the pair just done"] += 1
        elif wrong % per:
            kinds["new subgoal: a pair's second colour"] += 1
        else:
            kinds["new subgoal: another pair"] += 1
    elif wrong == before[-1]:
        kinds["inside a subgoal: back onto the first colour"] += 1
    else:
        kinds["inside a subgoal: another colour"] += 1

n = env.num_envs
print(f"free play, {n} episodes (seed {a.seed}): success {env.succeeded.mean():.3f}, "
      f"wrong colour {np.isfinite(fail_prob).mean():.3f}, "
      f"time limit {(~env.succeeded & np.isnan(fail_prob)).mean():.3f}")
print(f"the failing step's action had probability: median {np.nanmedian(fail_prob):.3f}, "
      f"mean {np.nanmean(fail_prob):.3f}, below 0.1 in {np.nanmean(fail_prob < 0.1):.2f} of failures")
print("wrong colours, by kind (share of all episodes):")
for kind, c in kinds.most_common():
    print(f"  {kind:55s} {c / n:.3f}")
