import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import internalrl.envs  # noqa: F401  (registers the Gymnasium ids)
from internalrl.envs.gridworld import DOWN, LEFT, RIGHT, UP, BatchedGridPinpad, GridSpec
from internalrl.envs.tasks import TaskError, parse_task, parse_task_set

SPEC = GridSpec()  # 7x7, 8 colours, 4 walls, horizon 100


def layout(walls=(), colours=None, spec=SPEC):
    """Cell identities: walls at the given cells, colour k at colours[k] (default: the bottom row
    then the row above)."""
    ident = np.full(spec.num_cells, -1)
    colours = colours or list(range(spec.num_cells - spec.num_objects, spec.num_cells))
    for w, cell in enumerate(walls):
        ident[cell] = w
    for k, cell in enumerate(colours):
        ident[cell] = spec.num_walls + k
    return ident


def env_with(task="0-1", walls=(), colours=None, agent=0, spec=SPEC):
    env = BatchedGridPinpad(1, [parse_task(task, spec.num_objects)], spec, seed=0, require_solvable=False)
    env.reset()
    env.load_layout(layout(walls, colours, spec)[None], np.array([agent]))
    return env


def step(env, a):
    return env.step(np.array([a]))


def test_observation_layout_is_637_one_hots():
    env = BatchedGridPinpad(5, parse_task_set("grid-pretrain", 8), SPEC, seed=1)
    obs = env.reset()
    assert obs.shape == (5, 637) and obs.dtype == np.float32
    grid = obs.reshape(5, 49, 13)
    assert (grid[..., :12].sum(-1) <= 1).all()  # at most one identity per cell
    assert (grid[..., :4].sum((1, 2)) == 4).all() and (grid[..., 4:12].sum((1, 2)) == 8).all()
    assert (grid[..., 12].sum(1) == 1).all()
    assert (grid[np.arange(5), env.agent, 12] == 1).all()
    # each colour k sits where the layout says
    for k in range(8):
        assert (grid[np.arange(5), env.colour_cell[:, k], 4 + k] == 1).all()


def test_walls_and_grid_edge_leave_agent_in_place():
    env = env_with(walls=(1,), agent=0)
    step(env, UP)  # off the grid
    assert env.agent[0] == 0
    step(env, LEFT)
    assert env.agent[0] == 0
    step(env, RIGHT)  # into the wall at cell 1
    assert env.agent[0] == 0
    step(env, DOWN)
    assert env.agent[0] == 7
    assert env.t[0] == 4 and not env.done[0]


def test_visit_requires_entering_from_another_cell():
    # colour 0 at cell 8, colour 1 at cell 10; agent at 7; wall at 1 above cell 8
    colours = [8, 10, 42, 43, 44, 45, 46, 47]
    env = env_with("0-1", walls=(1,), colours=colours, agent=7)
    _, r, term, _, info = step(env, RIGHT)  # onto colour 0
    assert info["visited"][0] == 0 and env.progress[0] == 1 and not term[0] and r[0] == 0
    _, _, _, _, info = step(env, UP)  # bump into the wall: stays on colour 0, no new visit
    assert env.agent[0] == 8 and info["visited"][0] == -1 and env.progress[0] == 1
    step(env, RIGHT)  # empty cell 9
    _, r, term, _, info = step(env, RIGHT)  # onto colour 1: task done
    assert info["visited"][0] == 1 and term[0] and r[0] == 1.0 and env.succeeded[0]


def test_wrong_colour_fails_with_no_reward():
    colours = [8, 10, 42, 43, 44, 45, 46, 47]
    env = env_with("1-0", colours=colours, agent=7)
    _, r, term, trunc, info = step(env, RIGHT)  # colour 0 first, but the task wants 1
    assert term[0] and not trunc[0] and r[0] == 0 and info["failure"][0] and not env.succeeded[0]
    # a finished environment ignores further actions
    _, r, term, trunc, _ = step(env, RIGHT)
    assert env.agent[0] == 8 and r[0] == 0 and not term[0] and not trunc[0]


def test_horizon_truncates():
    spec = GridSpec(horizon=3)
    env = env_with("0-1", agent=0, spec=spec)
    for _ in range(2):
        _, _, term, trunc, _ = step(env, UP)
        assert not term[0] and not trunc[0]
    _, r, term, trunc, _ = step(env, UP)
    assert trunc[0] and not term[0] and r[0] == 0 and env.done[0]


def test_subgoal_is_pair_holding_next_colour():
    colours = [8, 10, 12, 14, 42, 44, 46, 48]
    env = env_with("0-1-2-3", colours=colours, agent=7)
    assert env.subgoal()[0] == 0  # next colour 0 -> A
    step(env, RIGHT)
    assert env.subgoal()[0] == 0  # next colour 1 -> still A
    step(env, RIGHT), step(env, RIGHT)
    assert env.next_colour()[0] == 2 and env.subgoal()[0] == 1  # B


