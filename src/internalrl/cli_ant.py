"""The command line's ant-pinpad commands: ``internalrl run|data|train|evaluate|probe|controllers|metacontroller|rl|injection|sweep-alpha|bench --env ant``.

The environment of a run directory is part of its config (``env.name`` in ``run.json``), so an
ant command pointed at a grid run (or the reverse) is refused with both names before anything
is written. The ant has its own presets (``quick``, ``paper``: :data:`internalrl.config.ANT_PRESETS`).
"""
from __future__ import annotations

import time
from pathlib import Path

from .config import ConfigError
from .rundir import RunDir, RunDirError, stored_env

#: The commands that run on an ant run directory so far.
ANT_COMMANDS = ("run", "data", "train", "evaluate", "probe", "controllers", "metacontroller", "rl", "injection",
                "sweep-alpha")


def run_env(args) -> str:
    """The environment a run-directory command works on: ``--env``, else the run's own, else grid.
    An ``--env`` that differs from the run's is refused, naming both."""
    requested = getattr(args, "env", None)
    out = getattr(args, "out", None)
    stored = stored_env(Path(out)) if out and args.command != "experiment" else None
    if requested and stored and requested != stored:
        raise RunDirError(f"{out} holds {'an' if stored == 'ant' else 'a'} {stored} run (its run.json has env.name={stored}), but this command asked for "
                          f"--env {requested}; nothing was changed. Leave out --env to work on the run's own "
                          f"environment, or use another --out folder")
    return requested or stored or "grid"


def refuse_ant_run(root, command: str) -> None:
    """``command`` (a gridworld-only one) refuses an ant run directory with a message naming it."""
    if stored_env(Path(root)) == "ant":
        raise ConfigError(f"`internalrl {command}` does not run on the ant-pinpad yet, and {root} holds an ant run "
                          f"(env.name=ant); the ant's commands are {', '.join(ANT_COMMANDS)} (and bench)")


def dispatch(args, cfg) -> int:
    from . import ant_stages
    from .report import finish_run, write_report

    cmd = args.command
    if cmd not in ANT_COMMANDS:
        raise ConfigError(f"`internalrl {cmd}` does not run on the ant-pinpad yet (env.name=ant); the ant's commands "
                          f"are {', '.join(ANT_COMMANDS)} (and bench)")
    if getattr(args, "base_model", None) == "shipped" or getattr(args, "init_from", None):
        raise ConfigError("--base-model shipped and --init-from are gridworld options so far: an ant run trains its "
                          "base model (`internalrl train --env ant`); the shipped ant model is evaluated with "
                          "`internalrl pretrained eval ant`")
    minutes = getattr(args, "minutes", None)
    if minutes is not None and not minutes > 0:
        raise ConfigError(f"--minutes must be positive, got {minutes}")
    progress = not args.no_progress
    executor = None
    if cmd == "sweep-alpha":
        from .executors import executor_from_args

        executor = executor_from_args(args, progress)
    if getattr(args, "tensorboard", False):
        from .scalars import require_tensorboard

        require_tensorboard()  # before anything is written
    run = RunDir(args.out or f"runs/ant-{args.preset or 'quick'}-seed{cfg.seed}", cfg,
                 shared=executor is not None and executor.name == "ray")  # Ray workers write in it too
    run.tensorboard = getattr(args, "tensorboard", False)  # the shared stages write scalars as for the grid
    if cmd == "sweep-alpha":
        from .experiments import alpha_sweep, parse_alphas

        alpha_sweep(cfg, run, parse_alphas(args.alphas), cotrained=not args.no_cotrained, progress=progress,
                    executor=executor)
        print(write_report(run.root))
        return 0
    if cmd == "rl":
        from .pipeline import run_rl

        if args.episodes is not None:
            if args.episodes < 1:
                raise ConfigError("--episodes must be at least 1")
            cfg.rl.episodes = args.episodes
        run_rl(cfg, run, args.method, args.task, progress=progress)
        print(write_report(run.root))
        return 0
    t0 = time.perf_counter()
    for stage in ant_stages.STAGES[cmd]:
        if stage is ant_stages.stage_base_model:
            if stage(cfg, run, progress=progress, minutes=minutes,
                     checkpoint_file=getattr(args, "checkpoint_file", None)) is None:
                return 0  # stopped after --minutes, with a checkpoint: the same command continues
        else:
            stage(cfg, run, progress=progress)
    if cmd == "run":
        finish_run(run, time.perf_counter() - t0)
    return 0



