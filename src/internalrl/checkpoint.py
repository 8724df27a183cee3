"""The one checkpoint every training loop uses, so that a killed stage continues where it stopped.

A loop names what it trains and how, then asks for the step to start from::

    ckpt = Checkpoint(work / "checkpoint_frozen.pt", every_steps=0)   # or Checkpoint.off()
    start, extra = ckpt.restore(modules={"meta": meta}, optimizers={"opt": opt}, generators={"gen": gen})
    for step in range(start, steps):
        ...                                       # one update
        ckpt.maybe_save(step + 1, steps, lambda: {"curve": curve})
    ckpt.save(steps, {"curve": curve})            # the finished state, kept until the stage is published

A checkpoint is one file holding the step, the weights and optimiser states, every random
stream the loop draws from (torch's global generator, named ``torch.Generator`` s and numpy
generators) and a JSON ``extra`` (curves, counters), so that a resumed loop produces the same
numbers as one never interrupted. The file is written atomically; the one before it is kept
as ``*.prev`` and used if the newest cannot be read. Weights that are no longer finite are
never saved: :class:`TrainingDiverged` says which setting to lower. The loaded file is
``torch.load(weights_only=True)``: tensors and plain containers, no code.

A loop saves every ``every_steps`` steps, or (``every_steps=0``) when
:data:`CHECKPOINT_SECONDS` have passed since the last save, and always at its last step: the
finished state stays until :meth:`internalrl.rundir.RunDir.finish` publishes the stage, so a
kill between the end of training and the stage's rename costs only the evaluation.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from .atomic import StorageError, describe_os_error, replacing
from .errors import CheckpointError, TrainingDiverged

CHECKPOINT_GLOB = "checkpoint*"  # the files a stage's working folder drops when it is published
CHECKPOINT_SECONDS = float(os.environ.get("INTERNALRL_CHECKPOINT_SECONDS", "120"))  # 0: every step
FORMAT = 1


class Checkpoint:
    def __init__(self, path: Path | str | None, every_steps: int = 0, every_seconds: float | None = None,
                 hint: str = "the learning rate") -> None:
        self.path = None if path is None else Path(path)
        self.every_steps = every_steps
        self.every_seconds = CHECKPOINT_SECONDS if every_seconds is None else every_seconds
        self.hint = hint  # what to lower when training diverges, e.g. "train.lr"
        self.modules: dict = {}
        self.optimizers: dict = {}
        self.generators: dict = {}
        self.numpy: dict = {}
        self._last = time.monotonic()

    @classmethod
    def off(cls, hint: str = "the learning rate") -> "Checkpoint":
        """No file: the loop runs from step 0 and saves nothing (still refuses to continue on NaN)."""
        return cls(None, hint=hint)

    @property
    def prev(self) -> Path:
        return self.path.with_name(self.path.name + ".prev")

    def restore(self, modules: dict, optimizers: dict | None = None, generators: dict | None = None,
                numpy: dict | None = None) -> tuple[int, dict]:
        """Register what the loop trains; load the newest readable checkpoint into it.
        Returns ``(step to start from, extra)``; ``(0, {})`` when there is none."""
        self.modules, self.optimizers = modules, optimizers or {}
        self.generators, self.numpy = generators or {}, numpy or {}
        self._last = time.monotonic()
        if self.path is None:
            return 0, {}
        errors = []
        for path in (self.path, self.prev):
            if not path.exists():
                continue
            try:
                return self._load(path)
            except Exception as e:  # a damaged file: try the one before it
                errors.append(f"{path.name}: {type(e).__name__}: {str(e)[:120]}")
        if errors:
            raise CheckpointError(f"the training checkpoint in {self.path.parent} cannot be read ({'; '.join(errors)}); "
                                  f"delete {self.path} and {self.prev.name} to restart this training from its first step")
        return 0, {}

    def _load(self, path: Path) -> tuple[int, dict]:
        blob = torch.load(path, weights_only=True, map_location="cpu")
        if blob.get("format") != FORMAT or set(blob["modules"]) != set(self.modules):
            raise ValueError("not a checkpoint of this training")
        for k, m in self.modules.items():
            m.load_state_dict(blob["modules"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(blob["optimizers"][k])
        torch.set_rng_state(blob["torch_rng"])
        for k, g in self.generators.items():
            g.set_state(blob["generators"][k])
        numpy_states = json.loads(blob["numpy"])
        for k, g in self.numpy.items():
            g.bit_generator.state = numpy_states[k]
        return int(blob["step"]), json.loads(blob["extra"])

    def _finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for m in self.modules.values() for p in m.parameters())

    def check_finite(self, step: int) -> None:
        if not self._finite():
            kept = f"; the last good checkpoint ({self.path.name}) is kept" if self.path and self.path.exists() else ""
            raise TrainingDiverged(f"training diverged: the weights are not finite after step {step}{kept}. "
                                   f"Lower {self.hint} (a run's config is fixed once made: use a new --out folder).")

    def save(self, step: int, extra: dict | None = None) -> None:
        self.check_finite(step)
        self._last = time.monotonic()
        if self.path is None:
            return
        blob = {"format": FORMAT, "step": int(step),
                "modules": {k: {n: t.detach().cpu() for n, t in m.state_dict().items()} for k, m in self.modules.items()},
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "torch_rng": torch.get_rng_state(),
                "generators": {k: g.get_state() for k, g in self.generators.items()},
                "numpy": json.dumps({k: g.bit_generator.state for k, g in self.numpy.items()}),
                "extra": json.dumps(extra or {}, allow_nan=True)}
        try:
            if self.path.exists():
                os.replace(self.path, self.prev)  # a kill before the next line leaves .prev, which restore reads
        except OSError as e:
            raise StorageError(describe_os_error(e, self.path)) from None
        with replacing(self.path) as tmp:
            torch.save(blob, tmp)

    def maybe_save(self, step: int, total: int, extra_fn) -> bool:
        """Save when one is due (never at ``total``: the loop's final :meth:`save` does that)."""
        if step >= total:
            return False
        if self.every_steps > 0:
            due = step % self.every_steps == 0
        else:
            due = time.monotonic() - self._last >= self.every_seconds
        if due:
            self.save(step, extra_fn())
        return due

