"""Training that accumulates over separate sessions: one portable checkpoint file.

A base-model training in progress lives in its stage's working folder (weights, optimiser
state, step). ``save_portable`` packs that state into ONE safetensors file (weights, every AdamW
moment, the step, the training seconds so far, and the config that owns it); ``load_portable``
unpacks it into a fresh run directory. So a long recipe can train a few hours at a time
(``internalrl train --checkpoint-file FILE --minutes M``), the file committed between runs and
replaced each time, and continue on another machine (no pickle: safetensors only).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import Config
from .train import CheckpointError

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


def save_portable(work: Path, path: Path, cfg: Config, finished: bool = False) -> dict:
    """Pack the training state of the working folder ``work`` (or, when ``finished``, the final
    model) into ``path``, atomically. Returns the header."""
    work, path = Path(work), Path(path)
    if finished:
        tensors = {f"model.{k}": v for k, v in load_file(str(work / "model.safetensors")).items()}
        step, seconds = cfg.train.steps, None
        metrics = work / "metrics.json"
        if metrics.exists():
            seconds = json.loads(metrics.read_text()).get("headline", {}).get("train_seconds")
    else:
        meta = json.loads((work / "checkpoint.json").read_text())
        step, seconds = int(meta["step"]), meta.get("train_seconds")
        tensors = {f"model.{k}": v for k, v in load_file(str(work / "checkpoint.safetensors")).items()}
        opt = torch.load(work / "checkpoint_optim.pt", weights_only=True, map_location="cpu")
        for idx, st in opt["state"].items():
            for k, v in st.items():
                tensors[f"optim.{idx}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
        groups = opt["param_groups"]
    header = {"format": FORMAT, "step": str(step), "finished": str(bool(finished)),
              "train_seconds": json.dumps(seconds), "config": json.dumps(owning_config(cfg), sort_keys=True)}
    if not finished:
        header["param_groups"] = json.dumps(groups)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=header)
    os.replace(tmp, path)
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
    work.mkdir(parents=True, exist_ok=True)
    save_file(model, str(work / "checkpoint.safetensors"))
    torch.save({"state": state, "param_groups": json.loads(header["param_groups"])}, work / "checkpoint_optim.pt")
    (work / "checkpoint.json").write_text(json.dumps({"step": int(header["step"]),
                                                      "train_seconds": json.loads(header["train_seconds"]) or 0.0}))
    return int(header["step"])
