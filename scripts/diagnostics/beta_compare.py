"""β over time on the same held-out episodes for two finished metacontroller stages (e.g. a
sigmoid switch and the same base model with the binarizing phase), one row per run.

    python scripts/diagnostics/beta_compare.py RUN_A RUN_B OUT.png [--labels A B] [--episodes 4]

Each RUN is a run directory with a finished ``metacontroller`` stage; its ``frozen_examples.npz``
holds β for the first held-out episodes (the same episodes when both runs share the data)."""
import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from internalrl.report import beta_plot  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("runs", nargs=2)
p.add_argument("out")
p.add_argument("--labels", nargs=2, default=None)
p.add_argument("--episodes", type=int, default=4)
a = p.parse_args()
labels = a.labels or a.runs
fig, axes = plt.subplots(2, a.episodes, figsize=(3.5 * a.episodes, 4.8), sharey=True, squeeze=False, layout="constrained")
for r, (run, label) in enumerate(zip(a.runs, labels)):
    ex = np.load(f"{run}/metacontroller/frozen_examples.npz", allow_pickle=False)
    for c in range(a.episodes):
        beta_plot(axes[r, c], ex["gates"][c], ex["subgoals"][c], ex["mask"][c], f"{label}: held-out episode {c}")
    axes[r, 0].set_ylabel("switch gate β")
for c in range(a.episodes):
    axes[-1, c].set_xlabel("step")
fig.savefig(a.out, dpi=110)
print("wrote", a.out)
