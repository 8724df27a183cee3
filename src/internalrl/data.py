"""Expert trajectories: generate, save, load, and batch with masks (SPEC §2).

A dataset is a folder with ``trajectories.npz`` (plain arrays, loaded with
``allow_pickle=False``) and ``card.json`` (what it holds and how it was made). Every
dataset has ``actions (N, Tmax, ...)``, ``lengths (N,)`` (number of actions), ``subgoals
(N, Tmax)`` and ``task_id (N,)``; the last two are ground truth for analysis only and never
reach a model. Observations are stored one of two ways, named by ``card["obs_format"]``:

* ``"grid"``: ``layout (N, cells)`` (cell identity, -1 empty) and ``agent (N, Tmax+1)``
  (agent cell per step). A gridworld observation is a function of these two, so 50k
  episodes take a few MB instead of a few GB; :func:`make_batch` rebuilds the observations.
* ``"dense"``: ``observations (N, Tmax+1, D)`` float32 (the ant).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .atomic import StorageError, verify
from .envs.gridworld import BatchedGridPinpad, GridSpec
from .envs.tasks import Task, task_str
from .errors import DataError
from .experts.grid import expert_actions

DATA_FORMAT_VERSION = 1


# ------------------------------------------------------------------ generation
def generate_grid(
    num_episodes: int,
    tasks: list[Task],
    spec: GridSpec,
    seed: int,
    epsilon: float = 0.0,
    chunk: int = 4096,
    progress: bool = True,
) -> tuple[dict[str, np.ndarray], dict]:
    """Roll out the DP expert on batched environments until ``num_episodes`` successful
    episodes are collected. Returns the arrays and generation statistics."""
    rng = np.random.default_rng(seed)
    env = BatchedGridPinpad(min(chunk, num_episodes), tasks, spec, seed=rng)
    n, T = env.num_envs, spec.horizon
    kept: dict[str, list[np.ndarray]] = {k: [] for k in ("layout", "agent", "actions", "optimal", "subgoals", "task_id", "lengths")}
    total, failed = 0, 0
    bar = tqdm(total=num_episodes, desc="expert episodes", unit="ep", disable=not progress)
    while total < num_episodes:
        env.reset()
        agent = np.zeros((n, T + 1), dtype=np.int8)
        actions = np.zeros((n, T), dtype=np.int8)
        optimal = np.zeros((n, T), dtype=np.uint8)
        subgoals = np.full((n, T), -1, dtype=np.int8)
        agent[:, 0] = env.agent
        for t in range(T):
            if env.done.all():
                break
            subgoals[:, t] = np.where(env.done, -1, env.subgoal())
            a, opt = expert_actions(env, rng, epsilon)
            actions[:, t] = a
            optimal[:, t] = (opt * (1 << np.arange(4))).sum(1)
            env.step(a)
            agent[:, t + 1] = env.agent
        ok = env.succeeded
        failed += int((~ok).sum())
        take = np.flatnonzero(ok)[: num_episodes - total]
        for key, arr in (("layout", env.cell_identity.astype(np.int8)), ("agent", agent), ("actions", actions),
                         ("optimal", optimal), ("subgoals", subgoals), ("task_id", env.task_index.astype(np.int16)),
                         ("lengths", env.t.astype(np.int16))):
            kept[key].append(arr[take])
        total += len(take)
        bar.update(len(take))
        if total == 0 and failed >= 4 * n:
            raise DataError(f"the expert completed none of {failed} episodes: env.horizon ({T}) is too short for the "
                            f"tasks on a {spec.size}x{spec.size} grid; raise env.horizon or shrink env.size")
    bar.close()
    arrays = {k: np.concatenate(v) for k, v in kept.items()}
    tmax = int(arrays["lengths"].max())
    for k in ("agent",):
        arrays[k] = arrays[k][:, : tmax + 1]
    for k in ("actions", "optimal", "subgoals"):
        arrays[k] = arrays[k][:, :tmax]
    arrays["agent"] = repeat_final_cell(arrays["agent"], arrays["lengths"])
    stats = {
        "layouts_sampled": int(env.num_layouts),
        "layouts_resampled_no_safe_path": int(env.num_resampled),
        "resample_fraction": env.num_resampled / max(1, env.num_layouts),
        "expert_episodes_rolled_out": total + failed,
        "expert_episodes_failed": failed,
        "expert_success_rate": total / max(1, total + failed),
    }
    return arrays, stats


def repeat_final_cell(agent: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Agent cells (N, T+1) with every step past an episode's end set to its final cell
    (``agent[i, lengths[i]]``), so that every index of the padded tail stays valid."""
    idx = np.minimum(np.arange(agent.shape[1])[None, :], lengths[:, None]).astype(np.int64)
    return np.take_along_axis(agent, idx, 1)


