# 2026-11-22. Measured: free play and post-training success of the base model at several sampling temperatures; written up in docs/results/free_play_temperature/.
"""Free play and post-training success of the base model at several sampling temperatures.

    python docs/experiments/2026-11-22_free_play_temperature.py RUN_DIR [--temperatures 1,0.8,0.6,0.4,0.2]
        [--episodes 4096] [--seed 0] [--set section.field=value ...]

The pipeline samples the action head at temperature 1 (``eval.temperature``). Its free-play
failures are confident (the failing step's median probability is about 0.7), which says either
that the model means to go to the wrong colour from the start, or that it drifts there: small
steps towards a forbidden colour, each likely enough, after which the model reads its own path
as evidence for that colour (the "self-delusion" of sequence models that infer a latent task from
their own actions). A lower temperature cuts the drift but not the first kind of failure, so the
curve tells the two apart. Same environments and layouts at every temperature (``--seed``).
"""
import argparse
import json

from internalrl.analysis.diagnose import load_finished_run
from internalrl.envs.tasks import parse_task_set
from internalrl.evaluate import evaluate_policy

p = argparse.ArgumentParser()
p.add_argument("run")
p.add_argument("--stage", default="metacontroller")
p.add_argument("--set", action="append", default=[], help="changes to the run's config (e.g. the metacontroller's layer)")
p.add_argument("--temperatures", default="1,0.8,0.6,0.4,0.2")
p.add_argument("--episodes", type=int, default=4096)
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()
r = load_finished_run(a.run, overrides=a.set)
cfg, base = r.cfg, r.base
spec = cfg.env.spec()
pretrain = parse_task_set(cfg.env.pretrain_tasks, spec.num_objects)
post = parse_task_set(cfg.env.posttrain_task, spec.num_objects)
rows = []
print(f"{'temperature':>11} {'free play':>9} {'new subgoal':>11} {'within':>7} {'timeout':>7} {'post-training':>13}")
for t in (float(x) for x in a.temperatures.split(",")):
    res = evaluate_policy(base, spec, pretrain, post, num_envs=a.episodes, seed=a.seed, temperature=t)
    free, done = res["free_play"], res["posttrain"]
    f = free["failures"]
    rows.append({"temperature": t, "free_play": free["success_rate"], "failures": f,
                 "posttrain": done["success_rate"], "posttrain_colours_done": done["colours_done_mean"]})
    print(f"{t:>11.2f} {free['success_rate']:>9.3f} {f['wrong_colour_new_subgoal']:>11.3f} "
          f"{f['wrong_colour_within_subgoal']:>7.3f} {f['timeout']:>7.3f} {done['success_rate']:>13.4f}", flush=True)
print(json.dumps({"run": a.run, "episodes": a.episodes, "seed": a.seed, "rows": rows}))
