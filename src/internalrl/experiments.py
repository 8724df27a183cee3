"""Experiments over many trainings, each resumable point by point: the metacontroller's α sweep
(the rate–distortion figure, Fig. 6 / A3) and the Fig. 8 matrix of RL runs (base-model seeds ×
metacontroller seeds × methods × learning rates × RL seeds). Each is a list of :class:`Task` s that
:func:`run_task` runs through the pipeline's stage functions; :mod:`internalrl.executors` runs
the list in this process or on Ray."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .atomic import write_json
from .checkpoint import Checkpoint
from .config import Config
from .errors import ConfigError
from .metacontroller import cotrained_config
from .pipeline import _log, _train_and_eval_meta, command, run_rl, stage_base_model, stage_data
from .rundir import RunDir
from .scalars import stage_scalars


PAPER_ALPHAS = (0.0, 0.05, 0.1, 0.17, 0.3, 0.5, 1.0)
PAPER_LRS = (3e-6, 1e-5, 3e-5, 1e-4, 3e-4)  # the learning rates the paper scans for every method (C.5.5)
SWEEP_POINT_KEYS = ("action_nll", "kl", "f1", "precision", "recall", "switches_per_episode", "subgoals_per_episode",
                    "fraction_beta_intermediate", "train_seconds")  # what an α-sweep point keeps of a trained metacontroller


# ------------------------------------------------------------------ tasks
@dataclass(frozen=True, eq=False)
class Task:
    """One unit of an experiment, run by :func:`run_task` in this process or as a Ray task: it opens
    the run directory ``run_dir`` with ``cfg`` and calls the pipeline's stage functions, so a finished
    stage is skipped and a killed training continues from its checkpoint. ``deps``: the labels of the
    tasks whose stages it reads."""
    kind: str  # base | metacontroller | noswitch | compile | rl | alpha_point
    label: str  # its name in the progress lines, unique in the experiment
    run_dir: str  # absolute: a Ray task may run in another folder or on another machine
    cfg: Config
    deps: tuple[str, ...] = ()
    base_seed: int = 0
    meta_seed: int = 0
    method: str | None = None
    task: str | None = None
    rl_seed: int = 0
    variant: str | None = None  # α point: frozen | cotrained
    alpha: float | None = None
    tensorboard: bool = False  # write the task's training scalars under RUN/tensorboard/


def fmt_lr(lr: float) -> str:
    """3e-05 -> '3e-5', 0.0003 -> '3e-4'."""
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


_META_STAGE = {"internal": "metacontroller", "cotrained": "metacontroller", "no-switch": "noswitch",
               "compile": "compile"}  # the kind of task that trains what an RL method acts through


def matrix_tasks(cfg: Config, root: Path, base_seeds: int, meta_seeds: int, methods: list[str],
                 task: str | None = None, lrs: list[float] | None = None, rl_seeds: int = 1) -> list[Task]:
    """The Fig. 8 matrix as tasks, each after the ones it needs: per base seed b (run directory
    ``root/base{b}``, seed ``cfg.seed + b``) the data and base model; per metacontroller seed what the
    methods act through (the frozen and co-trained metacontrollers, the no-switch one, CompILE); then one
    RL run per method x learning rate x RL seed (raw-action RL has no metacontroller: one per base model)."""
    from dataclasses import replace

    root = Path(root).absolute()
    lrs = list(lrs or [cfg.rl.lr])
    tasks: list[Task] = []
    for b in range(base_seeds):
        bcfg = replace(cfg, seed=cfg.seed + b)
        run_dir = str(root / f"base{b}")
        base = Task("base", f"base model base{b}", run_dir, bcfg, base_seed=b)
        tasks.append(base)
        for ms in range(meta_seeds if any(m != "raw" for m in methods) else 1):
            made: dict[str, str] = {}
            for kind in dict.fromkeys(_META_STAGE[m] for m in methods if m != "raw"):
                name = {"metacontroller": "metacontroller", "noswitch": "no-switch metacontroller",
                        "compile": "compile"}[kind]
                t = Task(kind, f"{name} base{b} meta{ms}", run_dir, bcfg, (base.label,), b, ms)
                tasks.append(t)
                made[kind] = t.label
            for method in methods:
                if method == "raw" and ms > 0:
                    continue  # raw-action RL has no metacontroller: one run per base model
                deps = (base.label,) + ((made[_META_STAGE[method]],) if method != "raw" else ())
                for lr in lrs:
                    rcfg = replace(bcfg, rl=replace(bcfg.rl, lr=float(lr)))
                    for rs in range(rl_seeds):
                        tasks.append(Task("rl", f"rl {method} lr={fmt_lr(lr)} base{b} meta{ms} rl{rs}", run_dir, rcfg,
                                          deps, b, ms, method, task, rs))
    return tasks


def alpha_tasks(cfg: Config, run_dir: Path, alphas, cotrained: bool = True, tensorboard: bool = False) -> list[Task]:
    """One task per point of the α sweep (frozen, and co-trained if asked), on the run's base model."""
    variants = ["frozen"] + (["cotrained"] if cotrained else [])
    return [Task("alpha_point", f"alpha {v} alpha={float(a):g}", str(Path(run_dir).absolute()), cfg, variant=v,
                 alpha=float(a), tensorboard=tensorboard) for v in variants for a in alphas]


