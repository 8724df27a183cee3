"""Several models' steerability side by side: one group of bars per measurement.

    python scripts/plot_steerability_compare.py OUT.png "LABEL=PATH/metrics.json" ["LABEL=..." ...] [--bar 0.5]

Each PATH is a `metrics.json` written by `internalrl steerability` (or a copy of one). Plots, per
measurement, controller success on the post-training task (actions sampled and greedy), on the
pretraining tasks (sampled), and the pass rate of the unseen transitions (sampled), with the paper's
bar for the post-training task as a line.
"""
from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SERIES = (("post-training, sampled", lambda c: c["posttrain_sampled"]),
          ("post-training, greedy", lambda c: c["posttrain_greedy"]),
          ("pretraining tasks, sampled", lambda c: c["pretrain_sampled"]),
          ("unseen transitions passed", lambda c: c["posttrain_failures_sampled"]["unseen_transitions"]["pass_rate"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("measurements", nargs="+", metavar="LABEL=METRICS_JSON")
    ap.add_argument("--bar", type=float, default=0.5, help="the post-training bar to draw (default 0.5)")
    args = ap.parse_args()
    labels, values = [], []
    for item in args.measurements:
        if "=" not in item:
            raise SystemExit(f"{item!r}: expected LABEL=PATH/metrics.json")
        label, path = item.split("=", 1)
        c = json.loads(Path(path).read_text())["controllers"]
        labels.append(label)
        values.append([get(c) or 0.0 for _, get in SERIES])
    values = np.array(values)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.5 * len(labels) + 2), 4.2))
    x, w = np.arange(len(labels)), 0.8 / len(SERIES)
    for i, (name, _) in enumerate(SERIES):
        bars = ax.bar(x + (i - (len(SERIES) - 1) / 2) * w, values[:, i], w, label=name)
        if i == 0:
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.axhline(args.bar, color="k", ls="--", lw=0.8, label=f"bar for the post-training task ({args.bar})")
    ax.set_xticks(x, ["\n".join(textwrap.wrap(lab, 18)) for lab in labels], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("success / pass rate (1024 episodes)")
    ax.set_title("Supervised controllers at the paper's budget (3200 x 512, rank 16)")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(args.out)


if __name__ == "__main__":
    main()
