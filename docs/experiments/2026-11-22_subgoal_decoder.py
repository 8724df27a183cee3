# 2026-11-22. Measured: a positive control for internal RL: the metacontroller's decoder retrained on subgoal labels; written up in docs/results/subgoal_decoder/.
"""A positive control for internal RL: give the metacontroller a decoder that *does* hold subgoal
controllers, and see whether internal RL then learns.

    python docs/experiments/2026-11-22_subgoal_decoder.py RUN_DIR OUT_DIR [--steps 1000] [--lr 3e-3] [--set ...]

Copies the finished run RUN_DIR to OUT_DIR (the dataset is linked, not copied) and retrains only
the frozen metacontroller's decoder hypernetwork, supervised the way the subgoal controllers are
trained (`internalrl controllers`): on the run's clean data D*, every step's code is the row of a
learned 4 × n_z table picked by the ground-truth subgoal, and the loss is the base model's action
NLL through the decoder's controller. Switch, encoder and history are kept, so internal RL in
OUT_DIR acts in the same temporal abstraction with a decoder whose image contains a controller
per subgoal at known codes. The code table starts at draws from the N(0, I) prior and is saved
next to the weights (``metacontroller/subgoal_codes.json``).

Then, in OUT_DIR: ``internalrl rl --preset quick --out OUT_DIR --method internal --task TASK``, and
``internalrl diagnose code-search OUT_DIR --index subgoal --task grid-pretrain`` (should find codes that
steer, which checks the search too).
"""
import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch

from internalrl.analysis.diagnose import load_finished_run
from internalrl.atomic import manifest
from internalrl.analysis.controllers import controlled_action_nll, freeze, heldout_controlled_nll
from internalrl.config import ControllerConfig
from internalrl.data import batch_indices, make_batch
from internalrl.train import lr_at, save_weights

p = argparse.ArgumentParser()
p.add_argument("run")
p.add_argument("--stage", default="metacontroller")
p.add_argument("--set", action="append", default=[], help="changes to the run's config (e.g. the metacontroller's layer)")
p.add_argument("out")
p.add_argument("--steps", type=int, default=1000)
p.add_argument("--lr", type=float, default=3e-3)
p.add_argument("--batch-size", type=int, default=64)
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()
out = Path(a.out)
if out.exists():
    raise SystemExit(f"{out} exists; choose a new OUT_DIR")
r = load_finished_run(a.run, a.stage, a.set)
cfg, base, meta, data, val_idx = r.cfg, r.base, r.meta, r.data, r.val_idx
freeze(base)
spec = cfg.env.spec()
layer = cfg.meta_layer()
train_idx, _ = data.split(cfg.data.val_fraction)
lengths = data.arrays["lengths"]
torch.manual_seed(a.seed)
codes = torch.nn.Parameter(torch.randn(spec.num_subgoals, meta.cfg.code_dim))
params = list(meta.decoder.parameters()) + [codes]
opt = torch.optim.Adam(params, lr=a.lr)
schedule = ControllerConfig(steps=a.steps, lr=a.lr)  # cosine from lr to 0, no warm-up, as the controllers' default


def table_controller(residual: torch.Tensor, subgoal: torch.Tensor) -> torch.Tensor:
    """The decoder's controller for the code of each step's subgoal (the SubgoalControllers call)."""
    return meta.control(residual, codes[subgoal.clamp(min=0)])


def heldout() -> float:
    return heldout_controlled_nll(base, table_controller, layer, data, val_idx[:512], 512, "cpu")


before = heldout()
t0 = time.perf_counter()
for step in range(a.steps):
    for g in opt.param_groups:
        g["lr"] = lr_at(step, schedule)
    batch = make_batch(data, batch_indices(train_idx, a.batch_size, a.seed + 77, step, lengths))
    loss = controlled_action_nll(base, table_controller, layer, batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if (step + 1) % 200 == 0:
        print(f"step {step + 1}: train NLL {float(loss.detach()):.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
after = heldout()
print(f"held-out action NLL with the subgoal codes: {before:.3f} at the start -> {after:.3f} "
      f"(base model alone {float(json.loads(Path(a.run, 'results.json').read_text())['base_model']['heldout_action_nll']):.3f})")
print("subgoal code norms:", [round(float(x), 2) for x in codes.detach().norm(dim=1)])

tmp = out.with_name(out.name + ".partial")
shutil.rmtree(tmp, ignore_errors=True)
tmp.mkdir(parents=True)
src = Path(a.run)
for item in src.iterdir():
    if item.name.startswith("rl_") or item.name.startswith("."):
        continue
    if item.name in ("data", "data_clean"):
        os.symlink(item.resolve(), tmp / item.name)
    elif item.is_dir():
        shutil.copytree(item, tmp / item.name)
    else:
        shutil.copy2(item, tmp / item.name)
results = tmp / "results.json"  # the original's RL results do not describe this copy
if results.exists():
    kept = {k: v for k, v in json.loads(results.read_text()).items() if not k.startswith("rl_")}
    results.write_text(json.dumps(kept, indent=2))
save_weights(meta, tmp / a.stage / "frozen.safetensors")
(tmp / a.stage / "subgoal_codes.json").write_text(json.dumps(codes.detach().tolist()))
manifest(tmp / a.stage)  # the folder's recorded checksums now describe the retrained decoder
tmp.rename(out)
print(f"wrote {out} (its {a.stage}/frozen.safetensors has the supervised decoder)")
