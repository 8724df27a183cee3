"""Success against episodes for internal RL with the learned decoder and with the supervised
(subgoal) decoder, and raw-action RL where it was run:

    python docs/results/subgoal_decoder/plot.py              # the f98ea13 quick run (curve_*.json)
    python docs/results/subgoal_decoder/plot.py gridwide_    # the windowed width-128 model (gridwide_curve_*.json)
    python docs/results/subgoal_decoder/plot.py gridsteer_   # grid-steer, controlled at layer 1

(reads the curves next to it)."""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

here = Path(__file__).parent
prefix = sys.argv[1] if len(sys.argv) > 1 else ""
titles = {"": ("quick base model of the f98ea13 run", "internal_rl_subgoal_decoder.png"),
          "gridwide_": ("the windowed width-128 model (grid-wide)", "gridwide_internal_rl_subgoal_decoder.png"),
          "gridsteer_": ("grid-steer, layer 1", "gridsteer_internal_rl_subgoal_decoder.png")}
if prefix not in titles:
    raise SystemExit(f"unknown prefix {prefix!r}; one of {sorted(titles)}")
model, png = titles[prefix]
tasks = [("0-1-4-5-0-1", "pretraining task 0-1-4-5-0-1"), ("0-1-2-3", "0-1-2-3 (one unseen transition)"),
         ("0-1-2-3-4-5-6-7-0-1-2-3", "post-training task")]
tasks = [t for t in tasks if list(here.glob(f"{prefix}curve_*_{t[0]}_*.json"))]
fig, axes = plt.subplots(1, len(tasks), figsize=(max(4.4 * len(tasks), 7.0), 3.6), sharey=True, squeeze=False)
for ax, (task, title) in zip(axes[0], tasks):
    for decoder, colour in (("learned", "tab:grey"), ("subgoal", "tab:blue"), ("raw", "tab:orange")):
        runs = sorted(here.glob(f"{prefix}curve_{decoder}_{task}_*.json"), key=lambda f: int(f.stem.rsplit("_", 1)[1]))
        if not runs:
            continue
        f = runs[-1]  # the longest run of each kind
        c = np.array(json.loads(f.read_text()))
        k = 20
        smooth = np.convolve(c[:, 1], np.ones(k) / k, mode="valid")
        what = "raw-action RL" if decoder == "raw" else f"internal RL, {decoder} decoder"
        ax.plot(c[k - 1:, 0], smooth, color=colour, label=what)
    ax.set_title(title)
    ax.set_xlabel("episodes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
axes[0, 0].set_ylabel("success (mean of 20 batches of 256)")
fig.suptitle(f"Internal RL, {model}:\nthe metacontroller's learned decoder vs a decoder trained on subgoal labels",
             fontsize=10)
fig.tight_layout()
fig.savefig(here / png, dpi=120)
print(here / png)
