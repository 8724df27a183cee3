"""A markdown table of steerability measurements, one row per run directory.

    python scripts/steerability_table.py [--name steerability_800x256] RUN_DIR [RUN_DIR ...]

Reads RUN_DIR/NAME/metrics.json (written by `internalrl steerability`) and RUN_DIR/run.json (for the
recipe's overrides against the quick preset) and prints the table docs/steerability.md shows.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from internalrl.config import load_config


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def overrides(run: Path) -> str:
    cfg = json.loads((run / "run.json").read_text())["config"]
    base = _flat(load_config("quick").to_dict())
    diff = [f"{k}={v}" for k, v in _flat(cfg).items() if k in base and base[k] != v and not k.startswith("model.obs_dim")]
    return ", ".join(diff) or "(quick preset)"


def fmt(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def row(run: Path, name: str) -> str:
    m = json.loads((run / name / "metrics.json").read_text())
    p, f, c = m["prediction"], m["free_play"], m["controllers"]
    post_s, post_g = c["posttrain_failures_sampled"], c["posttrain_failures_greedy"]
    pre = c.get("pretrain_failures_sampled", {})
    secs = m["base_model"].get("train_seconds")
    return " | ".join([
        f"`{run.name}`", overrides(run), f"{m['base_model']['steps']}", "–" if secs is None else f"{secs / 60:.0f}",
        f"{fmt(p['heldout_action_nll'])} ({fmt(p['bayes_optimal_nll'])})",
        f"{fmt(f['sampled'])} / {fmt(f['greedy'])}", fmt(m["probe"]["accuracy_at_layer"], 2),
        f"{fmt(c['pretrain_sampled'])} / {fmt(c['pretrain_greedy'])}",
        f"**{fmt(c['posttrain_sampled'])}** / {fmt(c['posttrain_greedy'])}",
        fmt(post_s["before_first_colour"]["pass_rate"], 2),
        fmt((pre.get("seen_transitions") or {}).get("pass_rate"), 2),
        f"**{fmt(post_s['unseen_transitions']['pass_rate'], 2)}** / {fmt(post_g['unseen_transitions']['pass_rate'], 2)}",
        fmt(post_s["inside_subgoal"]["pass_rate"], 2),
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--name", default="steerability_800x256")
    args = ap.parse_args()
    head = ["run", "recipe (overrides of quick)", "steps", "train min", "held-out NLL (Bayes)",
            "free play sampled / greedy", "probe L/2", "controllers: pretraining tasks s / g",
            "post-training task s / g", "first colour", "seen transitions (pretraining)",
            "unseen transitions s / g", "inside a subgoal"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in args.runs:
        run = Path(r)
        if (run / args.name / "metrics.json").exists():
            print("| " + row(run, args.name) + " |")


if __name__ == "__main__":
    main()
