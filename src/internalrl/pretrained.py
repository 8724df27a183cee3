"""Shipped (pretrained) models: a base model and its subgoal controllers, ready to load.

A shipped model is one folder under a *root* (by default the package's ``assets/``), named
after the model, e.g. ``assets/grid/``:

    model.safetensors        the base model's weights (safetensors: no pickle)
    config.json              the full resolved Config of the run that made it (``config.dumps``)
    controllers.safetensors  the supervised SubgoalControllers at the control layer
    card.md, card.json       the model card: recipe, seed, steps, training time, hardware, numbers
    metacontroller.safetensors  (optional) the frozen metacontroller at L/2
    policy.safetensors       (optional) the internal-RL code policy trained on the post-training task
    manifest.json            byte size and sha256 of every file above

``load("grid")`` checks every file against the manifest before reading it, so a truncated or
altered file is reported by name instead of producing a wrong model. ``export(run_dir, name)``
writes such a folder from a finished run directory, atomically.

The root can be moved with the environment variable ``INTERNALRL_PRETRAINED_ROOT`` (what
``internalrl run --base-model shipped`` reads) or the ``root=`` argument.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .config import Config, ConfigError, dumps
from .config import _from_dict
from .config import config_from_dict as _config_from_dict
from .controller import SubgoalControllers
from .errors import PretrainedError
from .models.sequence_model import ModelConfig, SequenceModel

#: What ``internalrl run`` does for the base model when ``--base-model`` is not given and the run
#: directory records no choice: "train" (pretrain it in the run) or "shipped" (copy the shipped model).
DEFAULT_BASE_MODEL = "train"
BASE_MODEL_CHOICES = ("shipped", "train")

ROOT_ENV = "INTERNALRL_PRETRAINED_ROOT"
FILES = ("model.safetensors", "config.json", "controllers.safetensors", "card.md", "card.json")
OPTIONAL_FILES = ("metacontroller.safetensors", "policy.safetensors")  # shipped when the run had them
MANIFEST_FORMAT = 1
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def default_root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or Path(__file__).parent / "assets")


def resolve_root(root) -> Path:
    return default_root() if root is None else Path(root)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def available(root=None) -> list[str]:
    """Names of the shipped models under ``root`` (folders with a manifest)."""
    root = resolve_root(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _NAME.match(p.name) and (p / "manifest.json").exists())


def _folder(name: str, root) -> Path:
    root = resolve_root(root)
    if not _NAME.match(name or ""):
        raise PretrainedError(f"{name!r} is not a model name (lower-case letters, digits, '-', '_', '.')")
    folder = root / name
    if not (folder / "manifest.json").exists():
        have = available(root)
        raise PretrainedError(f"no shipped model {name!r} in {root}; available: {', '.join(have) or 'none'} "
                              "(make one with `internalrl pretrained export RUN_DIR NAME`)")
    return folder


def verify(folder: Path) -> dict:
    """The manifest of ``folder`` after checking every listed file's size and sha256."""
    folder = Path(folder)
    redo = f"re-install the package or re-export the model into {folder}"
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        files = manifest["files"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise PretrainedError(f"{folder / 'manifest.json'} is missing or corrupt; {redo}") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise PretrainedError(f"{folder} has manifest format {manifest.get('format')!r}; this version reads "
                              f"{MANIFEST_FORMAT}; {redo}")
    listed = [n for n in OPTIONAL_FILES if isinstance(files, dict) and n in files]
    for name in (*FILES, *listed):
        path = folder / name
        want = files.get(name) if isinstance(files, dict) else None
        if not (isinstance(want, dict) and isinstance(want.get("bytes"), int) and isinstance(want.get("sha256"), str)):
            raise PretrainedError(f"{folder / 'manifest.json'} does not list {name} with its bytes and sha256; {redo}")
        if not path.is_file():
            raise PretrainedError(f"{path} is missing; {redo}")
        size = path.stat().st_size
        if size != want["bytes"]:
            what = "truncated" if size < want["bytes"] else "longer than shipped"
            raise PretrainedError(f"{path} is {what} ({size} bytes, the manifest says {want['bytes']}); {redo}")
        if sha256_file(path) != want["sha256"]:
            raise PretrainedError(f"{path} is corrupt (its sha256 differs from the manifest's); {redo}")
    return manifest


def config_from_dict(values: dict, where: str = "config") -> Config:
    """The :class:`Config` that ``config.dumps`` / ``Config.to_dict`` wrote, validated."""
    try:
        return _config_from_dict(values, where)
    except ConfigError as e:
        raise PretrainedError(str(e)) from None


@dataclass
class Pretrained:
    """A loaded shipped model: the frozen base model, its config, its subgoal controllers, and (where
    shipped) the metacontroller and the internal-RL policy of the post-training task."""

    name: str
    model: SequenceModel  # frozen, eval mode
    config: Config
    layer: int  # the control layer the controllers act at
    controllers: SubgoalControllers  # frozen, eval mode
    card: dict
    path: Path
    sha256: str  # of model.safetensors
    metacontroller: torch.nn.Module | None = None  # a frozen Metacontroller at config.meta_layer(), or None
    policy: torch.nn.Module | None = None  # a frozen RecurrentCodePolicy over the metacontroller's codes, or None


def _frozen(module: torch.nn.Module) -> torch.nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:
        raise PretrainedError(f"{path} cannot be read ({type(e).__name__}: {str(e)[:120]})") from None


def build_controllers(cfg: Config) -> SubgoalControllers:
    return SubgoalControllers(cfg.env.spec().num_subgoals, cfg.model.width, cfg.controllers.rank or None)


def build_metacontroller(cfg: Config):
    from .metacontroller import Metacontroller

    return Metacontroller(cfg.metacontroller, cfg.model.width)


def build_policy(cfg: Config):
    from .rl.policy import RecurrentCodePolicy

    return RecurrentCodePolicy(cfg.model.width, cfg.metacontroller.code_dim, cfg.rl.policy_hidden)


def load(name: str, root=None, device="cpu") -> Pretrained:
    """Load the shipped model ``name`` (see :func:`available`) after checking its files."""
    folder = _folder(name, root)
    manifest = verify(folder)
    try:
        cfg_dict = json.loads((folder / "config.json").read_text())
        card = json.loads((folder / "card.json").read_text())
    except json.JSONDecodeError as e:
        raise PretrainedError(f"a JSON file in {folder} is corrupt ({e})") from None
    cfg = config_from_dict(cfg_dict, str(folder / "config.json"))
    modules = {"model.safetensors": SequenceModel(cfg.model), "controllers.safetensors": build_controllers(cfg)}
    if "metacontroller.safetensors" in manifest["files"]:
        modules["metacontroller.safetensors"] = build_metacontroller(cfg)
    if "policy.safetensors" in manifest["files"]:
        modules["policy.safetensors"] = build_policy(cfg)
    for file, module in modules.items():
        try:
            module.load_state_dict(_weights(folder / file))
        except RuntimeError as e:
            raise PretrainedError(f"{folder / file} does not fit the architecture in config.json "
                                  f"({str(e)[:160]})") from None
    loaded = {f: _frozen(m.to(device)) for f, m in modules.items()}
    return Pretrained(name, loaded["model.safetensors"], cfg, cfg.control_layer(), loaded["controllers.safetensors"],
                      card, folder, manifest["files"]["model.safetensors"]["sha256"],
                      loaded.get("metacontroller.safetensors"), loaded.get("policy.safetensors"))


_RAISE = object()


def find_for_env(cfg: Config, root=None, names: list[str] | None = None, missing=_RAISE) -> str | None:
    """The shipped model (of ``names``, default all) trained on the environment of ``cfg`` (same grid,
    colours, walls, horizon and pretraining tasks); "grid" wins a tie. If there is none: ``missing``
    when given, else PretrainedError."""
    want = (asdict(cfg.env.spec()), cfg.env.pretrain_tasks)
    names = sorted(available(root) if names is None else names, key=lambda n: (n != "grid", n))
    for name in names:
        try:
            env = _from_dict(type(cfg.env), json.loads((resolve_root(root) / name / "config.json").read_text())["env"], "env")
            if (asdict(env.spec()), env.pretrain_tasks) == want:
                return name
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, PretrainedError):
            continue
    if missing is not _RAISE:
        return missing
    e = cfg.env
    raise PretrainedError(f"no shipped model for this environment ({e.size}x{e.size} grid, {e.num_objects} colours, "
                          f"{e.num_walls} walls, horizon {e.horizon}, tasks {e.pretrain_tasks}) in {resolve_root(root)} "
                          f"(available: {', '.join(names) or 'none'}); use --base-model train")


