"""Figures and the HTML report of a run directory. Each finished stage contributes a
section; figures are PNGs in ``figures/`` and embedded in ``report.html`` so the report is
one self-contained file."""
from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .envs.gridworld import BatchedGridPinpad, GridSpec, render_rgb  # noqa: E402


def _png(fig, path: Path) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return base64.b64encode(buf.getvalue()).decode()


def _img(b64: str, caption: str) -> str:
    return f'<figure><img src="data:image/png;base64,{b64}"/><figcaption>{html.escape(caption)}</figcaption></figure>'


def _table(rows: dict) -> str:
    cells = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{v:.4g}</td></tr>" if isinstance(v, float)
        else f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
        for k, v in rows.items()
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
    return "<h2>Expert data</h2>" + _table({
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
    ax[0].axhline(head["expert_action_nll"], color="k", ls="--", label="expert's own")
    ax[0].set(xlabel="step", ylabel="next-action NLL", yscale="log")
    ax[0].legend()
    if tr and "action_accuracy" in tr[0]:
        ax[1].plot([r["step"] for r in tr], [r["action_accuracy"] for r in tr], label="train")
        ax[1].plot([r["step"] for r in va], [r["val_action_accuracy"] for r in va], "o-", label="held out")
        ax[1].axhline(head["expert_action_accuracy"], color="k", ls="--", label="expert's own")
        ax[1].set(xlabel="step", ylabel="next-action accuracy")
        ax[1].legend()
    return "<h2>Base model</h2>" + _table(head) + _img(
        _png(fig, figs / "base_model_training.png"),
        "Pretraining curves. The expert's own distribution knows the task; the model must infer it from behaviour, "
        "so it cannot quite reach the dashed line early in an episode.")


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
        ax.imshow(render_rgb(env, i, path=path))
        ax.set_title(f"free play, episode {i}", fontsize=9)
        ax.axis("off")
    counts = m["free_play"]["task_counts"]
    return "<h2>Base model as a policy</h2>" + _table(m["headline"]) + _img(
        _png(fig, figs / "free_play.png"),
        "Free-play rollouts of the base model (grey dots: path, black disc: final cell; walls dark grey).") + (
        "<p>Pretraining tasks the model chose to complete in free play: "
        + html.escape(", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))) + "</p>")


SECTIONS = [("data", section_data), ("base_model", section_base_model), ("eval_base", section_eval_base)]


def write_report(root: str | Path) -> Path:
    root = Path(root)
    figs = root / "figures"
    results = json.loads((root / "results.json").read_text()) if (root / "results.json").exists() else {}
    meta = json.loads((root / "run.json").read_text())
    body = [f"<h1>internalrl run: {html.escape(str(root))}</h1>",
            f"<p>internalrl {html.escape(meta.get('internalrl_version', '?'))}, seed {meta['config']['seed']}. "
            "Every number below was measured in this run; <code>results.json</code> has them all.</p>"]
    for stage, fn in SECTIONS:
        if (root / stage / "DONE").exists():
            body.append(fn(root, figs))
    body.append("<h2>Config</h2><pre>" + html.escape(json.dumps(meta["config"], indent=1)) + "</pre>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse}td{border:1px solid #ccc;padding:3px 8px}"
             "figure{margin:1em 0}img{max-width:100%}figcaption{color:#555;font-size:90%}")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>internalrl report</title><style>{style}</style></head><body>{''.join(body)}</body></html>"
    tmp = root / "report.html.tmp"
    tmp.write_text(page)
    os.replace(tmp, root / "report.html")
    _ = results
    return root / "report.html"
