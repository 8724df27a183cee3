"""Experiments over many trainings of one stage, each resumable point by point: the
metacontroller's α sweep (the rate–distortion figure, Fig. 6 / A3) and the Fig. 8 matrix of
RL runs (base-model seeds × metacontroller seeds × methods)."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .atomic import write_json
from .checkpoint import Checkpoint
from .config import Config
from .errors import ConfigError
from .metacontroller import cotrained_config
from .pipeline import _log, _train_and_eval_meta, run_rl, stage_base_model, stage_data
from .rundir import RunDir
from .scalars import stage_scalars


PAPER_ALPHAS = (0.0, 0.05, 0.1, 0.17, 0.3, 0.5, 1.0)
SWEEP_POINT_KEYS = ("action_nll", "kl", "f1", "precision", "recall", "switches_per_episode", "subgoals_per_episode",
                    "fraction_beta_intermediate", "train_seconds")  # what an α-sweep point keeps of a trained metacontroller


def alpha_sweep(cfg: Config, run: RunDir, alphas=PAPER_ALPHAS, cotrained: bool = True, progress: bool = True,
                aligned_f1: float = 0.8):
    """Train the metacontroller for every α (frozen, and co-trained if asked) and place each
    run on the rate–distortion plane (x: action NLL, y: KL). A run is *aligned* when its
    switch F1 against ground-truth subgoal changes is at least ``aligned_f1``."""
    from dataclasses import replace

    from .report import plot_rate_distortion

    stage = "alpha_sweep"
    if run.done(stage):
        _log(f"{stage}: finished earlier, skipped (delete {run.path(stage)} to redo it)")
        return run.path(stage)
    work = run.partial(stage)
    points = []
    done_path = work / "points.json"
    if done_path.exists():  # resume a killed sweep point by point
        points = json.loads(done_path.read_text())
    variants = [("frozen", False)] + ([("cotrained", True)] if cotrained else [])
    scalars = stage_scalars(run, stage)
    for label, co in variants:
        for alpha in alphas:
            if any(p["variant"] == label and p["alpha"] == alpha for p in points):
                continue
            mc = replace(cfg.metacontroller, alpha=float(alpha))
            mc = cotrained_config(mc) if co else mc
            ckpt = Checkpoint(work / f"checkpoint_{label}_alpha{float(alpha)}.pt")
            res = _train_and_eval_meta(cfg, run, mc, f"{label} alpha={alpha}", progress, checkpoint=ckpt,
                                       scalars=scalars and scalars.prefixed(f"{label}_alpha{float(alpha):g}"))
            point = {"variant": label, "alpha": float(alpha), **{k: res[k] for k in SWEEP_POINT_KEYS}}
            points.append(point)
            write_json(done_path, points)
            for f in (ckpt.path, ckpt.prev):  # the point is kept: its training state is no longer needed
                f.unlink(missing_ok=True)
            _log(f"{stage}: {label} alpha={alpha}: NLL {point['action_nll']:.3f}, KL {point['kl']:.3f}, F1 {point['f1']:.3f}")
    if scalars is not None:
        scalars.close()
    plot_rate_distortion(points, work / "rate_distortion.png", aligned_f1)
    points = sorted(points, key=lambda p: (p["variant"] != "frozen", p["alpha"]))  # the headline lists follow α
    aligned = sorted(p["alpha"] for p in points if p["variant"] == "frozen" and p["f1"] >= aligned_f1)
    headline = {"alphas": sorted(alphas), "aligned_alphas_frozen": aligned,
                "aligned_alphas_cotrained": sorted(p["alpha"] for p in points if p["variant"] == "cotrained" and p["f1"] >= aligned_f1),
                "f1_frozen": [p["f1"] for p in points if p["variant"] == "frozen"],
                "f1_cotrained": [p["f1"] for p in points if p["variant"] == "cotrained"]}
    return run.finish(stage, {"alphas": list(alphas), "metacontroller": asdict(cfg.metacontroller)},
                      {"headline": headline, "points": points})


def experiment(cfg: Config, root: Path, base_seeds: int, meta_seeds: int, methods: list[str], task: str | None,
               progress: bool = True) -> dict:
    """The Fig. 8 matrix: ``base_seeds`` base models (run directories ``root/base{b}``, seed b)
    × ``meta_seeds`` metacontroller seeds × ``methods``, every run with the same PPO budget.
    Writes ``root/experiment.json`` (curves and a table) and ``root/fig8.png``."""
    from dataclasses import replace

    from .report import plot_experiment
    from .rl.train import METHODS

    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    curves: dict[str, list] = {m: [] for m in methods}
    for b in range(base_seeds):
        bcfg = replace(cfg, seed=cfg.seed + b)
        run = RunDir(root / f"base{b}", bcfg)
        stage_data(bcfg, run, progress)
        stage_base_model(bcfg, run, progress)
        for ms in range(meta_seeds if any(m != "raw" for m in methods) else 1):
            for method in methods:
                if method == "raw" and ms > 0:
                    continue  # raw-action RL has no metacontroller: one run per base model
                folder = run_rl(bcfg, run, method, task, meta_seed=ms, progress=progress)
                m = run.metrics(folder.name, "rl")
                curves[method].append({"base_seed": b, "meta_seed": ms, "curve": m["curve"]})
    table, bands = {}, {}
    for method, runs in curves.items():
        if not runs:
            continue
        x, y = bands[method] = aligned_curves(runs)
        final = y[:, -max(1, len(x) // 10):].mean(1)
        table[method] = {"runs": len(runs), "final_success_median": float(np.median(final)),
                         "final_success_q25": float(np.percentile(final, 25)),
                         "final_success_q75": float(np.percentile(final, 75)), "episodes": int(x[-1])}
    plot_experiment(bands, root / "fig8.png")
    out = {"base_seeds": base_seeds, "meta_seeds": meta_seeds, "methods": methods, "table": table, "curves": curves}
    write_json(root / "experiment.json", out)
    for method, row in table.items():
        _log(f"experiment: {method}: final success median {row['final_success_median']:.3f} "
             f"[{row['final_success_q25']:.3f}, {row['final_success_q75']:.3f}] over {row['runs']} runs")
    return out


def aligned_curves(runs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """The success curves of ``runs`` (each ``{"curve": [[episodes, success, seconds], ...]}``) cut to
    the shortest: episodes ``(points,)`` and success ``(runs, points)``."""
    n = min(len(r["curve"]) for r in runs)
    x = np.array([c[0] for c in runs[0]["curve"][:n]])
    y = np.array([[c[1] for c in r["curve"][:n]] for r in runs])  # (runs, points)
    return x, y
