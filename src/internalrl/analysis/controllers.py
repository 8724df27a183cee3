"""Supervised linear controllers (SPEC §4, paper Fig. 4, Tables A7/A8): one controller per
subgoal at layer l, ``e ← e + U^(g) e``, trained on clean expert data with the ground-truth
subgoal choosing the controller and the base model frozen; evaluated on batched
environments by switching to the controller of the environment's current subgoal."""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoint import Checkpoint
from ..controller import SubgoalControllers
from ..data import Trajectories, batch_indices, make_batch
from ..envs.gridworld import BatchedGridPinpad
from ..live import LiveRows
from ..models.sequence_model import SequenceModel
from ..train import lr_at


def freeze(model: SequenceModel) -> SequenceModel:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def controlled_action_nll(model: SequenceModel, ctl: SubgoalControllers | None, layer: int, batch,
                          labels: torch.Tensor | None = None) -> torch.Tensor:
    """Mean action NLL per step with the ground-truth subgoal's controller acting at ``layer``
    (``ctl=None``: the base model alone). ``labels`` (B, T) picks other controllers than
    ``batch.subgoals`` (-1: none)."""
    labels = batch.subgoals if labels is None else labels
    out = model(batch.obs[:, :-1], layer=layer,
                intervention=None if ctl is None else (lambda e: ctl(e, labels)))
    mask = batch.mask.float()
    return -(model.action_log_prob(out, batch.actions) * mask).sum() / mask.sum()


@torch.no_grad()
def heldout_controlled_nll(model: SequenceModel, ctl: SubgoalControllers | None, layer: int, data: Trajectories,
                           idx: np.ndarray, batch_size: int, device) -> float:
    """:func:`controlled_action_nll` over the episodes ``idx``, weighted by their steps."""
    total, count = 0.0, 0.0
    for start in range(0, len(idx), batch_size):
        batch = make_batch(data, idx[start:start + batch_size]).to(device)
        steps = float(batch.mask.sum())
        total += float(controlled_action_nll(model, ctl, layer, batch)) * steps
        count += steps
    return total / count


