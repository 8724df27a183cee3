"""Dataclass configs with the paper's defaults, named presets, and validated overrides.

``load_config("quick", ["train.steps=500", "seed=3"])`` returns a :class:`Config`; a bad
value raises :class:`ConfigError` naming the field. ``load_config("quick", env="ant")`` is the
ant-pinpad's preset of that name (:data:`ENV_PRESETS`); ``env.name`` records which environment a
config is for.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .baselines.compile import CompileConfig
from .envs.gridworld import GridSpec
from .envs.tasks import ANT_POSTTRAIN_TASK, GRID_POSTTRAIN_TASK, TaskError, parse_task_set
from .errors import ConfigError
from .metacontroller import MetacontrollerConfig
from .models.sequence_model import ModelConfig
from .rl.train import RLConfig


ENVS = ("grid", "ant")


@dataclass
class EnvConfig:
    name: str = "grid"  # "grid" (gridworld-pinpad) or "ant" (ant-pinpad, MuJoCo); the rest of the section is its shape
    size: int = 7
    num_objects: int = 8
    num_walls: int = 4
    horizon: int = 100
    pretrain_tasks: str = "grid-pretrain"  # a named task set or comma-separated task strings
    posttrain_task: str = GRID_POSTTRAIN_TASK

    def spec(self):
        """The environment's spec: a :class:`GridSpec`, or an :class:`~internalrl.envs.ant.AntSpec` for the ant
        (its [choice] physics fields at their defaults, docs/ant.md)."""
        if self.name == "ant":
            from .envs.ant import AntSpec

            return AntSpec(self.size, self.num_objects, self.num_walls, self.horizon)
        return GridSpec(self.size, self.num_objects, self.num_walls, self.horizon)


@dataclass
class DataConfig:
    num_episodes: int = 200_000  # [choice] the paper does not give its dataset size
    epsilon: float = 0.0  # probability the expert's action is replaced by a random safe one
    val_fraction: float = 0.05


@dataclass
class TrainConfig:
    steps: int = 256_000
    batch_size: int = 1024
    lr: float = 3e-4
    weight_decay: float = 0.03
    obs_loss_weight: float = 0.01  # λ in −ln p(a|o) − λ ln p(o'|o)
    warmup_steps: int = 1000
    final_lr_fraction: float = 0.1  # cosine decay ends at this fraction of lr (1.0: constant)
    grad_clip: float = 1.0
    eval_every: int = 2000
    checkpoint_every: int = 1000
    snapshots: int = 5  # weights kept at evenly spaced steps, for analyses over training
    device: str = "auto"  # auto | cpu | cuda
    # [departure from the paper] the next-action loss against the Bayes-optimal distribution given
    # o_1:t (computed from the task table) instead of the expert's sampled action: the same optimum,
    # less gradient noise. Grid, epsilon = 0 only.
    soft_targets: bool = False
    # [departure from the paper] mix the next-action target with the uniform distribution: caps how
    # sure the model becomes that an action (hence a never-seen subgoal transition) is impossible
    label_smoothing: float = 0.0


@dataclass
class EvalConfig:
    num_envs: int = 1024  # episodes per rollout evaluation, stepped together
    temperature: float = 1.0
    inject_step: int = 5  # latent code injection mid-episode at this step [choice; the ant's 30 is the paper's]


@dataclass
class ProbeConfig:
    train_episodes: int = 2000  # episodes whose residuals fit the probes (from the training split)
    test_episodes: int = 1000  # held-out episodes that score them (from the validation split)
    fit_steps: int = 300  # full-batch Adam steps of the logistic regression
    over_training: bool = True  # also probe every snapshot of the base model (Fig. A1 heatmap)


@dataclass
class ControllerConfig:
    layer: int = -1  # controlled layer; -1 means depth // 2 (SPEC: all later control acts at L/2)
    rank: int = 16  # rank of U = A Bᵀ; 0 means full rank
    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    final_lr_fraction: float = 0.0  # cosine decay of the lr to this fraction of its peak [choice]
    sweep: bool = True  # train and evaluate a set of controllers at every layer (Fig. 4)


@dataclass
class Config:
    seed: int = 0
    env: EnvConfig = field(default_factory=EnvConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    controllers: ControllerConfig = field(default_factory=ControllerConfig)
    metacontroller: MetacontrollerConfig = field(default_factory=MetacontrollerConfig)
    compile: CompileConfig = field(default_factory=CompileConfig)  # the CompILE baseline (acts at meta_layer())
    rl: RLConfig = field(default_factory=RLConfig)

    def control_layer(self) -> int:
        return self.model.depth // 2 if self.controllers.layer < 0 else self.controllers.layer

    def meta_layer(self) -> int:
        return self.model.depth // 2 if self.metacontroller.layer < 0 else self.metacontroller.layer

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> "Config":
        _check_types_and_finite(self)
        if not 0 <= self.seed < 2 ** 31:
            raise ConfigError(f"seed must be in 0..{2 ** 31 - 1}, got {self.seed}")
        if self.env.name not in ENVS:
            raise ConfigError(f"env.name must be one of {', '.join(ENVS)}, got {self.env.name!r}")
        if self.env.size > MAX_GRID_SIZE:
            raise ConfigError(f"env.size must be at most {MAX_GRID_SIZE} (agent cells are stored as 8-bit numbers; the "
                              f"paper's grid is 7), got {self.env.size}")
        try:
            spec = self.env.spec()
        except ValueError as e:
            raise ConfigError(f"env: {e}") from None
        for name in ("pretrain_tasks", "posttrain_task"):
            try:
                parse_task_set(getattr(self.env, name), spec.num_objects)
            except TaskError as e:
                raise ConfigError(f"env.{name}: {e}") from None
        if self.model.obs_dim != spec.obs_dim:
            raise ConfigError(f"model.obs_dim is {self.model.obs_dim} but the environment's observation has "
                              f"{spec.obs_dim} dims; leave model.obs_dim alone, it follows env")
        try:
            self.model.validate()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.env.name == "ant":
            self._validate_ant()
        if self.model.max_len < spec.horizon + 1:
            raise ConfigError(f"model.max_len ({self.model.max_len}) must be at least env.horizon + 1 ({spec.horizon + 1})")
        checks = [
            ("data.num_episodes", self.data.num_episodes >= 20, "at least 20"),
            ("data.epsilon", 0.0 <= self.data.epsilon < 1.0, "in [0, 1)"),
            ("data.val_fraction", 0.0 < self.data.val_fraction < 0.5, "in (0, 0.5)"),
            ("train.steps", self.train.steps >= 1, "at least 1"),
            ("train.batch_size", self.train.batch_size >= 1, "at least 1"),
            ("train.lr", self.train.lr > 0, "positive"),
            ("train.weight_decay", self.train.weight_decay >= 0, "non-negative"),
            ("train.obs_loss_weight", self.train.obs_loss_weight >= 0, "non-negative"),
            ("train.warmup_steps", self.train.warmup_steps >= 0, "non-negative"),
            ("train.final_lr_fraction", 0.0 <= self.train.final_lr_fraction <= 1.0, "in [0, 1]"),
            ("train.grad_clip", self.train.grad_clip > 0, "positive"),
            ("train.label_smoothing", 0.0 <= self.train.label_smoothing < 1.0, "in [0, 1)"),
            ("train.eval_every", self.train.eval_every >= 1, "at least 1"),
            ("train.checkpoint_every", self.train.checkpoint_every >= 1, "at least 1"),
            ("train.snapshots", self.train.snapshots >= 1, "at least 1"),
            ("train.device", self.train.device in ("auto", "cpu", "cuda"), "one of auto, cpu, cuda"),
            ("train.device", self.train.device != "cuda" or _cuda_available(), "auto or cpu: no CUDA device is available"),
            ("eval.num_envs", self.eval.num_envs >= 1, "at least 1"),
            ("eval.temperature", self.eval.temperature > 0, "positive"),
            ("eval.inject_step", 0 <= self.eval.inject_step < self.env.horizon, f"in [0, env.horizon={self.env.horizon})"),
            ("probe.train_episodes", self.probe.train_episodes >= 10, "at least 10"),
            ("probe.test_episodes", self.probe.test_episodes >= 10, "at least 10"),
            ("probe.fit_steps", self.probe.fit_steps >= 1, "at least 1"),
            ("controllers.layer", -1 <= self.controllers.layer <= self.model.depth, f"-1 or in 0..{self.model.depth}"),
            ("controllers.rank", 0 <= self.controllers.rank <= self.model.width, f"in 0..{self.model.width} (0: full)"),
            ("controllers.steps", self.controllers.steps >= 1, "at least 1"),
            ("controllers.batch_size", self.controllers.batch_size >= 1, "at least 1"),
            ("controllers.lr", self.controllers.lr > 0, "positive"),
            ("controllers.warmup_steps", 0 <= self.controllers.warmup_steps < self.controllers.steps,
             "in 0..controllers.steps-1"),
            ("controllers.final_lr_fraction", 0.0 <= self.controllers.final_lr_fraction <= 1.0, "in [0, 1]"),
            ("controllers.weight_decay", self.controllers.weight_decay >= 0, "non-negative"),
        ]
        if self.train.soft_targets and self.data.epsilon > 0:
            raise ConfigError("train.soft_targets is the noiseless expert's posterior; it needs data.epsilon=0 "
                              f"(got {self.data.epsilon})")
        try:
            self.metacontroller.validate(self.model.width, self.model.depth)
            self.compile.validate(self.model.width)
            self.rl.validate()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        for name, ok, what in checks:
            if not ok:
                section, key = name.split(".")
                raise ConfigError(f"{name} must be {what}, got {getattr(getattr(self, section), key)!r}")
        return self


    def _validate_ant(self) -> None:
        """What the ant's data and heads fix: 8 continuous actions, Gaussian heads, a linear embedding."""
        from .envs.ant import NUM_ACTIONS

        m = self.model
        for name, ok, what in (
            ("model.action_dim", m.action_dim == NUM_ACTIONS, f"{NUM_ACTIONS} (the ant's joint torques)"),
            ("model.action_type", m.action_type == "gaussian", "'gaussian' for the ant's continuous actions"),
            ("model.obs_type", m.obs_type == "gaussian", "'gaussian' for the ant's continuous observations"),
            ("model.obs_encoder", m.obs_encoder in ("linear", "heading"),
             "'linear' or 'heading' for the ant (the others read a grid)"),
            ("train.soft_targets", not self.train.soft_targets, "false for the ant (a gridworld expert's posterior)"),
        ):
            if not ok:
                section, key = name.split(".")
                raise ConfigError(f"{name} must be {what}, got {getattr(getattr(self, section), key)!r}")


