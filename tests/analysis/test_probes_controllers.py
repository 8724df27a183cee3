import numpy as np
import torch

from internalrl.analysis.controllers import controlled_action_nll, freeze, rollout_with_controllers
from internalrl.analysis.probes import fit_probe, segment_positions
from internalrl.controller import SubgoalControllers
from internalrl.data import Batch
from internalrl.envs.gridworld import BatchedGridPinpad, GridSpec
from internalrl.envs.tasks import parse_task_set
from internalrl.models.sequence_model import ModelConfig, SequenceModel


def test_segment_positions_count_steps_since_subgoal_changed():
    sub = torch.tensor([[0, 0, 0, 2, 2, 1, 1, 1, -1, -1]])
    assert segment_positions(sub).tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 0, 1]]


def test_probe_separates_linearly_separable_classes_and_not_noise():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (2000,), generator=g)
    centres = torch.randn(4, 16, generator=g) * 3
    x = centres[y] + torch.randn(2000, 16, generator=g)
    probe = fit_probe(x[:1500], y[:1500], 4, steps=200)
    assert (probe(x[1500:]).argmax(-1) == y[1500:]).float().mean() > 0.95
    noise = torch.randn(2000, 16, generator=g)
    probe = fit_probe(noise[:1500], y[:1500], 4, steps=200)
    assert (probe(noise[1500:]).argmax(-1) == y[1500:]).float().mean() < 0.4


def tiny_model():
    torch.manual_seed(0)
    return SequenceModel(ModelConfig(obs_dim=637, width=16, depth=2, heads=2, head_dim=8, mlp=16))


def test_controller_gradients_reach_only_the_controllers():
    model = freeze(tiny_model())
    ctl = SubgoalControllers(4, 16, rank=4)
    obs = (torch.rand(2, 9, 637) < 0.05).float()
    batch = Batch(obs, torch.randint(0, 4, (2, 8)), torch.ones(2, 8, dtype=torch.bool), torch.randint(0, 4, (2, 8)))
    controlled_action_nll(model, ctl, 1, batch).backward()
    assert all(p.grad is None for p in model.parameters())
    assert ctl.a.grad is not None and ctl.a.grad.abs().sum() > 0


def test_controlled_rollout_applies_the_current_subgoals_controller():
    model = freeze(tiny_model())
    def env():
        return BatchedGridPinpad(16, parse_task_set("0-1-2-3", 8), GridSpec(), seed=0)

    ctl = SubgoalControllers(4, 16, rank=None, init_std=0.0)  # U = 0: same as no controller
    a = rollout_with_controllers(model, ctl, 1, env(), seed=3, device="cpu")
    b = rollout_with_controllers(model, None, 1, env(), seed=3, device="cpu")
    assert a == b
    # a controller that changes the actions changes the rollout: record the actions taken
    seen = []
    orig = model.sample_action
    model.sample_action = lambda out, gen, *rest: seen.append(out.action[:, -1].clone()) or orig(out, gen, *rest)
    rollout_with_controllers(model, None, 1, env(), seed=3, device="cpu")
    plain = torch.cat(seen)
    seen.clear()
    with torch.no_grad():
        ctl.u.normal_(0, 5.0)
    rollout_with_controllers(model, ctl, 1, env(), seed=3, device="cpu")
    assert not torch.allclose(torch.cat(seen)[: len(plain)], plain[: len(torch.cat(seen))])


def test_switch_metrics_match_changes_within_one_step():
    from internalrl.analysis.switching import switch_metrics

    sub = torch.tensor([[0, 0, 0, 1, 1, 1, 2, 2, 2, 2]])
    mask = torch.ones_like(sub, dtype=torch.bool)
    perfect = torch.zeros(1, 10)
    perfect[0, [0, 3, 6]] = 1.0
    m = switch_metrics(perfect, sub, mask)
    assert m["precision"] == m["recall"] == m["f1"] == 1.0
    assert m["switches_per_episode"] == m["subgoals_per_episode"] == 3
    late = torch.zeros(1, 10)
    late[0, [4, 9]] = 0.9  # one switch a step late (counts), one far off (does not)
    m = switch_metrics(late, sub, mask)
    assert m["precision"] == 0.5 and m["recall"] == 0.5
    soft = torch.full((1, 10), 0.5)
    assert switch_metrics(soft, sub, mask)["fraction_beta_intermediate"] == 1.0
    never = switch_metrics(torch.zeros(1, 10), sub, mask)
    assert never["precision"] is None and never["f1"] == 0.0 and never["recall"] == 0.0