def run_task(t: Task, progress: bool = False) -> dict:
    """Run one task (in this process or in a Ray worker): -> ``{"summary": its headline in words,
    "seconds", "skipped": finished by an earlier invocation, "resumed": continued from the training
    checkpoint an interrupted invocation left, ...}`` and, for an RL run, its final
    success and curve. The run directory is opened shared: other tasks work in it at the same time,
    each on its own stage."""
    from .errors import TrainingDiverged
    from .pipeline import (compile_stage_name, meta_stage_name, noswitch_stage_name, rl_stage_name, stage_compile,
                           stage_metacontroller, stage_noswitch_metacontroller)

    from .checkpoint import CHECKPOINT_GLOB

    t0 = time.perf_counter()
    run = RunDir(t.run_dir, t.cfg, create=t.kind == "base", shared=True)
    run.tensorboard = t.tensorboard

    def resumes(stage: str) -> bool:  # a killed earlier invocation left a training checkpoint to continue from
        return not run.done(stage) and any((run.root / f".{stage}.partial").glob(CHECKPOINT_GLOB))

    try:
        if t.kind == "base":
            resumed = resumes("base_model")
            skipped = run.done("base_model")
            stage_data(t.cfg, run, progress)
            stage_base_model(t.cfg, run, progress)
            h = run.metrics("base_model", "train")["headline"]
            out = {"summary": f"held-out next-action accuracy {h['heldout_action_accuracy']:.3f}"}
        elif t.kind in ("metacontroller", "noswitch", "compile"):
            name, build = {"metacontroller": (meta_stage_name, stage_metacontroller),
                           "noswitch": (noswitch_stage_name, stage_noswitch_metacontroller),
                           "compile": (compile_stage_name, stage_compile)}[t.kind]
            stage = name(t.meta_seed)
            resumed, skipped = resumes(stage), run.done(stage)
            build(t.cfg, run, progress, t.meta_seed)
            h = run.metrics(stage, "metacontroller")["headline"]
            out = {"summary": {"metacontroller": lambda: f"switch F1 {h['f1']:.3f} (co-trained {h['cotrained_f1']:.3f})",
                               "noswitch": lambda: f"action NLL {h['action_nll']:.3f}, KL {h['kl']:.3f}",
                               "compile": lambda: f"causal switch F1 {h['f1']:.3f}"}[t.kind]()}
        elif t.kind == "rl":
            stage = rl_stage_name(t.cfg, run, t.method, t.task, t.meta_seed, t.rl_seed)
            resumed, skipped = resumes(stage), run.done(stage)
            try:
                folder = run_rl(t.cfg, run, t.method, t.task, meta_seed=t.meta_seed, progress=progress,
                                rl_seed=t.rl_seed)
            except TrainingDiverged as e:  # a learning rate too high for this method: a result of the scan
                out = {"summary": "diverged", "diverged": True, "error": str(e), "final_success": None,
                       "curve": None, "folder": f"base{t.base_seed}/.{stage}.partial"}
            else:
                m = run.metrics(folder.name, "rl")
                out = {"summary": f"final success {m['headline']['final_success']:.3f}", "diverged": False,
                       "final_success": m["headline"]["final_success"], "curve": m["curve"],
                       "folder": f"base{t.base_seed}/{folder.name}"}
            out.update(method=t.method, lr=t.cfg.rl.lr, base_seed=t.base_seed, meta_seed=t.meta_seed, rl_seed=t.rl_seed)
        elif t.kind == "alpha_point":
            resumed = any((run.root / ".alpha_sweep.partial").glob(f"checkpoint_{_point_name(t.variant, t.alpha)}.pt*"))
            skipped, point = _alpha_point(t, run, progress)
            out = {"summary": f"NLL {point['action_nll']:.3f}, KL {point['kl']:.3f}, F1 {point['f1']:.3f}", "point": point}
        else:
            raise ValueError(f"unknown task kind {t.kind!r}")
    finally:
        run.close()
    return {"label": t.label, "kind": t.kind, "skipped": bool(skipped), "resumed": bool(resumed),
            "seconds": time.perf_counter() - t0, **out}


