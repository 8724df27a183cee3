"""TensorBoard scalars of the training stages (``--tensorboard``), so a run can be watched live:

    internalrl run --preset quick --out runs/quick --tensorboard
    tensorboard --logdir runs/quick/tensorboard

Each training stage writes to ``RUN/tensorboard/<stage>/`` (outside the stage folders, so the
artifacts, their checksums and ``results.json`` are the same with or without it): the base model's
loss terms, accuracy, learning rate and tokens/s (the rows of its ``train_log.jsonl``) and the
held-out ones; the metacontroller's action NLL, KL and held-out switch F1; each RL run's success
rate against episodes. TensorBoard is optional: ``pip install 'internalrl[tensorboard]'``."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from .errors import ConfigError

INSTALL = "pip install 'internalrl[tensorboard]' (or: pip install tensorboard)"

#: ``scalars(step, {name: number})``: what a training loop calls to log (None: no logging)
ScalarLog = Callable[[int, dict], None]


def require_tensorboard() -> None:
    """Raise a user error saying how to install TensorBoard when it is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401 (needs the tensorboard package)
    except ImportError:
        raise ConfigError(f"--tensorboard needs the tensorboard package, which is not installed here; {INSTALL}") from None


class Scalars:
    """An event file in ``folder``; ``prefixed(p)`` is a :data:`ScalarLog` writing tags ``p/name``."""

    def __init__(self, folder: Path) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder), flush_secs=10)

    def add(self, step: int, values: dict, prefix: str) -> None:
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{name}", value, step)

    def prefixed(self, prefix: str) -> ScalarLog:
        return lambda step, values: self.add(step, values, prefix)

    def close(self) -> None:
        self.writer.close()


def stage_scalars(run, stage: str) -> Scalars | None:
    """The scalars of ``stage`` in ``run`` when the run was started with ``--tensorboard``, else None."""
    return Scalars(run.root / "tensorboard" / stage) if getattr(run, "tensorboard", False) else None


def base_model_row(scalars: Scalars | None) -> ScalarLog | None:
    """A :data:`ScalarLog` for the rows of the base model's ``train_log.jsonl``: ``val_*`` (held out) under
    ``heldout/``, the others (loss terms, accuracy, ``lr``, ``tokens_per_s``) under ``train/``."""
    if scalars is None:
        return None

    def log(step: int, row: dict) -> None:
        held = {k[4:]: v for k, v in row.items() if k.startswith("val_")}
        scalars.add(step, held, "heldout")
        scalars.add(step, {k: v for k, v in row.items() if k != "step" and not k.startswith("val_")}, "train")

    return log
