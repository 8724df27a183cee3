"""Where a run's base model comes from: trained in the run (``train``) or copied from the
shipped model of its environment (``shipped``, see :mod:`internalrl.pretrained`).

The choice is recorded in the run's ``run.json`` under ``base_model`` (with the shipped
model's name and sha256), so a run directory made one way refuses the other. A command that
does not say (no ``--base-model``) follows what the run directory recorded, else
:data:`~internalrl.pretrained.DEFAULT_BASE_MODEL`.

With ``shipped``, the run's ``model`` section and its ``train`` section (all but ``device``)
are the shipped model's, so later stages build the same architecture and the run's config
tells the truth about the weights; the data stage still runs (probes, controllers and the
metacontroller train on the run's D*). The ``base_model`` stage then holds the shipped weights
byte for byte, with ``config.json`` and ``metrics.json`` naming the shipped model and sha256,
and its held-out measurements on this run's data.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
from dataclasses import asdict, replace
from pathlib import Path

from .config import Config, ConfigError
from . import pretrained
from .pretrained import PretrainedError, find_for_env, load
from .rundir import RunDir, RunDirError


def recorded(root: Path) -> dict | None:
    """The base-model choice a run directory recorded; a run made before choices were recorded
    that has (started) a base_model stage trained it. None: no choice made yet."""
    meta_path = Path(root) / "run.json"
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        return None  # RunDir reports the corrupt file
    if "base_model" in meta:
        return meta["base_model"]
    if (Path(root) / "base_model").exists() or (Path(root) / ".base_model.partial").exists():
        return {"choice": "train"}
    return None


def adopt_shipped(cfg: Config, shipped: Config) -> Config:
    """``cfg`` with the shipped model's ``model`` section and ``train`` section (but this run's device)."""
    cfg = replace(cfg, model=replace(shipped.model),
                  train=replace(shipped.train, device=cfg.train.device))
    try:
        return cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"the shipped model's architecture does not fit this config: {e}") from None


def resolve(cfg: Config, root: Path, requested: str | None, overrides: list[str] = (),
            init_from: str | None = None) -> tuple[Config, dict]:
    """The config this run uses and its base-model source record, e.g. ``{"choice": "train"}``
    or ``{"choice": "shipped", "name": "grid", "sha256": ..., "summary": ...}``."""
    before = recorded(root)
    named = None  # a shipped model asked for by name
    if requested not in (None, *pretrained.BASE_MODEL_CHOICES):
        names = pretrained.available()
        if requested not in names:
            raise ConfigError(f"--base-model must be {', '.join(pretrained.BASE_MODEL_CHOICES)} or the name of a shipped "
                              f"model ({', '.join(names) or 'none shipped'}), got {requested!r}")
        named, requested = requested, "shipped"
    choice = requested or (before or {}).get("choice") or pretrained.DEFAULT_BASE_MODEL
    if before is not None and named and before.get("choice") == "shipped" and before.get("name") != named:
        raise RunDirError(f"{root} was made from shipped model {before.get('name')!r}; it cannot continue with "
                          f"--base-model {named}. Use a new --out folder.")
    if before is not None and requested and before.get("choice") != requested:
        raise RunDirError(f"{root} was made with --base-model {before.get('choice')}; it cannot continue with "
                          f"--base-model {requested}. Use a new --out folder (or --base-model {before.get('choice')}).")
    if choice == "train":
        if init_from is not None:
            from .compact import CompactCheckpoint

            CompactCheckpoint(init_from).check_model(cfg.model)  # a bad file fails now, not after the data stage
        return cfg, {"choice": "train"}
    if init_from is not None:
        raise ConfigError("--init-from starts a base model that is trained here; it cannot be combined with "
                          "--base-model shipped")
    fixed = [o for o in overrides if o.split("=", 1)[0].strip().startswith(("model.", "train."))
             and o.split("=", 1)[0].strip() != "train.device"]
    if fixed:
        raise ConfigError(f"--base-model shipped fixes the model and train sections; drop {', '.join(fixed)} "
                          "(or use --base-model train)")
    name = named or (before or {}).get("name") or find_for_env(cfg)
    shipped = load(name)
    if named and find_for_env(cfg, names=[named], missing=None) is None:
        raise ConfigError(f"the shipped model {named!r} was trained on another environment than this run's "
                          f"({shipped.config.env.name}, tasks {shipped.config.env.pretrain_tasks}); choose one of this "
                          "environment's (`internalrl pretrained list`) or --base-model train")
    if before is not None and before.get("sha256") != shipped.sha256:
        raise RunDirError(f"{root} was made from shipped model {before.get('name')!r} with sha256 "
                          f"{str(before.get('sha256'))[:12]}…; the shipped model {name!r} is now {shipped.sha256[:12]}…. "
                          "Use a new --out folder for the new model.")
    source = {"choice": "shipped", "name": name, "sha256": shipped.sha256,
              "summary": f"shipped model {name} (sha256 {shipped.sha256[:12]})"}
    return adopt_shipped(cfg, shipped.config), source


def record(run: RunDir, source: dict) -> None:
    """Write the choice into ``run.json`` (once; a different one was refused by :func:`resolve`)."""
    path = run.root / "run.json"
    meta = json.loads(path.read_text())
    if meta.get("base_model") == source:
        return
    meta["base_model"] = source
    tmp = path.with_name("run.json.tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, path)


def stage_base_model_shipped(cfg: Config, run: RunDir, progress: bool = True, source: dict | None = None):
    """The base_model stage filled from the shipped model named in ``source``."""
    from . import pipeline
    from .train import load_model, resolve_device

    if run.done("base_model"):
        print("[internalrl] base_model: finished earlier, skipped", flush=True)
        return run.path("base_model")
    shipped = load(source["name"])  # checks every file against the manifest
    if shipped.sha256 != source["sha256"]:
        raise PretrainedError(f"the shipped model {source['name']!r} changed while this run was set up; run again")
    run.require("data", "data")
    work = run.partial("base_model")
    shutil.copyfile(shipped.path / "model.safetensors", work / "model.safetensors")
    (work / "model_config.json").write_text(json.dumps(asdict(shipped.config.model), indent=2))
    (work / "train_log.jsonl").write_text("")  # trained elsewhere: its card has the numbers
    model = load_model(work, device=resolve_device(cfg.train.device))
    print(f"[internalrl] base_model: copied {source['summary']}", flush=True)
    stage_config = {"model": asdict(cfg.model), "train": asdict(cfg.train), "seed": shipped.config.seed}
    full = {**source, "card": {k: shipped.card.get(k) for k in ("summary", "seed", "steps", "training_seconds",
                                                                 "hardware")}}
    return pipeline.finish_base_model(cfg, run, model, float(shipped.card.get("training_seconds") or 0.0),
                                      stage_config, source=full)


def stage_base_model_from(cfg: Config, run: RunDir, progress: bool = True, init_from: str | None = None):
    """The base_model stage trained here, starting from the compact checkpoint ``init_from``."""
    from . import pipeline

    if run.done("base_model"):
        raise RunDirError(f"{run.root} already has a finished base model; --init-from would not be used. "
                          "Use a new --out folder.")
    return pipeline.stage_base_model(cfg, run, progress, init_from=Path(init_from))


def base_model_stage(source: dict, init_from: str | None = None):
    """The function that makes this run's base_model stage."""
    from . import pipeline

    if source["choice"] == "shipped":
        return functools.partial(stage_base_model_shipped, source=source)
    if init_from is not None:
        return functools.partial(stage_base_model_from, init_from=init_from)
    return pipeline.stage_base_model