# ------------------------------------------------------------------ the α sweep
def _point_name(variant: str, alpha: float) -> str:
    return f"{variant}_alpha{float(alpha)}"


def _alpha_point(t: Task, run: RunDir, progress: bool) -> tuple[bool, dict]:
    """One point of the α sweep, kept as ``point_<variant>_alpha<α>.json`` in the sweep's working folder
    (claimed point by point: the points of one sweep train at once in several processes)."""
    from dataclasses import replace

    name = _point_name(t.variant, t.alpha)
    run.claim(f"alpha_sweep.{name}")
    work = run.partial("alpha_sweep", claim=False)
    path = work / f"point_{name}.json"
    if path.exists():
        return True, json.loads(path.read_text())
    legacy = work / "points.json"  # a sweep killed before points were kept one file each
    if legacy.exists():
        for p in json.loads(legacy.read_text()):
            if p["variant"] == t.variant and p["alpha"] == t.alpha:
                write_json(path, p)
                return True, p
    cfg = t.cfg
    mc = replace(cfg.metacontroller, alpha=t.alpha)
    mc = cotrained_config(mc) if t.variant == "cotrained" else mc
    ckpt = Checkpoint(work / f"checkpoint_{name}.pt")
    scalars = stage_scalars(run, "alpha_sweep")
    res = _train_and_eval_meta(cfg, run, mc, f"{t.variant} alpha={t.alpha:g}", progress, checkpoint=ckpt,
                               scalars=scalars and scalars.prefixed(f"{t.variant}_alpha{t.alpha:g}"))
    if scalars is not None:
        scalars.close()
    point = {"variant": t.variant, "alpha": t.alpha, **{k: res[k] for k in SWEEP_POINT_KEYS}}
    write_json(path, point)
    for f in (ckpt.path, ckpt.prev):  # the point is kept: its training state is no longer needed
        f.unlink(missing_ok=True)
    _log(f"alpha_sweep: {t.variant} alpha={t.alpha:g}: NLL {point['action_nll']:.3f}, KL {point['kl']:.3f}, "
         f"F1 {point['f1']:.3f}")
    return False, point


def parse_alphas(text: str) -> tuple[float, ...]:
    """``--alphas``: comma-separated non-negative numbers."""
    from .executors import parse_floats

    alphas = tuple(parse_floats(text, "--alphas"))
    if not alphas or any(not a >= 0 for a in alphas):
        raise ConfigError("--alphas must be non-negative")
    return alphas


