"""Plot the logs of scripts/base_model_curve.py: free play and held-out NLL against training
seconds. Usage: python scripts/plot_base_model_curves.py DIR [OUT.png] (DIR holds *.jsonl)."""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    folder = Path(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else folder / "curves.png"
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    for f in sorted(folder.glob("*.jsonl")):
        rows = [json.loads(line) for line in f.read_text().splitlines()]
        rows = [r for r in rows if "step" in r]
        secs = [r.get("train_seconds", r.get("train_s")) for r in rows]
        ax[0].plot(secs, [r["free_play"] for r in rows], "o-", ms=3, label=f.stem)
        ax[1].plot(secs, [r.get("val_action_nll", r.get("val_nll")) for r in rows], "o-", ms=3, label=f.stem)
    ax[0].axhline(0.9, color="k", ls=":", lw=1)
    ax[0].set(xlabel="training seconds (1 CPU thread)", ylabel="free-play completion (512 episodes)", ylim=(-0.02, 1))
    ax[1].axhline(0.257, color="grey", ls="--", lw=1, label="Bayes-optimal")
    ax[1].set(xlabel="training seconds (1 CPU thread)", ylabel="held-out action NLL", ylim=(0.2, 0.7))
    ax[0].legend(fontsize=7)
    ax[1].legend(fontsize=7)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(out)


if __name__ == "__main__":
    main()
