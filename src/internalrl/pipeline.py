"""The pipeline's stages, in the paper's order. Each is ``(config, run directory) -> artifact
folder``; a stage whose folder is finished is skipped, so re-running a killed pipeline resumes it.

    stage_data ─► stage_base_model ─► stage_eval_base, stage_probes, stage_controllers
                         └─► stage_metacontroller ─► run_rl (internal RL; the baselines: raw-action RL,
                             no-switch, co-trained, CompILE via stage_noswitch_metacontroller, stage_compile)

``internalrl run`` runs them all (:func:`stage_rl_quick` for its RL); experiments over many
runs (the α sweep, the Fig. 8 matrix) are in :mod:`internalrl.experiments`.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .checkpoint import Checkpoint
from .config import Config
from .data import data_card, expert_reference, generate_grid, load_trajectories, save_trajectories
from .envs.gridworld import BatchedGridPinpad
from .envs.tasks import parse_task_set
from .errors import ConfigError
from .evaluate import evaluate_policy, rollout_base_model
from .experts.grid import task_marginal_free_play, task_marginal_reference
from .metacontroller import cotrained_config
from .rundir import RunDir
from .scalars import base_model_row, stage_scalars
from .train import (evaluate_heldout, load_model, resolve_device, save_model, save_weights, snapshot_name, snapshot_steps,
                    train_base_model)


def _log(msg: str) -> None:
    print(f"[internalrl] {msg}", flush=True)


def _generate_data(cfg: Config, run: RunDir, stage: str, epsilon: float, seed: int, progress: bool):
    if run.done(stage):
        _log(f"{stage}: finished earlier, skipped")
        return run.path(stage)
    t0 = time.perf_counter()
    spec = cfg.env.spec()
    tasks = parse_task_set(cfg.env.pretrain_tasks, spec.num_objects)
    arrays, stats = generate_grid(cfg.data.num_episodes, tasks, spec, seed=seed, epsilon=epsilon, progress=progress)
    stats["seconds"] = time.perf_counter() - t0
    card = data_card(arrays, tasks, {"obs_format": "grid", "env": asdict(spec), "epsilon": epsilon,
                                     "seed": seed, "generation": stats})
    save_trajectories(run.partial(stage), arrays, card)
    headline = {
        "episodes": card["num_episodes"], "steps": card["num_steps"], "mean_length": card["length"]["mean"],
        "epsilon": epsilon, "expert_success_rate": stats["expert_success_rate"],
        "layout_resample_fraction": stats["resample_fraction"], "seconds": stats["seconds"],
    }
    _log(f"{stage}: {card['num_episodes']} episodes (epsilon {epsilon}), mean length {card['length']['mean']:.1f}, "
         f"expert success {stats['expert_success_rate']:.3f}, "
         f"{100 * stats['resample_fraction']:.1f}% of layouts resampled (no safe path)")
    return run.finish(stage, {**asdict(cfg.data), "epsilon": epsilon, "seed": seed}, {"headline": headline, "card": card})


def stage_data(cfg: Config, run: RunDir, progress: bool = True):
    """Expert trajectories D on the pretraining tasks (SPEC §2), with the configured noise ε,
    and, when ε > 0, the clean set D* (ε = 0) that analyses and the metacontroller use."""
    path = _generate_data(cfg, run, "data", cfg.data.epsilon, cfg.seed, progress)
    if cfg.data.epsilon > 0:
        _generate_data(cfg, run, "data_clean", 0.0, cfg.seed + 1, progress)
    return path


def command(cfg: Config, name: str) -> str:
    """The command that makes a stage, for error messages: ``train``, or ``train --env ant`` on the ant."""
    return name if cfg.env.name == "grid" else f"{name} --env {cfg.env.name}"


def clean_data(cfg: Config, run: RunDir):
    """D*: the ε = 0 data (the training data itself when ε = 0); the ant's D* (the expert's mean
    actions) is always a dataset of its own."""
    own = cfg.data.epsilon > 0 or cfg.env.name == "ant"
    return load_trajectories(run.require("data_clean" if own else "data", command(cfg, "data")))


def stage_base_model(cfg: Config, run: RunDir, progress: bool = True, init_from: Path | None = None,
                     checkpoint_file: str | None = None, minutes: float | None = None, finish=None):
    """Pretrain the base model (SPEC §3); resumes from its checkpoint if killed. ``init_from``:
    start from the weights of a compact checkpoint (``scripts/train_gpu.py``) instead of a fresh
    init. With ``checkpoint_file`` the training accumulates over separate runs: it starts from that
    file (:mod:`internalrl.portable`) when it is further along than the run's own checkpoint, and
    writes its state back there at every checkpoint, when it stops (after ``minutes`` of
    training, if given) and when it ends. ``finish(cfg, run, model, train_seconds, stage_config)``
    measures the trained model and finishes the stage (default :func:`finish_base_model`, the
    gridworld's measurements; the ant passes its own)."""
    from .portable import load_portable, own_step, read_header, save_portable

    if run.done("base_model"):
        _log("base_model: finished earlier, skipped")
        if checkpoint_file and not (Path(checkpoint_file).exists() and read_header(checkpoint_file)["finished"] == "True"):
            save_portable(run.path("base_model"), Path(checkpoint_file), cfg, finished=True)
        return run.path("base_model")
    data = load_trajectories(run.require("data", command(cfg, "data")))
    work = run.partial("base_model")
    if checkpoint_file and Path(checkpoint_file).exists():
        if int(read_header(checkpoint_file)["step"]) > own_step(work):
            step = load_portable(Path(checkpoint_file), work, cfg)
            _log(f"base_model: continuing from {checkpoint_file} at step {step} of {cfg.train.steps}")
    export = (lambda: save_portable(work, Path(checkpoint_file), cfg)) if checkpoint_file else None
    scalars = stage_scalars(run, "base_model")
    try:
        model, info = train_base_model(cfg, data, work, progress=progress, init_from=init_from, on_checkpoint=export,
                                       stop_after_seconds=None if minutes is None else 60 * minutes,
                                       scalars=base_model_row(scalars))
    finally:
        if scalars is not None:
            scalars.close()
    if model is None:
        _log(f"base_model: stopped at step {info['stopped_at']} of {cfg.train.steps} after {minutes} min "
             f"({info['train_seconds'] / 3600:.2f} h of training so far); "
             f"{'state saved to ' + checkpoint_file + '; ' if checkpoint_file else ''}run the same command to continue")
        return None
    stage_config = {"model": asdict(cfg.model), "train": asdict(cfg.train), "seed": cfg.seed}
    if info.get("init_from"):
        stage_config["init_from"] = info["init_from"]
    final = (finish or finish_base_model)(cfg, run, model, info["train_seconds"], stage_config)
    if checkpoint_file:
        save_portable(final, Path(checkpoint_file), cfg, finished=True)
    return final


def finish_base_model(cfg: Config, run: RunDir, model, train_seconds: float, stage_config: dict,
                      source: dict | None = None):
    """Measure the base model in ``run``'s ``.base_model.partial`` folder on held-out D* and
    finish the stage (what every later stage reads from ``base_model/metrics.json``). ``source``
    (where a model not trained here came from) goes into the stage's config and metrics."""
    device = next(model.parameters()).device
    clean = clean_data(cfg, run)  # score against the noiseless expert
    _, val_idx = clean.split(cfg.data.val_fraction)
    heldout = evaluate_heldout(model, clean, val_idx, 256, device)
    val_arrays = {k: v[val_idx] for k, v in clean.arrays.items()}
    ref = expert_reference(val_arrays)
    spec = cfg.env.spec()
    marginal = task_marginal_reference(val_arrays, parse_task_set(cfg.env.pretrain_tasks, spec.num_objects), spec)
    headline = {
        "heldout_action_accuracy": heldout["action_accuracy"], "heldout_action_nll": heldout["action_nll"],
        "heldout_obs_nll": heldout["obs_nll"], "expert_action_accuracy": ref["accuracy"],
        "expert_action_nll": ref["nll"], "task_marginal_expert_accuracy": marginal["accuracy"],
        "task_marginal_expert_nll": marginal["nll"],
        "bayes_optimal_accuracy": marginal["posterior_accuracy"], "bayes_optimal_nll": marginal["posterior_nll"],
        "train_seconds": train_seconds,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    _log(f"base_model: held-out next-action accuracy {heldout['action_accuracy']:.3f} (expert knowing the task "
         f"{ref['accuracy']:.3f}, knowing only the colours visited {marginal['accuracy']:.3f}, Bayes-optimal "
         f"{marginal['posterior_accuracy']:.3f}), NLL {heldout['action_nll']:.3f} (expert {ref['nll']:.3f}, "
         f"{marginal['nll']:.3f}, Bayes-optimal {marginal['posterior_nll']:.3f})")
    if source is not None:
        headline["source"] = source["summary"]
        stage_config = {**stage_config, "source": source}
    return run.finish("base_model", stage_config, {"headline": headline, **({"source": source} if source else {})})


def stage_eval_base(cfg: Config, run: RunDir, progress: bool = True):
    """The base model as a policy: free play and the post-training task."""
    if run.done("eval_base"):
        _log("eval_base: finished earlier, skipped")
        return run.path("eval_base")
    device = resolve_device(cfg.train.device)
    model = load_model(run.require("base_model", command(cfg, "train")), device=device)
    spec = cfg.env.spec()
    pre = parse_task_set(cfg.env.pretrain_tasks, spec.num_objects)
    post = parse_task_set(cfg.env.posttrain_task, spec.num_objects)
    t0 = time.perf_counter()
    res = evaluate_policy(model, spec, pre, post, num_envs=cfg.eval.num_envs, seed=cfg.seed + 1000,
                          temperature=cfg.eval.temperature, device=device)
    free, postr = res["free_play"], res["posttrain"]
    work = run.partial("eval_base")
    env = res["free_env"]
    np.savez(work / "free_play_examples.npz", paths=free.pop("paths"), layout=env.cell_identity[:4])
    postr.pop("paths")
    over_training = {}  # free play of every snapshot: the curve that matters for later stages
    base_dir = run.path("base_model")
    for step in snapshot_steps(base_dir):
        if step == cfg.train.steps:  # the final model, measured above
            over_training[step] = free["success_rate"]
            continue
        m = load_model(base_dir / "snapshots", name=snapshot_name(step), device=device)
        r = rollout_base_model(m, BatchedGridPinpad(cfg.eval.num_envs, pre, spec, seed=cfg.seed + 1000), free_play=True,
                               seed=cfg.seed + 1000, temperature=cfg.eval.temperature, device=device)
        over_training[step] = r["success_rate"]
    if over_training:
        _log("eval_base: free play over training: " + ", ".join(f"step {k}: {v:.3f}" for k, v in over_training.items()))
    free["over_training"] = over_training
    # the bar: the expert's policy averaged over the tasks consistent with the visits, as a policy
    free["task_marginal_reference"] = task_marginal_free_play(
        BatchedGridPinpad(cfg.eval.num_envs, pre, spec, seed=cfg.seed + 1000), seed=cfg.seed + 1000)
    headline = {
        "free_play_completion": free["success_rate"], "posttrain_success": postr["success_rate"],
        "free_play_task_marginal_reference": free["task_marginal_reference"],
        "free_play_failures": free["failures"],
        "episodes_each": cfg.eval.num_envs, "seconds": time.perf_counter() - t0,
    }
    _log(f"eval_base: free play completes a pretraining task in {100 * free['success_rate']:.1f}% of "
         f"{cfg.eval.num_envs} episodes (the expert knowing only the visits: "
         f"{100 * free['task_marginal_reference']:.1f}%); post-training task success {100 * postr['success_rate']:.2f}%")
    return run.finish("eval_base", {"eval": asdict(cfg.eval), "seed": cfg.seed},
                      {"headline": headline, "free_play": free, "posttrain": postr})


def _subgoal_count(cfg: Config) -> int:
    return cfg.env.spec().num_subgoals


def stage_probes(cfg: Config, run: RunDir, progress: bool = True):
    """Layer-wise linear probes of the ground-truth subgoal (SPEC §4; on the ant a subgoal is one colour,
    the next to visit), fitted on D*'s training episodes and scored on its held-out ones, over training too."""
    from .analysis.probes import decode_episode, probe_layers

    if run.done("probes"):
        _log("probes: finished earlier, skipped")
        return run.path("probes")
    t0 = time.perf_counter()
    device = resolve_device(cfg.train.device)
    data = clean_data(cfg, run)
    base = run.require("base_model", command(cfg, "train"))
    train_idx, val_idx = data.split(cfg.data.val_fraction)
    fit_idx, test_idx = train_idx[: cfg.probe.train_episodes], val_idx[: cfg.probe.test_episodes]
    k = _subgoal_count(cfg)
    model = load_model(base, device=device)
    final = probe_layers(model, data, fit_idx, test_idx, k, device, steps=cfg.probe.fit_steps)
    probs, truth = decode_episode(model, final.pop("probes"), data, int(test_idx[0]), device)
    work = run.partial("probes")
    np.savez(work / "example_episode.npz", probs=probs, subgoals=truth)
    over_training = {}
    if cfg.probe.over_training:
        for step in snapshot_steps(base):
            if step == cfg.train.steps:  # the final model, probed above
                over_training[step] = final["accuracy_per_layer"]
            else:
                m = load_model(base / "snapshots", name=snapshot_name(step), device=device)
                over_training[step] = probe_layers(m, data, fit_idx, test_idx, k, device,
                                                   steps=cfg.probe.fit_steps)["accuracy_per_layer"]
            _log(f"probes: snapshot step {step}: " + " ".join(f"{a:.2f}" for a in over_training[step]))
    acc = final["accuracy_per_layer"]
    headline = {
        "accuracy_per_layer": acc, "best_layer": int(np.argmax(acc)), "majority_class_rate": final["majority_class_rate"],
        "seconds": time.perf_counter() - t0,
    }
    _log("probes: subgoal accuracy per layer (0 = embedding): " + " ".join(f"{a:.3f}" for a in acc)
         + f" (majority class {final['majority_class_rate']:.3f})")
    return run.finish("probes", {"probe": asdict(cfg.probe), "seed": cfg.seed},
                      {"headline": headline, **final, "over_training": over_training})


def stage_controllers(cfg: Config, run: RunDir, progress: bool = True):
    """Supervised subgoal controllers at L/2 (and every layer for the sweep; SPEC §4, Fig. 4): one ``U`` per
    subgoal (rank ``controllers.rank``, 0 = full: the ant's), trained on D* with the ground-truth subgoal
    choosing the controller and the base model frozen, then rolled out following the ground-truth subgoal on
    the post-training task (actions sampled, and greedy: the paper does not say which) and on the pretraining
    tasks (sampled)."""
    from .analysis.controllers import heldout_controlled_nll, rollout_with_controllers, train_controllers
    from .envs import make_batched_env

    if run.done("controllers"):
        _log("controllers: finished earlier, skipped")
        return run.path("controllers")
    t0 = time.perf_counter()
    device = resolve_device(cfg.train.device)
    data = clean_data(cfg, run)
    model = load_model(run.require("base_model", command(cfg, "train")), device=device)
    spec = cfg.env.spec()
    post = parse_task_set(cfg.env.posttrain_task, spec.num_objects)
    pre = parse_task_set(cfg.env.pretrain_tasks, spec.num_objects)
    train_idx, val_idx = data.split(cfg.data.val_fraction)
    cc = cfg.controllers
    main_layer = cfg.control_layer()
    layers = list(range(model.depth + 1)) if cc.sweep else [main_layer]
    work = run.partial("controllers")
    seed = cfg.seed + 2000
    ant = cfg.env.name == "ant"
    nll_batch = 64 if ant else 256  # ant episodes are ~10x longer

    def evaluate(ctl, layer, tasks, offset, greedy=False):
        env = make_batched_env(spec, cfg.eval.num_envs, tasks, seed + offset)
        return rollout_with_controllers(model, ctl, layer, env, seed + offset, device, greedy=greedy,
                                        temperature=cfg.eval.temperature)

    def measure(ctl, layer) -> dict:
        post_res = evaluate(ctl, layer, post, 0)
        return {"posttrain_success": post_res["success_rate"],
                "posttrain_success_greedy": evaluate(ctl, layer, post, 0, greedy=True)["success_rate"],
                "pretrain_success": evaluate(ctl, layer, pre, 1)["success_rate"],
                # episodes of the post-training task that ended after k of its colours, k = 0..len
                "posttrain_progress_counts": post_res["progress_counts"]}

    base_nll = run.metrics("base_model", command(cfg, "train"))["headline"]
    # the base model's own held-out NLL on D*, from its stage
    uncontrolled = {**measure(None, main_layer),
                    "heldout_nll": base_nll["heldout_clean_action_nll" if ant else "heldout_action_nll"]}
    per_layer = {}
    for layer in layers:
        # the ant's few long episodes fit in memory as residuals; the grid's 150k short ones are recomputed
        ctl, curve = train_controllers(model, data, train_idx, layer, _subgoal_count(cfg), cc, seed, device, progress,
                                       checkpoint=Checkpoint(work / f"checkpoint_layer{layer}.pt"), cache=ant)
        res = {**measure(ctl, layer), "heldout_nll": heldout_controlled_nll(model, ctl, layer, data, val_idx,
                                                                              nll_batch, device),
               "final_train_nll": curve[-1][1]}
        per_layer[layer] = res
        save_weights(ctl, work / f"controllers_layer{layer}.safetensors")
        _log(f"controllers: layer {layer}: post-training task success {res['posttrain_success']:.3f} "
             f"({res['posttrain_success_greedy']:.3f} greedy), pretraining tasks {res['pretrain_success']:.3f}; "
             f"held-out NLL {res['heldout_nll']:.3f}")
    main = per_layer[main_layer]
    headline = {
        "layer": main_layer, "rank": cc.rank or "full",
        **{k: main[k] for k in ("posttrain_success", "posttrain_success_greedy", "pretrain_success", "heldout_nll")},
        **{f"uncontrolled_{k}": uncontrolled[k] for k in ("posttrain_success", "posttrain_success_greedy",
                                                          "pretrain_success", "heldout_nll")},
        "posttrain_success_per_layer": [per_layer[l]["posttrain_success"] for l in layers],
        "posttrain_success_greedy_per_layer": [per_layer[l]["posttrain_success_greedy"] for l in layers],
        "pretrain_success_per_layer": [per_layer[l]["pretrain_success"] for l in layers],
        "layers": layers, "episodes_each": cfg.eval.num_envs, "seconds": time.perf_counter() - t0,
    }
    return run.finish("controllers", {"controllers": asdict(cc), "seed": cfg.seed},
                      {"headline": headline, "per_layer": per_layer, "uncontrolled": uncontrolled})


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


MONITOR_POINTS = 20  # held-out switch metrics this many times while the metacontroller trains
MONITOR_EPISODES = 256  # on this many held-out episodes (the final evaluation uses 1000)


def _train_and_eval_meta(cfg: Config, run: RunDir, mc, label: str, progress: bool, save_to=None,
                         meta_seed: int = 0, checkpoint: Checkpoint | None = None, scalars=None) -> dict:
    from .metacontroller import binarize_start, evaluate_metacontroller, train_metacontroller

    device = resolve_device(cfg.train.device)
    data = clean_data(cfg, run)
    base = load_model(run.require("base_model", command(cfg, "train")), device=device)  # a fresh copy: co-training changes it
    train_idx, val_idx = data.split(cfg.data.val_fraction)
    layer = cfg.meta_layer()
    t0 = time.perf_counter()
    keys = ("f1", "precision", "recall", "switches_per_episode", "fraction_beta_intermediate", "action_nll", "kl")

    def monitor(m):  # the switch on held-out episodes while it trains: when does it appear?
        r = evaluate_metacontroller(base, m, data, val_idx[:MONITOR_EPISODES], layer, device, seed=cfg.seed)
        return {k: r[k] for k in keys}

    every = max(1, mc.steps // MONITOR_POINTS)
    meta, curve = train_metacontroller(base, data, train_idx, mc, layer, cfg.seed + 3000 + 101 * meta_seed, device,
                                       progress, desc=label, monitor=monitor, monitor_every=every, checkpoint=checkpoint,
                                       scalars=scalars)
    res = evaluate_metacontroller(base, meta, data, val_idx[:1000], layer, device, seed=cfg.seed)
    res["train_seconds"] = time.perf_counter() - t0
    res["curve"] = curve
    res["over_training"] = meta.monitored
    res["monitor_every"] = every
    res["binarize_from"] = binarize_start(mc)
    if save_to is not None:
        save_weights(meta, save_to / f"{label}.safetensors")
        if mc.cotrain:
            save_weights(base, save_to / f"{label}_base.safetensors")
    return res


def meta_stage_name(meta_seed: int) -> str:
    return "metacontroller" if meta_seed == 0 else f"metacontroller_m{meta_seed}"


def stage_metacontroller(cfg: Config, run: RunDir, progress: bool = True, meta_seed: int = 0):
    """The metacontroller at L/2 with the base model frozen, and the co-trained variant beside it."""
    stage = meta_stage_name(meta_seed)
    if run.done(stage):
        _log(f"{stage}: finished earlier, skipped")
        return run.path(stage)
    work = run.partial(stage)
    t0 = time.perf_counter()
    results = {}
    scalars = stage_scalars(run, stage)
    for label, mc in (("frozen", cfg.metacontroller), ("cotrained", cotrained_config(cfg.metacontroller))):
        res = _train_and_eval_meta(cfg, run, mc, label, progress, save_to=work, meta_seed=meta_seed,
                                   checkpoint=Checkpoint(work / f"checkpoint_{label}.pt"),
                                   scalars=scalars and scalars.prefixed(label))
        np.savez(work / f"{label}_examples.npz", gates=res.pop("gates")[:8].numpy(),
                 subgoals=res.pop("subgoals")[:8].numpy(), mask=res.pop("mask")[:8].numpy())
        results[label] = res
        _log(f"metacontroller ({label}, alpha={mc.alpha}): switch F1 {res['f1']:.3f} (precision {_fmt(res['precision'])}, "
             f"recall {_fmt(res['recall'])}), switches/episode {res['switches_per_episode']:.2f} vs subgoals "
             f"{res['subgoals_per_episode']:.2f}, beta in (0.1,0.9): {res['fraction_beta_intermediate']:.3f}, "
             f"NLL {res['action_nll']:.3f}, KL {res['kl']:.3f}")
    keys = ("f1", "precision", "recall", "switches_per_episode", "subgoals_per_episode", "fraction_beta_intermediate",
            "action_nll", "kl", "train_seconds")
    if scalars is not None:
        scalars.close()
    aligned_at = next((r["step"] for r in results["frozen"]["over_training"] if r["f1"] >= 0.9), None)
    _log(f"metacontroller (frozen): held-out switch F1 first >= 0.9 at step {aligned_at or 'never'} "
         f"(checked every {results['frozen']['monitor_every']} steps)")
    headline = {"layer": cfg.meta_layer(), "alpha": cfg.metacontroller.alpha, "rank": cfg.metacontroller.rank or "full",
                **{f"{k}": results["frozen"][k] for k in keys}, "first_step_f1_0.9": aligned_at,
                **{f"cotrained_{k}": results["cotrained"][k] for k in keys}, "seconds": time.perf_counter() - t0}
    return run.finish(stage, {"metacontroller": asdict(cfg.metacontroller), "seed": cfg.seed, "meta_seed": meta_seed},
                      {"headline": headline, **results})


def _load_weights(module, path, device):
    """``module`` with the safetensors weights at ``path`` (checked against their checksum), on ``device``, in eval mode."""
    from .train import load_weights

    return load_weights(module.to(device), path).eval()


def _load_meta(path, cfg_meta, width: int, device):
    from .metacontroller import Metacontroller

    return _load_weights(Metacontroller(cfg_meta, width), path, device)


def noswitch_stage_name(meta_seed: int) -> str:
    return "metacontroller_noswitch" + (f"_m{meta_seed}" if meta_seed else "")


def stage_noswitch_metacontroller(cfg: Config, run: RunDir, progress: bool = True, meta_seed: int = 0):
    """A metacontroller trained with β ≡ 1 (for the no-temporal-abstraction baseline)."""
    from dataclasses import replace

    stage = noswitch_stage_name(meta_seed)
    if run.done(stage):
        return run.path(stage)
    work = run.partial(stage)
    mc = replace(cfg.metacontroller, switch="always")
    scalars = stage_scalars(run, stage)
    res = _train_and_eval_meta(cfg, run, mc, "noswitch", progress, save_to=work, meta_seed=meta_seed,
                               checkpoint=Checkpoint(work / "checkpoint_noswitch.pt"),
                               scalars=scalars and scalars.prefixed("noswitch"))
    if scalars is not None:
        scalars.close()
    for k in ("gates", "subgoals", "mask"):
        res.pop(k)
    headline = {k: res[k] for k in ("action_nll", "kl", "train_seconds")}
    return run.finish(stage, {"metacontroller": asdict(mc), "meta_seed": meta_seed}, {"headline": headline, **res})


def compile_stage_name(meta_seed: int) -> str:
    return "compile" if meta_seed == 0 else f"compile_m{meta_seed}"


def stage_compile(cfg: Config, run: RunDir, progress: bool = True, meta_seed: int = 0):
    """The CompILE baseline (SPEC §7.4): segmenter + decoder at the metacontroller's layer, base
    model frozen, with its causal termination head for internal RL."""
    from .baselines.compile import evaluate_compile, train_compile

    stage = compile_stage_name(meta_seed)
    if run.done(stage):
        _log(f"{stage}: finished earlier, skipped")
        return run.path(stage)
    work = run.partial(stage)
    device = resolve_device(cfg.train.device)
    data = clean_data(cfg, run)
    base = load_model(run.require("base_model", command(cfg, "train")), device=device)
    train_idx, val_idx = data.split(cfg.data.val_fraction)
    layer = cfg.meta_layer()
    t0 = time.perf_counter()
    model, curve = train_compile(base, data, train_idx, cfg.compile, layer, cfg.seed + 4000 + 101 * meta_seed, device,
                                 progress, desc=stage, checkpoint=Checkpoint(work / "checkpoint.pt"))
    res = evaluate_compile(base, model, data, val_idx[:1000], layer, device, seed=cfg.seed)
    res["train_seconds"] = time.perf_counter() - t0
    res["curve"] = curve
    save_weights(model, work / "compile.safetensors")
    np.savez(work / "examples.npz", **{k: res.pop(k)[:8].numpy() for k in ("boundaries", "gates", "subgoals", "mask")})
    seg = res["segmenter"]
    _log(f"{stage}: segmenter boundary F1 {seg['f1']:.3f}, segments/episode {res['segments_per_episode']:.2f}; "
         f"causal switch F1 {res['f1']:.3f} (agrees with the segmenter on {100 * res['switch_agreement']:.1f}% of steps), "
         f"switches/episode {res['switches_per_episode']:.2f} vs subgoals {res['subgoals_per_episode']:.2f}, "
         f"NLL {res['action_nll']:.3f}, KL z {res['kl_z']:.3f}, KL b {res['kl_b']:.3f}")
    keys = ("f1", "precision", "recall", "switches_per_episode", "subgoals_per_episode", "switch_agreement",
            "segments_per_episode", "action_nll", "kl_z", "kl_b", "switch_loss", "train_seconds")
    headline = {"layer": layer, **{k: res[k] for k in keys}, "segmenter_f1": seg["f1"],
                "seconds": time.perf_counter() - t0}
    return run.finish(stage, {"compile": asdict(cfg.compile), "layer": layer, "seed": cfg.seed, "meta_seed": meta_seed},
                      {"headline": headline, **res})


def _load_compile(path, cfg_compile, base, device):
    from .baselines.compile import build_compile

    return _load_weights(build_compile(cfg_compile, base), path, device)


RL_SEED_STRIDE = 100_003  # RL seed r of a run draws from seed + 5000 + 101 * meta_seed + this * r


def rl_stage_name(cfg: Config, run: RunDir, method: str, task: str | None = None, meta_seed: int = 0,
                  rl_seed: int = 0) -> str:
    """The folder of an RL run: method, task, budget, then the metacontroller seed and the RL seed when not 0,
    and a digest of the ``rl.*`` settings when they differ from the run's own."""
    task_str_ = task or cfg.env.posttrain_task
    return (f"rl_{method}_{task_str_}_{cfg.rl.episodes}ep" + (f"_m{meta_seed}" if meta_seed else "")
            + (f"_r{rl_seed}" if rl_seed else "") + _rl_variant(cfg, run))


def run_rl(cfg: Config, run: RunDir, method: str, task: str | None = None, meta_seed: int = 0,
           progress: bool = True, rl_seed: int = 0) -> Path:
    """One RL run of ``method`` on ``task`` (default: the post-training task); ``rl_seed`` picks the RL
    run's own random streams (policy init, rollouts) for the same base model and metacontroller."""
    from dataclasses import replace

    from .rl.train import METHODS, evaluate_internal_policy, train_internal_rl, train_raw_rl

    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    spec = cfg.env.spec()
    task_str_ = task or cfg.env.posttrain_task
    tasks = parse_task_set(task_str_, spec.num_objects)
    if len(tasks) != 1:
        raise ConfigError(f"--task must be one task, got {len(tasks)}")
    name = rl_stage_name(cfg, run, method, task, meta_seed, rl_seed)
    if run.done(name):
        _log(f"{name}: finished earlier, skipped")
        return run.path(name)
    device = resolve_device(cfg.train.device)
    layer = cfg.meta_layer()
    seed = cfg.seed + 5000 + 101 * meta_seed + RL_SEED_STRIDE * rl_seed
    base = load_model(run.require("base_model", command(cfg, "train")), device=device)
    work = run.partial(name)
    ckpt = Checkpoint(work / "checkpoint.pt")
    closed = None  # raw-action RL has no switch and no codes
    scalars = stage_scalars(run, name)
    log = scalars and scalars.prefixed("rl")
    if method == "raw":
        policy, curve = train_raw_rl(base, spec, tasks[0], cfg.rl, seed, device, progress, desc=name, checkpoint=ckpt,
                                     scalars=log)
        save_model(policy, work, "policy")  # the finetuned base model: load_model(folder, "policy")
    else:
        def needed(stage: str, build) -> Path:  # a finished stage is reused quietly, a missing one trained now
            return run.path(stage) if run.done(stage) else build(cfg, run, progress, meta_seed)

        if method == "compile":
            folder = needed(compile_stage_name(meta_seed), stage_compile)
            meta = _load_compile(folder / "compile.safetensors", cfg.compile, base, device)
        elif method == "no-switch":
            folder = needed(noswitch_stage_name(meta_seed), stage_noswitch_metacontroller)
            meta = _load_meta(folder / "noswitch.safetensors", replace(cfg.metacontroller, switch="always"),
                              base.cfg.width, device)
        else:
            folder = needed(meta_stage_name(meta_seed), stage_metacontroller)
            label = "frozen" if method == "internal" else "cotrained"
            meta = _load_meta(folder / f"{label}.safetensors", cfg.metacontroller, base.cfg.width, device)
            if method == "cotrained":
                base = _load_cotrained_base(folder, base, device)
        policy, curve = train_internal_rl(base, meta, layer, spec, tasks[0], cfg.rl, seed, device, progress, desc=name,
                                          checkpoint=ckpt, scalars=log)
        save_weights(policy, work / "policy.safetensors")  # a RecurrentCodePolicy(width, code_dim, rl.policy_hidden)
        # the trained policy in closed loop: its switches against the subgoal changes reached, and its codes' content
        closed = evaluate_internal_policy(base, meta, policy, layer, spec, tasks[0], cfg.eval.num_envs, seed + 1,
                                          device, cfg.rl.threshold)
        tf = run.metrics(folder.name, "metacontroller")  # the stage's teacher-forced switch F1
        key = "cotrained_f1" if method == "cotrained" else "f1"
        closed["teacher_forced_f1"] = tf["headline"].get(key, tf.get(key))
        sw = closed["switching"]
        _log(f"{name}: closed loop on {closed['episodes']} episodes: success {closed['success_rate']:.3f}, switch F1 "
             f"{sw['f1']:.3f} against the subgoal changes reached, {_fmt(sw['decisions_per_subgoal'])} codes per subgoal")
    if scalars is not None:
        scalars.close()
    final = float(np.mean([c[1] for c in curve[-max(1, len(curve) // 10):]]))
    first_hit = next((c[0] for c in curve if c[1] >= 0.8), None)
    headline = {"method": method, "task": task_str_, "final_success": final, "episodes": curve[-1][0],
                "episodes_to_0.8": first_hit, "seconds": curve[-1][2]}
    if closed is not None:
        headline.update(closed_loop_success=closed["success_rate"], closed_loop_switch_f1=closed["switching"]["f1"],
                        closed_loop_decisions_per_subgoal=closed["switching"]["decisions_per_subgoal"])
    _log(f"{name}: final success {final:.3f} after {curve[-1][0]} episodes ({curve[-1][2]:.0f} s)")
    return run.finish(name, {"rl": asdict(cfg.rl), "method": method, "task": task_str_, "seed": seed},
                      {"headline": headline, "curve": curve, **({"closed_loop": closed} if closed else {})})


def stage_injection(cfg: Config, run: RunDir, progress: bool = True):
    """Latent code injection (Fig. A4; :mod:`internalrl.analysis.injection`) through the frozen
    metacontroller: a subgoal's code put in force mid-episode and right at the post-training task's first
    unseen transition, against the same rollouts without it."""
    from .analysis.injection import latent_code_injection

    if run.done("injection"):
        _log("injection: finished earlier, skipped")
        return run.path("injection")
    t0 = time.perf_counter()
    device = resolve_device(cfg.train.device)
    spec = cfg.env.spec()
    base = load_model(run.require("base_model", command(cfg, "train")), device=device)
    folder = run.require("metacontroller", command(cfg, "metacontroller"))
    meta = _load_meta(folder / "frozen.safetensors", cfg.metacontroller, base.cfg.width, device)
    res = latent_code_injection(base, meta, cfg.meta_layer(), spec, parse_task_set(cfg.env.pretrain_tasks, spec.num_objects),
                                parse_task_set(cfg.env.posttrain_task, spec.num_objects)[0], cfg.eval.num_envs,
                                cfg.seed + 6000, device, inject_step=cfg.eval.inject_step, threshold=cfg.rl.threshold)
    mid, unseen = res["mid_episode"], res["unseen_transition"]
    _log(f"injection: codes banked per subgoal {res['bank']['codes_per_subgoal']} "
         f"({res['bank']['single_subgoal_episodes']} episodes completed only one); at step {cfg.eval.inject_step}: reaching the target {_fmt(mid['success_without'])} "
         f"without, {_fmt(mid['success_with'])} with the code ({mid['episodes']} episodes); after the first subgoal: "
         f"reaching the next {_fmt(unseen['success_without'])} without, {_fmt(unseen['success_with'])} with")
    headline = {"mid_episode_success_without": mid["success_without"], "mid_episode_success_with": mid["success_with"],
                "mid_episode_episodes": mid["episodes"], "unseen_transition_success_without": unseen["success_without"],
                "unseen_transition_success_with": unseen["success_with"], "unseen_transition_episodes": unseen["episodes"],
                "inject_step": cfg.eval.inject_step, "bank_codes": sum(res["bank"]["codes_per_subgoal"]),
                "seconds": time.perf_counter() - t0}
    return run.finish("injection", {"eval": asdict(cfg.eval), "seed": cfg.seed}, {"headline": headline, **res})


def _rl_variant(cfg: Config, run: RunDir) -> str:
    """"" for the run's own RL settings; for others (``--set rl.…`` on an existing run), a short digest of
    them, so each setting gets its own folder (its config.json holds them in full)."""
    import hashlib

    from .rl.train import RLConfig

    ref = {**asdict(RLConfig()), **run.stored.get("config", {}).get("rl", {})}
    changed = {k: v for k, v in asdict(cfg.rl).items() if k != "episodes" and ref.get(k) != v}
    return "_" + hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:8] if changed else ""


def _load_cotrained_base(folder, base, device):
    return _load_weights(base, folder / "cotrained_base.safetensors", device)


def stage_rl_quick(cfg: Config, run: RunDir, progress: bool = True):
    """The quick pipeline's RL: internal RL and raw-action RL, one seed, the post-training task."""
    for method in ("internal", "raw"):
        run_rl(cfg, run, method, progress=progress)