def alpha_sweep(cfg: Config, run: RunDir, alphas=PAPER_ALPHAS, cotrained: bool = True, progress: bool = True,
                aligned_f1: float = 0.8, executor=None):
    """Train the metacontroller for every α (frozen, and co-trained if asked) and place each
    run on the rate–distortion plane (x: action NLL, y: KL). A run is *aligned* when its
    switch F1 against ground-truth subgoal changes is at least ``aligned_f1``. Each point is a task
    of ``executor`` (default: this process, one after another); ``run`` must be opened shared for Ray."""
    from .executors import LocalExecutor, execute
    from .report import plot_rate_distortion

    stage = "alpha_sweep"
    if run.done(stage):
        _log(f"{stage}: finished earlier, skipped (delete {run.path(stage)} to redo it)")
        return run.path(stage)
    run.require("base_model", command(cfg, "train"))
    tasks = alpha_tasks(cfg, run.root, alphas, cotrained, tensorboard=getattr(run, "tensorboard", False))
    results = execute(tasks, run_task, executor or LocalExecutor(progress))
    points = [results[t.label]["point"] for t in tasks]
    work = run.partial(stage)
    write_json(work / "points.json", points)
    plot_rate_distortion(points, work / "rate_distortion.png", aligned_f1)
    points = sorted(points, key=lambda p: (p["variant"] != "frozen", p["alpha"]))  # the headline lists follow α
    aligned = sorted(p["alpha"] for p in points if p["variant"] == "frozen" and p["f1"] >= aligned_f1)
    headline = {"alphas": sorted(alphas), "aligned_alphas_frozen": aligned,
                "aligned_alphas_cotrained": sorted(p["alpha"] for p in points if p["variant"] == "cotrained" and p["f1"] >= aligned_f1),
                "f1_frozen": [p["f1"] for p in points if p["variant"] == "frozen"],
                "f1_cotrained": [p["f1"] for p in points if p["variant"] == "cotrained"]}
    return run.finish(stage, {"alphas": list(alphas), "metacontroller": asdict(cfg.metacontroller)},
                      {"headline": headline, "points": points})


# ------------------------------------------------------------------ the Fig. 8 matrix
def choose_lr(finals: dict[float, list[float | None]], default: float | None = None) -> float:
    """The learning rate whose runs have the best median final success (the paper's rule), ties broken
    by the mean, then in favour of ``default`` (the config's rl.lr), then the first given. A rate with a
    diverged run (``None``) is chosen only when every rate has one."""
    ok = {lr: f for lr, f in finals.items() if f and all(x is not None for x in f)}
    pool = ok or {lr: [x if x is not None else 0.0 for x in f] for lr, f in finals.items() if f}
    order = list(pool)
    return max(order, key=lambda lr: (float(np.median(pool[lr])), float(np.mean(pool[lr])), lr == default,
                                      -order.index(lr)))


def _stats(finals: list[float]) -> dict:
    return {"runs": len(finals), "final_success_median": float(np.median(finals)),
            "final_success_q25": float(np.percentile(finals, 25)), "final_success_q75": float(np.percentile(finals, 75))}


