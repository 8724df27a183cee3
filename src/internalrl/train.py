"""Pretraining the base model (SPEC §3): −ln p(a_t|o_{1:t}) − λ ln p(o_{t+1}|o_{1:t}), AdamW.

Reads top to bottom: build, maybe resume, loop (batch, loss, step, log, evaluate, checkpoint),
save. Checkpoints (:mod:`internalrl.checkpoint`) hold the weights, the optimiser state and
the step, so a killed run continues where it stopped, to the same weights.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .atomic import StorageError, replacing, verify, write_json
from .checkpoint import Checkpoint, CheckpointError
from .compact import init_from_compact
from .config import Config, ConfigError
from .data import Batch, Trajectories, batch_indices, make_batch
from .models.sequence_model import ModelConfig, SequenceModel


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is available; use train.device=auto or cpu")
    return torch.device(name)


def sequence_losses(model: SequenceModel, batch: Batch, with_obs: bool = True) -> dict[str, torch.Tensor]:
    """Masked means over valid steps of the action NLL, observation NLL (unless ``with_obs`` is
    False: the next-observation head is then not run at all) and accuracy."""
    out = model(batch.obs[:, :-1])
    mask = batch.mask.float()
    n = mask.sum().clamp(min=1)
    result = {"action_nll": -(model.action_log_prob(out, batch.actions) * mask).sum() / n}
    if with_obs:
        result["obs_nll"] = -(model.obs_log_prob(out, batch.obs[:, 1:]) * mask).sum() / n
    if model.cfg.action_type == "categorical":
        log_p = torch.log_softmax(out.action.float(), -1)
        result["uniform_action_ce"] = -(log_p.mean(-1) * mask).sum() / n  # against the uniform distribution
        if batch.soft is not None:  # cross-entropy against the Bayes-optimal distribution (soft targets)
            result["soft_action_ce"] = -((batch.soft * log_p).sum(-1) * mask).sum() / n
    if model.cfg.action_type == "categorical":
        result["action_accuracy"] = ((out.action.argmax(-1) == batch.actions).float() * mask).sum() / n
    return result


@torch.no_grad()
def evaluate_heldout(model: SequenceModel, data: Trajectories, idx: np.ndarray, batch_size: int, device) -> dict:
    model.eval()
    sums: dict[str, float] = {}
    steps = 0
    for i in range(0, len(idx), batch_size):
        batch = make_batch(data, idx[i : i + batch_size]).to(device)
        n = int(batch.mask.sum())
        for k, v in sequence_losses(model, batch).items():
            sums[k] = sums.get(k, 0.0) + float(v) * n
        steps += n
    model.train()
    return {k: v / steps for k, v in sums.items()}


def save_weights(module: torch.nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """A module's state dict as safetensors (CPU, contiguous), with an optional string header.
    Written to a temporary file and renamed, so a kill never leaves half a file at ``path``."""
    with replacing(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(tmp), metadata=metadata)


def snapshot_name(step: int) -> str:
    """The file stem of the training snapshot at ``step`` in a base model's ``snapshots/`` folder."""
    return f"step_{int(step):07d}"


def snapshot_steps(base_dir: Path) -> list[int]:
    """The steps of the training snapshots saved in the base-model folder ``base_dir``, in order."""
    return sorted(int(p.stem.split("_")[1]) for p in (Path(base_dir) / "snapshots").glob("step_*.safetensors"))


def save_model(model: SequenceModel, folder: Path, name: str = "model") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(model, folder / f"{name}.safetensors")
    write_json(folder / "model_config.json", model.cfg.__dict__)


def load_weights(module: torch.nn.Module, path: Path | str) -> torch.nn.Module:
    """Load safetensors weights into ``module`` after checking them against the checksum their
    artifact recorded; anything wrong raises :class:`CheckpointError` saying what to do."""
    try:
        verify(path)
        module.load_state_dict(load_file(str(path)))
    except StorageError as e:
        raise CheckpointError(str(e)) from None
    except Exception as e:
        raise CheckpointError(f"{path} is missing, corrupt or from another version ({type(e).__name__}: {str(e)[:200]}); "
                              "delete its stage folder and re-run the command that made it") from None
    return module


