# 2026-11-22. Measured: the switch gate beta over time on the same held-out episodes for two finished metacontrollers; the figure is in docs/results/metacontroller_binarize/.
"""β over time on the same held-out episodes for two finished metacontroller stages (e.g. a
sigmoid switch and the same base model with the binarizing phase), one row per run.

    python docs/experiments/2026-11-22_beta_compare.py RUN_A RUN_B OUT.png [--labels A B] [--episodes 4]

Each RUN is a run directory with a finished ``metacontroller`` stage; its ``frozen_examples.npz``
holds β for the first held-out episodes (the same episodes when both runs share the data)."""
import argparse

import numpy as np

from internalrl.report import beta_grid

p = argparse.ArgumentParser()
p.add_argument("runs", nargs=2)
p.add_argument("out")
p.add_argument("--labels", nargs=2, default=None)
p.add_argument("--episodes", type=int, default=4)
a = p.parse_args()
labels = a.labels or a.runs
fig = beta_grid([(label, np.load(f"{run}/metacontroller/frozen_examples.npz", allow_pickle=False))
                 for run, label in zip(a.runs, labels)], a.episodes)
fig.savefig(a.out, dpi=110)
print("wrote", a.out)