def test_rollout_counts_where_episodes_end():
    model = freeze(tiny_model())
    env = BatchedGridPinpad(16, parse_task_set("0-1-2-3", 8), GridSpec(), seed=0)
    res = rollout_with_controllers(model, None, 1, env, seed=3, device="cpu")
    counts = res["progress_counts"]
    assert len(counts) == 5 and sum(counts) == 16  # progress 0..4 of a 4-colour task
    assert counts == [int((env.progress == k).sum()) for k in range(5)]
    # every unsuccessful episode ended either on a wrong colour or at the horizon, at its progress
    wrong, timeout = np.array(res["wrong_colour_counts"]), np.array(res["timeout_counts"])
    assert wrong.shape == (5, 8) and timeout.shape == (5,)
    ended = wrong.sum(1) + timeout
    assert ended[:4].tolist() == counts[:4] and ended[4] == 0  # progress 4 of 4 is a success
    assert wrong.sum() > 0  # an untrained model walks onto wrong colours
    for k in range(4):  # the colour a task wants next is never a failure at that progress
        assert wrong[k, k] == 0


def test_zero_controller_keeps_heldout_nll_and_training_moves_it(tmp_path):
    import dataclasses

    import numpy as np

    from internalrl.analysis.controllers import heldout_controlled_nll, train_controllers
    from internalrl.config import ControllerConfig
    from internalrl.data import generate_grid, load_trajectories, save_trajectories

    tasks = parse_task_set("0-1-2-3,2-3-0-1", 8)
    arrays, _ = generate_grid(24, tasks, GridSpec(), seed=0, progress=False)
    save_trajectories(tmp_path, arrays, {"obs_format": "grid", "env": dataclasses.asdict(GridSpec())})
    data = load_trajectories(tmp_path)
    model = freeze(tiny_model())
    idx = np.arange(24)
    base = heldout_controlled_nll(model, None, 1, data, idx, 7, "cpu")
    zero = SubgoalControllers(4, 16, rank=None, init_std=0.0)
    assert abs(heldout_controlled_nll(model, zero, 1, data, idx, 7, "cpu") - base) < 1e-6
    cc = ControllerConfig(rank=4, steps=30, batch_size=8, lr=1e-2)
    ctl, curve = train_controllers(model, data, idx, 1, 4, cc, seed=0, device="cpu", progress=False)
    assert heldout_controlled_nll(model, ctl, 1, data, idx, 7, "cpu") < base  # fits its own training episodes
    assert curve[-1][0] == 29


def test_rollout_hook_sees_every_state_before_its_step():
    model = freeze(tiny_model())
    env = BatchedGridPinpad(8, parse_task_set("0-1-2-3", 8), GridSpec(), seed=0)
    calls = []
    rollout_with_controllers(model, None, 1, env, seed=3, device="cpu",
                             before_step=lambda e: calls.append((e.t.copy(), e.agent.copy(), e.done.copy())))
    # one call per step until the last episode ends, each before that step is taken
    assert len(calls) == int(env.t.max())
    for k, (t, agent, done) in enumerate(calls):
        live = ~done
        assert (t[live] == k).all() and live.any()
    # the first call sees the reset state: the agent where the episode started
    assert (calls[0][0] == 0).all()
    # the recorded agent positions change as the episodes move
    assert any((a != calls[0][1]).any() for _, a, _ in calls[1:])


