"""Figures and the HTML report of a run directory. Each finished stage contributes a
section; figures are PNGs in ``figures/`` and embedded in ``report.html`` so the report is
one self-contained file."""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .atomic import write_bytes, write_text  # noqa: E402
from .envs.gridworld import BatchedGridPinpad, GridSpec, render_rgb  # noqa: E402


def _png(fig, path: Path) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, buf.getvalue())
    return base64.b64encode(buf.getvalue()).decode()


def _img(b64: str, caption: str) -> str:
    return f'<figure><img src="data:image/png;base64,{b64}"/><figcaption>{html.escape(caption)}</figcaption></figure>'


#: readable labels of the headline keys in results.json; a rate's value is shown as a percentage
LABELS = {
    "heldout_action_accuracy": "held-out next-action accuracy",
    "heldout_action_nll": "held-out next-action NLL (nats)",
    "heldout_obs_nll": "held-out next-observation NLL (nats)",
    "expert_action_accuracy": "expert knowing the task: accuracy",
    "expert_action_nll": "expert knowing the task: NLL (nats)",
    "task_marginal_expert_accuracy": "expert knowing only the colours visited: accuracy",
    "task_marginal_expert_nll": "expert knowing only the colours visited: NLL (nats)",
    "bayes_optimal_accuracy": "Bayes-optimal given the observations: accuracy",
    "bayes_optimal_nll": "Bayes-optimal given the observations: NLL (nats)",
    "train_seconds": "training time (s)",
    "parameters": "parameters",
    "source": "trained elsewhere",
    "free_play_completion": "free play: a pretraining task completed",
    "posttrain_success": "post-training task success",
    "pretrain_success": "pretraining tasks success",
    "free_play_task_marginal_reference": "free play of the expert knowing only the colours visited",
    "episodes_each": "episodes per evaluation",
    "seconds": "wall time (s)",
    "best_layer": "best layer (0 = embedding)",
    "majority_class_rate": "majority-class rate",
    "layer": "layer",
    "rank": "controller rank",
    "uncontrolled_posttrain_success": "uncontrolled: post-training task success",
    "uncontrolled_pretrain_success": "uncontrolled: pretraining tasks success",
    "heldout_nll": "held-out action NLL with the controllers (nats)",
    "uncontrolled_heldout_nll": "held-out action NLL, uncontrolled (nats)",
    "alpha": "KL weight α",
    "f1": "switch F1 against subgoal changes",
    "precision": "switch precision",
    "recall": "switch recall",
    "switches_per_episode": "switches per episode",
    "subgoals_per_episode": "subgoals per episode",
    "fraction_beta_intermediate": "β undecided (in 0.1–0.9)",
    "action_nll": "held-out action NLL (nats)",
    "kl": "KL per step (nats)",
    "first_step_f1_0.9": "first training step with switch F1 ≥ 0.9",
}
RATES = {"heldout_action_accuracy", "expert_action_accuracy", "task_marginal_expert_accuracy", "bayes_optimal_accuracy",
         "free_play_completion", "posttrain_success", "pretrain_success", "free_play_task_marginal_reference",
         "majority_class_rate", "uncontrolled_posttrain_success", "uncontrolled_pretrain_success",
         "fraction_beta_intermediate"}
REACHED = {"first_step_f1_0.9"}  # None: the threshold was never reached


def _label(key: str) -> str:
    if key.startswith("cotrained_"):
        return "co-trained: " + _label(key[len("cotrained_"):])
    return LABELS.get(key, key.replace("_", " "))


def _base_key(key: str) -> str:
    return key[len("cotrained_"):] if key.startswith("cotrained_") else key


def _value(key: str, v) -> str:
    base = _base_key(key)
    if v is None and base in REACHED:
        return "not reached"
    if base in RATES and isinstance(v, (int, float)):
        return f"{100 * v:.1f}%"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _table(rows: dict) -> str:
    """Rows of (label, value); headline keys get readable labels and units, empty values are left out."""
    cells = "".join(
        f"<tr><td>{html.escape(_label(str(k)))}</td><td>{html.escape(_value(str(k), v))}</td></tr>"
        for k, v in rows.items()
        if (v is not None or _base_key(str(k)) in REACHED) and v not in ("", [], {})
    )
    return f"<table>{cells}</table>"


