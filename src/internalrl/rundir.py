"""The run directory: one folder per stage, each written under a temporary name and renamed
when whole, so a finished artifact is never replaced by a broken one and a killed run
resumes where it stopped. ``run.json`` records the version and config that own the folder;
a different config is refused rather than mixed in. A config section that did not exist when
the run was made (absent from its ``run.json``) is not compared: none of its stages used it; nor is a
field added since, when it holds its default (the run behaved as the default does)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from . import __version__
from .config import Config

RUN_FORMAT = 1


class RunDirError(RuntimeError):
    """An output folder that cannot be used for this run; the message says what to do."""


def _diff(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: {a!r} there, {b!r} now"]


def _without_additions(current, stored, defaults):
    """``current`` less what Config gained after ``stored`` was written and that cannot have changed that run:
    whole new sections (none of its stages used them) and new fields at their default (it behaved so)."""
    if not (isinstance(current, dict) and isinstance(stored, dict)):
        return current
    defaults = defaults if isinstance(defaults, dict) else {}
    return {k: _without_additions(v, stored.get(k), defaults.get(k)) for k, v in current.items()
            if k in stored or not (isinstance(v, dict) or v == defaults.get(k, object()))}


class RunDir:
    def __init__(self, root: str | Path, cfg: Config, create: bool = True) -> None:
        self.root = Path(root)
        self.cfg = cfg
        meta_path = self.root / "run.json"
        want = {"run_format": RUN_FORMAT, "config": cfg.to_dict()}
        if meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text())
            except json.JSONDecodeError:
                raise RunDirError(f"{meta_path} is corrupt; use another --out folder") from None
            if meta.get("run_format") != RUN_FORMAT:
                raise RunDirError(
                    f"{self.root} was written by internalrl {meta.get('internalrl_version', '?')} "
                    f"(run format {meta.get('run_format')}); this is {__version__} (format {RUN_FORMAT}). "
                    "Use a new --out folder."
                )
            stored, current = meta.get("config"), want["config"]
            diffs = _diff(stored, _without_additions(current, stored, Config().to_dict()))
            if diffs:
                shown = "\n  ".join(diffs[:8]) + ("\n  ..." if len(diffs) > 8 else "")
                raise RunDirError(
                    f"{self.root} holds another run's artifacts (its config differs):\n  {shown}\n"
                    "Use a new --out folder, or the same preset, seed and overrides as that run."
                )
        elif create:
            if self.root.exists() and any(self.root.iterdir()):
                raise RunDirError(f"{self.root} is not empty and is not an internalrl run; use an empty or new --out folder")
            self.root.mkdir(parents=True, exist_ok=True)
            meta_path.write_text(json.dumps({"internalrl_version": __version__, **want}, indent=2))
        else:
            raise RunDirError(f"{self.root} is not an internalrl run (no run.json); run `internalrl run --out {self.root}` first")

    def path(self, stage: str) -> Path:
        return self.root / stage

    def done(self, stage: str) -> bool:
        return (self.root / stage / "DONE").exists()

    def require(self, stage: str, command: str) -> Path:
        if not self.done(stage):
            raise RunDirError(f"{self.root} has no finished {stage!r} stage; run `internalrl {command} --out {self.root}` "
                              "with the same preset and overrides first")
        return self.root / stage

    def partial(self, stage: str) -> Path:
        """Working folder of a stage in progress (kept across a kill so training resumes)."""
        p = self.root / f".{stage}.partial"
        p.mkdir(parents=True, exist_ok=True)
        return p

    def finish(self, stage: str, config: dict, metrics: dict) -> Path:
        tmp = self.partial(stage)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False))
        (tmp / "DONE").write_text("")
        final = self.root / stage
        if final.exists():  # an unfinished leftover (no DONE): never a finished artifact
            shutil.rmtree(final)
        os.replace(tmp, final)
        self.update_results(stage, metrics)
        return final

    def metrics(self, stage: str, command: str) -> dict:
        """The metrics a finished stage wrote (``command`` makes it when it is missing)."""
        return json.loads((self.require(stage, command) / "metrics.json").read_text())

    def update_results(self, stage: str, metrics: dict) -> None:
        path = self.root / "results.json"
        results = json.loads(path.read_text()) if path.exists() else {}
        results[stage] = metrics.get("headline", metrics)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2, allow_nan=False))
        os.replace(tmp, path)

    def results(self) -> dict:
        path = self.root / "results.json"
        return json.loads(path.read_text()) if path.exists() else {}
