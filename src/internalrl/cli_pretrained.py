"""Command line for shipped models, and the base-model options of the run commands.

    internalrl pretrained list [--root DIR] [--json]
    internalrl pretrained eval NAME --policy base|controllers|internal [--task TASK] [--episodes N] [--seed S] [--greedy] [--json]
    internalrl pretrained export RUN_DIR NAME [--root DIR] [--overwrite] [--summary TEXT]
    internalrl run|train|... --base-model shipped|train      (the run's base model: copied or trained)
    internalrl run|train --init-from CHECKPOINT              (train starting from a compact checkpoint)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .config import ConfigError
from .pretrained import BASE_MODEL_CHOICES, DEFAULT_BASE_MODEL, ROOT_ENV

#: Commands that work on a run directory and so build (or use) its base model.
RUN_DIR_COMMANDS = ("run", "data", "train", "evaluate", "probe", "controllers", "metacontroller", "injection", "rl",
                    "sweep-alpha")


def add_arguments(sub: argparse._SubParsersAction) -> None:
    """``--base-model`` on the run-directory commands, ``--init-from`` on train and run, and ``pretrained``."""
    for name in RUN_DIR_COMMANDS:
        sub.choices[name].add_argument(
            "--base-model", default=None, metavar="{" + ",".join(BASE_MODEL_CHOICES) + ",NAME}",
            help=f"train the base model in the run, or copy a shipped model: the environment's (shipped) or the one "
                 f"named (see `internalrl pretrained list`) (default: what the run directory recorded, else "
                 f"{DEFAULT_BASE_MODEL}; ${ROOT_ENV} moves the shipped models)")
    for name in ("train", "run"):
        sub.choices[name].add_argument(
            "--init-from", default=None, metavar="CHECKPOINT",
            help="start pretraining from a compact checkpoint (scripts/train_gpu.py) instead of a fresh init")
    p = sub.add_parser("pretrained", help="shipped models: list, evaluate, export")
    psub = p.add_subparsers(dest="pretrained_command", required=True)
    q = psub.add_parser("list", help="the shipped models, one line each")
    q.add_argument("--root", default=None, help=f"folder of shipped models (default: the package's, or ${ROOT_ENV})")
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q = psub.add_parser("eval", help="roll a shipped model out on episodes of its environment")
    q.add_argument("name")
    q.add_argument("--policy", choices=("base", "controllers", "internal"), default="base",
                   help="base: the uncontrolled model (no --task: free play on the pretraining tasks); controllers: "
                        "the ground-truth subgoal's controller acts at the control layer (default task: post-training); "
                        "internal: the shipped internal-RL policy chooses the metacontroller's codes")
    q.add_argument("--task", default=None, help="a task like 0-1-2-3, comma-separated tasks, or a named set")
    q.add_argument("--episodes", type=int, default=1000, help="episodes (default 1000)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--greedy", action="store_true", help="take the most likely action instead of sampling")
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.add_argument("--root", default=None, help=f"folder of shipped models (default: the package's, or ${ROOT_ENV})")
    q.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    q.add_argument("--no-progress", action="store_true")
    q = psub.add_parser("export", help="write a shipped-model folder from a finished run directory")
    q.add_argument("run_dir")
    q.add_argument("name")
    q.add_argument("--root", default=None, help=f"folder of shipped models (default: the package's, or ${ROOT_ENV})")
    q.add_argument("--overwrite", action="store_true", help="replace an existing model of that name")
    q.add_argument("--summary", default=None, help="one-line summary for the card (default: made from the config)")
    q.add_argument("--hardware", default=None, help="what trained it, for the card (default: this machine)")
    q.add_argument("--policy-from", default=None, metavar="FOLDER",
                   help="the run's internal-RL folder whose policy ships (default: its best on the post-training task)")
    q.add_argument("--controllers-from", default="controllers", metavar="FOLDER",
                   help="the run's folder whose controllers ship: the controllers stage (default) or a "
                        "steerability folder (its layer, rank and budget go into the shipped config; one "
                        "measured on a training snapshot ships that snapshot's weights)")


def run_dir_setup(args, cfg):
    """Resolve ``--base-model`` for a run-directory command: -> (config, source record). Call
    before the RunDir is opened, so a conflicting choice is refused with its own message."""
    from .base_model_source import resolve

    root = Path(args.out or f"runs/{args.preset}-seed{cfg.seed}")
    return resolve(cfg, root, args.base_model, list(args.overrides), getattr(args, "init_from", None))


def base_model_stage(args, source):
    from .base_model_source import base_model_stage as stage

    return stage(source, getattr(args, "init_from", None))


def dispatch(args) -> int:
    from . import pretrained

    cmd = args.pretrained_command
    if cmd == "list":
        names = pretrained.available(args.root)
        rows = []
        for name in names:
            try:
                card = json.loads((pretrained.resolve_root(args.root) / name / "card.json").read_text())
                summary = card.get("summary", "")
            except (OSError, json.JSONDecodeError):
                summary = "(card.json unreadable: `internalrl pretrained eval` will say what is wrong)"
            rows.append({"name": name, "summary": summary})
        if args.json:
            print(json.dumps({"root": str(pretrained.resolve_root(args.root)), "models": rows}))
        elif not rows:
            print(f"no shipped models in {pretrained.resolve_root(args.root)}")
        else:
            width = max(len(r["name"]) for r in rows)
            for r in rows:
                print(f"{r['name']:<{width}}  {r['summary']}")
        return 0
    if cmd == "export":
        card = {k: v for k, v in (("summary", args.summary), ("hardware", args.hardware)) if v}
        folder = pretrained.export(args.run_dir, args.name, args.root, card, overwrite=args.overwrite,
                                   controllers_from=args.controllers_from, policy_from=args.policy_from)
        print(folder)
        return 0
    if args.episodes < 1:
        raise ConfigError(f"--episodes must be at least 1, got {args.episodes}")
    from .train import resolve_device

    try:
        device = resolve_device(args.device)
    except RuntimeError as e:  # cuda asked for, none here
        raise ConfigError("--device cuda, but no CUDA device is available here; use --device auto or cpu") from None
    p = pretrained.load(args.name, args.root, device=device)
    res = pretrained.evaluate(p, args.policy, args.task, args.episodes, args.seed, args.greedy, device,
                              progress=not (args.no_progress or args.json))
    if args.json:
        print(json.dumps(res))
        return 0
    what = {"base": "base model", "controllers": f"subgoal controllers at layer {res['layer']}",
            "internal": f"internal-RL policy through the metacontroller at layer {res['layer']}"}[args.policy]
    where = f"free play on {res['task']}" if res["free_play"] else f"task {res['task']}"
    print(f"{res['name']}: {what} ({'greedy' if args.greedy else 'sampled'} actions), {where}: success "
          f"{res['success_rate']:.3f} ({res['successes']} of {res['episodes']} episodes, seed {res['seed']}); "
          f"colours done per episode {res['mean_colours_done']:.2f}"
          + (f"; the expert {res['expert_success_rate']:.3f}, normalised "
             + ("n/a" if res["normalised_success"] is None else f"{res['normalised_success']:.3f}") if "expert_success_rate" in res else ""))
    return 0


def record(run, source) -> None:
    from .base_model_source import record as write

    write(run, source)