# ----------------------------------------------------------------------------- export
def _hardware() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {gpu}"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def render_card(card: dict) -> str:
    """card.md from card.json: a title, the summary, the scalar fields, then each section."""
    lines = [f"# {card.get('name', 'model')}", "", card.get("summary", ""), ""]
    sections = {k: v for k, v in card.items() if isinstance(v, dict) and v}
    lines += [f"- **{k}**: {_fmt(v)}" for k, v in card.items()
              if k not in ("name", "summary") and not isinstance(v, dict)]
    for key, section in sections.items():
        lines += ["", f"## {key}", ""]
        for k, v in section.items():
            if isinstance(v, dict):
                lines.append(f"- **{k}**: " + ", ".join(f"{kk} {_fmt(vv)}" for kk, vv in v.items()))
            else:
                lines.append(f"- **{k}**: {_fmt(v)}")
    return "\n".join(lines).rstrip() + "\n"


def best_internal_rl(run_dir: Path, cfg: Config) -> str | None:
    """The finished internal-RL run on the post-training task (frozen metacontroller of seed 0) with the
    highest final success, or None."""
    best = None
    for folder in sorted(Path(run_dir).glob(f"rl_internal_{cfg.env.posttrain_task}_*")):
        if not (folder / "DONE").exists() or not (folder / "policy.safetensors").exists():
            continue
        stage_cfg = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
        if "_m" in folder.name.split("ep", 1)[-1] or stage_cfg.get("rl", {}).get("policy_hidden") != cfg.rl.policy_hidden:
            continue  # another metacontroller seed, or a policy of another size than the config builds
        h = json.loads((folder / "metrics.json").read_text())["headline"]
        if best is None or h["final_success"] > best[0]:
            best = (h["final_success"], folder.name)
    return best and best[1]


