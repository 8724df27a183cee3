"""One protocol that says how steerable a base model is (SPEC §4, paper Fig. 4 / A2).

``measure_steerability`` takes a finished base model and its clean data D* and reports, in one
``metrics.json``:

* how well it predicts: held-out action NLL and accuracy beside the Bayes-optimal predictor
  given o_1:t and the expert that knows the task;
* how well it plays: free play beside its ceiling (the expert that knows only the colours
  visited, sampled step by step);
* how well the subgoal is read out at the control layer (a linear probe);
* how well it is *steered*: supervised subgoal controllers at the control layer (the paper's
  budget by default: 3200 steps of batch 512, rank 16), rolled out on the pretraining tasks and
  on the post-training task, actions sampled (T = 1) and greedy;
* where controlled episodes of the post-training task fail: before the first colour, at each
  subgoal transition (marked seen or unseen in pretraining), inside a subgoal, by timeout.

The number to move is the pass rate of the unseen transitions: the share of the episodes that
reach one and get past it (the post-training task has five; 0.9 each gives 0.9^5 = 0.59).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..config import ConfigError
from ..data import Trajectories, expert_reference
from ..envs.gridworld import BatchedGridPinpad, GridSpec
from ..envs.tasks import Task
from ..models.sequence_model import SequenceModel
from .controllers import rollout_with_controllers, train_controllers, heldout_controlled_nll


@dataclass
class SteerabilityConfig:
    """The protocol's settings; the defaults are the paper's controller budget (Fig. A2)."""

    layer: int = -1  # -1: depth // 2
    rank: int = 16  # 0: full rank
    steps: int = 3200
    batch_size: int = 512
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    final_lr_fraction: float = 0.0
    episodes: int = 1024  # per rollout evaluation
    probe_episodes: int = 1500  # episodes whose residuals fit the subgoal probe (500 more score it)
    seed: int = 0

    def validate(self, depth: int, width: int) -> "SteerabilityConfig":
        checks = [
            ("layer", -1 <= self.layer <= depth, f"-1 or in 0..{depth}"),
            ("rank", 0 <= self.rank <= width, f"in 0..{width} (0: full)"),
            ("steps", self.steps >= 1, "at least 1"),
            ("batch_size", self.batch_size >= 1, "at least 1"),
            ("lr", 0 < self.lr < float("inf"), "a positive finite number"),
            ("weight_decay", self.weight_decay >= 0, "non-negative"),
            ("episodes", self.episodes >= 1, "at least 1"),
            ("probe_episodes", self.probe_episodes >= 10, "at least 10"),
            ("seed", self.seed >= 0, "non-negative"),
        ]
        for name, ok, what in checks:
            if not ok:
                raise ConfigError(f"steerability {name} must be {what}, got {getattr(self, name)!r}")
        return self


def subgoal_of_colour(colour: int, spec: GridSpec) -> int:
    return colour // spec.colours_per_subgoal


def seen_transitions(tasks: list[Task], spec: GridSpec) -> set[tuple[int, int]]:
    """The (subgoal, next subgoal) pairs that occur in ``tasks``."""
    per = spec.colours_per_subgoal
    seen = set()
    for t in tasks:
        goals = [subgoal_of_colour(c, spec) for c in t[::per]]
        seen.update(zip(goals[:-1], goals[1:]))
    return seen


def failure_breakdown(res: dict, task: Task, seen: set[tuple[int, int]], spec: GridSpec) -> dict:
    """Where the episodes of one task ended, from :func:`rollout_with_controllers`' counts.

    ``stages[k]`` describes the move from k colours done to k + 1: ``reached`` episodes got to
    k, ``passed`` got beyond it, ``wrong_colour`` / ``timeout`` ended there; ``kind`` is
    ``first_colour`` (k = 0), ``inside_subgoal`` (within a pair) or ``transition`` (a new pair
    starts; ``seen`` says whether that subgoal transition occurs in pretraining)."""
    per = spec.colours_per_subgoal
    progress = np.asarray(res["progress_counts"])
    by_colour = np.asarray(res["wrong_colour_counts"])
    wrong = by_colour.sum(1)
    timeout = np.asarray(res["timeout_counts"])
    n = int(progress.sum())
    reached = n - np.concatenate([[0], np.cumsum(progress)[:-1]])  # episodes that got to k colours
    stages = []
    for k in range(len(task)):
        entry = {"colours_done": k, "next_colour": int(task[k]), "reached": int(reached[k]),
                 "passed": int(reached[k + 1]) if k + 1 < len(reached) else int(reached[k] - progress[k]),
                 "wrong_colour": int(wrong[k]), "timeout": int(timeout[k]),
                 # the colours the failed episodes walked onto instead
                 "wrong_colours": {str(c): int(n) for c, n in enumerate(by_colour[k]) if n}}
        if k == 0:
            entry["kind"] = "first_colour"
        elif k % per:
            entry["kind"] = "inside_subgoal"
        else:
            pair = (subgoal_of_colour(task[k - 1], spec), subgoal_of_colour(task[k], spec))
            entry.update(kind="transition", subgoals=list(pair), seen=pair in seen)
        entry["pass_rate"] = entry["passed"] / entry["reached"] if entry["reached"] else None
        stages.append(entry)

    def share(kind, **cond):
        rows = [s for s in stages if s["kind"] == kind and all(s.get(k) == v for k, v in cond.items())]
        return {"episodes_failed": int(sum(s["wrong_colour"] + s["timeout"] for s in rows)),
                "reached": int(sum(s["reached"] for s in rows)), "passed": int(sum(s["passed"] for s in rows)),
                "pass_rate": (sum(s["passed"] for s in rows) / sum(s["reached"] for s in rows))
                if sum(s["reached"] for s in rows) else None}

    return {
        "episodes": n, "success_rate": float(res["success_rate"]),
        "before_first_colour": share("first_colour"),
        "unseen_transitions": share("transition", seen=False),
        "seen_transitions": share("transition", seen=True),
        "inside_subgoal": share("inside_subgoal"),
        "timeouts": int(timeout.sum()),
        "stages": stages,
    }


def measure_steerability(model: SequenceModel, data: Trajectories, spec: GridSpec, pretrain: list[Task],
                         posttrain: Task, sc: SteerabilityConfig, device, val_fraction: float = 0.05,
                         progress: bool = True, log=print, base_metrics: dict | None = None) -> tuple[dict, object]:
    """Run the whole protocol on ``model`` (frozen) with D* = ``data``. ``base_metrics`` (the
    base-model stage's headline) supplies the held-out NLL and its references when present.
    Returns the metrics and the trained controllers."""
    from ..experts.grid import task_marginal_free_play, task_marginal_reference
    from ..evaluate import rollout_base_model
    from ..train import evaluate_heldout
    from .probes import probe_layers

    layer = model.depth // 2 if sc.layer < 0 else sc.layer
    t_start = time.perf_counter()
    train_idx, val_idx = data.split(val_fraction)
    out: dict = {"protocol": asdict(sc), "layer": layer}

    # 1. prediction
    t0 = time.perf_counter()
    if base_metrics and "bayes_optimal_nll" in base_metrics:
        pred = {k: base_metrics[k] for k in ("heldout_action_nll", "heldout_action_accuracy", "bayes_optimal_nll",
                                              "bayes_optimal_accuracy", "expert_action_nll", "expert_action_accuracy")}
    else:
        held = evaluate_heldout(model, data, val_idx, 256, device)
        val_arrays = {k: v[val_idx] for k, v in data.arrays.items()}
        ref = expert_reference(val_arrays)
        marg = task_marginal_reference(val_arrays, pretrain, spec)
        pred = {"heldout_action_nll": held["action_nll"], "heldout_action_accuracy": held["action_accuracy"],
                "bayes_optimal_nll": marg["posterior_nll"], "bayes_optimal_accuracy": marg["posterior_accuracy"],
                "expert_action_nll": ref["nll"], "expert_action_accuracy": ref["accuracy"]}
    pred["nll_gap_to_bayes"] = pred["heldout_action_nll"] - pred["bayes_optimal_nll"]
    out["prediction"] = pred
    log(f"steerability: held-out NLL {pred['heldout_action_nll']:.3f} (Bayes-optimal {pred['bayes_optimal_nll']:.3f}, "
        f"gap {pred['nll_gap_to_bayes']:.3f}), accuracy {pred['heldout_action_accuracy']:.3f}")

    # 2. free play, sampled and greedy, beside the ceiling
    seed = sc.seed + 5000
    free = {}
    for mode, temp in (("sampled", 1.0), ("greedy", 0.0)):
        env = BatchedGridPinpad(sc.episodes, pretrain, spec, seed=seed)
        r = rollout_base_model(model, env, free_play=True, seed=seed, temperature=temp, device=device)
        free[mode] = r["success_rate"]
        if mode == "sampled":
            free["failures"] = r["failures"]
    free["ceiling"] = task_marginal_free_play(BatchedGridPinpad(sc.episodes, pretrain, spec, seed=seed), seed=seed)
    out["free_play"] = free
    log(f"steerability: free play {free['sampled']:.3f} sampled, {free['greedy']:.3f} greedy "
        f"(ceiling {free['ceiling']:.3f}); {time.perf_counter() - t0:.0f} s")

    # 3. the subgoal probe at the control layer
    t0 = time.perf_counter()
    fit_idx = train_idx[: sc.probe_episodes]
    test_idx = val_idx[: max(10, sc.probe_episodes // 3)]
    probe = probe_layers(model, data, fit_idx, test_idx, spec.num_subgoals, device)
    out["probe"] = {"accuracy_at_layer": probe["accuracy_per_layer"][layer],
                    "accuracy_per_layer": probe["accuracy_per_layer"],
                    "majority_class_rate": probe["majority_class_rate"]}
    log(f"steerability: subgoal probe at layer {layer}: {out['probe']['accuracy_at_layer']:.3f} "
        f"(per layer " + " ".join(f"{a:.2f}" for a in probe["accuracy_per_layer"]) + f"); {time.perf_counter() - t0:.0f} s")

    # 4. supervised controllers at the control layer
    t0 = time.perf_counter()
    ctl, curve = train_controllers(model, data, train_idx, layer, spec.num_subgoals, sc, sc.seed + 2000, device,
                                   progress, cache=True)
    train_seconds = time.perf_counter() - t0
    out["controllers"] = {
        "train_seconds": train_seconds, "final_train_nll": curve[-1][1], "curve": curve,
        "heldout_nll": heldout_controlled_nll(model, ctl, layer, data, val_idx, 256, device),
    }
    seen = seen_transitions(pretrain, spec)
    for mode, greedy in (("sampled", False), ("greedy", True)):
        for name, tasks, offset in (("pretrain", pretrain, 1), ("posttrain", [posttrain], 0)):
            env = BatchedGridPinpad(sc.episodes, tasks, spec, seed=seed + offset)
            r = rollout_with_controllers(model, ctl, layer, env, seed + offset, device, greedy=greedy)
            key = f"{name}_{mode}"
            out["controllers"][key] = r["success_rate"]
            if name == "posttrain":
                out["controllers"][f"posttrain_failures_{mode}"] = failure_breakdown(r, posttrain, seen, spec)
            elif len({len(t) for t in pretrain}) == 1:  # every pretraining task has the same shape
                b = failure_breakdown(r, pretrain[0], seen, spec)
                for st in b["stages"]:  # the task differs by episode: keep only the shape
                    st.pop("next_colour")
                    st.pop("subgoals", None)
                out["controllers"][f"pretrain_failures_{mode}"] = b
        env = BatchedGridPinpad(sc.episodes, [posttrain], spec, seed=seed)
        out["controllers"][f"posttrain_uncontrolled_{mode}"] = rollout_with_controllers(
            model, None, layer, env, seed, device, greedy=greedy)["success_rate"]
    c = out["controllers"]
    unseen = c["posttrain_failures_sampled"]["unseen_transitions"]["pass_rate"]
    log(f"steerability: controllers at layer {layer} ({sc.steps} steps of {sc.batch_size}, {train_seconds:.0f} s): "
        f"post-training task {c['posttrain_sampled']:.3f} sampled / {c['posttrain_greedy']:.3f} greedy, pretraining "
        f"tasks {c['pretrain_sampled']:.3f} / {c['pretrain_greedy']:.3f}; unseen transitions passed "
        f"{'n/a' if unseen is None else f'{unseen:.3f}'} (sampled)")
    out["headline"] = {
        "heldout_action_nll": pred["heldout_action_nll"], "bayes_optimal_nll": pred["bayes_optimal_nll"],
        "free_play": free["sampled"], "free_play_ceiling": free["ceiling"],
        "probe_at_layer": out["probe"]["accuracy_at_layer"], "layer": layer,
        "posttrain_sampled": c["posttrain_sampled"], "posttrain_greedy": c["posttrain_greedy"],
        "pretrain_sampled": c["pretrain_sampled"], "pretrain_greedy": c["pretrain_greedy"],
        "unseen_transition_pass_rate_sampled": unseen,
        "unseen_transition_pass_rate_greedy": c["posttrain_failures_greedy"]["unseen_transitions"]["pass_rate"],
        "seconds": time.perf_counter() - t_start,
    }
    return out, ctl


def plot_steerability(m: dict, path, title: str = "") -> None:
    """Four panels: prediction, free play, controller success, and the post-training task's
    pass rate at every colour (unseen transitions marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(17, 3.8))
    p = m["prediction"]
    ax[0].bar(["model", "Bayes-optimal", "task known"],
              [p["heldout_action_nll"], p["bayes_optimal_nll"], p["expert_action_nll"]], color=["C0", "grey", "silver"])
    ax[0].set_ylabel("held-out action NLL (nats)")
    ax[0].set_title("prediction")
    f = m["free_play"]
    ax[1].bar(["sampled", "greedy", "ceiling"], [f["sampled"], f["greedy"], f["ceiling"]], color=["C0", "C1", "grey"])
    ax[1].set_ylim(0, 1)
    ax[1].set_title("free play (completes a pretraining task)")
    c = m["controllers"]
    x = np.arange(2)
    ax[2].bar(x - 0.2, [c["pretrain_sampled"], c["posttrain_sampled"]], 0.4, label="sampled")
    ax[2].bar(x + 0.2, [c["pretrain_greedy"], c["posttrain_greedy"]], 0.4, label="greedy")
    ax[2].axhline(0.5, color="grey", ls="--", lw=1, label="paper level (post-training)")
    ax[2].set_xticks(x, ["pretraining tasks", "post-training task"])
    ax[2].set_ylim(0, 1)
    ax[2].set_title(f"supervised controllers at layer {m['layer']}")
    ax[2].legend(fontsize=8)
    for mode, colour in (("sampled", "C0"), ("greedy", "C1")):
        st = c[f"posttrain_failures_{mode}"]["stages"]
        ks = [s["colours_done"] for s in st]
        ax[3].plot(ks, [np.nan if s["pass_rate"] is None else s["pass_rate"] for s in st], "o-", color=colour, label=mode)
        for s in st:
            if s["kind"] == "transition" and not s["seen"] and mode == "sampled":
                ax[3].axvspan(s["colours_done"] - 0.4, s["colours_done"] + 0.4, color="red", alpha=0.12)
    ax[3].set_ylim(0, 1.02)
    ax[3].set_xlabel("colours done (red: an unseen subgoal transition next)")
    ax[3].set_ylabel("pass rate of the next colour")
    ax[3].set_title("post-training task, controlled")
    ax[3].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_steerability(root, sc: SteerabilityConfig, name: str = "steerability", progress: bool = True,
                     log=print, snapshot: int | None = None) -> dict:
    """The protocol on the base model of the run directory ``root`` (or on its training snapshot
    at step ``snapshot``): writes ``root/name/`` (``metrics.json``, ``steerability.png``, the
    controllers) and returns the metrics. A finished folder is never overwritten: its metrics
    are returned as they are."""
    import json
    from pathlib import Path

    from ..envs.tasks import parse_task_set
    from ..rundir import RunDir, RunDirError, stored_config
    from ..pipeline import clean_data
    from ..train import load_model, resolve_device, save_weights, snapshot_name, snapshot_steps

    root = Path(root)
    cfg = stored_config(root)
    if cfg is None:
        raise RunDirError(f"{root} is not an internalrl run directory (no run.json); give the --out folder of "
                          "`internalrl run` or `internalrl train`")
    run = RunDir(root, cfg, create=False)
    if not name or "/" in name or name.startswith("."):
        raise RunDirError(f"--name must be a plain folder name, got {name!r}")
    if run.done(name):
        log(f"steerability: {root / name} is finished; its numbers are kept (pass another --name for new settings)")
        return json.loads((root / name / "metrics.json").read_text())
    device = resolve_device(cfg.train.device)
    base_dir = run.require("base_model", "train")
    if snapshot is None:
        model = load_model(base_dir, device=device)
    else:
        snaps = snapshot_steps(base_dir)
        if snapshot not in snaps:
            raise RunDirError(f"{base_dir} has no snapshot at step {snapshot}; it has: {', '.join(map(str, snaps))}")
        model = load_model(base_dir / "snapshots", name=snapshot_name(snapshot), device=device)
    sc.validate(model.depth, model.cfg.width)
    data = clean_data(cfg, run)
    spec = cfg.env.spec()
    pre = parse_task_set(cfg.env.pretrain_tasks, spec.num_objects)
    post = parse_task_set(cfg.env.posttrain_task, spec.num_objects)[0]
    base = run.metrics("base_model", "train").get("headline", {})
    steps = cfg.train.steps if snapshot is None else snapshot
    metrics, ctl = measure_steerability(model, data, spec, pre, post, sc, device, cfg.data.val_fraction,
                                        progress=progress, log=log,
                                        base_metrics=base if snapshot is None else None)
    seconds = base.get("train_seconds")
    metrics["base_model"] = {"steps": steps, "snapshot": snapshot, "parameters": base.get("parameters"),
                             "model": asdict(cfg.model),
                             # a snapshot's share of the training time, by steps (the log keeps no clock)
                             "train_seconds": None if seconds is None else seconds * steps / cfg.train.steps}
    work = run.partial(name)
    save_weights(ctl, work / f"controllers_layer{metrics['layer']}.safetensors")
    plot_steerability(metrics, work / "steerability.png", title=f"{root.name}: {steps} base-model steps")
    run.finish(name, {"steerability": asdict(sc)}, metrics)
    log(f"steerability: wrote {root / name}/metrics.json and steerability.png")
    return metrics