class LowerResiduals:
    """The frozen lower half's residual ``e_{t,layer}`` of every step of the episodes ``idx``,
    computed once and kept flat in memory (steps x width floats), so that training controllers
    runs only the upper half: the lower half does not depend on them. ``batch(episodes)`` gives
    what :func:`controlled_action_nll` would compute from ``make_batch``, with the same numbers."""

    def __init__(self, model: SequenceModel, data: Trajectories, idx: np.ndarray, layer: int, device,
                 chunk: int = 256, progress: bool = False) -> None:
        self.data, self.layer = data, layer
        lengths = data.arrays["lengths"][idx].astype(np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self.row = np.full(data.num_episodes, -1, dtype=np.int64)
        self.row[idx] = np.arange(len(idx))
        self.flat = torch.empty(int(lengths.sum()), model.cfg.width, device=device)
        with torch.no_grad():
            for start in tqdm(range(0, len(idx), chunk), desc=f"residuals @ layer {layer}", disable=not progress,
                              leave=False):
                batch = make_batch(data, idx[start:start + chunk]).to(device)
                e = model.lower(batch.obs[:, :-1], layer)[batch.mask]  # episode by episode, steps in order
                at = int(self.offsets[start])
                self.flat[at:at + len(e)] = e

    def batch(self, episodes: np.ndarray):
        """-> residual (B, T, W), actions (B, T) or (B, T, A), mask (B, T), subgoals (B, T; -1 outside)."""
        a = self.data.arrays
        rows = self.row[episodes]
        if (rows < 0).any():
            raise ValueError("LowerResiduals.batch: episodes outside the cached set")
        lengths = torch.as_tensor(a["lengths"][episodes].astype(np.int64))
        tb = int(lengths.max())
        t = torch.arange(tb)
        mask = t[None, :] < lengths[:, None]
        index = torch.as_tensor(self.offsets[rows])[:, None] + torch.minimum(t[None, :], lengths[:, None] - 1)
        device = self.flat.device
        residual = self.flat[index.to(device)]
        actions = a["actions"][episodes, :tb]  # discrete (grid) or continuous (ant), as make_batch has them
        actions = torch.as_tensor(actions.astype(np.float32 if np.issubdtype(actions.dtype, np.floating) else np.int64))
        subgoals = torch.as_tensor(a["subgoals"][episodes, :tb].astype(np.int64))
        return residual, actions.to(device), mask.to(device), torch.where(mask, subgoals, -1).to(device)


def cached_controlled_nll(model: SequenceModel, ctl: SubgoalControllers, cache: LowerResiduals,
                          episodes: np.ndarray) -> torch.Tensor:
    """:func:`controlled_action_nll` of ``episodes`` from the cached lower half."""
    residual, actions, mask, subgoals = cache.batch(episodes)
    out = model.upper(ctl(residual, subgoals), cache.layer)
    m = mask.float()
    return -(model.action_log_prob(out, actions) * m).sum() / m.sum()


def train_controllers(model: SequenceModel, data: Trajectories, train_idx: np.ndarray, layer: int,
                      num_subgoals: int, cc, seed: int, device, progress: bool = True,
                      checkpoint: Checkpoint | None = None, cache: bool = False) -> tuple[SubgoalControllers, list]:
    """Train one controller per subgoal at ``layer`` with the settings of ``cc`` (a
    :class:`~internalrl.config.ControllerConfig`: rank, steps, batch size, AdamW lr with
    warm-up and cosine decay, weight decay). Returns the controllers and (step, loss) pairs.
    ``checkpoint`` makes a killed run resume. ``cache`` computes the frozen lower half once for
    every training episode (:class:`LowerResiduals`: steps x width floats of memory) instead of
    at every step."""
    freeze(model)
    torch.manual_seed(seed)
    ctl = SubgoalControllers(num_subgoals, model.cfg.width, cc.rank or None).to(device)
    opt = torch.optim.AdamW(ctl.parameters(), lr=cc.lr, weight_decay=cc.weight_decay)
    lengths = data.arrays["lengths"]
    ckpt = checkpoint or Checkpoint.off()
    ckpt.hint = "controllers.lr"
    start, extra = ckpt.restore({"controllers": ctl}, {"opt": opt})
    curve = [tuple(c) for c in extra.get("curve", [])]
    lower = LowerResiduals(model, data, train_idx, layer, device, progress=progress) if cache else None
    for step in tqdm(range(start, cc.steps), desc=f"controllers @ layer {layer}", disable=not progress, leave=False,
                     initial=start, total=cc.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cc)
        episodes = batch_indices(train_idx, cc.batch_size, seed, step, lengths)
        if lower is not None:
            loss = cached_controlled_nll(model, ctl, lower, episodes)
        else:
            loss = controlled_action_nll(model, ctl, layer, make_batch(data, episodes).to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == cc.steps - 1:
            curve.append((step, float(loss.detach())))
        ckpt.maybe_save(step + 1, cc.steps, lambda: {"curve": curve})
    ckpt.save(cc.steps, {"curve": curve})
    return ctl.eval(), curve


@torch.no_grad()
def rollout_with_controllers(model: SequenceModel, ctl: SubgoalControllers | None, layer: int,
                             env: BatchedGridPinpad, seed: int, device, labels=None, before_step=None,
                             temperature: float = 1.0, greedy: bool = False) -> dict:
    """Step the base model with the controller of each environment's current ground-truth
    subgoal applied at ``layer`` (``ctl=None``: the uncontrolled base model). ``labels(env)``
    (N,) picks other controllers than ``env.subgoal()``. ``before_step(env)``, if given, is
    called before every step (with every environment, finished ones included), e.g. to record
    the states the controlled model visits. ``temperature`` scales the action head before
    sampling; 0 (or ``greedy``) takes the most likely action."""
    labels = labels or (lambda e: e.subgoal())
    gen = torch.Generator(device=device).manual_seed(seed)
    obs = env.reset()
    state = model.initial_state(env.num_envs, device)
    wrong = np.full(env.num_envs, -1)  # the colour whose visit ended a failed episode
    rows = LiveRows(env.num_envs, device)
    for _ in range(env.spec.horizon):
        keep = rows.shrink(env)
        if keep is not None:
            state.select_(keep)
        residual = model.lower(torch.as_tensor(obs, device=device)[rows.idx, None], layer, state)
        if ctl is not None:
            residual = ctl(residual, torch.as_tensor(labels(env), device=device)[rows.idx, None])
        action = model.sample_action(model.upper(residual, layer, state), gen, 0.0 if greedy else temperature)
        if before_step is not None:
            before_step(env)
        obs, _, _, _, info = env.step(rows.actions(action))
        wrong = np.where(info["failure"], info["visited"], wrong)
        if env.done.all():
            break
    stages = int(env.task_len.max()) + 1
    failed = ~env.succeeded & (wrong >= 0)
    by_colour = np.zeros((stages, env.spec.num_objects), dtype=np.int64)
    np.add.at(by_colour, (env.progress[failed], wrong[failed]), 1)
    timeout = ~env.succeeded & (wrong < 0)
    return {"success_rate": float(env.succeeded.mean()), "mean_progress": float(env.progress.mean()),
            "episodes": env.num_envs,
            # how many episodes ended having visited k of the task's colours, k = 0..len(task)
            "progress_counts": np.bincount(env.progress, minlength=stages).tolist(),
            # failures by progress k: [k][c] episodes ended by visiting the wrong colour c, and timeouts
            "wrong_colour_counts": by_colour.tolist(),
            "timeout_counts": np.bincount(env.progress[timeout], minlength=stages).tolist()}