MAX_GRID_SIZE = 11  # 121 cells: the largest grid whose cell numbers fit the dataset's int8 agent column


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _check_types_and_finite(obj, prefix: str = "") -> None:
    """Every field holds its declared kind of value (a run.json edited by hand can hold anything), and
    every number is finite: ``inf`` and ``nan`` pass every comparison a check makes, or none."""
    import math

    for f in fields(obj):
        v, name = getattr(obj, f.name), prefix + f.name
        if dataclasses.is_dataclass(v):
            _check_types_and_finite(v, name + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(default, bool):
            ok = isinstance(v, bool)
        elif isinstance(default, (int, float)):
            ok = isinstance(v, (int, float) if isinstance(default, float) else int) and not isinstance(v, bool)
        else:
            ok = default is None or isinstance(v, type(default))
        if not ok:
            raise ConfigError(f"{name} must be {'a number' if isinstance(default, float) else type(default).__name__}, "
                              f"got {v!r}")
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{name} must be a finite number, got {v!r}")


def _quick() -> Config:
    c = Config()
    c.data.num_episodes = 150_000
    # the egocentric encoder: a fixed re-indexing of o_t that a small CPU-trained model learns
    # from several times faster than the flat map; a narrow model with a gated (SwiGLU) MLP and
    # small batches gets furthest per CPU-second (docs/journal.md, "What the quick base model needs")
    c.model = ModelConfig(width=64, depth=4, heads=4, head_dim=16, mlp=128, mlp_type="swiglu", obs_encoder="egocentric")
    c.train = TrainConfig(steps=10_000, batch_size=64, lr=4e-3, warmup_steps=200, final_lr_fraction=0.5,
                          eval_every=2500, checkpoint_every=1000, snapshots=4)
    c.eval.num_envs = 1024
    c.probe = ProbeConfig(train_episodes=1500, test_episodes=500, fit_steps=300)
    c.controllers = ControllerConfig(steps=1000, batch_size=64, lr=3e-3)
    # α = 0 for 200 steps, then ramped to α over 200: with α from the first step the code never gets used.
    # The switch aligns with the subgoals only after 5k-9k steps, at a chaotic point (F1 0 at 4k, 0.84 at 6k,
    # 0.96 at 8k on one base model; 0.003 at 8k and 1.000 at 10k on another; docs/journal.md), hence 10k steps;
    # lr 2e-3 aligned one base model sooner but left three of four stuck with a misplaced extra switch (docs/journal.md).
    # The co-trained variant gets 1000 steps to keep the pipeline within half an hour; it collapses to one
    # switch at 800 and at 8000 steps alike [choice]. The last tenth trains with a noisy (Gumbel) switch: the
    # sigmoid switch leaves 43-50% of β in (0.1, 0.9) at 10k steps, the noisy tenth 1-16%
    # (docs/journal.md, "A near-binary switch").
    c.metacontroller = MetacontrollerConfig(steps=10_000, batch_size=64, lr=1e-3, kl_free_steps=200, kl_warmup_steps=200,
                                            cotrain_steps=1000, binarize_fraction=0.1)
    c.compile = CompileConfig(steps=400, batch_size=64, lr=1e-3)
    c.rl = RLConfig(episodes=20_000, batch_size=256, lr=3e-4, policy_hidden=128)
    return c


def _long() -> Config:
    """quick trained 3x longer on twice the data (under an hour on one CPU core)."""
    c = _quick()
    c.data.num_episodes = 300_000
    c.train.steps = 30_000
    c.train.final_lr_fraction = 0.1
    c.train.eval_every = 5000
    c.train.snapshots = 8
    return c


def _paper() -> Config:
    return Config()  # the dataclass defaults are the paper's values (Tables A4/A16)


def _ant_env() -> EnvConfig:
    # the paper's ant-pinpad (SPEC §1.2): G=4, O=4, W=1, T=500, Table A2's tasks, post-training 0-1-2-3
    return EnvConfig(name="ant", size=4, num_objects=4, num_walls=1, horizon=500, pretrain_tasks="ant-pretrain",
                     posttrain_task=ANT_POSTTRAIN_TASK)


def _ant_model(**kw) -> ModelConfig:
    return ModelConfig(obs_dim=41, action_dim=8, action_type="gaussian", obs_type="gaussian", backbone="hawk",
                       max_len=512, **kw)


def _ant_quick() -> Config:
    """The ant on one CPU core: a small Hawk trained for minutes on a few thousand expert episodes."""
    c = Config(env=_ant_env())
    c.data.num_episodes = 3000  # [choice] about 0.8M steps; 3 min of expert rollouts per dataset on one core
    c.model = _ant_model(width=64, depth=4, heads=4, mlp=128)
    # [choice] batch 32 (ant episodes are ~280 steps: ~9k tokens a step), lr 2e-3 with a short warm-up
    c.train = TrainConfig(steps=2000, batch_size=32, lr=2e-3, weight_decay=0.03, obs_loss_weight=10.0,
                          warmup_steps=100, final_lr_fraction=0.1, eval_every=500, checkpoint_every=250, snapshots=4)
    c.eval.num_envs = 512
    c.eval.inject_step = 30  # Fig. A4: a colour's code injected at step 30
    # [choice] ~58k steps fit a probe: the grid's 2000 episodes (~580k ant steps) took over 9 CPU-minutes per model
    c.probe = ProbeConfig(train_episodes=200, test_episodes=100, fit_steps=300)
    c.controllers = ControllerConfig(rank=0, steps=500, batch_size=32, lr=1e-3)  # SPEC §4: full rank for the ant
    # [choice] 500 steps: the metacontroller steps its switch and recurrences through ~300 time steps an ant
    # episode; 500 frozen steps take ~7 min on one loaded CPU core (docs/ant.md), and its switch had not fired
    # by step 468 of the earlier 2000 either
    c.metacontroller = MetacontrollerConfig(rank=0, steps=500, batch_size=32, lr=1e-3)
    # [choice] an ant episode has ~10x a grid episode's steps (~290 against ~31): 4 PPO iterations of 256 episodes
    c.rl = RLConfig(episodes=1024, batch_size=256, lr=3e-4, policy_hidden=128)
    return c


def _ant_paper() -> Config:
    """Tables A5/A15: Hawk width 256, depth 8, LRU width 256, 8 heads, MLP 512 ReLU; λ = 10; AdamW lr 3e-4,
    wd 0.03, batch 512, 204.8k steps. The metacontroller: 32k steps, batch 128, lr 3e-4, full-rank U (SPEC §5)."""
    c = Config(env=_ant_env())
    c.data.num_episodes = 20_000  # [choice] the paper does not give its dataset size; ~2 GB padded to T = 500
    c.model = _ant_model(width=256, depth=8, heads=8, mlp=512, lru_width=256)
    c.eval.inject_step = 30
    c.train = TrainConfig(steps=204_800, batch_size=512, lr=3e-4, weight_decay=0.03, obs_loss_weight=10.0)
    c.controllers.rank = 0
    c.metacontroller = MetacontrollerConfig(rank=0, steps=32_000, batch_size=128, lr=3e-4)
    return c


PRESETS = {"quick": _quick, "long": _long, "paper": _paper}
ANT_PRESETS = {"quick": _ant_quick, "paper": _ant_paper}
#: The named presets of each environment (``--env ant --preset quick``).
ENV_PRESETS = {"grid": PRESETS, "ant": ANT_PRESETS}


def coerce(value: str, current: Any, name: str) -> Any:
    """``value`` (text) as the type of ``current`` (bool, int, float or str); a bad value raises
    :class:`ConfigError` naming the field ``name``."""
    if isinstance(current, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} takes true or false, got {value!r}")
    try:
        if isinstance(current, int):
            return int(value)
        if isinstance(current, float):
            return float(value)
    except ValueError:
        kind = {"int": "an integer", "float": "a number"}[type(current).__name__]
        raise ConfigError(f"{name} takes {kind}, got {value!r}") from None
    return value


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.field=value (e.g. train.steps=500)")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        target: Any = cfg
        for p in parts[:-1]:
            if not dataclasses.is_dataclass(target) or p not in {f.name for f in fields(target)}:
                raise ConfigError(f"unknown config section {p!r} in {key!r}; sections: "
                                  f"{', '.join(f.name for f in fields(cfg) if dataclasses.is_dataclass(getattr(cfg, f.name)))}")
            target = getattr(target, p)
        leaf = parts[-1]
        names = [f.name for f in fields(target)]
        if leaf not in names or dataclasses.is_dataclass(getattr(target, leaf)):
            raise ConfigError(f"unknown config field {key!r}; {'.'.join(parts[:-1]) or 'top level'} has: {', '.join(names)}")
        setattr(target, leaf, coerce(value.strip(), getattr(target, leaf), key))
    return cfg


def load_config(preset: str = "quick", overrides: list[str] = (), base: Config | None = None,
                env: str = "grid") -> Config:
    """The preset of environment ``env`` (or ``base``, e.g. a run's stored config) with the overrides, validated."""
    if base is None:
        if env not in ENV_PRESETS:
            raise ConfigError(f"unknown environment {env!r}; choose one of: {', '.join(ENV_PRESETS)}")
        presets = ENV_PRESETS[env]
        if preset not in presets:
            raise ConfigError(f"unknown preset {preset!r} for env {env}; choose one of: {', '.join(presets)}")
    cfg = ENV_PRESETS[env][preset]() if base is None else base
    name = cfg.env.name
    apply_overrides(cfg, list(overrides))
    if cfg.env.name != name:
        raise ConfigError(f"env.name cannot be changed by an override (the presets of {name} were read); "
                          f"choose the environment with --env {cfg.env.name}")
    if _spec_ok(cfg):
        cfg.model.obs_dim = cfg.env.spec().obs_dim
        if cfg.env.name == "grid":
            cfg.model.grid_size = cfg.env.size
        elif cfg.model.obs_encoder == "heading":
            from .envs.ant import heading_layout

            cfg.model.heading_velocity, cfg.model.heading_offsets, cfg.model.heading_count = \
                heading_layout(cfg.env.spec())
    return cfg.validate()


def _from_dict(cls, values, where: str):
    """A dataclass ``cls`` from a dict as ``asdict`` wrote it: nested sections recurse, absent
    fields keep their defaults, unknown fields are an error (another version wrote it)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where} is not a JSON object")
    default = cls()
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where} has fields this version does not know: {', '.join(unknown)}")
    kwargs = {}
    for key, value in values.items():
        current = getattr(default, key)
        kwargs[key] = _from_dict(type(current), value, f"{where}.{key}") if dataclasses.is_dataclass(current) else value
    return cls(**kwargs)


def config_from_dict(values: dict, where: str = "config") -> Config:
    """The validated :class:`Config` that :func:`dumps` / ``Config.to_dict`` wrote (a run's
    ``run.json``, a shipped model's ``config.json``); absent fields keep their defaults."""
    cfg = _from_dict(Config, values, where)
    try:
        return cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"{where} is not a valid config: {e}") from None


def _spec_ok(cfg: Config) -> bool:
    if cfg.env.name not in ENVS:
        return False
    try:
        cfg.env.spec()
        return True
    except ValueError:
        return False


def dumps(cfg: Config) -> str:
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True)
