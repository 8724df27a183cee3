"""Compact training checkpoints: one safetensors file, small enough to carry between machines.

The paper's base model has 3.49M parameters. fp32 weights plus AdamW's two fp32 moments take
12 bytes a parameter (40 MiB); a compact checkpoint keeps **4 bytes a parameter** (13.3 MiB
for the paper model, under a 16 MiB limit):

* ``weight/<name>``: the weights in bfloat16. Training keeps fp32 master weights (autocast
  runs the matrix products in bf16); the weights are rounded to bf16 only when saved, so a
  resumed run loses at most a relative 2^-9 per weight once per run of the script, not once per step.
* ``adam_v/<name>``: AdamW's second moment (``exp_avg_sq``) in bfloat16. With β2 = 0.999 it
  averages about the last 1000 squared gradients, far longer than a restart can rebuild
  quickly, so it is kept (bf16 costs < 0.4% of its value, < 0.2% of its square root).
* AdamW's first moment is **not** kept. With β1 = 0.9 it averages about the last 10
  gradients: on resume it restarts at zero (the step count, and hence the bias correction, is
  kept), which damps the updates of the first ~20 steps and then no longer matters.

The header (safetensors metadata, strings) holds the format, the training step, AdamW's step,
the training seconds so far and the full resolved config (``config.dumps``). Files are read
with safetensors (no pickle) and written under a temporary name, then renamed.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from .errors import CheckpointError
from .models.sequence_model import ModelConfig

FORMAT = "internalrl-compact/1"


def save_compact(path, model: torch.nn.Module, opt: torch.optim.Optimizer, step: int, config_json: str,
                 extra: dict | None = None) -> int:
    """Write the compact checkpoint of ``model`` and ``opt`` at training step ``step``; returns its size in bytes."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors, adam_step = {}, 0
    for name, p in model.named_parameters():
        tensors[f"weight/{name}"] = p.detach().to("cpu", torch.bfloat16).contiguous()
        state = opt.state.get(p, {})
        if "exp_avg_sq" in state:
            tensors[f"adam_v/{name}"] = state["exp_avg_sq"].detach().to("cpu", torch.bfloat16).contiguous()
            adam_step = int(float(state["step"]))
    meta = {"format": FORMAT, "step": str(int(step)), "adam_step": str(adam_step), "config": config_json,
            **{k: json.dumps(v) for k, v in (extra or {}).items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path.stat().st_size


class CompactCheckpoint:
    """A compact checkpoint read back: ``weights`` and ``adam_v`` (name -> bf16 tensor), ``step``,
    ``adam_step``, ``config`` (the dict of the Config that wrote it) and ``extra`` (the rest)."""

    def __init__(self, path) -> None:
        from safetensors import safe_open

        self.path = Path(path)
        what = "delete it (or pass another file) to start from scratch"
        if not self.path.is_file():
            raise CheckpointError(f"no checkpoint at {self.path}")
        try:
            with safe_open(str(self.path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:
            raise CheckpointError(f"{self.path} is not a readable checkpoint ({type(e).__name__}: "
                                      f"{str(e)[:120]}); {what}") from None
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{self.path} is not a compact internalrl checkpoint (format "
                                      f"{meta.get('format')!r}, expected {FORMAT!r}); {what}")
        try:
            self.step, self.adam_step = int(meta.pop("step")), int(meta.pop("adam_step"))
            self.config = json.loads(meta.pop("config"))
            meta.pop("format")
            self.extra = {k: json.loads(v) for k, v in meta.items()}
        except (KeyError, ValueError):
            raise CheckpointError(f"{self.path} has a damaged header; {what}") from None
        self.weights = {k[len("weight/"):]: v for k, v in tensors.items() if k.startswith("weight/")}
        self.adam_v = {k[len("adam_v/"):]: v for k, v in tensors.items() if k.startswith("adam_v/")}

    def sha256(self) -> str:
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    def check_model(self, model_cfg: ModelConfig) -> None:
        """Refuse a model config other than the one the checkpoint was trained with."""
        stored, want = self.config.get("model", {}), asdict(model_cfg)
        diffs = [f"model.{k}: {stored.get(k)!r} in the checkpoint, {v!r} here" for k, v in want.items() if stored.get(k) != v]
        if diffs:
            raise CheckpointError(f"{self.path} holds another architecture:\n  " + "\n  ".join(diffs[:8]) +
                                      "\nUse the same model settings (preset and --set model.*) as the run that wrote it.")

    def restore(self, model: torch.nn.Module, opt: torch.optim.Optimizer | None = None) -> None:
        """Load the weights (upcast to the model's dtype) and, into a fresh ``opt`` (AdamW),
        the second moments and step count; the first moments start at zero."""
        params = dict(model.named_parameters())
        if set(params) != set(self.weights):
            missing, unexpected = sorted(set(params) - set(self.weights)), sorted(set(self.weights) - set(params))
            raise CheckpointError(f"{self.path} does not fit this model (missing {missing[:4]}, "
                                      f"unexpected {unexpected[:4]})")
        with torch.no_grad():
            for name, p in params.items():
                if p.shape != self.weights[name].shape:
                    raise CheckpointError(f"{self.path}: {name} has shape {tuple(self.weights[name].shape)}, "
                                              f"the model wants {tuple(p.shape)}")
                p.copy_(self.weights[name].to(p.device, p.dtype))
        if opt is None or not self.adam_v:
            return
        for name, p in params.items():
            if name in self.adam_v:
                opt.state[p] = {"step": torch.tensor(float(self.adam_step)),
                                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                "exp_avg_sq": self.adam_v[name].to(p.device, p.dtype)}


def init_from_compact(model: torch.nn.Module, opt: torch.optim.Optimizer, path, model_cfg: ModelConfig,
                      work: Path, resuming: bool) -> dict | None:
    """Start training in ``work`` from the compact checkpoint at ``path`` (weights and AdamW's
    second moments), recording where it came from in ``work/init_from.json``. When ``resuming``
    an interrupted training, the checkpoint it started from must be the same one. Returns the record."""
    record_path = work / "init_from.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else None
    if path is None:
        return record
    ck = CompactCheckpoint(path)
    ck.check_model(model_cfg)
    this = {"path": str(Path(path)), "sha256": ck.sha256(), "step": ck.step}
    if resuming:
        if record is None or record["sha256"] != this["sha256"]:
            raise CheckpointError(f"the interrupted training in {work} did not start from {path}; "
                                      f"resume it without --init-from, or delete {work} to start over from {path}")
        return record
    ck.restore(model, opt)
    record_path.write_text(json.dumps(this, indent=2))
    return this