def section_data(root: Path, figs: Path) -> str:
    card = json.loads((root / "data" / "metrics.json").read_text())["card"]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3))
    h = card["length"]["histogram"]
    ax[0].stairs(h["counts"], h["edges"], fill=True)
    ax[0].set(xlabel="episode length (steps)", ylabel="episodes", title="expert episode lengths")
    ax[1].bar(range(len(card["tasks"])), card["episodes_per_task"])
    ax[1].set_xticks(range(len(card["tasks"])), card["tasks"], rotation=70, fontsize=7)
    ax[1].set(title="episodes per pretraining task")
    gen = card["generation"]
    clean = ""
    if (root / "data_clean" / "DONE").exists():
        cc = json.loads((root / "data_clean" / "metrics.json").read_text())["card"]
        clean = (f"<p>The base model trains on D (ε = {card['epsilon']:g}); probes, controllers and the metacontroller "
                 f"use the clean set D* (ε = 0): {cc['num_episodes']} episodes, mean length {cc['length']['mean']:.1f}.</p>")
    return "<h2>Expert data</h2>" + clean + _table({
        "episodes": card["num_episodes"], "steps": card["num_steps"], "mean length": card["length"]["mean"],
        "expert success (ε=%g)" % card["epsilon"]: gen["expert_success_rate"],
        "layouts resampled (no safe path)": f"{gen['layouts_resampled_no_safe_path']} of {gen['layouts_sampled']} "
                                            f"({100 * gen['resample_fraction']:.1f}%)",
        "expert's own next-action accuracy": card["expert_reference"]["accuracy"],
        "generation seconds": gen["seconds"],
    }) + _img(_png(fig, figs / "data.png"), "Length histogram and task balance of the expert dataset.")


def section_base_model(root: Path, figs: Path) -> str:
    folder = root / "base_model"
    head = json.loads((folder / "metrics.json").read_text())["headline"]
    rows = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines() if line.strip()]
    tr = [r for r in rows if "action_nll" in r]
    va = [r for r in rows if "val_action_nll" in r]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3))
    ax[0].plot([r["step"] for r in tr], [r["action_nll"] for r in tr], label="train")
    ax[0].plot([r["step"] for r in va], [r["val_action_nll"] for r in va], "o-", label="held out")
    ax[0].axhline(head["expert_action_nll"], color="k", ls="--", label="expert (knows the task)")
    ax[0].axhline(head["task_marginal_expert_nll"], color="grey", ls=":", label="expert knowing only visits")
    if "bayes_optimal_nll" in head:
        ax[0].axhline(head["bayes_optimal_nll"], color="grey", ls="--", label="Bayes-optimal given o_1:t")
    ax[0].set(xlabel="step", ylabel="next-action NLL", yscale="log")
    ax[0].legend()
    if tr and "action_accuracy" in tr[0]:
        ax[1].plot([r["step"] for r in tr], [r["action_accuracy"] for r in tr], label="train")
        ax[1].plot([r["step"] for r in va], [r["val_action_accuracy"] for r in va], "o-", label="held out")
        ax[1].axhline(head["expert_action_accuracy"], color="k", ls="--", label="expert (knows the task)")
        ax[1].axhline(head["task_marginal_expert_accuracy"], color="grey", ls=":", label="expert knowing only visits")
        if "bayes_optimal_accuracy" in head:
            ax[1].axhline(head["bayes_optimal_accuracy"], color="grey", ls="--", label="Bayes-optimal given o_1:t")
        ax[1].set(xlabel="step", ylabel="next-action accuracy")
        ax[1].legend()
    return "<h2>Base model</h2>" + _table(head) + _img(
        _png(fig, figs / "base_model_training.png"),
        "Pretraining curves. The expert knows its task; the model must infer it from behaviour. The dotted line is "
        "the expert's distribution averaged over the tasks consistent with the colours visited so far, a fair bar.")


