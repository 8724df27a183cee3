"""Command line: one subcommand per stage, and ``run`` for the whole pipeline.

    internalrl run --preset quick --out runs/quick [--tensorboard]   # the whole gridworld pipeline
    internalrl run|data|train|evaluate|probe|controllers|metacontroller --env ant --out DIR [--preset quick|paper]
    internalrl data|train|evaluate|probe|controllers|metacontroller --out DIR [--preset P] [--seed N] [--set section.field=value ...]
      (on an existing run, every command uses the config in its run.json; --set may change only rl.*)
    internalrl rl --out DIR --method internal|raw|no-switch|cotrained|compile [--task 0-1-2-3] [--episodes N]
    internalrl experiment --out DIR --base-seeds 3 --meta-seeds 2 [--methods internal,raw,...]
        [--lrs 3e-6,1e-5,3e-5,1e-4,3e-4] [--rl-seeds N] [--executor local|ray [--ray-address ADDR] [--max-parallel N]]
    internalrl sweep-alpha --out DIR [--alphas 0,0.1,...] [--executor ...]  # after `run`: the rate-distortion figure
    internalrl steerability RUN_DIR [--steps 3200] [--batch-size 512]   # the steerability protocol
    internalrl report --out DIR
    internalrl diagnose free-play-failures|code-content|code-search RUN_DIR [...]   # analyses of a finished run
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

from .atomic import describe_os_error
from .config import ENVS, PRESETS, dumps, load_config
from .errors import USER_ERRORS, ConfigError, RunDirError
from .rundir import RunDir, read_run_json, set_command, stored_config
from . import cli_pretrained
from .executors import executor_from_args, parse_floats


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


def _tensorboard_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard scalars of the training stages to OUT/tensorboard/ "
                        "(needs: pip install 'internalrl[tensorboard]')")


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


def _run_dir(args, cfg, shared: bool = False) -> RunDir:
    out = args.out or f"runs/{args.preset or 'quick'}-seed{cfg.seed}"
    return RunDir(out, cfg, shared=shared)


def _executor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: every task in this process, one after another (default); ray: each task a Ray task "
                        "(needs pip install 'internalrl[ray]')")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="join this Ray cluster (e.g. auto, or HEAD_IP:6379) instead of starting one on this machine; "
                        "--out must then be an absolute path on storage every node sees")
    p.add_argument("--max-parallel", type=int, default=None, metavar="N",
                   help="at most N tasks at once (default: as many as the cluster's CPUs hold; a local Ray "
                        "cluster gets N x --cpus-per-task CPUs)")
    p.add_argument("--cpus-per-task", type=float, default=1, help="CPUs each Ray task asks for (default 1)")
    p.add_argument("--gpus-per-task", type=float, default=None,
                   help="GPUs each Ray task asks for (default: 1 when the cluster has GPUs, else 0)")


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
    """The ant expert's own command line; --help and usage errors exit as every other command's do."""
    from .experts.ant import main as ant_main

    ant_main(argv, prog="internalrl ant-expert")
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
                        ("metacontroller", "train the metacontroller (frozen base, and co-trained beside it)"),
                        ("injection", "latent code injection through the frozen metacontroller (Fig. A4)")]:
        p = sub.add_parser(name, help=help_)
        _common(p)
        if name in ("run", "train", "metacontroller"):
            _tensorboard_argument(p)
        if name == "train":
            p.add_argument("--checkpoint-file", default=None, metavar="FILE",
                           help="accumulate the training over separate runs in this one safetensors file: start from it "
                                "when it is further along, write the state back when stopping or done")
            p.add_argument("--minutes", type=float, default=None,
                           help="stop (with a checkpoint) after this many minutes of training; rerun to continue")
    p = sub.add_parser("rl", help="RL on a task with one method (needs the earlier stages)")
    _common(p)
    p.add_argument("--method", default="internal", help="internal | raw | no-switch | cotrained | compile (default internal)")
    p.add_argument("--task", default=None, help="task string, e.g. 0-1-2-3 (default: the post-training task)")
    p.add_argument("--episodes", type=int, default=None, help="episode budget (default: rl.episodes)")
    _tensorboard_argument(p)
    p = sub.add_parser("experiment", help="Fig. 8: base-model seeds x metacontroller seeds x methods")
    _common(p, out=False)
    p.add_argument("--out", required=True, help="experiment folder (one run directory per base seed inside)")
    p.add_argument("--base-seeds", type=int, default=3)
    p.add_argument("--meta-seeds", type=int, default=2)
    p.add_argument("--methods", default="internal,raw,no-switch,cotrained,compile")
    p.add_argument("--task", default=None, help="default: the post-training task")
    p.add_argument("--lrs", default=None, metavar="LR,LR,...",
                   help="RL learning rates to scan for every method; the best median final success is chosen per "
                        "method (the paper's: 3e-6,1e-5,3e-5,1e-4,3e-4; default: rl.lr only)")
    p.add_argument("--rl-seeds", type=int, default=1, help="RL runs per method x learning rate x metacontroller (default 1)")
    p.add_argument("--no-progress", action="store_true")
    _executor_args(p)
    p = sub.add_parser("sweep-alpha", help="metacontroller α sweep: the rate–distortion figure")
    _common(p)
    p.add_argument("--alphas", default="0,0.05,0.1,0.17,0.3,0.5,1", help="comma-separated α values (default: the paper's)")
    p.add_argument("--no-cotrained", action="store_true", help="skip the co-trained variant")
    _tensorboard_argument(p)
    _executor_args(p)
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
    _diagnose_arguments(sub)
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
    from . import experiments, pipeline
    from .report import finish_run, write_report

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
    if args.command == "diagnose":
        return _diagnose(args)
    if args.command == "report":
        root = Path(args.out)
        if read_run_json(root) is None:
            raise RunDirError(f"{root} is not an internalrl run (no run.json)")
        print(write_report(root))
        return 0
    cfg = _config(args)
    if args.command == "config":
        print(dumps(cfg))
        return 0
    if args.command == "bench":
        from .bench import run_ant_benchmarks, run_benchmarks

        ant = cfg.env.name == "ant"
        res = run_ant_benchmarks(cfg, args.envs or 256) if ant else run_benchmarks(cfg, args.envs or 1024)
        text = json.dumps(res, indent=2)
        print(text)
        if args.json:
            Path(args.json).write_text(text)
        return 0
    if cfg.env.name == "ant":
        from . import cli_ant

        return cli_ant.dispatch(args, cfg)
    if args.command == "experiment":
        if args.base_seeds < 1 or args.meta_seeds < 1:
            raise ConfigError("--base-seeds and --meta-seeds must be at least 1")
        lrs = parse_floats(args.lrs, "--lrs") if args.lrs is not None else None
        executor = executor_from_args(args, not args.no_progress)
        experiments.experiment(cfg, Path(args.out), args.base_seeds, args.meta_seeds,
                               [m.strip() for m in args.methods.split(",") if m.strip()], args.task,
                               progress=not args.no_progress, lrs=lrs, rl_seeds=args.rl_seeds, executor=executor)
        print(Path(args.out) / "fig8.png")
        return 0
    if getattr(args, "tensorboard", False):
        from .scalars import require_tensorboard

        require_tensorboard()  # before anything is written
    if args.command == "sweep-alpha" and args.out is None and args.ray_address is not None:
        raise ConfigError("--ray-address needs --out (an absolute path on storage every node sees)")
    executor = executor_from_args(args, not args.no_progress) if args.command == "sweep-alpha" else None
    cfg, source = cli_pretrained.run_dir_setup(args, cfg)  # --base-model shipped|train
    run = _run_dir(args, cfg, shared=executor is not None and executor.name == "ray")  # Ray workers write in it too
    run.tensorboard = getattr(args, "tensorboard", False)
    cli_pretrained.record(run, source)
    progress = not args.no_progress
    if args.command == "rl":
        if args.episodes is not None:
            if args.episodes < 1:
                raise ConfigError("--episodes must be at least 1")
            cfg.rl.episodes = args.episodes
        pipeline.run_rl(cfg, run, args.method, args.task, progress=progress)
        print(write_report(run.root))
        return 0
    if args.command == "sweep-alpha":
        experiments.alpha_sweep(cfg, run, experiments.parse_alphas(args.alphas), cotrained=not args.no_cotrained,
                                progress=progress, executor=executor)
        print(write_report(run.root))
        return 0
    t0 = time.perf_counter()
    plan = {
        "data": [pipeline.stage_data],
        "train": [pipeline.stage_base_model],
        "evaluate": [pipeline.stage_eval_base],
        "probe": [pipeline.stage_probes],
        "controllers": [pipeline.stage_controllers],
        "metacontroller": [pipeline.stage_metacontroller],
        "injection": [pipeline.stage_injection],
        "run": [pipeline.stage_data, pipeline.stage_base_model, pipeline.stage_eval_base, pipeline.stage_probes,
                pipeline.stage_controllers, pipeline.stage_metacontroller, pipeline.stage_rl_quick,
                pipeline.stage_injection],
    }[args.command]
    make_base = cli_pretrained.base_model_stage(args, source)
    if args.command == "train" and (args.checkpoint_file or args.minutes is not None):
        if args.minutes is not None and not args.minutes > 0:
            raise ConfigError(f"--minutes must be positive, got {args.minutes}")
        if make_base is not pipeline.stage_base_model:
            raise ConfigError("--checkpoint-file and --minutes train the base model here; they do not combine with "
                              "--base-model shipped or --init-from")
        make_base = functools.partial(pipeline.stage_base_model, checkpoint_file=args.checkpoint_file,
                                      minutes=args.minutes)
    plan = [make_base if stage is pipeline.stage_base_model else stage for stage in plan]
    for stage in plan:
        stage(cfg, run, progress=progress)
    if args.command == "run":
        finish_run(run, time.perf_counter() - t0)
    return 0


def _diagnose_arguments(sub) -> None:
    from .analysis.diagnose import DIAGNOSES

    p = sub.add_parser("diagnose", help="analyses of a finished run (free-play failures, what the codes carry, code search)",
                       description="Analyses of a finished run directory; each prints its table (and --json writes it).")
    names = p.add_subparsers(dest="diagnosis", required=True, metavar="NAME")
    for name, help_ in DIAGNOSES.items():
        d = names.add_parser(name, help=help_, description=help_)
        d.add_argument("run_dir", help="a run directory with finished data and base_model stages"
                       + ("" if name == "free-play-failures" else " and a metacontroller"))
        d.add_argument("--json", default=None, metavar="FILE", help="also write the numbers to this file")
        d.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                       help="change the run's config as read here, e.g. the layer of a metacontroller trained "
                            "at another one (repeatable)")
        if name == "free-play-failures":
            d.add_argument("--episodes", type=int, default=4096, help="free-play episodes (default 4096)")
            d.add_argument("--seed", type=int, default=0)
        else:
            d.add_argument("--stage", default="metacontroller",
                           help="the stage folder holding the frozen metacontroller (default metacontroller)")
        if name == "code-content":
            d.add_argument("--episodes", type=int, default=4000, help="held-out expert episodes (default 4000)")
        if name == "code-search":
            d.add_argument("--task", default="0-1-2-3", help="the task to steer through (default 0-1-2-3)")
            d.add_argument("--index", default="subgoal", choices=("subgoal", "direction", "both"),
                           help="what the oracle picks the table's row by (default subgoal)")
            d.add_argument("--iterations", type=int, default=12, help="search iterations (default 12)")
            d.add_argument("--population", type=int, default=24, help="code tables per iteration (default 24)")
            d.add_argument("--episodes", type=int, default=256, help="episodes per table and iteration (default 256)")
            d.add_argument("--final-episodes", type=int, default=1024, help="fresh episodes for the final score")
            d.add_argument("--init", default=None, metavar="FILE",
                           help="a code table to start from (JSON: rows x code_dim numbers, e.g. a decoder's "
                                "metacontroller/subgoal_codes.json); with --iterations 0 it is only scored")
            d.add_argument("--seed", type=int, default=0)


def _diagnose(args) -> int:
    from .analysis import diagnose

    if args.episodes < 1:
        raise ConfigError("--episodes must be at least 1")
    if args.diagnosis == "free-play-failures":
        res = diagnose.free_play_failures(diagnose.load_finished_run(args.run_dir, None, args.overrides), args.episodes,
                                          args.seed)
    elif args.diagnosis == "code-content":
        res = diagnose.code_content(diagnose.load_finished_run(args.run_dir, args.stage, args.overrides), args.episodes)
    else:
        init = None
        if args.init is not None:
            try:
                init = json.loads(Path(args.init).read_text())
            except (OSError, ValueError) as e:
                raise ConfigError(f"--init {args.init}: cannot read a JSON code table ({e})") from None
        res = diagnose.code_search(diagnose.load_finished_run(args.run_dir, args.stage, args.overrides), args.task, args.index,
                                   args.iterations, args.population, args.episodes, args.final_episodes, args.seed,
                                   init=init)
    if args.json:
        from .atomic import write_json

        write_json(Path(args.json), res)
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