def export(run_dir, name: str, root=None, card: dict | None = None, overwrite: bool = False,
           controllers_from: str = "controllers", policy_from: str | None = None) -> Path:
    """Write the shipped-model folder ``root/name`` from the finished run directory ``run_dir``
    (its ``base_model`` stage, and the controllers at the control layer of its
    ``controllers_from`` folder: the ``controllers`` stage, or a ``steerability`` protocol's
    folder with its own layer and rank; when that protocol measured a training snapshot, the
    snapshot's weights ship, without the run's metacontroller or policy, which were trained on its
    final model). ``card`` adds to (or overrides) what the
    card says by itself (recipe, seed, steps, training time, hardware, measured numbers). The
    folder is written under a temporary name and renamed when whole; an existing folder is
    replaced only with ``overwrite=True``. The frozen metacontroller ships too when the run has one, and the
    internal-RL policy of the folder ``policy_from`` (default: the run's best internal-RL run on the post-training
    task, if any)."""
    run_dir, root = Path(run_dir), resolve_root(root)
    if not _NAME.match(name or ""):
        raise PretrainedError(f"{name!r} is not a model name (lower-case letters, digits, '-', '_', '.')")
    final = root / name
    if final.exists() and not overwrite:
        raise PretrainedError(f"{final} already exists; pass overwrite=True (--overwrite) to replace it")
    try:
        run_meta = json.loads((run_dir / "run.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise PretrainedError(f"{run_dir} is not a finished internalrl run (no readable run.json)") from None
    from .train import snapshot_name

    cfg = config_from_dict(run_meta.get("config"), str(run_dir / "run.json"))
    snapshot = None  # a steerability folder measured on a training snapshot ships that snapshot's weights
    if controllers_from != "controllers":  # a steerability folder: its protocol says where and how
        try:
            protocol = json.loads((run_dir / controllers_from / "metrics.json").read_text())
        except (OSError, json.JSONDecodeError):
            raise PretrainedError(f"{run_dir / controllers_from} holds no finished steerability measurement; run "
                                  f"`internalrl steerability {run_dir} --name {controllers_from}` first") from None
        pc = protocol["protocol"]
        cfg.controllers.layer, cfg.controllers.rank = protocol["layer"], pc["rank"]
        cfg.controllers.steps, cfg.controllers.batch_size, cfg.controllers.lr = pc["steps"], pc["batch_size"], pc["lr"]
        cfg.controllers.sweep = False
        snapshot = (protocol.get("base_model") or {}).get("snapshot")
    layer = cfg.control_layer()
    weights = run_dir / "base_model" / ("model.safetensors" if snapshot is None
                                        else f"snapshots/{snapshot_name(snapshot)}.safetensors")
    ctl = run_dir / controllers_from / f"controllers_layer{layer}.safetensors"
    for stage, path, command in (("base_model", weights, "train"), (controllers_from, ctl, "controllers")):
        if not (run_dir / stage / "DONE").exists() or not path.exists():
            raise PretrainedError(f"{run_dir} has no finished {stage} stage with {path.name}; run "
                                  f"`internalrl {command} --out {run_dir}` first")
    # both files must load into the architecture the config describes
    model, controllers = SequenceModel(cfg.model), build_controllers(cfg)
    for module, path in ((model, weights), (controllers, ctl)):
        try:
            module.load_state_dict(_weights(path))
        except RuntimeError as e:
            raise PretrainedError(f"{path} does not fit the run's config ({str(e)[:160]})") from None
    extra = {}  # optional files: the metacontroller, and the policy trained through it
    meta_path = run_dir / "metacontroller" / "frozen.safetensors"
    if snapshot is not None and policy_from:
        raise PretrainedError(f"{run_dir / controllers_from} measured the training snapshot at step {snapshot}; the "
                              f"run's metacontroller and policies were trained on its final model, so none ships "
                              f"with the snapshot (drop --policy-from)")
    if snapshot is None and (run_dir / "metacontroller" / "DONE").exists() and meta_path.exists():
        extra["metacontroller.safetensors"] = meta_path
        policy_from = policy_from or best_internal_rl(run_dir, cfg)
        if policy_from:
            extra["policy.safetensors"] = run_dir / policy_from / "policy.safetensors"
    elif policy_from:
        raise PretrainedError(f"{run_dir} has no finished metacontroller stage, which a shipped policy needs; run "
                              f"`internalrl metacontroller --out {run_dir}` first")
    builders = {"metacontroller.safetensors": build_metacontroller, "policy.safetensors": build_policy}
    for file, path in extra.items():
        if not path.exists():
            raise PretrainedError(f"{path} is missing; name a finished internal-RL folder of {run_dir}")
        try:
            builders[file](cfg).load_state_dict(_weights(path))
        except RuntimeError as e:
            raise PretrainedError(f"{path} does not fit the run's config ({str(e)[:160]})") from None
    results = json.loads((run_dir / "results.json").read_text()) if (run_dir / "results.json").exists() else {}
    base_cfg = json.loads((run_dir / "base_model" / "config.json").read_text())
    base = json.loads((run_dir / "base_model" / "metrics.json").read_text()).get("headline", {})
    stages = ("base_model", "eval_base", "probes", "controllers", controllers_from, "metacontroller", "injection",
              policy_from)
    steps = cfg.train.steps
    if snapshot is not None:  # the run's other stages measured its final model, not this snapshot
        stages, steps = (controllers_from,), int(snapshot)
        base = {"train_seconds": protocol["base_model"].get("train_seconds")}
    measured = {k: results[k] for k in stages if k and k in results}
    world = ("ant-pinpad (MuJoCo)" if cfg.env.name == "ant" else "gridworld")
    made = {
        "name": name,
        "summary": f"{cfg.env.size}x{cfg.env.size} {world} base model ({cfg.model.backbone}), width {cfg.model.width}, "
                   f"depth {cfg.model.depth}, {steps} steps{'' if snapshot is None else ' (a training snapshot)'}; "
                   f"subgoal controllers at layer {layer}"
                   + ("; metacontroller" if extra else "") + ("; internal-RL policy" if len(extra) > 1 else ""),
        "recipe": {"model": asdict(cfg.model), "train": asdict(cfg.train),
                   "data": asdict(cfg.data), "controllers": asdict(cfg.controllers),
                   **{k: base_cfg[k] for k in ("source", "init_from") if base_cfg.get(k)}},
        "seed": cfg.seed, "steps": steps, **({"snapshot_of_run_steps": cfg.train.steps} if snapshot is not None else {}),
        "training_seconds": base.get("train_seconds"), "parameters": sum(p.numel() for p in model.parameters()),
        "hardware": _hardware(), "control_layer": layer,
        **({"policy_from": policy_from} if "policy.safetensors" in extra else {}),
        "measured": measured,
    }
    made.update(card or {})
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        shutil.copyfile(weights, tmp / "model.safetensors")
        shutil.copyfile(ctl, tmp / "controllers.safetensors")
        (tmp / "config.json").write_text(dumps(cfg))
        (tmp / "card.json").write_text(json.dumps(made, indent=2, allow_nan=False))
        (tmp / "card.md").write_text(render_card(made))
        for file, path in extra.items():
            shutil.copyfile(path, tmp / file)
        files = {f: {"bytes": (tmp / f).stat().st_size, "sha256": sha256_file(tmp / f)} for f in (*FILES, *extra)}
        (tmp / "manifest.json").write_text(json.dumps({"format": MANIFEST_FORMAT, "name": name, "layer": layer,
                                                       "files": files}, indent=2))
        if final.exists():  # overwrite: move the old folder aside, put the new one in, then drop the old
            old = root / f".{name}.old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# --------------------------------------------------------------------------- evaluate
def evaluate(p: Pretrained, policy: str, task: str | None = None, episodes: int = 1000, seed: int = 0,
             greedy: bool = False, device="cpu", chunk: int = 1024, progress: bool = True) -> dict:
    """Roll the shipped model out on batched environments of its kind (the gridworld or the ant-pinpad).

    ``policy="base"``: the uncontrolled model; with no ``task``, free play on the pretraining
    tasks (success: the visits spell any pretraining task, as the pipeline's ``eval_base``
    measures it), else the given task (or task set: each episode samples one). ``policy=
    "controllers"``: the controller of the ground-truth subgoal acts at the control layer
    (default task: the post-training task). ``policy="internal"``: the shipped internal-RL policy
    picks the metacontroller's codes (sampled; switch hardened at ``rl.threshold``; raw actions
    sampled), default task the post-training task. ``greedy`` takes the most likely action
    (base and controllers). Episodes run in chunks of ``chunk`` environments stepped together.
    On the ant, ``normalised_success`` divides by the shipped expert's success on the same task
    set, seeds and episode counts (the paper reports the ant that way)."""
    from tqdm.auto import tqdm

    from .analysis.controllers import rollout_with_controllers
    from .envs import make_batched_env
    from .envs.tasks import parse_task_set
    from .evaluate import rollout_ant_base_model, rollout_base_model
    from .rl.internal import rollout_internal

    if policy not in ("base", "controllers", "internal"):
        raise ConfigError(f"policy must be 'base', 'controllers' or 'internal', got {policy!r}")
    if episodes < 1:
        raise ConfigError(f"episodes must be at least 1, got {episodes}")
    if policy == "internal" and (p.metacontroller is None or p.policy is None):
        raise PretrainedError(f"the shipped model {p.name!r} has no internal-RL policy (its folder has no "
                              "metacontroller.safetensors and policy.safetensors); use --policy base or controllers")
    if policy == "internal" and greedy:
        raise ConfigError("--greedy applies to --policy base and controllers; the internal policy samples its codes")
    cfg = p.config
    ant = cfg.env.name == "ant"
    spec = cfg.env.spec()
    free_play = policy == "base" and task is None
    task_name = (cfg.env.pretrain_tasks if free_play else cfg.env.posttrain_task) if task is None else task
    tasks = parse_task_set(task_name, spec.num_objects)
    temperature = 0.0 if greedy else 1.0
    successes, progress_sum, done = 0, 0.0, 0
    sizes = [min(chunk, episodes - i) for i in range(0, episodes, chunk)]
    for i, n in enumerate(tqdm(sizes, desc=f"{p.name}: {policy} rollouts", unit="batch", disable=not progress)):
        env = make_batched_env(spec, n, tasks, np.random.default_rng([seed, i]))
        torch_seed = seed * 1_000_003 + i
        if policy == "internal":
            roll = rollout_internal(p.model, p.metacontroller, p.policy, env, cfg.meta_layer(), torch_seed, device,
                                    threshold=cfg.rl.threshold)
            res = {"success_rate": float(roll.returns.mean())}
        elif policy == "base":
            rollout = rollout_ant_base_model if ant else rollout_base_model
            res = rollout(p.model, env, free_play=free_play, seed=torch_seed, temperature=temperature, device=device)
        else:
            res = rollout_with_controllers(p.model, p.controllers, p.layer, env, torch_seed, device,
                                           temperature=temperature)
        successes += int(round(res["success_rate"] * n))
        progress_sum += float(env.progress.sum())
        done += n
    out = {"name": p.name, "env": cfg.env.name, "policy": policy, "task": task_name, "free_play": free_play,
           "greedy": greedy, "seed": seed, "episodes": done, "successes": successes, "success_rate": successes / done,
           "mean_colours_done": progress_sum / done,
           "layer": p.layer if policy == "controllers" else cfg.meta_layer() if policy == "internal" else None}
    if ant:
        from .experts.ant import evaluate_ant_expert, load_ant_expert

        expert = evaluate_ant_expert(load_ant_expert(), tasks, episodes, seed=seed, mean_actions=False, spec=spec)
        out["expert_success_rate"] = expert["success_rate"]
        out["normalised_success"] = out["success_rate"] / expert["success_rate"] if expert["success_rate"] > 0 else None
    return out
