import numpy as np
import pytest
import torch

from internalrl.data import Trajectories, generate_grid, make_batch
from internalrl.envs.gridworld import BatchedGridPinpad, GridSpec
from internalrl.envs.tasks import parse_task_set
from internalrl.metacontroller import Metacontroller, MetacontrollerConfig
from internalrl.models.sequence_model import ModelConfig, SequenceModel
from internalrl.rl.internal import rollout_internal
from internalrl.rl.policy import RecurrentCodePolicy
from internalrl.rl.ppo import clipped_surrogate_loss, trajectory_advantages

TASKS = parse_task_set("grid-pretrain", 8)
SPEC = GridSpec()
LAYER = 1


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    base = SequenceModel(ModelConfig(obs_dim=637, width=16, depth=2, heads=2, head_dim=8, mlp=16)).eval()
    meta = Metacontroller(MetacontrollerConfig(rank=4), 16).eval()
    with torch.no_grad():
        meta.decoder[-1].weight.normal_(0, 0.3)
    arrays, _ = generate_grid(6, TASKS, SPEC, seed=0, chunk=6, progress=False)
    return base, meta, arrays


def test_replaying_metacontroller_codes_reproduces_action_log_probs(setup):
    base, meta, arrays = setup
    data = Trajectories(arrays, {"obs_format": "grid", "env": SPEC.__dict__})
    batch = make_batch(data, np.arange(6))
    noise = torch.randn(6, batch.actions.shape[1], 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        residual = base.lower(batch.obs[:, :-1], LAYER)
        out = meta(residual, batch.mask, noise=noise)
        want = base.action_log_prob(base.upper(out.residual, LAYER), batch.actions)  # (6, T)
    env = BatchedGridPinpad(6, TASKS, SPEC, seed=0, require_solvable=False)
    env.reset(task_index=arrays["task_id"].astype(np.int64))
    env.load_layout(arrays["layout"], arrays["agent"][:, 0])
    t = batch.actions.shape[1]
    pad = SPEC.horizon - t
    codes = torch.nn.functional.pad(out.code, (0, 0, 0, pad))
    actions = torch.nn.functional.pad(batch.actions, (0, pad))
    roll = rollout_internal(base, meta, None, env, LAYER, seed=0, device="cpu", codes=codes, actions=actions,
                            threshold=-1.0)  # take the recorded code at every step
    got = roll.action_log_probs[:, :t]
    assert torch.allclose(got[batch.mask], want[batch.mask], atol=1e-5)
    assert env.succeeded.all() and torch.equal(roll.lengths, batch.mask.sum(1))
    assert torch.allclose(roll.residuals[:, :t][batch.mask], residual[batch.mask], atol=1e-5)
    # the subgoal asked for and the action taken at each step, as the expert data recorded them
    assert torch.equal(roll.subgoals[:, :t][batch.mask], batch.subgoals[batch.mask])
    assert torch.equal(roll.actions[:, :t][batch.mask], batch.actions[batch.mask])
    assert (roll.subgoals[:, t:] == -1).all()


def test_codes_are_held_between_decisions(setup):
    base, meta, _ = setup
    policy = RecurrentCodePolicy(16, 8, hidden=32)
    env = BatchedGridPinpad(8, parse_task_set("0-1-2-3", 8), SPEC, seed=1)
    roll = rollout_internal(base, meta, policy, env, LAYER, seed=0, device="cpu")
    assert roll.decisions[:, 0].all()  # the first step always takes a code
    live = torch.arange(SPEC.horizon)[None] < roll.lengths[:, None]
    assert not roll.decisions[~live].any()
    # log-probs exist exactly at decisions, and match the policy replayed over the residuals
    mean, log_std, _ = policy(roll.residuals)
    replay = policy.log_prob(mean, log_std, roll.codes)
    assert torch.allclose(replay[roll.decisions], roll.log_probs[roll.decisions], atol=1e-4)
    assert (roll.log_probs[~roll.decisions] == 0).all()


def test_codes_chosen_as_the_episodes_go_reach_the_controller(setup):
    base, meta, _ = setup
    env = BatchedGridPinpad(8, parse_task_set("0-1-2-3", 8), SPEC, seed=1)
    seen = []

    def by_subgoal(t, e):  # a code that spells each environment's current subgoal
        seen.append(t)
        return torch.as_tensor(e.subgoal(), dtype=torch.float32)[:, None].repeat(1, 8)

    roll = rollout_internal(base, meta, None, env, LAYER, seed=0, device="cpu", codes=by_subgoal)
    assert seen[0] == 0 and seen == sorted(seen)
    first = roll.codes[:, 0]
    assert torch.equal(first, torch.zeros_like(first))  # every episode starts in subgoal A (0)
    later = roll.codes[roll.decisions]
    assert set(later[:, 0].tolist()) <= {0.0, 1.0}  # only the subgoals this task passes through


def test_policy_starts_at_the_prior_and_steps_equal_sequence():
    policy = RecurrentCodePolicy(16, 8, hidden=32)
    e = torch.randn(3, 7, 16)
    mean, log_std, _ = policy(e)
    assert torch.all(mean == 0) and torch.all(log_std == 0)
    with torch.no_grad():
        policy.head.weight.normal_()
    mean, log_std, _ = policy(e)
    state, steps = None, []
    for t in range(7):
        m, _, state = policy(e[:, t : t + 1], state)
        steps.append(m)
    assert torch.allclose(torch.cat(steps, 1), mean, atol=1e-5)


def test_trajectory_advantages_and_clipped_surrogate():
    adv = trajectory_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert torch.allclose(adv, torch.tensor([0.5, -0.5, -0.5, 0.5]) / (0.5 + 1e-3))  # population std 0.5
    assert torch.all(trajectory_advantages(torch.zeros(5)) == 0)
    old = torch.zeros(2, 3)
    new = torch.full((2, 3), 1.0, requires_grad=True)  # ratio e > 1 + clip
    decisions = torch.tensor([[True, False, True], [True, True, False]])
    loss = clipped_surrogate_loss(new, old, torch.tensor([1.0, -1.0]), decisions, clip=0.2)
    # positive advantage: clipped at 1.2 (no gradient); negative: unclipped e (gradient)
    assert abs(loss.item() + (2 * 1.2 - 2 * np.e) / 4) < 1e-5
    loss.backward()
    assert torch.all(new.grad[0] == 0) and torch.all(new.grad[1, :2] > 0) and new.grad[1, 2] == 0


def test_rl_loops_run_and_only_the_policy_learns(setup):
    from internalrl.rl.train import RLConfig, train_internal_rl, train_raw_rl

    base, meta, _ = setup
    before = {k: v.clone() for k, v in base.state_dict().items()}
    cfg = RLConfig(episodes=8, batch_size=4, lr=1e-3, epochs=1, minibatches=2, policy_hidden=16)
    task = parse_task_set("0-1", 8)[0]
    policy, curve = train_internal_rl(base, meta, LAYER, GridSpec(horizon=12), task, cfg, seed=0, device="cpu",
                                      progress=False)
    assert [c[0] for c in curve] == [4, 8]
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    tuned, curve = train_raw_rl(base, GridSpec(horizon=12), task, cfg, seed=0, device="cpu", progress=False)
    assert len(curve) == 2 and all(torch.equal(before[k], v) for k, v in base.state_dict().items())


def test_raw_rollout_log_probs_match_whole_sequence_replay(setup):
    from internalrl.data import grid_observations
    from internalrl.rl.train import rollout_raw

    base, _, _ = setup
    env = BatchedGridPinpad(5, parse_task_set("0-1-2-3", 8), SPEC, seed=2)
    roll = rollout_raw(base, env, seed=0, device="cpu")
    t = int(roll["lengths"].max())
    obs = grid_observations(roll["layout"], roll["agent"][:, :t], SPEC)
    with torch.no_grad():
        replay = base.action_log_prob(base(obs), roll["actions"][:, :t])
    mask = torch.arange(t)[None] < roll["lengths"][:, None]
    assert torch.allclose(replay[mask], roll["log_probs"][:, :t][mask], atol=1e-5)


def test_override_puts_a_code_in_force_whatever_the_switch_says(setup):
    base, meta, _ = setup
    code = torch.randn(8, generator=torch.Generator().manual_seed(3))
    env_a = BatchedGridPinpad(6, parse_task_set("0-1-2-3", 8), SPEC, seed=4)
    held = rollout_internal(base, meta, None, env_a, LAYER, seed=0, device="cpu",
                            codes=code.expand(6, SPEC.horizon, 8), threshold=-1.0)  # the code taken at every step
    env_b = BatchedGridPinpad(6, parse_task_set("0-1-2-3", 8), SPEC, seed=4)
    env_b.reset()  # the same layouts (a replay of actions does not reset)
    other = torch.randn(6, SPEC.horizon, 8, generator=torch.Generator().manual_seed(5))
    forced = rollout_internal(base, meta, None, env_b, LAYER, seed=0, device="cpu", codes=other, threshold=-1.0,
                              actions=held.actions,
                              override=lambda t, env: (torch.ones(6, dtype=torch.bool), code.expand(6, 8)))
    live = torch.arange(SPEC.horizon)[None] < held.lengths[:, None]
    # the same code in force, so the same controlled model, whatever the codes offered and the switch
    assert torch.allclose(forced.action_log_probs[live], held.action_log_probs[live], atol=1e-5)
    assert not forced.decisions.any()  # a forced code is not a decision of the switch


def test_injection_helpers_read_subgoals_from_visits():
    from internalrl.analysis.injection import next_subgoal, reached_subgoals

    visits = [(3, 2), (5, 3), (9, 0), (12, 1), (15, 4)]  # B, then A, then half of C
    assert reached_subgoals(visits, 2) == [(5, 1), (12, 0)]
    assert reached_subgoals([(1, 3), (2, 2)], 2) == []  # 3 then 2 is no subgoal
    assert reached_subgoals(visits, 1) == [(3, 2), (5, 3), (9, 0), (12, 1), (15, 4)]  # the ant: one colour each
    assert next_subgoal(visits, 2, 2) == 0 and next_subgoal(visits, 4, 2) == -1 and next_subgoal(visits, 1, 2) == -1


def test_latent_code_injection_on_a_tiny_model(setup):
    from internalrl.analysis.injection import latent_code_injection

    base, meta, _ = setup
    spec = GridSpec(horizon=40)
    res = latent_code_injection(base, meta, LAYER, spec, TASKS, parse_task_set("0-1-2-3", 8)[0], 64, seed=0,
                                device="cpu", inject_step=5)
    bank = res["bank"]
    assert len(bank["codes_per_subgoal"]) == 4 and bank["single_subgoal_episodes"] <= sum(bank["codes_per_subgoal"])
    for part in ("mid_episode", "unseen_transition"):
        for key in ("success_without", "success_with"):
            v = res[part][key]
            assert v is None or 0 <= v <= 1, (part, key, v)
    assert res["unseen_transition"]["from"] == 0 and res["unseen_transition"]["to"] == 1
