"""What the diagnostics that read a finished run's metacontroller share: the command-line
arguments naming the run, and loading its config, base model, frozen metacontroller and data."""
import numpy as np
import torch

from internalrl.config import load_config
from internalrl.data import load_trajectories
from internalrl.pipeline import _load_meta
from internalrl.train import load_model


def add_run_arguments(parser) -> None:
    parser.add_argument("run")
    parser.add_argument("--stage", default="metacontroller")
    parser.add_argument("--set", action="append", default=[],
                        help="the overrides the run was made with (its metacontroller config)")


def load_base_run(args):
    """-> config, base model, dataset, held-out episode indices (no metacontroller needed)."""
    cfg = load_config("quick", args.set)
    base = load_model(f"{args.run}/base_model")
    data = load_trajectories(f"{args.run}/data")
    _, val_idx = data.split(cfg.data.val_fraction)
    return cfg, base, data, val_idx


def load_run(args):
    """-> config, base model, frozen metacontroller, dataset, held-out episode indices."""
    cfg, base, data, val_idx = load_base_run(args)
    meta = _load_meta(f"{args.run}/{args.stage}/frozen.safetensors", cfg.metacontroller, base.cfg.width, "cpu")
    return cfg, base, meta, data, val_idx


def compass_direction(agent, target, size: int):
    """The main compass direction from grid cell ``agent`` to cell ``target`` (ints or arrays):
    0 up, 1 down, 2 left, 3 right; vertical when the two axes tie."""
    agent, target = np.asarray(agent), np.asarray(target)
    dy, dx = target // size - agent // size, target % size - agent % size
    return np.where(np.abs(dy) >= np.abs(dx), np.where(dy < 0, 0, 1), np.where(dx < 0, 2, 3))


def linear_probe(x: torch.Tensor, y: np.ndarray, test: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """A softmax regression from ``x`` (N, D) to the labels ``y`` (N,), fit (300 full-batch Adam
    steps on standardised inputs) where ``test`` is False and scored where it is True.
    Returns (accuracy, majority-class rate) on the test rows."""
    y = torch.as_tensor(y)
    test = torch.as_tensor(test)
    tr, te = ~test, test
    classes = int(y.max()) + 1
    mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-6
    xs = (x - mu) / sd
    torch.manual_seed(seed)  # the probe's initial weights, so reruns print the same numbers
    lin = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.Adam(lin.parameters(), lr=0.05)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(lin(xs[tr]), y[tr])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = float((lin(xs[te]).argmax(1) == y[te]).float().mean())
    majority = float(torch.bincount(y[te], minlength=classes).max()) / int(te.sum())
    return acc, majority