def test_cached_lower_half_gives_the_same_controller_loss_and_training():
    from internalrl.analysis.controllers import LowerResiduals, cached_controlled_nll, train_controllers
    from internalrl.config import ControllerConfig
    from internalrl.data import Trajectories, generate_grid, make_batch

    spec = GridSpec()
    arrays, _ = generate_grid(40, parse_task_set("grid-pretrain", 8), spec, seed=0, chunk=40, progress=False)
    data = Trajectories(arrays, {"obs_format": "grid", "env": {"size": 7, "num_objects": 8, "num_walls": 4,
                                                                 "horizon": 100}})
    model = freeze(tiny_model())
    idx = np.arange(5, 37)
    cache = LowerResiduals(model, data, idx, 1, "cpu", chunk=7)  # chunks must not matter
    torch.manual_seed(1)
    ctl = SubgoalControllers(4, 16, 4, init_std=0.3)
    episodes = np.array([30, 6, 11, 29])
    direct = controlled_action_nll(model, ctl, 1, make_batch(data, episodes))
    assert torch.allclose(cached_controlled_nll(model, ctl, cache, episodes), direct, atol=1e-5)
    cc = ControllerConfig(steps=5, batch_size=6, lr=1e-2)
    a, _ = train_controllers(model, data, idx, 1, 4, cc, seed=0, device="cpu", progress=False)
    b, _ = train_controllers(model, data, idx, 1, 4, cc, seed=0, device="cpu", progress=False, cache=True)
    assert all(torch.allclose(p, q, atol=1e-5) for p, q in zip(a.parameters(), b.parameters()))
    import pytest

    with pytest.raises(ValueError, match="outside the cached set"):
        cache.batch(np.array([0]))


def test_closed_loop_switching_counts_decisions_against_reached_subgoals():
    from internalrl.analysis.switching import closed_loop_switching

    # two episodes: subgoals 0,0,0,1,1,2 (length 6) and 0,0,1 then done (length 3)
    sub = torch.tensor([[0, 0, 0, 1, 1, 2, -1, -1], [0, 0, 1, -1, -1, -1, -1, -1]])
    lengths = torch.tensor([6, 3])
    on_changes = torch.zeros(2, 8, dtype=torch.bool)
    on_changes[:, 0] = True
    on_changes[0, [3, 5]] = True
    on_changes[1, 2] = True
    m = closed_loop_switching(on_changes, sub, lengths)
    assert m["f1"] == 1.0 and m["decisions_per_subgoal"] == 1.0 and m["episodes"] == 2
    every = torch.arange(8)[None] < lengths[:, None]  # a code every step
    m = closed_loop_switching(every, sub, lengths)
    assert m["recall"] == 1.0 and m["precision"] < 1.0
    assert m["decisions_per_subgoal"] == 9 / 5  # 9 steps over 5 subgoals entered
    # steps past the end of an episode never count, whatever the tensor holds there
    assert closed_loop_switching(every | ~every, sub, lengths) == m


def test_code_content_finds_what_the_codes_carry():
    from internalrl.analysis.switching import code_content

    g = torch.Generator().manual_seed(0)
    n, t = 200, 5
    subgoals = torch.randint(0, 4, (n, t), generator=g)
    actions = torch.randint(0, 4, (n, t), generator=g)
    codes = torch.nn.functional.one_hot(subgoals, 8).float() + 0.1 * torch.randn(n, t, 8, generator=g)
    decisions = torch.rand(n, t, generator=g) < 0.5
    with torch.no_grad():  # as in a rollout's evaluation
        out = code_content(codes, decisions, subgoals, num_subgoals=4, direction=(actions, 4))
    assert out["decisions"] == int(decisions.sum())
    assert out["subgoal"]["accuracy"] > 0.95  # the codes spell the subgoal
    assert out["direction"]["accuracy"] < 0.5  # and know nothing of the (independent) action
    few = torch.zeros(n, t, dtype=torch.bool)
    few[:5, 0] = True
    assert code_content(codes, few, subgoals, 4, (actions, 4))["subgoal"] is None
    # without actions to probe (the ant's torques), only the subgoal probe
    with torch.no_grad():
        assert set(code_content(codes, decisions, subgoals, 4)) == {"decisions", "subgoal"}
