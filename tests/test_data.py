import json

import numpy as np
import pytest
import torch

from internalrl.data import (DataError, batch_indices, data_card, generate_grid, grid_observations,
                             load_trajectories, make_batch, save_trajectories)
from internalrl.envs.gridworld import BatchedGridPinpad, GridSpec
from internalrl.envs.tasks import parse_task_set

TASKS = parse_task_set("grid-pretrain", 8)
SPEC = GridSpec()


@pytest.fixture(scope="module")
def small():
    arrays, stats = generate_grid(64, TASKS, SPEC, seed=0, chunk=64, progress=False)
    card = data_card(arrays, TASKS, {"obs_format": "grid", "env": SPEC.__dict__, "generation": stats})
    return arrays, card


def test_generation_is_deterministic_by_seed(small):
    again, _ = generate_grid(64, TASKS, SPEC, seed=0, chunk=64, progress=False)
    other, _ = generate_grid(64, TASKS, SPEC, seed=1, chunk=64, progress=False)
    assert all(np.array_equal(small[0][k], again[k]) for k in again)
    assert not np.array_equal(small[0]["actions"], other["actions"])


def test_card_counts(small):
    arrays, card = small
    assert card["num_episodes"] == 64 and card["num_steps"] == int(arrays["lengths"].sum())
    assert sum(card["length"]["histogram"]["counts"]) == 64
    assert sum(card["episodes_per_task"]) == 64
    assert 0 < card["expert_reference"]["accuracy"] <= 1


def test_replaying_actions_reproduces_the_stored_trajectory(small):
    arrays, _ = small
    n = 8
    env = BatchedGridPinpad(n, TASKS, SPEC, seed=0, require_solvable=False)
    env.reset(task_index=arrays["task_id"][:n].astype(np.int64))
    obs = env.load_layout(arrays["layout"][:n], arrays["agent"][:n, 0])
    batch = make_batch_from(small, np.arange(n))
    for t in range(int(arrays["lengths"][:n].max())):
        live = t < arrays["lengths"][:n]
        assert np.array_equal(obs[live], batch.obs[live.nonzero()[0], t].numpy())
        assert np.array_equal(env.subgoal()[live], arrays["subgoals"][:n, t][live])
        obs, *_ = env.step(np.where(live, arrays["actions"][:n, t], 0))
    assert env.succeeded.all()


def make_batch_from(small, idx):
    from internalrl.data import Trajectories

    return make_batch(Trajectories(*small), idx)


def test_batches_pad_with_masks(small):
    batch = make_batch_from(small, np.arange(10))
    lengths = torch.as_tensor(small[0]["lengths"][:10].astype(np.int64))
    assert batch.obs.shape == (10, int(lengths.max()) + 1, 637)
    assert torch.equal(batch.mask.sum(1), lengths)
    assert (batch.subgoals[~batch.mask] == -1).all() and (batch.subgoals[batch.mask] >= 0).all()
    assert batch.optimal[batch.mask].gather(-1, batch.actions[batch.mask][:, None]).all()


def test_save_load_round_trip_and_errors(small, tmp_path):
    save_trajectories(tmp_path / "d", *small)
    data = load_trajectories(tmp_path / "d")
    assert all(np.array_equal(small[0][k], data.arrays[k]) for k in small[0])
    train, val = data.split(0.25)
    assert len(val) == 16 and len(np.intersect1d(train, val)) == 0
    with pytest.raises(DataError, match="not a dataset"):
        load_trajectories(tmp_path / "missing")
    (tmp_path / "d" / "trajectories.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="corrupt"):
        load_trajectories(tmp_path / "d")
    save_trajectories(tmp_path / "e", *small)
    card = json.loads((tmp_path / "e" / "card.json").read_text())
    card["format_version"] = 999
    (tmp_path / "e" / "card.json").write_text(json.dumps(card))
    with pytest.raises(DataError, match="regenerate"):
        load_trajectories(tmp_path / "e")


def test_batch_indices_depend_only_on_seed_and_step():
    idx = np.arange(100, 164)
    a = batch_indices(idx, 16, seed=0, step=5)
    assert np.array_equal(a, batch_indices(idx, 16, seed=0, step=5))
    assert not np.array_equal(a, batch_indices(idx, 16, seed=0, step=6))
    assert len(np.unique(a)) == 16 and np.isin(a, idx).all()
    lengths = np.random.default_rng(0).integers(10, 80, size=200)
    b = batch_indices(idx, 4, seed=0, step=5, lengths=lengths)
    assert np.array_equal(b, batch_indices(idx, 4, seed=0, step=5, lengths=lengths)) and np.isin(b, idx).all()
    spread = [np.ptp(lengths[batch_indices(idx, 4, 0, s, lengths)]) for s in range(50)]
    assert np.mean(spread) < np.ptp(lengths[idx]) / 2  # similar lengths batched together


def test_grid_observations_match_environment():
    env = BatchedGridPinpad(4, TASKS, SPEC, seed=9)
    obs = env.reset()
    rebuilt = grid_observations(torch.as_tensor(env.cell_identity), torch.as_tensor(env.agent)[:, None], SPEC)
    assert np.array_equal(rebuilt[:, 0].numpy(), obs)
