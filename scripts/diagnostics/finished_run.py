"""What the diagnostics that read a finished run's metacontroller share: the command-line
arguments naming the run, and loading its config, base model, frozen metacontroller and data."""
from internalrl.config import load_config
from internalrl.data import load_trajectories
from internalrl.stages import _load_meta
from internalrl.train import load_model


def add_run_arguments(parser) -> None:
    parser.add_argument("run")
    parser.add_argument("--stage", default="metacontroller")
    parser.add_argument("--set", action="append", default=[],
                        help="the overrides the run was made with (its metacontroller config)")


def load_run(args):
    """-> config, base model, frozen metacontroller, dataset, held-out episode indices."""
    cfg = load_config("quick", args.set)
    base = load_model(f"{args.run}/base_model")
    meta = _load_meta(f"{args.run}/{args.stage}/frozen.safetensors", cfg.metacontroller, base.cfg.width, "cpu")
    data = load_trajectories(f"{args.run}/data")
    _, val_idx = data.split(cfg.data.val_fraction)
    return cfg, base, meta, data, val_idx
