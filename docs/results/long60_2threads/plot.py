"""Free play against training steps: the quick preset, the long preset and the 60k-step run of 2026-11-22.
Run from the repository root: python docs/results/long60_2threads/plot.py (the numbers are the runs' logged
free-play rates, 1024 episodes each; see docs/journal.md, 2026-11-22)."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RUNS = {  # label: (steps, free play)
    "quick: 10k steps, 150k episodes (446f07a, 2 threads, 9.6 min)":
        ([2500, 5000, 7500, 10000], [0.026, 0.229, 0.334, 0.521]),
    "long: 30k steps, 300k episodes (5105e23, 1 thread, 41.6 min)":
        ([3750 * i for i in range(1, 9)], [0.138, 0.413, 0.619, 0.684, 0.729, 0.795, 0.830, 0.824]),
    "long, 60k steps, 400k episodes (446f07a, 2 threads, 62.5 min)":
        ([7500 * i for i in range(1, 9)], [0.415, 0.651, 0.743, 0.768, 0.807, 0.840, 0.867, 0.876]),
}

fig, ax = plt.subplots(figsize=(7, 4.2))
for label, (x, y) in RUNS.items():
    ax.plot(x, y, marker="o", label=label)
ax.axhline(0.9, color="k", ls="--", lw=1, label="target (0.9)")
ax.axhline(0.948, color="grey", ls=":", lw=1, label="expert knowing only the colours visited (0.948)")
ax.set_xlabel("training steps (batch 64)")
ax.set_ylabel("free play: completes some pretraining task")
ax.set_ylim(0, 1)
ax.grid(alpha=0.3)
ax.legend(fontsize=7, loc="lower right")
fig.tight_layout()
fig.savefig(Path(__file__).with_name("free_play_vs_steps.png"), dpi=120)
