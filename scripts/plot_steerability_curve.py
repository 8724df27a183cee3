"""Controller success against base-model training steps, from steerability folders of snapshots.

    python scripts/plot_steerability_curve.py RUN_DIR OUT.png [--prefix steerability_800x256]

Reads RUN_DIR/<prefix>_step<N>/metrics.json for every snapshot measured with
`internalrl steerability RUN_DIR --snapshot N --name <prefix>_step<N>` and RUN_DIR/<prefix>/ for the
final model, and plots free play, controller success on the pretraining and post-training tasks
and the unseen-transition pass rate against training steps.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("out")
    ap.add_argument("--prefix", default="steerability_800x256")
    args = ap.parse_args()
    run = Path(args.run)
    rows = []
    for folder in [run / args.prefix, *run.glob(f"{args.prefix}_step*")]:
        if (folder / "metrics.json").exists():
            m = json.loads((folder / "metrics.json").read_text())
            rows.append((m["base_model"]["steps"], m))
    rows.sort(key=lambda r: r[0])
    if not rows:
        raise SystemExit(f"no {args.prefix}* folders with metrics.json in {run}")
    steps = [s for s, _ in rows]
    series = {
        "free play (sampled)": [m["free_play"]["sampled"] for _, m in rows],
        "controllers, pretraining tasks": [m["controllers"]["pretrain_sampled"] for _, m in rows],
        "controllers, post-training task": [m["controllers"]["posttrain_sampled"] for _, m in rows],
        "unseen transitions passed": [m["controllers"]["posttrain_failures_sampled"]["unseen_transitions"]["pass_rate"]
                                      for _, m in rows],
        "seen transitions passed (pretraining)": [
            (m["controllers"].get("pretrain_failures_sampled") or {}).get("seen_transitions", {}).get("pass_rate")
            for _, m in rows],
    }
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for (label, ys), style in zip(series.items(), ["o-", "s-", "D-", "^-", "v--"]):
        ax.plot(steps, [float("nan") if y is None else y for y in ys], style, label=label)
    ax.set_xlabel("base-model training steps (batch 64)")
    ax.set_ylabel("rate (1024 episodes, actions sampled)")
    ax.set_ylim(0, 1)
    ax.set_title(f"{run.name}: steerability over training ({args.prefix})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