def test_free_play_accepts_any_task_of_the_set():
    # spelling 2-3 completes the set {0-1, 2-3}; 0 then 3 fails
    tasks = [parse_task("0-1", 8), parse_task("2-3", 8)]
    colours = [8, 30, 10, 12, 44, 45, 46, 47]
    env = BatchedGridPinpad(1, tasks, SPEC, seed=0, require_solvable=False)
    env.reset(free_play=True)
    env.load_layout(layout(colours=colours)[None], np.array([9]))
    assert env.next_colour()[0] == -1  # ambiguous: 0 or 2
    step(env, RIGHT)  # cell 10 = colour 2
    assert env.next_colour()[0] == 3
    step(env, RIGHT)
    _, r, term, _, _ = step(env, LEFT)  # re-entering colour 2 when 3 is due: failure
    assert term[0] and r[0] == 0


def test_tasks_are_parsed_and_impossible_ones_refused():
    assert parse_task("0-1-2-3", 8) == (0, 1, 2, 3)
    assert len(parse_task_set("grid-pretrain", 8)) == 16
    for bad, msg in [("0-1-9", "only 8 colours"), ("a-b", "dash-separated"), ("", "dash-separated"), ("0--1", "dash")]:
        with pytest.raises(TaskError, match=msg):
            parse_task(bad, 8)
    with pytest.raises(TaskError):
        BatchedGridPinpad(2, [(0, 12)], SPEC)


@pytest.mark.parametrize("kw,msg", [({"size": 1}, "at least 2"), ({"num_objects": 50}, "do not fit"),
                                     ({"horizon": 0}, "horizon")])
def test_bad_sizes_are_refused(kw, msg):
    with pytest.raises(ValueError, match=msg):
        GridSpec(**kw)


def test_sampled_layouts_are_solvable_and_resamples_counted():
    env = BatchedGridPinpad(512, parse_task_set("grid-pretrain", 8), SPEC, seed=3)
    env.reset()
    assert env._solvable(np.arange(512)).all()
    assert env.num_layouts == 512 + env.num_resampled and env.num_resampled > 0


def test_batched_equals_single_environments():
    tasks = parse_task_set("grid-pretrain", 8)
    batched = BatchedGridPinpad(6, tasks, SPEC, seed=0)
    batched.reset()
    rng = np.random.default_rng(1)
    actions = rng.integers(0, 4, size=(40, 6))
    singles = []
    for i in range(6):
        e = BatchedGridPinpad(1, tasks, SPEC, seed=0)
        e.reset(task_index=batched.task_index[i : i + 1])
        e.load_layout(batched.cell_identity[i : i + 1], batched.agent[i : i + 1])
        singles.append(e)
    for t in range(40):
        obs, r, term, trunc, _ = batched.step(actions[t])
        for i, e in enumerate(singles):
            o1, r1, te1, tr1, _ = e.step(actions[t, i : i + 1])
            assert np.array_equal(o1[0], obs[i]) and r1[0] == r[i] and te1[0] == term[i] and tr1[0] == trunc[i]


def test_gymnasium_env_passes_checker_and_renders():
    env = gym.make("internalrl/GridPinpad-v0", task="0-1-2-3", render_mode="rgb_array")
    check_env(env.unwrapped)
    obs, info = env.reset(seed=0)
    assert obs.shape == (637,) and info["subgoal"] == 0 and info["task"] == "0-1-2-3"
    frame = env.render()
    assert frame.shape == (7 * 24, 7 * 24, 3) and frame.dtype == np.uint8
    text = gym.make("internalrl/GridPinpad-v0", render_mode="ansi")
    text.reset(seed=0)
    board = text.render()
    assert board.count("@") == 1 and board.count("#") == 4


def test_gymnasium_env_is_deterministic_by_seed():
    a = gym.make("internalrl/GridPinpad-v0", task="grid-pretrain")
    b = gym.make("internalrl/GridPinpad-v0", task="grid-pretrain")
    oa, ia = a.reset(seed=7)
    ob, ib = b.reset(seed=7)
    assert np.array_equal(oa, ob) and ia == ib
    for act in [0, 3, 1, 2, 3]:
        ra, rb = a.step(act), b.step(act)
        assert np.array_equal(ra[0], rb[0]) and ra[1:4] == rb[1:4]


def test_gymnasium_env_refuses_bad_task():
    with pytest.raises(TaskError, match="colour"):
        gym.make("internalrl/GridPinpad-v0", task="0-1-8")
