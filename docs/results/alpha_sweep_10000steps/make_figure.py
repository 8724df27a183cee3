"""The α sweep at the quick preset's metacontroller settings (10000 steps, last tenth noisy), on the
rate-distortion plane, from finished metacontroller stages: one run directory per α, each sharing the base
model of one quick run (see README.md here). Writes points.json and rate_distortion.png next to this file.

    python make_figure.py ALPHA=RUN_DIR [ALPHA=RUN_DIR ...]
"""
import json
import sys
from pathlib import Path

from internalrl.experiments import SWEEP_POINT_KEYS
from internalrl.report import plot_rate_distortion

here = Path(__file__).parent
points = []
for item in sys.argv[1:]:
    alpha, run = item.split("=", 1)
    m = json.loads((Path(run) / "metacontroller" / "metrics.json").read_text())
    assert abs(m["headline"]["alpha"] - float(alpha)) < 1e-12, (item, m["headline"]["alpha"])
    for variant in ("frozen", "cotrained"):
        points.append({"variant": variant, "alpha": float(alpha), "run": run, **{k: m[variant][k] for k in SWEEP_POINT_KEYS}})
(here / "points.json").write_text(json.dumps(points, indent=1))
plot_rate_distortion(points, here / "rate_distortion.png")
for p in points:
    print(f"{p['variant']:9s} alpha {p['alpha']:<5g} NLL {p['action_nll']:.3f} KL {p['kl']:.3f} F1 {p['f1']:.3f} "
          f"precision {p['precision'] if p['precision'] is None else round(p['precision'], 3)} recall {p['recall']:.3f} "
          f"switches/ep {p['switches_per_episode']:.2f} beta in (0.1,0.9) {p['fraction_beta_intermediate']:.3f}")
