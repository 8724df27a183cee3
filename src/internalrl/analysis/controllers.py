"""Supervised linear controllers (SPEC §4, paper Fig. 4, Tables A7/A8): one controller per
subgoal at layer l, ``e ← e + U^(g) e``, trained on clean expert data with the ground-truth
subgoal choosing the controller and the base model frozen; evaluated on batched
environments by switching to the controller of the environment's current subgoal."""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

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


def train_controllers(model: SequenceModel, data: Trajectories, train_idx: np.ndarray, layer: int,
                      num_subgoals: int, cc, seed: int, device, progress: bool = True) -> tuple[SubgoalControllers, list]:
    """Train one controller per subgoal at ``layer`` with the settings of ``cc`` (a
    :class:`~internalrl.config.ControllerConfig`: rank, steps, batch size, AdamW lr with
    warm-up and cosine decay, weight decay). Returns the controllers and (step, loss) pairs."""
    freeze(model)
    torch.manual_seed(seed)
    ctl = SubgoalControllers(num_subgoals, model.cfg.width, cc.rank or None).to(device)
    opt = torch.optim.AdamW(ctl.parameters(), lr=cc.lr, weight_decay=cc.weight_decay)
    lengths = data.arrays["lengths"]
    curve = []
    for step in tqdm(range(cc.steps), desc=f"controllers @ layer {layer}", disable=not progress, leave=False):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cc)
        batch = make_batch(data, batch_indices(train_idx, cc.batch_size, seed, step, lengths)).to(device)
        loss = controlled_action_nll(model, ctl, layer, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == cc.steps - 1:
            curve.append((step, float(loss.detach())))
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
