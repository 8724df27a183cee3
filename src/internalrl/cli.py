"""Command line: one subcommand per stage, and ``run`` for the whole pipeline.

    internalrl run --preset quick --out runs/quick          # the whole gridworld pipeline
    internalrl run|data|train|evaluate|probe|controllers|metacontroller --env ant --out DIR [--preset quick|paper]
    internalrl data|train|evaluate|probe|controllers|metacontroller --out DIR [--preset P] [--seed N] [--set section.field=value ...]
      (on an existing run, every command uses the config in its run.json; --set may change only rl.*)
    internalrl rl --out DIR --method internal|raw|no-switch|cotrained|compile [--task 0-1-2-3] [--episodes N]
    internalrl experiment --out DIR --base-seeds 3 --meta-seeds 2 [--methods internal,raw,...]
    internalrl sweep-alpha --out DIR [--alphas 0,0.1,...]     # after `run`: the rate-distortion figure
    internalrl steerability RUN_DIR [--steps 3200] [--batch-size 512]   # the steerability protocol
    internalrl report --out DIR
    internalrl bench [--preset P] [--envs 1024]
    internalrl config [--preset P] [--set ...]               # print the resolved config
    internalrl pretrained list|eval NAME|export RUN NAME       # shipped models; `run --base-model shipped` uses one
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

from .atomic import StorageError, describe_os_error
from .config import ENVS, ConfigError, PRESETS, dumps, load_config
from .data import DataError
from .envs.tasks import TaskError
from .pretrained import PretrainedError
from .rundir import RunDir, RunDirError, read_run_json, set_command, stored_config
from .train import CheckpointError
from . import cli_pretrained

USER_ERRORS = (ConfigError, RunDirError, DataError, CheckpointError, TaskError, StorageError, PretrainedError)


def _common(p: argparse.ArgumentParser, out: bool = True) -> None:
    p.add_argument("--preset", default=None, help=f"named config: {', '.join(PRESETS)} (default: the run's own config "
                   "when --out holds a run, else quick)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override any config field, e.g. --set train.steps=500 (repeatable)")
    p.add_argument("--env", choices=ENVS, default=None,
                   help="environment: grid or ant (default: the run's own when --out holds a run, else grid); "
                        "the presets are the environment's")
    if out:
        p.add_argument("--out", default=None, help="run directory (default runs/<preset>-seed<seed>)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _config(args):
    """The preset with the overrides; on an existing run without --preset, the run's own config with them."""
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    out = getattr(args, "out", None)
    from .cli_ant import run_env

    env = run_env(args)  # refuses an --env that differs from the run's in --out
    base = stored_config(Path(out)) if out and args.preset is None and args.command != "experiment" else None
    return load_config(args.preset or "quick", overrides, base=base, env=env)


