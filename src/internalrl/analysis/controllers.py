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
from ..models.sequence_model import SequenceModel


def freeze(model: SequenceModel) -> SequenceModel:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def controlled_action_nll(model: SequenceModel, ctl: SubgoalControllers, layer: int, batch) -> torch.Tensor:
    out = model(batch.obs[:, :-1], layer=layer, intervention=lambda e: ctl(e, batch.subgoals))
    mask = batch.mask.float()
    return -(model.action_log_prob(out, batch.actions) * mask).sum() / mask.sum()


def train_controllers(model: SequenceModel, data: Trajectories, train_idx: np.ndarray, layer: int,
                      num_subgoals: int, rank: int | None, steps: int, batch_size: int, lr: float,
                      weight_decay: float, seed: int, device, progress: bool = True) -> tuple[SubgoalControllers, list]:
    freeze(model)
    torch.manual_seed(seed)
    ctl = SubgoalControllers(num_subgoals, model.cfg.width, rank).to(device)
    opt = torch.optim.AdamW(ctl.parameters(), lr=lr, weight_decay=weight_decay)
    lengths = data.arrays["lengths"]
    curve = []
    for step in tqdm(range(steps), desc=f"controllers @ layer {layer}", disable=not progress, leave=False):
        batch = make_batch(data, batch_indices(train_idx, batch_size, seed, step, lengths)).to(device)
        loss = controlled_action_nll(model, ctl, layer, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == steps - 1:
            curve.append((step, float(loss.detach())))
    return ctl.eval(), curve


@torch.no_grad()
def rollout_with_controllers(model: SequenceModel, ctl: SubgoalControllers | None, layer: int,
                             env: BatchedGridPinpad, seed: int, device) -> dict:
    """Step the base model with the controller of each environment's current ground-truth
    subgoal applied at ``layer`` (``ctl=None``: the uncontrolled base model)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    obs = env.reset()
    state = model.initial_state(env.num_envs, device)
    for _ in range(env.spec.horizon):
        residual = model.lower(torch.as_tensor(obs, device=device)[:, None], layer, state)
        if ctl is not None:
            subgoal = torch.as_tensor(env.subgoal(), device=device)[:, None]
            residual = ctl(residual, subgoal)
        action = model.sample_action(model.upper(residual, layer, state), gen)
        obs, *_ = env.step(action.cpu().numpy())
        if env.done.all():
            break
    return {"success_rate": float(env.succeeded.mean()), "mean_progress": float(env.progress.mean()),
            "episodes": env.num_envs}
