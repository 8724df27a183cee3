"""Training that accumulates over separate runs: one portable checkpoint file.

A base-model training in progress lives in its stage's working folder (``checkpoint.pt``:
weights, optimiser state, step, random state). ``save_portable`` packs that state into ONE safetensors file (weights, every AdamW
moment, the step, the training seconds so far, and the config that owns it); ``load_portable``
unpacks it into a fresh run directory. So a long recipe can train a few hours at a time
(``internalrl train --checkpoint-file FILE --minutes M``), the file committed between runs and
replaced each time, and continue on another machine (no pickle: safetensors only).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import replacing
from .checkpoint import FORMAT as CHECKPOINT_FORMAT
from .checkpoint import CheckpointError
from .config import Config

FORMAT = "internalrl-portable-checkpoint-1"
#: the config sections that decide a training's trajectory (the others only affect later stages)
OWNING_SECTIONS = ("seed", "env", "data", "model", "train")


def owning_config(cfg: Config) -> dict:
    d = cfg.to_dict()
    return {k: d[k] for k in OWNING_SECTIONS}


def _diff(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [x for k in sorted(set(a) | set(b)) for x in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix[:-1]}: {a!r} in the file, {b!r} now"]


def own_step(work: Path) -> int:
    """The step of the training checkpoint in the working folder ``work`` (0: none)."""
    for name in ("checkpoint.pt", "checkpoint.pt.prev"):
        path = Path(work) / name
        if path.exists():
            try:
                return int(torch.load(path, weights_only=True, map_location="cpu")["step"])
            except Exception:  # unreadable: the training's own restore says so
                continue
    return 0


def save_portable(work: Path, path: Path, cfg: Config, finished: bool = False) -> dict:
    """Pack the training state of the working folder ``work`` (its ``checkpoint.pt``, see
    :mod:`internalrl.checkpoint`) or, when ``finished``, the final model of the finished stage
    folder ``work``, into ``path``, atomically. Returns the header."""
    work, path = Path(work), Path(path)
    header = {"format": FORMAT, "finished": str(bool(finished)), "config": json.dumps(owning_config(cfg), sort_keys=True)}
    if finished:
        tensors = {f"model.{k}": v for k, v in load_file(str(work / "model.safetensors")).items()}
        metrics = work / "metrics.json"
        seconds = json.loads(metrics.read_text()).get("headline", {}).get("train_seconds") if metrics.exists() else None
        header.update(step=str(cfg.train.steps), train_seconds=json.dumps(seconds))
    else:
        blob = torch.load(work / "checkpoint.pt", weights_only=True, map_location="cpu")
        tensors = {f"model.{k}": v for k, v in blob["modules"]["model"].items()}
        opt = blob["optimizers"]["opt"]
        for idx, st in opt["state"].items():
            for k, v in st.items():
                tensors[f"optim.{idx}.{k}"] = torch.as_tensor(v)
        tensors["rng.torch"] = blob["torch_rng"]
        header.update(step=str(int(blob["step"])), extra=blob["extra"], param_groups=json.dumps(opt["param_groups"]),
                      train_seconds=json.dumps(json.loads(blob["extra"]).get("train_seconds")))
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=header)
    return header


def read_header(path: Path) -> dict:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        with safe_open(str(path), "pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); restore it from version control "
                              "or delete it to start the training over") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an internalrl training checkpoint (format {header.get('format')!r})")
    return header


def load_portable(path: Path, work: Path, cfg: Config) -> int:
    """Unpack ``path`` into the working folder ``work`` so that training resumes from it.
    Refuses a file made with another config (the differing fields are listed). Returns its step."""
    path, work = Path(path), Path(work)
    header = read_header(path)
    diffs = _diff(json.loads(header["config"]), owning_config(cfg))
    if diffs:
        shown = "\n  ".join(diffs[:8])
        raise CheckpointError(f"{path} was trained with another config:\n  {shown}\n"
                              "use the same preset, seed and --set overrides as the run that made it")
    if header["finished"] == "True":
        raise CheckpointError(f"{path} holds a finished training ({header['step']} steps), not one to continue; "
                              "raise train.steps in a new run to train further from its weights")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is corrupt ({e}); restore it from version control") from None
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    blob = {"format": CHECKPOINT_FORMAT, "step": int(header["step"]), "modules": {"model": model},
            "optimizers": {"opt": {"state": state, "param_groups": json.loads(header["param_groups"])}},
            # files written before the random state and the extra were kept: the current state, the seconds
            "torch_rng": tensors.get("rng.torch", torch.get_rng_state()), "generators": {}, "numpy": "{}",
            "extra": header.get("extra") or json.dumps({"train_seconds": json.loads(header["train_seconds"]) or 0.0})}
    work.mkdir(parents=True, exist_ok=True)
    with replacing(work / "checkpoint.pt") as tmp:
        torch.save(blob, tmp)
    (work / "checkpoint.pt.prev").unlink(missing_ok=True)
    return int(header["step"])
