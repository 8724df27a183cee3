import numpy as np
import torch

from internalrl.envs.gridworld import BatchedGridPinpad, GridSpec
from internalrl.envs.tasks import parse_task_set
from internalrl.live import LiveRows
from internalrl.models.sequence_model import ModelConfig, SequenceModel

SPEC = GridSpec()


def test_rows_shrink_only_when_most_are_done_and_actions_map_back():
    env = BatchedGridPinpad(6, parse_task_set("0-1", 8), SPEC, seed=0)
    env.reset()
    rows = LiveRows(6, "cpu")
    env.done[[0, 2]] = True  # 4 of 6 live: keep computing all
    assert rows.shrink(env) is None and rows.idx.tolist() == list(range(6))
    env.done[[3, 4]] = True  # 2 of 6 live: drop the rest
    assert rows.shrink(env).tolist() == [1, 5] and rows.idx.tolist() == [1, 5]
    assert rows.live(env).tolist() == [True, True]
    full = rows.actions(torch.tensor([3, 2]))
    assert full.shape == (6,) and full[1] == 3 and full[5] == 2
    env.done[1] = True  # 1 of the 2 rows live: not fewer than half
    assert rows.shrink(env) is None and rows.idx.tolist() == [1, 5]


def test_model_state_rows_follow_the_selection():
    torch.manual_seed(0)
    model = SequenceModel(ModelConfig(obs_dim=637, width=16, depth=2, heads=2, head_dim=8, mlp=16)).eval()
    obs = torch.rand(4, 3, 637)
    with torch.no_grad():
        whole = model(obs).action
        state = model.initial_state(4)
        steps = [model(obs[:, :1], state=state).action]
        state.select_(torch.tensor([3, 1]))
        steps += [model(obs[[3, 1], i : i + 1], state=state).action for i in (1, 2)]
    assert torch.allclose(steps[0][:, 0], whole[:, 0], atol=1e-5)
    assert torch.allclose(torch.cat(steps[1:], 1), whole[[3, 1], 1:], atol=1e-5)


def test_replayed_rollout_is_the_same_with_and_without_dropping_rows(monkeypatch):
    """Replaying recorded expert episodes of different lengths through the internal
    environment gives the same per-step numbers whether or not finished rows are dropped."""
    from internalrl.data import generate_grid
    from internalrl.metacontroller import Metacontroller, MetacontrollerConfig
    from internalrl.rl.internal import rollout_internal

    torch.manual_seed(1)
    base = SequenceModel(ModelConfig(obs_dim=637, width=16, depth=2, heads=2, head_dim=8, mlp=16)).eval()
    meta = Metacontroller(MetacontrollerConfig(rank=4), 16).eval()
    tasks = parse_task_set("grid-pretrain", 8)
    arrays, _ = generate_grid(12, tasks, SPEC, seed=0, chunk=12, progress=False)
    actions = torch.nn.functional.pad(torch.as_tensor(arrays["actions"].astype(np.int64)),
                                      (0, SPEC.horizon - arrays["actions"].shape[1]))
    codes = torch.randn(12, SPEC.horizon, 8, generator=torch.Generator().manual_seed(0))

    def run():
        env = BatchedGridPinpad(12, tasks, SPEC, seed=0, require_solvable=False)
        env.reset(task_index=arrays["task_id"].astype(np.int64))
        env.load_layout(arrays["layout"], arrays["agent"][:, 0])
        return rollout_internal(base, meta, None, env, 1, seed=0, device="cpu", codes=codes, actions=actions)

    dropped, shrink = [], LiveRows.shrink

    def recording_shrink(self, env):
        keep = shrink(self, env)
        dropped.append(keep is not None)
        return keep

    monkeypatch.setattr(LiveRows, "shrink", recording_shrink)
    live = run()
    assert any(dropped)
    monkeypatch.setattr(LiveRows, "shrink", lambda self, env: None)  # compute every row to the end
    full = run()
    assert torch.equal(live.lengths, full.lengths) and torch.equal(live.decisions, full.decisions)
    assert torch.allclose(live.action_log_probs, full.action_log_probs, atol=1e-5)
    valid = torch.arange(SPEC.horizon)[None] < full.lengths[:, None]  # after its end a row is never read
    assert torch.allclose(live.residuals[valid], full.residuals[valid], atol=1e-5)