def load_model(folder: str | Path, name: str = "model", device="cpu") -> SequenceModel:
    """Load a base model saved by :func:`save_model` (safetensors; no pickle)."""
    folder = Path(folder)
    cfg_path, w_path = folder / "model_config.json", folder / f"{name}.safetensors"
    if not cfg_path.exists() or not w_path.exists():
        raise CheckpointError(f"no model in {folder} (expected model_config.json and {name}.safetensors); "
                              "train one with `internalrl train`")
    try:
        verify(w_path)
        cfg = ModelConfig(**json.loads(cfg_path.read_text()))
        model = SequenceModel(cfg)
        model.load_state_dict(load_file(str(w_path)))
    except StorageError as e:
        raise CheckpointError(str(e)) from None
    except Exception as e:
        raise CheckpointError(f"the model in {folder} is corrupt or from another version "
                              f"({type(e).__name__}: {str(e)[:200]}); retrain it (delete the folder)") from None
    return model.to(device).eval()


def train_step(model: SequenceModel, opt: torch.optim.Optimizer, batch: Batch, tc,
               autocast_dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """One AdamW step on −ln p(a|o) − λ ln p(o'|o), gradients clipped; returns the losses.
    With λ = 0 the next-observation head is skipped (it is a large share of a step's work).
    With ``tc.soft_targets`` the action loss is the cross-entropy against the batch's soft targets.
    ``autocast_dtype`` (e.g. torch.bfloat16) runs the forward pass under autocast; weights,
    gradients and the optimiser stay in their own dtype."""
    with torch.autocast(batch.obs.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        losses = sequence_losses(model, batch, with_obs=tc.obs_loss_weight > 0)
        action_loss = losses["soft_action_ce"] if getattr(tc, "soft_targets", False) else losses["action_nll"]
        smooth = getattr(tc, "label_smoothing", 0.0)
        if smooth > 0:  # (1 - s) * target + s * uniform: the uniform part is the mean NLL over actions
            action_loss = (1 - smooth) * action_loss + smooth * losses["uniform_action_ce"]
        loss = action_loss + tc.obs_loss_weight * losses.get("obs_nll", 0.0)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
    opt.step()
    return losses


def lr_at(step: int, cfg) -> float:
    """Linear warm-up, then cosine decay to ``final_lr_fraction`` of the peak [choice]."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    floor = cfg.final_lr_fraction
    return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def _restore_legacy(work: Path, model, opt, device) -> int:
    """A checkpoint in the earlier three-file layout (weights, optimiser, checkpoint.json): its step, or 0
    when it is absent or unreadable (then training restarts; the stage's finished artifacts are untouched)."""
    meta_path = work / "checkpoint.json"
    if not meta_path.exists():
        return 0
    try:
        step = int(json.loads(meta_path.read_text())["step"])
        model.load_state_dict(load_file(str(work / "checkpoint.safetensors")))
        opt.load_state_dict(torch.load(work / "checkpoint_optim.pt", weights_only=True, map_location=device))
    except Exception as e:
        print(f"[internalrl] the old-format checkpoint in {work} is unreadable ({type(e).__name__}); "
              "training restarts from step 0", flush=True)
        step = 0
    for f in ("checkpoint.json", "checkpoint.safetensors", "checkpoint_optim.pt"):
        (work / f).unlink(missing_ok=True)
    return step


def _truncate_log(path: Path, step: int) -> None:
    """Keep the log rows up to ``step`` (the checkpoint resumed from): no row is written twice."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    keep = []
    for line in rows:
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            pass  # a row cut short by a kill
    if keep != rows:
        with replacing(path) as tmp:
            tmp.write_text("".join(r + "\n" for r in keep))


def with_soft_targets(cfg: Config, data: Trajectories, progress: bool = False) -> Trajectories:
    """``data`` with the Bayes-optimal next-action distribution of every step added as
    ``soft_targets`` (computed from the layouts and the pretraining task table; not saved)."""
    from .envs.tasks import parse_task_set
    from .experts.grid import posterior_action_targets

    if data.card.get("obs_format") != "grid":
        raise ConfigError("train.soft_targets needs gridworld data")
    spec = cfg.env.spec()
    tasks = parse_task_set(cfg.env.pretrain_tasks, spec.num_objects)
    soft = posterior_action_targets(data.arrays, tasks, spec, progress=progress)
    return Trajectories({**data.arrays, "soft_targets": soft}, data.card)


def train_base_model(cfg: Config, data: Trajectories, work: Path, progress: bool = True,
                     stop_after: int | None = None, init_from: Path | None = None,
                     stop_after_seconds: float | None = None, on_checkpoint=None,
                     scalars=None) -> tuple[SequenceModel | None, dict]:
    """Train (or resume) in ``work``. ``stop_after`` ends this run after that many steps
    (``stop_after_seconds``: once that much wall time has passed) with a checkpoint written
    (returns ``(None, info)``), as if the run had been killed. ``on_checkpoint()`` is called
    after every checkpoint is written. ``init_from``: start from a compact checkpoint's weights
    and AdamW second moments (:mod:`internalrl.compact`, e.g. from ``scripts/train_gpu.py``)
    with this run's own schedule. ``scalars(step, row)`` also gets every row of ``train_log.jsonl``
    (:mod:`internalrl.scalars`)."""
    tc = cfg.train
    device = resolve_device(tc.device)
    torch.manual_seed(cfg.seed)
    model = SequenceModel(cfg.model).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    train_idx, val_idx = data.split(cfg.data.val_fraction)
    lengths = data.arrays["lengths"]
    if tc.soft_targets and "soft_targets" not in data.arrays:
        data = with_soft_targets(cfg, data, progress)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = Checkpoint(work / "checkpoint.pt", every_steps=tc.checkpoint_every, hint="train.lr")
    start, extra = ckpt.restore({"model": model}, {"opt": opt})
    if start == 0:
        start = _restore_legacy(work, model, opt, device)
    init = init_from_compact(model, opt, init_from, cfg.model, work, resuming=start > 0)
    _truncate_log(work / "train_log.jsonl", start)
    train_time = float(extra.get("train_seconds", 0.0))
    snapshot_steps = sorted({int(round(tc.steps * (i + 1) / tc.snapshots)) for i in range(tc.snapshots)})
    log = open(work / "train_log.jsonl", "a")
    bar = tqdm(range(start, tc.steps), initial=start, total=tc.steps, desc="pretrain base model", disable=not progress)
    t0, tokens = time.perf_counter(), 0
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, tc)
        batch = make_batch(data, batch_indices(train_idx, tc.batch_size, cfg.seed, step, lengths)).to(device)
        losses = train_step(model, opt, batch, tc)
        tokens += int(batch.mask.sum())
        done = step + 1
        if done % 50 == 0 or done == tc.steps:
            if not all(math.isfinite(float(v.detach())) for v in losses.values()):
                ckpt.check_finite(done)
            elapsed = time.perf_counter() - t0
            row = {"step": done, "lr": lr_at(step, tc), "tokens_per_s": tokens / max(elapsed, 1e-9),
                   **{k: float(v.detach()) for k, v in losses.items()}}
            log.write(json.dumps(row) + "\n")
            log.flush()
            if scalars is not None:
                scalars(done, row)
            bar.set_postfix(nll=f"{row['action_nll']:.3f}", acc=f"{row.get('action_accuracy', 0):.3f}")
        if done % tc.eval_every == 0 or done == tc.steps:
            ev = evaluate_heldout(model, data, val_idx[:2048], 256, device)
            row = {"step": done, **{f"val_{k}": v for k, v in ev.items()}}
            log.write(json.dumps(row) + "\n")
            log.flush()
            if scalars is not None:
                scalars(done, row)
        if done in snapshot_steps:
            ckpt.check_finite(done)
            save_model(model, work / "snapshots", snapshot_name(done))
        interrupt = done < tc.steps and ((stop_after is not None and done - start >= stop_after) or
                                         (stop_after_seconds is not None and time.perf_counter() - t0 >= stop_after_seconds))
        seconds = lambda: {"train_seconds": train_time + time.perf_counter() - t0}  # noqa: E731
        if interrupt:
            ckpt.save(done, seconds())
            bar.close()
            log.close()
            if on_checkpoint is not None:
                on_checkpoint()
            return None, {"stopped_at": done, **seconds()}
        if ckpt.maybe_save(done, tc.steps, seconds) and on_checkpoint is not None:
            on_checkpoint()
    bar.close()
    log.close()
    if start < tc.steps:
        train_time += time.perf_counter() - t0
        ckpt.save(tc.steps, {"train_seconds": train_time})  # kept until the stage is published
    save_model(model, work)
    return model.eval(), {"train_seconds": train_time, "init_from": init,
                          "tokens_per_s_last_session": tokens / max(time.perf_counter() - t0, 1e-9)}