def experiment(cfg: Config, root: Path, base_seeds: int, meta_seeds: int, methods: list[str], task: str | None,
               progress: bool = True, lrs: list[float] | None = None, rl_seeds: int = 1, executor=None) -> dict:
    """The Fig. 8 matrix (:func:`matrix_tasks`), every RL run with the same PPO budget, run by ``executor``
    (default: this process). Per method, the learning rate with the best median final success is chosen
    (:func:`choose_lr`). Writes ``root/experiment.json`` (every run's final success, the scan, the chosen
    rates, a table and the chosen rates' curves), ``root/summary.json`` (per method, the chosen rate and the
    final success of each of its runs) and ``root/fig8.png``, and prints a table."""
    from .envs.tasks import parse_task_set
    from .executors import LocalExecutor, execute
    from .report import plot_experiment
    from .rl.train import METHODS
    from .rundir import _lock

    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    if not methods:
        raise ConfigError("--methods names no method")
    spec = cfg.env.spec()
    if len(parse_task_set(task or cfg.env.posttrain_task, spec.num_objects)) != 1:
        raise ConfigError(f"--task must be one task, got {task!r}")
    lrs = [float(x) for x in (lrs or [cfg.rl.lr])]
    if any(not (x > 0 and np.isfinite(x)) for x in lrs) or len(set(lrs)) != len(lrs):
        raise ConfigError(f"--lrs takes distinct positive learning rates, got {lrs}")
    if rl_seeds < 1:
        raise ConfigError(f"--rl-seeds must be at least 1, got {rl_seeds}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    held = _lock(root)  # one invocation at a time per experiment folder  # noqa: F841
    tasks = matrix_tasks(cfg, root, base_seeds, meta_seeds, methods, task, lrs, rl_seeds)
    results = execute(tasks, run_task, executor or LocalExecutor(progress))
    runs = [{k: r[k] for k in ("method", "lr", "base_seed", "meta_seed", "rl_seed", "final_success", "diverged",
                               "folder")} | {"curve": r["curve"]}
            for t in tasks if t.kind == "rl" for r in [results[t.label]]]
    scan, chosen, table, bands, curves, summary = {}, {}, {}, {}, {}, {}
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        finals = {lr: [r["final_success"] for r in mine if r["lr"] == lr] for lr in lrs}
        scan[method] = {fmt_lr(lr): ({**_stats([x for x in f if x is not None]), "diverged": sum(x is None for x in f)}
                                     if any(x is not None for x in f) else {"runs": 0, "diverged": len(f)})
                        for lr, f in finals.items()}
        lr = chosen[method] = choose_lr(finals, cfg.rl.lr)
        best = [r for r in mine if r["lr"] == lr and not r["diverged"]]
        summary[method] = {"lr": lr, "final_success": [r["final_success"] for r in best]}
        if not best:
            continue
        x, y = bands[method] = aligned_curves(best)
        table[method] = {**_stats([r["final_success"] for r in best]), "lr": lr, "episodes": int(x[-1])}
        curves[method] = [{k: r[k] for k in ("base_seed", "meta_seed", "rl_seed", "lr", "curve")} for r in best]
    plot_experiment(bands, root / "fig8.png",
                    labels={m: f"{m}, lr {fmt_lr(chosen[m])} ({len(bands[m][1])} runs)" for m in bands},
                    scan={m: {lr: [r["final_success"] for r in runs if r["method"] == m and r["lr"] == lr
                                   and not r["diverged"]] for lr in lrs} for m in methods} if len(lrs) > 1 else None)
    out = {"base_seeds": base_seeds, "meta_seeds": meta_seeds, "rl_seeds": rl_seeds, "methods": methods,
           "task": task or cfg.env.posttrain_task, "episodes": cfg.rl.episodes, "lrs": lrs, "chosen_lr": chosen,
           "table": table, "lr_scan": scan, "runs": [{k: v for k, v in r.items() if k != "curve"} for r in runs],
           "curves": curves}
    write_json(root / "experiment.json", out)
    write_json(root / "summary.json", {"task": out["task"], "episodes": cfg.rl.episodes, "methods": summary})
    _print_table(scan, chosen, lrs)
    return out


def _print_table(scan: dict, chosen: dict, lrs: list[float]) -> None:
    rows = [("method", "lr", "runs", "final success: median [25%, 75%]", "")]
    for method, per_lr in scan.items():
        for lr in lrs:
            s = per_lr[fmt_lr(lr)]
            cell = (f"{s['final_success_median']:.3f} [{s['final_success_q25']:.3f}, {s['final_success_q75']:.3f}]"
                    if s["runs"] else "-") + (f", {s['diverged']} diverged" if s["diverged"] else "")
            rows.append((method, fmt_lr(lr), str(s["runs"]), cell, "chosen" if lr == chosen[method] and len(lrs) > 1 else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), flush=True)


def aligned_curves(runs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """The success curves of ``runs`` (each ``{"curve": [[episodes, success, seconds], ...]}``) cut to
    the shortest: episodes ``(points,)`` and success ``(runs, points)``."""
    n = min(len(r["curve"]) for r in runs)
    x = np.array([c[0] for c in runs[0]["curve"][:n]])
    y = np.array([[c[1] for c in r["curve"][:n]] for r in runs])  # (runs, points)
    return x, y