def _run_dir(args, cfg) -> RunDir:
    out = args.out or f"runs/{args.preset or 'quick'}-seed{cfg.seed}"
    return RunDir(out, cfg)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    set_command(argv)  # recorded in run.json, each stage's provenance.json and the run's lock
    try:
        if argv[:1] == ["ant-expert"]:  # its own command line, --help included
            return _ant_expert(argv[1:])
        return _main(argv)
    except USER_ERRORS as e:
        print(f"internalrl: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the disk, not the code: full, read-only, a file in the way
        print(f"internalrl: error: {describe_os_error(e, e.filename or 'a file')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("internalrl: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


def _ant_expert(argv: list[str]) -> int:
    from .experts.ant import main as ant_main

    try:
        ant_main(argv, prog="internalrl ant-expert")
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else 2
    return 0


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="internalrl", description="Internal reinforcement learning (arXiv 2512.20605).")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in [("run", "the whole gridworld pipeline, then the report"),
                        ("data", "generate expert trajectories"),
                        ("train", "pretrain the base model"),
                        ("evaluate", "evaluate the base model as a policy"),
                        ("probe", "layer-wise linear probes of the subgoal"),
                        ("controllers", "supervised subgoal controllers (and the layer sweep)"),
                        ("metacontroller", "train the metacontroller (frozen base, and co-trained beside it)")]:
        p = sub.add_parser(name, help=help_)
        _common(p)
        if name == "train":
            p.add_argument("--checkpoint-file", default=None, metavar="FILE",
                           help="accumulate the training across sessions in this one safetensors file: start from it "
                                "when it is further along, write the state back when stopping or done")
            p.add_argument("--minutes", type=float, default=None,
                           help="stop (with a checkpoint) after this many minutes of training; rerun to continue")
    p = sub.add_parser("rl", help="RL on a task with one method (needs the earlier stages)")
    _common(p)
    p.add_argument("--method", default="internal", help="internal | raw | no-switch | cotrained | compile (default internal)")
    p.add_argument("--task", default=None, help="task string, e.g. 0-1-2-3 (default: the post-training task)")
    p.add_argument("--episodes", type=int, default=None, help="episode budget (default: rl.episodes)")
    p = sub.add_parser("experiment", help="Fig. 8: base-model seeds x metacontroller seeds x methods")
    _common(p, out=False)
    p.add_argument("--out", required=True, help="experiment folder (one run directory per base seed inside)")
    p.add_argument("--base-seeds", type=int, default=3)
    p.add_argument("--meta-seeds", type=int, default=2)
    p.add_argument("--methods", default="internal,raw,no-switch,cotrained,compile")
    p.add_argument("--task", default=None, help="default: the post-training task")
    p.add_argument("--no-progress", action="store_true")
    p = sub.add_parser("sweep-alpha", help="metacontroller α sweep: the rate–distortion figure")
    _common(p)
    p.add_argument("--alphas", default="0,0.05,0.1,0.17,0.3,0.5,1", help="comma-separated α values (default: the paper's)")
    p.add_argument("--no-cotrained", action="store_true", help="skip the co-trained variant")
    p = sub.add_parser("ant-data", help="ant-pinpad datasets D (sampled actions) and D* (mean actions)")
    p.add_argument("--out", required=True, help="folder; gets data/ (D) and data_clean/ (D*)")
    p.add_argument("--episodes", type=int, default=1000, help="successful episodes per dataset (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", default="ant-pretrain", help="task set (default ant-pretrain)")
    p.add_argument("--weights", default=None, help="expert weights (default: the shipped expert)")
    p.add_argument("--no-progress", action="store_true")
    p = sub.add_parser("ant-expert", help="train or evaluate the ant PPO expert (see docs/ant.md)",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p = sub.add_parser("steerability", help="how steerable a run's base model is: one fixed protocol (Fig. 4 / A2)")
    p.add_argument("run_dir", help="a run directory with a finished base model")
    p.add_argument("--steps", type=int, default=3200, help="controller training steps (default 3200, the paper's)")
    p.add_argument("--batch-size", type=int, default=512, help="controller batch (default 512, the paper's)")
    p.add_argument("--rank", type=int, default=16, help="controller rank, 0 for full (default 16)")
    p.add_argument("--layer", type=int, default=-1, help="controlled layer (default depth // 2)")
    p.add_argument("--lr", type=float, default=3e-3, help="controller learning rate (default 3e-3, cosine to 0)")
    p.add_argument("--episodes", type=int, default=1024, help="episodes per rollout evaluation (default 1024)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None, help="output folder inside the run (default steerability, or "
                   "steerability_step<N> with --snapshot)")
    p.add_argument("--snapshot", type=int, default=None, metavar="STEP",
                   help="measure the base model's training snapshot at this step instead of the final model")
    p.add_argument("--no-progress", action="store_true")
    p = sub.add_parser("report", help="(re)write report.html of a run directory")
    p.add_argument("--out", required=True)
    p = sub.add_parser("bench", help="throughput benchmarks (env, pretraining, acting)")
    _common(p, out=False)
    p.add_argument("--envs", type=int, default=None,
                   help="batch of environments for acting (default 1024 for the grid, 256 for the ant)")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    p = sub.add_parser("config", help="print the resolved config")
    _common(p, out=False)
    cli_pretrained.add_arguments(sub)  # pretrained list|eval|export, --base-model, --init-from
    args = parser.parse_args(argv)
    return _dispatch(args)


def _dispatch(args) -> int:
    from . import stages
    from .report import write_report

    if args.command == "ant-data":
        return _ant_data(args)
    if args.command == "steerability":
        from .analysis.steerability import SteerabilityConfig, run_steerability
        from .cli_ant import refuse_ant_run

        refuse_ant_run(args.run_dir, "steerability")

        sc = SteerabilityConfig(layer=args.layer, rank=args.rank, steps=args.steps, batch_size=args.batch_size,
                                lr=args.lr, episodes=args.episodes, seed=args.seed)
        name = args.name or ("steerability" if args.snapshot is None else f"steerability_step{args.snapshot}")
        m = run_steerability(args.run_dir, sc, name, progress=not args.no_progress,
                             log=lambda msg: print(f"[internalrl] {msg}", flush=True), snapshot=args.snapshot)
        print(json.dumps(m["headline"], indent=2))
        return 0
    if args.command == "pretrained":
        return cli_pretrained.dispatch(args)
    if args.command == "report":
        root = Path(args.out)
        if read_run_json(root) is None:
            raise RunDirError(f"{root} is not an internalrl run (no run.json)")
        from .cli_ant import refuse_ant_run

        refuse_ant_run(root, "report")  # its sections read the gridworld's stages
        print(write_report(root))
        return 0
    cfg = _config(args)
    if args.command == "config":
        print(dumps(cfg))
        return 0
    if cfg.env.name == "ant":
        from . import cli_ant

        return cli_ant.dispatch(args, cfg)
    if args.command == "bench":
        from .bench import run_benchmarks

        res = run_benchmarks(cfg, args.envs or 1024)
        text = json.dumps(res, indent=2)
        print(text)
        if args.json:
            Path(args.json).write_text(text)
        return 0
    if args.command == "experiment":
        if args.base_seeds < 1 or args.meta_seeds < 1:
            raise ConfigError("--base-seeds and --meta-seeds must be at least 1")
        stages.experiment(cfg, Path(args.out), args.base_seeds, args.meta_seeds,
                          [m.strip() for m in args.methods.split(",") if m.strip()], args.task,
                          progress=not args.no_progress)
        print(Path(args.out) / "fig8.png")
        return 0
    cfg, source = cli_pretrained.run_dir_setup(args, cfg)  # --base-model shipped|train
    run = _run_dir(args, cfg)
    cli_pretrained.record(run, source)
    progress = not args.no_progress
    if args.command == "rl":
        if args.episodes is not None:
            if args.episodes < 1:
                raise ConfigError("--episodes must be at least 1")
            cfg.rl.episodes = args.episodes
        stages.run_rl(cfg, run, args.method, args.task, progress=progress)
        print(write_report(run.root))
        return 0
    if args.command == "sweep-alpha":
        try:
            alphas = tuple(float(a) for a in args.alphas.split(","))
        except ValueError:
            raise ConfigError(f"--alphas takes comma-separated numbers, got {args.alphas!r}") from None
        if any(a < 0 for a in alphas):
            raise ConfigError("--alphas must be non-negative")
        stages.alpha_sweep(cfg, run, alphas, cotrained=not args.no_cotrained, progress=progress)
        print(write_report(run.root))
        return 0
    t0 = time.perf_counter()
    plan = {
        "data": [stages.stage_data],
        "train": [stages.stage_base_model],
        "evaluate": [stages.stage_eval_base],
        "probe": [stages.stage_probes],
        "controllers": [stages.stage_controllers],
        "metacontroller": [stages.stage_metacontroller],
        "run": [stages.stage_data, stages.stage_base_model, stages.stage_eval_base, stages.stage_probes,
                stages.stage_controllers, stages.stage_metacontroller, stages.stage_rl_quick],
    }[args.command]
    make_base = cli_pretrained.base_model_stage(args, source)
    if args.command == "train" and (args.checkpoint_file or args.minutes is not None):
        if args.minutes is not None and not args.minutes > 0:
            raise ConfigError(f"--minutes must be positive, got {args.minutes}")
        if make_base is not stages.stage_base_model:
            raise ConfigError("--checkpoint-file and --minutes train the base model here; they do not combine with "
                              "--base-model shipped or --init-from")
        make_base = functools.partial(stages.stage_base_model, checkpoint_file=args.checkpoint_file,
                                      minutes=args.minutes)
    plan = [make_base if stage is stages.stage_base_model else stage for stage in plan]
    for stage in plan:
        stage(cfg, run, progress=progress)
    if args.command == "run":
        elapsed = time.perf_counter() - t0
        run.update_results("wall_seconds_last_invocation", {"seconds": elapsed})
        report = write_report(run.root)
        print(f"[internalrl] done in {elapsed / 60:.1f} min; report: {report}; numbers: {run.root / 'results.json'}")
    return 0


def _ant_data(args) -> int:
    """D and D* for the ant through the same dataset code as the gridworld."""
    from .envs.ant import AntSpec
    from .envs.tasks import parse_task_set
    from .experts.ant import generate_ant_dataset, load_ant_expert, write_ant_dataset

    if args.episodes < 1:
        raise ConfigError("--episodes must be at least 1")
    out = Path(args.out)
    for name in ("data", "data_clean"):
        if (out / name / "card.json").exists():
            raise RunDirError(f"{out / name} already holds a dataset; use another --out")
    spec = AntSpec()
    tasks = parse_task_set(args.tasks, spec.num_objects)
    policy = load_ant_expert(args.weights)
    for name, mean in (("data", False), ("data_clean", True)):
        arrays, stats = generate_ant_dataset(args.episodes, tasks, args.seed + int(mean), policy, mean_actions=mean,
                                             spec=spec, progress=not args.no_progress)
        tmp = out / f".{name}.partial"
        write_ant_dataset(tmp, arrays, stats, tasks, spec, {"seed": args.seed + int(mean)})
        tmp.rename(out / name)
        print(f"[internalrl] ant {name}: {stats['episodes_kept']} episodes kept, expert success "
              f"{stats['expert_success_rate']:.3f} ({'mean' if mean else 'sampled'} actions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