def data_card(arrays: dict[str, np.ndarray], tasks: list[Task], extra: dict) -> dict:
    lengths = arrays["lengths"].astype(np.int64)
    hist, edges = np.histogram(lengths, bins=min(20, max(1, int(lengths.max() - lengths.min() + 1))))
    per_task = np.bincount(arrays["task_id"].astype(np.int64), minlength=len(tasks))
    card = {
        "format_version": DATA_FORMAT_VERSION,
        "num_episodes": int(len(lengths)),
        "num_steps": int(lengths.sum()),
        "length": {"mean": float(lengths.mean()), "min": int(lengths.min()), "max": int(lengths.max()),
                   "histogram": {"counts": hist.tolist(), "edges": edges.tolist()}},
        "tasks": [task_str(t) for t in tasks],
        "episodes_per_task": per_task.tolist(),
        **extra,
    }
    if "optimal" in arrays:
        card["expert_reference"] = expert_reference(arrays)
    return card


def expert_reference(arrays: dict[str, np.ndarray]) -> dict:
    """How well the expert's own (task-aware) distribution predicts its actions: the bar a
    next-action model can at best reach, and only if it knew the task."""
    mask = np.arange(arrays["actions"].shape[1])[None, :] < arrays["lengths"][:, None]
    count = np.unpackbits(arrays["optimal"][..., None], axis=-1).sum(-1)[mask].astype(np.float64)
    return {"accuracy": float((1.0 / count).mean()), "nll": float(np.log(count).mean())}


