# 2026-11-22. Measured: how an ant-expert training run's episodes ended, in windows of environment steps; used in docs/ant.md.
"""How an ant-expert training run's episodes ended, in windows of environment steps.

    python docs/experiments/2026-11-22_ant_training_log.py RUN.metrics.jsonl [--window 2000000]

Reads the ``.metrics.jsonl`` that ``python -m internalrl.experts.ant train`` writes (one line per
logged PPO update: statistics of the episodes that ended during it) and prints, per window, the
number of episodes and the fraction that succeeded or ended in each way, weighted by the episodes
of each update (sampled actions, training episodes: "tipped" is the training-only tip-over end,
"fell" the torso leaving [0.2, 1.0] m), and the speed along the path averaged over the updates.
"""
import argparse
import json
import math
from pathlib import Path

FIELDS = ("success", "wrong", "wall", "fell", "tipped", "truncated")


def windows(rows: list[dict], window: int) -> list[dict]:
    out: dict[int, dict] = {}
    for r in rows:
        w = out.setdefault(r["steps"] // window, {"episodes": 0, **{f: 0.0 for f in FIELDS}, "v": 0.0, "n": 0})
        e = r["episodes"]
        w["episodes"] += e
        for f in FIELDS:
            if e and not math.isnan(r[f]):
                w[f] += r[f] * e
        w["v"] += r["velocity_along_path"]
        w["n"] += 1
    table = []
    for k in sorted(out):
        w = out[k]
        e = max(w["episodes"], 1)
        table.append({"from": k * window, "to": (k + 1) * window, "episodes": w["episodes"],
                      **{f: w[f] / e for f in FIELDS}, "velocity": w["v"] / w["n"]})
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("metrics", type=Path)
    p.add_argument("--window", type=int, default=2_000_000, help="environment steps per window")
    args = p.parse_args()
    rows = [json.loads(line) for line in args.metrics.read_text().splitlines() if line.strip()]
    if not rows:
        raise SystemExit(f"{args.metrics} has no logged updates")
    print(f"{'steps (M)':>12} {'episodes':>8} " + " ".join(f"{f:>9}" for f in FIELDS) + "  v (m/s)")
    for w in windows(rows, args.window):
        print(f"{w['from'] / 1e6:5.1f}-{w['to'] / 1e6:<6.1f} {w['episodes']:8d} "
              + " ".join(f"{w[f]:9.3f}" for f in FIELDS) + f"  {w['velocity']:.2f}")


if __name__ == "__main__":
    main()