def section_eval_base(root: Path, figs: Path) -> str:
    folder = root / "eval_base"
    m = json.loads((folder / "metrics.json").read_text())
    spec = GridSpec(**json.loads((root / "data" / "metrics.json").read_text())["card"]["env"])
    ex = np.load(folder / "free_play_examples.npz", allow_pickle=False)
    n = len(ex["layout"])
    env = BatchedGridPinpad(n, [(0,)], spec, seed=0, require_solvable=False)
    env.reset()
    env.load_layout(ex["layout"].astype(np.int64), ex["paths"][:, 0])
    fig, axes = plt.subplots(1, n, figsize=(3 * n, 3))
    for i, ax in enumerate(np.atleast_1d(axes)):
        path = ex["paths"][i]
        env.agent[i] = path[-1]
        ax.imshow(render_rgb(env, i, path=path, cell_px=24))
        for k, cell in enumerate(env.colour_cell[i]):
            r, c = divmod(int(cell), spec.size)
            ax.text(c * 24 + 12, r * 24 + 12, str(k), ha="center", va="center", fontsize=8, color="white", weight="bold")
        ex_i = m["free_play"]["examples"][i] if i < len(m["free_play"].get("examples", [])) else None
        title = f"episode {i}" if ex_i is None else f"visited {ex_i['visited'] or '-'}: {'success' if ex_i['success'] else 'fail'}"
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    counts = m["free_play"]["task_counts"]
    curve = m["free_play"].get("over_training") or {}
    extra = ""
    if curve:
        fig2, ax2 = plt.subplots(figsize=(5, 3))
        steps = sorted(curve, key=int)
        ax2.plot([int(k) for k in steps], [curve[k] for k in steps], "o-")
        ax2.axhline(0.9, color="k", ls=":", label="target 0.9")
        if "task_marginal_reference" in m["free_play"]:
            ax2.axhline(m["free_play"]["task_marginal_reference"], color="grey", ls="--",
                        label="expert knowing only the visits")
        ax2.set(xlabel="base-model training step", ylabel="free-play completion", ylim=(-0.02, 1.02))
        ax2.legend(fontsize=8)
        extra = _img(_png(fig2, figs / "free_play_over_training.png"),
                     "Free-play completion of each training snapshot (same environments and seed).")
    return "<h2>Base model as a policy</h2>" + _table({k: v for k, v in m["headline"].items()
                                                      if k != "free_play_failures"}) + _img(
        _png(fig, figs / "free_play.png"),
        "Free-play rollouts of the base model (grey dots: path, black disc: final cell; walls dark grey).") + (
        "<p>Pretraining tasks the model chose to complete in free play: "
        + html.escape(", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))) + "</p>") + _failures(m["free_play"]) + extra


def _failures(free: dict) -> str:
    if "failures" not in free:
        return ""
    f = free["failures"]
    common = ", ".join(f"{k} ({v})" for k, v in free.get("common_failures", {}).items())
    return (f"<p>How the other free-play episodes ended: a wrong colour on the way to a subgoal's second colour "
            f"{100 * f['wrong_colour_within_subgoal']:.1f}%, a wrong colour when starting a new subgoal "
            f"{100 * f['wrong_colour_new_subgoal']:.1f}%, the horizon {100 * f['timeout']:.1f}%. "
            f"Most common colour sequences of the failed episodes (the last colour is the wrong one): "
            f"{html.escape(common)}.</p>")


SUBGOAL_NAMES = "ABCDEFGHIJKL"


def section_probes(root: Path, figs: Path) -> str:
    m = json.loads((root / "probes" / "metrics.json").read_text())
    acc = m["accuracy_per_layer"]
    fig, ax = plt.subplots(1, 3, figsize=(14, 3.2))
    ax[0].plot(range(len(acc)), acc, "o-")
    ax[0].axhline(m["majority_class_rate"], color="k", ls="--", label="majority class")
    ax[0].set(xlabel="layer (0 = embedding)", ylabel="subgoal probe accuracy", title="probe accuracy per layer")
    ax[0].legend()
    pos = np.array(m["accuracy_by_segment_position"], dtype=float)  # None (no such step) -> nan
    for layer in range(len(acc)):
        ax[1].plot(pos[layer], label=f"layer {layer}")
    ax[1].set(xlabel="steps since the subgoal began (last bin: ≥)", ylabel="accuracy", title="belief sharpening")
    ax[1].legend(fontsize=7)
    if m["over_training"]:
        steps = sorted(m["over_training"], key=int)
        grid = np.array([m["over_training"][s] for s in steps]).T
        im = ax[2].imshow(grid, aspect="auto", origin="lower", cmap="viridis")
        ax[2].set_xticks(range(len(steps)), steps, rotation=45, fontsize=7)
        ax[2].set(xlabel="base-model training step", ylabel="layer", title="probe accuracy over training")
        fig.colorbar(im, ax=ax[2])
    html_ = _img(_png(fig, figs / "probes.png"), "Linear probes of the ground-truth subgoal (held-out episodes).")
    ex = np.load(root / "probes" / "example_episode.npz", allow_pickle=False)
    probs, truth = ex["probs"], ex["subgoals"]
    layers, t, k = probs.shape
    fig, axes = plt.subplots(layers + 1, 1, figsize=(10, 0.55 * (layers + 1) + 0.6), sharex=True)
    colours = plt.cm.tab10(np.arange(k))
    axes[0].imshow(colours[truth][None], aspect="auto")
    axes[0].set_yticks([0], ["truth"])
    for layer in range(layers):
        rgb = (probs[layer][..., None] * colours[None, :, :3]).sum(1)  # mix colours by probability
        axes[layer + 1].imshow(rgb[None], aspect="auto")
        axes[layer + 1].set_yticks([0], [f"layer {layer}"])
    axes[-1].set_xlabel("time step")
    from matplotlib.patches import Patch

    names = ([f"colour {i}" for i in range(k)] if _env_name(root) == "ant"
             else [f"subgoal {SUBGOAL_NAMES[i]}" for i in range(k)])
    fig.legend(handles=[Patch(color=colours[i], label=names[i]) for i in range(k)],
               loc="upper center", bbox_to_anchor=(0.5, -0.03), ncol=k, fontsize=8, frameon=False)
    fig.suptitle("decoded subgoal along one held-out episode (each step's colour mixes the subgoals' colours by "
                 "the probe's probabilities)", fontsize=9)
    html_ += _img(_png(fig, figs / "probe_episode.png"), "Probe read-out per layer against the ground-truth subgoal.")
    return "<h2>Linear probes</h2>" + _table({k_: v for k_, v in m["headline"].items() if k_ != "accuracy_per_layer"}
                                          | {"accuracy per layer": " ".join(f"{a:.3f}" for a in acc)}) + html_


def section_controllers(root: Path, figs: Path) -> str:
    m = json.loads((root / "controllers" / "metrics.json").read_text())
    h = m["headline"]
    layers = sorted(m["per_layer"], key=int)
    per = m["per_layer"]
    greedy = next((k for k in ("posttrain_success_greedy", "posttrain_success_mean_actions") if k in per[layers[0]]), None)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    x = [int(l) for l in layers]
    ax.plot(x, [per[l]["posttrain_success"] for l in layers], "o-", label="post-training task")
    if greedy:
        ax.plot(x, [per[l][greedy] for l in layers], "^-.", label="post-training task, greedy actions")
    if "pretrain_success" in per[layers[0]]:
        ax.plot(x, [per[l]["pretrain_success"] for l in layers], "s--", label="pretraining tasks")
    ax.axhline(h["uncontrolled_posttrain_success"], color="k", ls=":", label="uncontrolled, post-training")
    ax.set(xlabel="controlled layer", ylabel="success rate", ylim=(-0.02, 1.02), title="supervised subgoal controllers")
    ax.legend(fontsize=8)
    rows = {k: v for k, v in h.items() if not k.endswith("_per_layer") and k != "layers"}
    html_ = "<h2>Supervised subgoal controllers</h2>" + _table(rows) + _img(
        _png(fig, figs / "controllers.png"),
        "Success when the controller of the current ground-truth subgoal acts at each layer (Fig. 4; actions sampled "
        "unless marked greedy).")
    counts = m["per_layer"][str(h["layer"])].get("posttrain_progress_counts")
    if counts:  # where post-training episodes stop: which transition the controllers fail to make
        fig, ax = plt.subplots(figsize=(6, 2.8))
        ax.bar(range(len(counts)), np.asarray(counts) / max(1, sum(counts)))
        ax.set(xlabel="colours of the post-training task visited when the episode ended",
               ylabel="fraction of episodes", title=f"controllers at layer {h['layer']}: where episodes end")
        html_ += _img(_png(fig, figs / "controllers_progress.png"),
                      "An episode that ends after k colours failed on the way to the next (on the ant, after 1: the "
                      "transition 0→1, never seen in pretraining)." if _env_name(root) == "ant" else
                      "An episode that ends after an even number of colours failed when a new subgoal began "
                      "(after 2: the transition A→B, never seen in pretraining); after an odd number, inside a subgoal.")
    return html_


def beta_plot(ax, gates: np.ndarray, subgoals: np.ndarray, mask: np.ndarray, title: str) -> None:
    """β over time for one episode on a background coloured by the ground-truth subgoal."""
    t = int(mask.sum())
    colours = plt.cm.tab10(np.arange(10))
    for i in range(t):
        ax.axvspan(i - 0.5, i + 0.5, color=colours[max(int(subgoals[i]), 0) % 10], alpha=0.25, lw=0)
    ax.plot(range(t), gates[:t], "k.-", lw=1, ms=3)
    ax.axhline(0.5, color="grey", ls=":", lw=0.8)
    ax.set(ylim=(-0.05, 1.05), xlim=(-0.5, t - 0.5), title=title)
    ax.title.set_fontsize(8)


def beta_grid(rows: list[tuple[str, dict]], cols: int = 4):
    """A figure of β over time: one row per (label, examples) pair, where examples holds the
    ``gates``, ``subgoals`` and ``mask`` of held-out episodes (a stage's ``*_examples.npz``),
    one column per episode (at most ``cols``)."""
    cols = min(cols, len(rows[0][1]["gates"]))
    fig, axes = plt.subplots(len(rows), cols, figsize=(3.5 * cols, 2.4 * len(rows)), sharey=True, squeeze=False,
                             layout="constrained")
    for r, (label, ex) in enumerate(rows):
        for c in range(cols):
            beta_plot(axes[r, c], ex["gates"][c], ex["subgoals"][c], ex["mask"][c], f"{label}: held-out episode {c}")
        axes[r, 0].set_ylabel("switch gate β")
    for c in range(cols):
        axes[-1, c].set_xlabel("step")
    return fig


def section_metacontroller(root: Path, figs: Path) -> str:
    m = json.loads((root / "metacontroller" / "metrics.json").read_text())
    fig = beta_grid([(k, np.load(root / "metacontroller" / f"{k}_examples.npz", allow_pickle=False))
                     for k in ("frozen", "cotrained")])
    html_ = _img(_png(fig, figs / "metacontroller_beta.png"),
                 "Switch gate β over time (background: ground-truth subgoal). Top: base model frozen; bottom: co-trained.")
    table = {k: v for k, v in m["headline"].items()}
    return "<h2>Metacontroller</h2>" + _table(table) + html_ + _meta_over_training(m, figs)


def _meta_over_training(m: dict, figs: Path) -> str:
    """Training NLL and KL, and the held-out switch F1 as it trained (runs made before the
    F1 was monitored have only the first)."""
    from .pipeline import MONITOR_EPISODES

    monitored = any(m.get(label, {}).get("over_training") for label in ("frozen", "cotrained"))
    fig, axes = plt.subplots(1, 1 + monitored, figsize=(5.5 * (1 + monitored), 3.2), layout="constrained",
                             squeeze=False)
    axes = axes[0]
    for label, style in (("frozen", "-"), ("cotrained", "--")):
        if "curve" not in m.get(label, {}):
            continue
        c = np.array(m[label]["curve"])
        axes[0].plot(c[:, 0], c[:, 1], style, color="C0", label=f"{label}: action NLL")
        axes[0].plot(c[:, 0], c[:, 2], style, color="C1", label=f"{label}: KL")
        mon = m[label].get("over_training") or []
        if mon:
            steps = [r["step"] for r in mon]
            axes[1].plot(steps, [r["f1"] for r in mon], style + "o", color="C2", ms=3, label=f"{label}: switch F1")
            axes[1].plot(steps, [r["fraction_beta_intermediate"] for r in mon], style, color="C3",
                         label=f"{label}: β in (0.1, 0.9)")
    start, steps = m.get("frozen", {}).get("binarize_from"), m.get("frozen", {}).get("curve", [[0]])[-1][0] + 1
    if start is not None and start < steps:  # the last steps train with a noisy switch
        for ax in axes:
            ax.axvspan(start, steps, color="0.85", lw=0, zorder=0, label="noisy (Gumbel) switch")
    axes[0].set(xlabel="metacontroller training step", ylabel="per step (training batch)", yscale="log",
                title="loss terms (α = 0 for the first steps, so the KL is free)")
    if monitored:
        axes[1].set(xlabel="metacontroller training step", ylim=(-0.02, 1.02),
                    title=f"held-out switch ({MONITOR_EPISODES} episodes)")
    for ax in axes:
        ax.legend(fontsize=7)
    return _img(_png(fig, figs / "metacontroller_over_training.png"),
                "While the metacontroller trains: the action NLL and KL of its training batches (left), and on held-out "
                "episodes how well its switch matches the subgoal changes and how much of β is undecided (right). Grey: the "
                "frozen metacontroller's last steps, trained with logistic noise on the switch logit to make β binary.")


def section_alpha_sweep(root: Path, figs: Path) -> str:
    m = json.loads((root / "alpha_sweep" / "metrics.json").read_text())
    b64 = base64.b64encode((root / "alpha_sweep" / "rate_distortion.png").read_bytes()).decode()
    rows = "".join(f"<tr><td>{p['variant']}</td><td>{p['alpha']:g}</td><td>{p['action_nll']:.3f}</td><td>{p['kl']:.3f}</td>"
                   f"<td>{p['f1']:.3f}</td><td>{p['switches_per_episode']:.2f}</td><td>{p['fraction_beta_intermediate']:.3f}</td></tr>"
                   for p in m["points"])
    head = "<tr><td>variant</td><td>α</td><td>action NLL</td><td>KL</td><td>switch F1</td><td>switches/ep.</td><td>β in (0.1, 0.9)</td></tr>"
    return ("<h2>α sweep (rate–distortion)</h2>" + _img(b64, "Each α's metacontroller on the rate–distortion plane; stars: "
            "switching aligned with subgoal changes.") + f"<table>{head}{rows}</table>")


RL_OFFSET = 0.01  # the RL figure draws the k-th curve this much higher, so coinciding curves stay apart


def section_rl(root: Path, figs: Path) -> str:
    runs = sorted(p for p in root.glob("rl_*") if (p / "DONE").exists())
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    rows = {}
    styles = ("-", "--", ":", "-.")
    markers = ("o", "s", "^", "v", "D", "x")
    for i, p in enumerate(runs):
        m = json.loads((p / "metrics.json").read_text())
        curve = np.array(m["curve"])
        for ax in axes:  # curves that coincide (e.g. all at 0) stay apart: line style, marker, a small offset
            ax.plot(curve[:, 0], curve[:, 1] + RL_OFFSET * i, styles[i % len(styles)], marker=markers[i % len(markers)],
                    markevery=max(1, len(curve) // 8), ms=4, lw=1.8 - 0.3 * (i % 3), alpha=0.85, label=p.name[3:])
        h = m["headline"]
        reached = (f"success 0.8 first reached after {h['episodes_to_0.8']} episodes" if h["episodes_to_0.8"]
                   else "success 0.8 not reached")
        rows[p.name[3:]] = (f"final success {100 * h['final_success']:.1f}% after {h['episodes']} episodes; "
                            f"{reached}; {h['seconds']:.0f} s")
    axes[0].set(xlabel="episodes", ylabel="success rate (batch)", ylim=(-0.02, 1.02), title="RL on the task (linear)")
    axes[1].set(xlabel="episodes", xscale="log", ylim=(-0.02, 1.02), title="log axis")
    axes[0].legend(fontsize=7)
    return "<h2>Reinforcement learning</h2>" + _table(rows) + _img(
        _png(fig, figs / "rl.png"), "Success rate of each PPO batch against episodes (one seed each; the k-th curve is "
        f"drawn {RL_OFFSET:g}·k higher so that curves that coincide stay visible).")


def plot_rate_distortion(points: list[dict], path, aligned_f1: float = 0.8) -> None:
    """The α sweep on the rate–distortion plane: x action NLL, y KL per step (log axis, so
    that α = 0's tens of nats and the collapsed codes' 1e-4 both show), one line per variant,
    each point labelled with α and its switch F1, gold stars where F1 ≥ ``aligned_f1``."""
    floor = 1e-4
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for label, marker in (("frozen", "o"), ("cotrained", "s")):
        pts = sorted((p for p in points if p["variant"] == label), key=lambda p: p["alpha"])
        if not pts:
            continue
        x, y = [p["action_nll"] for p in pts], [max(p["kl"], floor) for p in pts]
        ax.plot(x, y, marker + "-", label=label, alpha=0.7)
        for p, yy in zip(pts, y):
            if p["f1"] >= aligned_f1:
                ax.plot(p["action_nll"], yy, "*", color="gold", ms=16, mec="k", zorder=5)
            ax.annotate(f"α={p['alpha']:g}, F1 {p['f1']:.2f}", (p["action_nll"], yy), fontsize=6.5,
                        xytext=(4, 2 if label == "frozen" else -9), textcoords="offset points")
    ax.plot([], [], "*", color="gold", ms=12, mec="k", label=f"aligned (switch F1 ≥ {aligned_f1})")
    ax.set_yscale("log")
    ax.set(xlabel="held-out action NLL (distortion)", ylabel=f"KL per step (rate; floor {floor:g})",
           title="metacontroller rate–distortion over α")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_experiment(bands: dict[str, tuple[np.ndarray, np.ndarray]], path, labels: dict[str, str] | None = None,
                    scan: dict[str, dict[float, list[float]]] | None = None) -> None:
    """Fig. 8: for each method, the median success over its runs and the 25–75% band against
    episodes, on a linear and a log axis. ``bands[method]``: episodes ``(points,)`` and the
    runs' success ``(runs, points)``; ``labels[method]``: its legend entry (e.g. with the chosen
    learning rate). ``scan[method][lr]``: the final success of each run at that learning rate, drawn
    in a third panel (median and 25–75% range against the learning rate, Fig. A5's scan)."""
    labels = labels or {}
    fig, axes = plt.subplots(1, 3 if scan else 2, figsize=(18 if scan else 12, 3.8))
    colors = {}
    for method, (x, y) in bands.items():
        med, lo, hi = np.median(y, 0), np.percentile(y, 25, 0), np.percentile(y, 75, 0)
        for ax in axes[:2]:
            line, = ax.plot(x, med, label=labels.get(method, f"{method} ({len(y)} runs)"))
            ax.fill_between(x, lo, hi, alpha=0.25, color=line.get_color())
            colors[method] = line.get_color()
    axes[0].set(xlabel="episodes", ylabel="success rate", ylim=(-0.02, 1.02), title="median and 25–75% band")
    axes[1].set(xlabel="episodes (log)", xscale="log", ylim=(-0.02, 1.02), title="log axis")
    axes[1].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # decades only: minor labels overlap
    axes[0].legend(fontsize=8)
    if scan:
        ax = axes[2]
        for method, per_lr in scan.items():
            lrs = sorted(lr for lr, f in per_lr.items() if f)
            if not lrs:
                continue
            med = [np.median(per_lr[lr]) for lr in lrs]
            err = [[m - np.percentile(per_lr[lr], 25) for lr, m in zip(lrs, med)],
                   [np.percentile(per_lr[lr], 75) - m for lr, m in zip(lrs, med)]]
            ax.errorbar(lrs, med, yerr=err, marker="o", capsize=3, label=method, color=colors.get(method))
        ax.set(xlabel="learning rate (log)", xscale="log", ylabel="final success", ylim=(-0.02, 1.02),
               title="learning-rate scan: median, 25–75%")
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def headline_lines(results: dict) -> list[str]:
    """The run's headline numbers in a few readable lines (what ``internalrl run`` prints at the end),
    from ``results.json``; stages the run does not have are left out."""
    lines = []
    b, e = results.get("base_model"), results.get("eval_base")
    if b and "expert_action_entropy" in b:  # the ant: Gaussian torques
        lines.append(f"base model: held-out action NLL {b['heldout_action_nll']:.3f} nats "
                     f"(the expert's own entropy {b['expert_action_entropy']:.3f})")
    elif b:
        lines.append(f"base model: held-out next-action accuracy {100 * b['heldout_action_accuracy']:.1f}% "
                     f"(Bayes-optimal {100 * b['bayes_optimal_accuracy']:.1f}%)" if "bayes_optimal_accuracy" in b else
                     f"base model: held-out next-action accuracy {100 * b['heldout_action_accuracy']:.1f}%")
    if e and "free_play_normalised" in e:
        norm = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(f"free play: {100 * e['free_play_success']:.1f}% (normalised by the expert {norm(e['free_play_normalised'])}); "
                     f"post-training task {100 * e['posttrain_success']:.1f}% (normalised {norm(e['posttrain_normalised'])})")
    elif e:
        lines.append(f"free play: {100 * e['free_play_completion']:.1f}% of episodes complete a pretraining task; "
                     f"post-training task {100 * e['posttrain_success']:.1f}%")
    if results.get("probes"):
        p = results["probes"]
        lines.append(f"probes: subgoal decoded best at layer {p['best_layer']} "
                     f"({100 * max(p['accuracy_per_layer']):.1f}%, majority class {100 * p['majority_class_rate']:.1f}%)")
    if results.get("controllers"):
        c = results["controllers"]
        lines.append(f"subgoal controllers at layer {c['layer']}: post-training task {100 * c['posttrain_success']:.1f}% "
                     f"(uncontrolled {100 * c['uncontrolled_posttrain_success']:.1f}%)")
    if results.get("metacontroller"):
        m = results["metacontroller"]
        lines.append(f"metacontroller: switch F1 {m['f1']:.3f} ({m['switches_per_episode']:.2f} switches per episode, "
                     f"{m['subgoals_per_episode']:.2f} subgoals); co-trained F1 {m['cotrained_f1']:.3f}")
    for name, h in sorted(results.items()):
        if name.startswith("rl_") and isinstance(h, dict) and "final_success" in h:
            lines.append(f"RL {h['method']} on {h['task']}: final success {100 * h['final_success']:.1f}% "
                         f"after {h['episodes']} episodes")
    i = results.get("injection")
    if i:
        pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        lines.append(f"code injection: mid-episode {pct(i['mid_episode_success_without'])} -> "
                     f"{pct(i['mid_episode_success_with'])}; at the first unseen transition "
                     f"{pct(i['unseen_transition_success_without'])} -> {pct(i['unseen_transition_success_with'])}")
    return lines


def _env_name(root: Path) -> str:
    from .rundir import stored_env

    return stored_env(root) or "grid"


def section_injection(root: Path, figs: Path) -> str:
    """Latent code injection (Fig. A4): goal-reaching with and without a subgoal's code put in force."""
    m = json.loads((root / "injection" / "metrics.json").read_text())
    mid, unseen = m["mid_episode"], m["unseen_transition"]
    unit = "colour" if _env_name(root) == "ant" else "subgoal"
    bars = [(f"mid-episode (step {m['inject_step']})", mid), (f"after the first {unit} ({unseen['from']} → {unseen['to']})", unseen)]
    fig, ax = plt.subplots(figsize=(6, 3))
    x = np.arange(len(bars))
    for j, (arm, colour) in enumerate((("success_without", "0.6"), ("success_with", "C0"))):
        vals = [np.nan if b[arm] is None else b[arm] for _, b in bars]
        ax.bar(x + (j - 0.5) * 0.35, vals, 0.35, color=colour, label=arm.replace("success_", "") + " injection")
    ax.set_xticks(x, [label for label, _ in bars], fontsize=8)
    ax.set(ylabel=f"target {unit} reached", ylim=(0, 1))
    ax.legend(fontsize=8)
    return ("<h2>Latent code injection</h2><p>Codes drawn from the metacontroller's prior and its own switch; the code in "
            f"force when an episode completed a {unit} is that {unit}'s. Injected (and held until the next visit) "
            f"at step {m['inject_step']} of new layouts, and right after the post-training task's first {unit}, where the "
            "transition was never seen in pretraining.</p>"
            + _table({k: v for k, v in m["headline"].items()}) + _img(_png(fig, figs / "injection.png"),
                                                                     "Goal-reaching with and without the injected code."))


def section_ant_data(root: Path, figs: Path) -> str:
    rows = {}
    for stage, label in (("data", "D (sampled expert actions)"), ("data_clean", "D* (mean expert actions)")):
        if (root / stage / "DONE").exists():
            h = json.loads((root / stage / "metrics.json").read_text())["headline"]
            rows[label] = (f"{h['episodes']} episodes, {h['steps']} steps (mean length {h['mean_length']:.0f}); "
                           f"expert success {100 * h['expert_success_rate']:.1f}%")
    return "<h2>Expert data</h2>" + _table(rows)


def section_ant_base_model(root: Path, figs: Path) -> str:
    folder = root / "base_model"
    head = json.loads((folder / "metrics.json").read_text())["headline"]
    rows = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines() if line.strip()]
    tr, va = [r for r in rows if "action_nll" in r], [r for r in rows if "val_action_nll" in r]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot([r["step"] for r in tr], [r["action_nll"] for r in tr], label="train")
    ax.plot([r["step"] for r in va], [r["val_action_nll"] for r in va], "o-", label="held out")
    ax.axhline(head["expert_action_entropy"], color="k", ls="--", label="the expert's own entropy")
    ax.set(xlabel="step", ylabel="next-action NLL (nats, 8 torques)")
    ax.legend(fontsize=8)
    return "<h2>Base model</h2>" + _table(head) + _img(
        _png(fig, figs / "base_model_training.png"),
        "Pretraining curve. The expert's entropy is the NLL a model that knew the task and the state would score on D.")


def section_ant_eval_base(root: Path, figs: Path) -> str:
    h = json.loads((root / "eval_base" / "metrics.json").read_text())["headline"]
    return ("<h2>Base model as a policy</h2><p>Normalised: success divided by the shipped expert's on the same tasks, "
            "seeds and episode counts, as the paper reports the ant.</p>"
            + _table({k: v for k, v in h.items() if k != "free_play_outcomes"})
            + "<p>How free-play episodes ended: " + html.escape(", ".join(
                f"{k} {100 * v:.1f}%" for k, v in h["free_play_outcomes"].items())) + "</p>")


ANT_SECTIONS = [("data", section_ant_data), ("base_model", section_ant_base_model), ("eval_base", section_ant_eval_base),
                ("probes", section_probes), ("controllers", section_controllers),
                ("metacontroller", section_metacontroller), ("alpha_sweep", section_alpha_sweep)]

SECTIONS = [("data", section_data), ("base_model", section_base_model), ("eval_base", section_eval_base),
            ("probes", section_probes), ("controllers", section_controllers),
            ("metacontroller", section_metacontroller), ("alpha_sweep", section_alpha_sweep)]


def finish_run(run, seconds: float) -> Path:
    """The end of ``internalrl run``: record its wall time, write the report, print the headline numbers."""
    run.update_results("wall_seconds_last_invocation", {"seconds": seconds})
    report = write_report(run.root)
    print(f"[internalrl] done in {seconds / 60:.1f} min", flush=True)
    for line in headline_lines(run.results()):
        print(f"  {line}")
    print(f"[internalrl] report: {report}; every number: {run.root / 'results.json'}")
    return report


def write_report(root: str | Path) -> Path:
    root = Path(root)
    figs = root / "figures"
    from .rundir import read_run_json

    meta = read_run_json(root)
    prov = meta.get("provenance") or {}
    made = (f" Made {html.escape(str(prov.get('date', '?')))} by <code>{html.escape(str(prov.get('command', '?')))}</code> "
            f"at commit {html.escape(str(prov.get('git_commit') or 'unknown'))}"
            f"{' (with uncommitted changes)' if prov.get('git_dirty') else ''}; "
            + html.escape(", ".join(f"{k} {v}" for k, v in (prov.get("dependencies") or {}).items())) + "."
            if prov else "")
    body = [f"<h1>internalrl run: {html.escape(str(root))}</h1>",
            f"<p>internalrl {html.escape(str(meta.get('internalrl_version', '?')))}, seed "
            f"{html.escape(str(meta['config'].get('seed', '?')))}.{made} "
            "Every number below was measured in this run; <code>results.json</code> has them all (timings apart, "
            "under <code>timings</code>); each stage's <code>provenance.json</code> records the code that made it.</p>"]
    for stage, fn in ANT_SECTIONS if _env_name(root) == "ant" else SECTIONS:
        if (root / stage / "DONE").exists():
            body.append(fn(root, figs))
    if any((p / "DONE").exists() for p in root.glob("rl_*")):
        body.append(section_rl(root, figs))
        body.append(section_closed_loop(root))
    if (root / "injection" / "DONE").exists():
        body.append(section_injection(root, figs))
    body.append("<h2>Config</h2><pre>" + html.escape(json.dumps(meta["config"], indent=1)) + "</pre>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse}td{border:1px solid #ccc;padding:3px 8px}"
             "figure{margin:1em 0}img{max-width:100%}figcaption{color:#555;font-size:90%}")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>internalrl report</title><style>{style}</style></head><body>{''.join(body)}</body></html>"
    return write_text(root / "report.html", page)


def section_closed_loop(root: Path) -> str:
    """Each internal-RL run's trained policy in closed loop: its switches against the subgoal changes
    the episodes reached (beside the metacontroller's teacher-forced F1 on expert data) and what its codes carry."""
    def num(x):
        return "–" if x is None else f"{x:.3f}"

    def probe(p):
        return "–" if p is None else f"{p['accuracy']:.2f} (majority {p['majority_class_rate']:.2f})"

    rows = []
    for p in sorted(root.glob("rl_*")):
        c = json.loads((p / "metrics.json").read_text()).get("closed_loop") if (p / "DONE").exists() else None
        if not c:
            continue
        sw, codes = c["switching"], c["codes"]
        rows.append(f"<tr><td>{html.escape(p.name[3:])}</td><td>{c['success_rate']:.3f}</td><td>{num(c.get('teacher_forced_f1'))}</td>"
                    f"<td>{num(sw['f1'])}</td><td>{num(sw['precision'])}</td><td>{num(sw['recall'])}</td>"
                    f"<td>{num(sw['decisions_per_subgoal'])}</td><td>{probe(codes.get('subgoal'))}</td>"
                    f"<td>{probe(codes.get('direction'))}</td></tr>")
    if not rows:
        return ""
    head = ("<tr><td>run</td><td>success</td><td>switch F1, teacher-forced</td><td>switch F1, closed loop</td>"
            "<td>precision</td><td>recall</td><td>codes per subgoal reached</td><td>code → subgoal probe</td>"
            "<td>code → direction probe</td></tr>")
    return ("<h3>Switching in closed loop</h3><p>Each trained policy on fresh layouts (codes sampled, switch hardened "
            "at 0.5, raw actions sampled): its decisions against the subgoal changes the episodes actually reached, "
            "beside the metacontroller's F1 on expert data; and linear probes (held-out accuracy) from the codes it "
            "chose to the subgoal asked for and to the raw action taken.</p>" + f"<table>{head}{''.join(rows)}</table>")