# ------------------------------------------------------------------- storage
def save_trajectories(folder: str | Path, arrays: dict[str, np.ndarray], card: dict) -> None:
    """Write ``trajectories.npz`` and ``card.json`` into ``folder`` (created)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for key in ("actions", "lengths", "subgoals", "task_id"):
        if key not in arrays:
            raise DataError(f"a dataset needs the array {key!r}")
    if card.get("obs_format") not in ("grid", "dense"):
        raise DataError("card['obs_format'] must be 'grid' or 'dense'")
    tmp = folder / "trajectories.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, folder / "trajectories.npz")
    (folder / "card.json").write_text(json.dumps({"format_version": DATA_FORMAT_VERSION, **card}, indent=2))


@dataclass
class Trajectories:
    arrays: dict[str, np.ndarray]
    card: dict

    @property
    def num_episodes(self) -> int:
        return len(self.arrays["lengths"])

    @property
    def obs_dim(self) -> int:
        if self.card["obs_format"] == "dense":
            return int(self.arrays["observations"].shape[-1])
        return GridSpec(**self.card["env"]).obs_dim

    def split(self, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
        """Deterministic train / validation episode indices (the last episodes validate)."""
        n_val = max(1, int(round(self.num_episodes * val_fraction)))
        idx = np.arange(self.num_episodes)
        return idx[:-n_val], idx[-n_val:]


def load_trajectories(folder: str | Path) -> Trajectories:
    folder = Path(folder)
    card_path, npz_path = folder / "card.json", folder / "trajectories.npz"
    if not card_path.exists() and not npz_path.exists():
        raise DataError(f"{folder} is not a dataset (expected card.json and trajectories.npz); run `internalrl data` first")
    if not card_path.exists() or not npz_path.exists():
        raise DataError(f"the dataset {folder} lost {'card.json' if npz_path.exists() else 'trajectories.npz'}; delete "
                        f"the folder {folder} and run `internalrl data` again (it regenerates the same data)")
    try:
        verify(npz_path)
    except StorageError as e:
        raise DataError(str(e)) from None
    try:
        card = json.loads(card_path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{card_path} is corrupt ({e}); delete the folder and regenerate it") from None
    if card.get("format_version") != DATA_FORMAT_VERSION:
        raise DataError(f"{folder} holds dataset format {card.get('format_version')}, this version reads "
                        f"{DATA_FORMAT_VERSION}; regenerate it with `internalrl data`")
    try:
        with np.load(npz_path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile / value errors from a truncated file
        raise DataError(f"{npz_path} is corrupt ({type(e).__name__}: {e}); delete the folder and regenerate it") from None
    return Trajectories(arrays, card)


# ------------------------------------------------------------------- batches
@dataclass
class Batch:
    obs: torch.Tensor  # (B, T+1, D) observations o_1..o_{T+1}
    actions: torch.Tensor  # (B, T) long, or (B, T, A) float
    mask: torch.Tensor  # (B, T) bool: step t is inside the episode
    subgoals: torch.Tensor  # (B, T) long, -1 outside: analysis only
    optimal: torch.Tensor | None = None  # (B, T, 4) bool expert's optimal actions (grid)
    soft: torch.Tensor | None = None  # (B, T, 4) Bayes-optimal next-action distribution (soft targets)

    def to(self, device) -> "Batch":
        return Batch(*(x.to(device) if x is not None else None for x in
                       (self.obs, self.actions, self.mask, self.subgoals, self.optimal, self.soft)))


def grid_observations(layout: torch.Tensor, agent: torch.Tensor, spec: GridSpec) -> torch.Tensor:
    """Rebuild gridworld observations: layout (B, cells) long, agent (B, T) long ->
    (B, T, obs_dim) float, laid out exactly as :meth:`BatchedGridPinpad.observation`."""
    b, t = agent.shape
    static = F.one_hot(layout + 1, spec.channels)[..., 1:].float()  # (B, cells, W+O): -1 -> zero row
    here = F.one_hot(agent, spec.num_cells).float()  # (B, T, cells)
    obs = torch.cat([static[:, None].expand(b, t, -1, -1), here[..., None]], dim=-1)
    return obs.reshape(b, t, spec.obs_dim)


def make_batch(data: Trajectories, idx: np.ndarray, device=None) -> Batch:
    """Batch episodes ``idx``, cut to the longest of them, with a validity mask. With ``device``,
    grid observations are rebuilt there from the compact layout (much less to copy to a GPU)."""
    a = data.arrays
    lengths = torch.as_tensor(a["lengths"][idx].astype(np.int64))
    tb = int(lengths.max())
    mask = torch.arange(tb)[None, :] < lengths[:, None]
    if data.card["obs_format"] == "grid":
        spec = GridSpec(**data.card["env"])
        obs = grid_observations(torch.as_tensor(a["layout"][idx].astype(np.int64), device=device),
                                torch.as_tensor(a["agent"][idx, : tb + 1].astype(np.int64), device=device), spec)
        actions = torch.as_tensor(a["actions"][idx, :tb].astype(np.int64))
    else:
        obs = torch.as_tensor(a["observations"][idx, : tb + 1].astype(np.float32))
        actions = torch.as_tensor(a["actions"][idx, :tb].astype(np.float32))
    optimal = None
    if "optimal" in a:
        bits = torch.as_tensor(a["optimal"][idx, :tb].astype(np.int64))
        optimal = (bits[..., None] >> torch.arange(4)) & 1 == 1
    subgoals = torch.as_tensor(a["subgoals"][idx, :tb].astype(np.int64))
    soft = torch.as_tensor(a["soft_targets"][idx, :tb].astype(np.float32)) if "soft_targets" in a else None
    return Batch(obs, actions, mask, torch.where(mask, subgoals, -1), optimal, soft)


def batch_indices(idx: np.ndarray, batch_size: int, seed: int, step: int, lengths: np.ndarray | None = None,
                  window: int = 4) -> np.ndarray:
    """The episodes of training step ``step``: a function of (seed, step) alone, so a run
    resumed from a checkpoint sees exactly the batches an uninterrupted run would.

    With ``lengths`` (of every episode), a batch is drawn from a random window of
    ``window * batch_size`` episodes of similar length, so padding wastes little compute."""
    rng = np.random.default_rng([seed, step])
    size = min(batch_size, len(idx))
    if lengths is None or len(idx) <= window * batch_size:
        return rng.choice(idx, size=size, replace=False)
    ordered = idx[np.argsort(lengths[idx], kind="stable")]
    start = rng.integers(0, len(ordered) - window * batch_size + 1)
    return rng.choice(ordered[start : start + window * batch_size], size=size, replace=False)
