"""Ant-pinpad: rules, observation layout, Gymnasium API, batching."""
import numpy as np
import pytest

pytest.importorskip("mujoco")

import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402

import internalrl.envs  # noqa: E402,F401  (registers the Gymnasium ids)
from internalrl.envs.ant import (  # noqa: E402
    PROPRIO_DIM, AntSpec, BatchedAntPinpad, cell_centres, obs_layout, render_rgb, symlog,
)
from internalrl.envs.gym_ant import AntPinpadEnv  # noqa: E402
from internalrl.envs.tasks import TaskError, parse_task_set  # noqa: E402

ZERO = np.zeros((1, 8))


def make(task=(0, 1, 2), n=1, seed=0, **kw):
    env = BatchedAntPinpad(n, [task], AntSpec(**kw), seed=seed)
    env.reset()
    return env


def teleport(env, i, xy, z=None):
    """Put environment i's torso at (x, y) (and height z), as if it had walked there."""
    d = env.data[i]
    d.qpos[0:2] = xy
    if z is not None:
        d.qpos[2] = z
    d.qvel[:] = 0
    mujoco.mj_forward(env.model, d)
    env.qpos[i] = d.qpos


def centre(env, cell):
    return cell_centres(env.spec)[cell]


def wall_cell(env, i=0):
    return int(np.flatnonzero((env.cell_identity[i] >= 0) & (env.cell_identity[i] < env.spec.num_walls))[0])


def test_wall_ends_episode_as_failure():
    env = make()
    teleport(env, 0, centre(env, wall_cell(env)))
    _, r, term, trunc, info = env.step(ZERO)
    assert term[0] and not trunc[0] and r[0] == 0
    assert info["hit_wall"][0] and info["failure"][0] and not info["success"][0]


def test_leaving_the_floor_is_a_wall():
    env = make()
    teleport(env, 0, (env.spec.half_width + 0.5, 0.0))
    _, r, term, _, info = env.step(ZERO)
    assert term[0] and info["hit_wall"][0] and r[0] == 0


def test_torso_too_high_ends_episode():
    env = make()
    teleport(env, 0, env.xy[0].copy(), z=1.4)
    _, r, term, _, info = env.step(ZERO)
    assert term[0] and info["fell"][0] and r[0] == 0 and info["failure"][0]


def test_torso_too_low_ends_episode():
    # with no torque the ant sags from 0.75 to ~0.58 m: below a floor of 0.7 it has fallen
    env = make(min_height=0.7)
    for _ in range(20):
        _, r, term, _, info = env.step(ZERO)
        if term[0]:
            break
    assert term[0] and info["fell"][0] and r[0] == 0 and env.height[0] < 0.7


def test_standing_still_runs_to_the_horizon():
    env = make(horizon=5)
    for t in range(5):
        _, r, term, trunc, _ = env.step(ZERO)
        assert r[0] == 0 and not term[0]
    assert trunc[0] and env.done[0]
    _, r, term, trunc, _ = env.step(ZERO)  # a finished environment is frozen
    assert not term[0] and not trunc[0] and r[0] == 0


def test_visiting_semantics_and_reward_only_on_success():
    env = make(task=(0, 1, 2))
    colour_cell = env.colour_cell[0]
    assert env.next_colour()[0] == 0 and env.subgoal()[0] == 0
    teleport(env, 0, centre(env, colour_cell[0]))
    _, r, term, _, info = env.step(ZERO)
    assert info["visited"][0] == 0 and info["progress"][0] == 1 and r[0] == 0 and not term[0]
    assert env.next_colour()[0] == 1 and info["subgoal"][0] == 1
    # staying inside the cell is not a new visit
    _, r, term, _, info = env.step(ZERO)
    assert info["visited"][0] == -1 and info["progress"][0] == 1 and not term[0]
    teleport(env, 0, centre(env, colour_cell[1]))
    _, r, term, _, info = env.step(ZERO)
    assert info["visited"][0] == 1 and r[0] == 0 and not term[0]
    teleport(env, 0, centre(env, colour_cell[2]))
    _, r, term, _, info = env.step(ZERO)
    assert info["visited"][0] == 2 and info["success"][0] and term[0] and r[0] == 1
    assert env.succeeded[0] and env.subgoal()[0] == -1


def test_revisiting_needs_leaving_the_cell():
    env = make(task=(0, 0))
    c0 = env.colour_cell[0, 0]
    teleport(env, 0, centre(env, c0))
    env.step(ZERO)
    _, r, term, _, info = env.step(ZERO)
    assert r[0] == 0 and not term[0]  # still in the cell: no second visit
    teleport(env, 0, centre(env, _empty_cell(env)))
    env.step(ZERO)
    teleport(env, 0, centre(env, c0))
    _, r, term, _, info = env.step(ZERO)
    assert info["visited"][0] == 0 and r[0] == 1 and term[0]


def _empty_cell(env, i=0):
    return int(np.flatnonzero(env.cell_identity[i] < 0)[0])


def test_wrong_colour_fails():
    env = make(task=(0, 1, 2))
    teleport(env, 0, centre(env, env.colour_cell[0, 2]))
    _, r, term, _, info = env.step(ZERO)
    assert term[0] and r[0] == 0 and info["wrong_colour"][0] and info["failure"][0]
    assert info["visited"][0] == 2 and info["progress"][0] == 0


def test_task_set_consistency():
    env = BatchedAntPinpad(1, [(0, 1), (0, 2)], seed=0)
    env.reset(free_play=True)
    teleport(env, 0, centre(env, env.colour_cell[0, 0]))
    env.step(ZERO)
    assert env.next_colour()[0] == -1  # ambiguous between the two tasks
    teleport(env, 0, centre(env, env.colour_cell[0, 2]))
    _, r, term, _, _ = env.step(ZERO)
    assert r[0] == 1 and term[0]


def test_random_rollout_rewards_only_on_success():
    env = BatchedAntPinpad(16, parse_task_set("ant-pretrain", 4), seed=3)
    env.reset()
    rng = np.random.default_rng(0)
    for _ in range(60):
        _, r, term, trunc, info = env.step(rng.uniform(-1, 1, (16, 8)))
        assert np.array_equal(r > 0, info["success"])
        assert not (term & trunc).any()


def test_observation_parts_at_documented_offsets():
    env = make(task=(0, 1, 2), seed=5)
    spec = env.spec
    obs = env.step(ZERO)[0][0]
    lay = obs_layout(spec)
    assert spec.obs_dim == 41 == obs.shape[0] == lay["in_cell"].stop
    assert [lay[k].start for k in ("proprio", "position", "colours", "walls", "in_cell")] == [0, 27, 29, 37, 39]
    qpos, qvel = env.data[0].qpos, env.data[0].qvel
    h = spec.half_width
    np.testing.assert_allclose(obs[lay["proprio"]], symlog(np.concatenate([qpos[2:], qvel])), rtol=1e-5, atol=1e-6)
    assert PROPRIO_DIM == 27
    xy = qpos[:2]
    np.testing.assert_allclose(obs[lay["position"]], xy / h, rtol=1e-5, atol=1e-6)
    centres = cell_centres(spec)
    np.testing.assert_allclose(obs[lay["colours"]].reshape(-1, 2), (centres[env.colour_cell[0]] - xy) / h, atol=1e-5)
    np.testing.assert_allclose(obs[lay["walls"]], (centres[wall_cell(env)] - xy) / h, atol=1e-5)
    np.testing.assert_allclose(obs[lay["in_cell"]], (xy - centres[env.cell[0]]) / (spec.cell_size / 2), atol=1e-5)
    assert np.all(np.abs(obs[lay["in_cell"]]) <= 1) and np.all(np.abs(obs[lay["position"]]) <= 1)


def test_reset_pose():
    env = BatchedAntPinpad(64, [(0, 1, 2)], seed=1)
    env.reset()
    assert np.array_equal(env.cell, env.layout.agent)  # torso starts inside the start cell
    assert np.all(env.cell_identity[np.arange(64), env.cell] == -1)
    assert np.allclose(env.qpos[:, 2], 0.75)
    assert np.all(np.abs(env.qpos[:, 7:]) <= 0.1) and np.all(np.abs(env.qvel) <= 0.1)
    yaw = 2 * np.arctan2(env.qpos[:, 6], env.qpos[:, 3])
    assert np.std(np.cos(yaw)) > 0.3  # headings are spread


def test_check_env_and_render():
    from gymnasium.utils.env_checker import check_env

    env = gym.make("internalrl/AntPinpad-v0", task="ant-pretrain", render_mode="rgb_array")
    check_env(env.unwrapped, skip_render_check=False)
    obs, info = env.reset(seed=0)
    assert obs.shape == (41,) and env.observation_space.contains(obs)
    assert info["task"] in [t for t in internalrl.envs.TASK_SETS["ant-pretrain"]]
    for _ in range(5):
        env.step(env.action_space.sample())
    img = env.render()
    assert img.shape == (192, 192, 3) and img.dtype == np.uint8
    assert (img == 0).any()  # the ant


def test_gym_reset_is_seeded():
    env = gym.make("internalrl/AntPinpad-v0", task="0-1-2-3")
    a = env.reset(seed=7)[0]
    b = env.reset(seed=7)[0]
    c = env.reset(seed=8)[0]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_batched_equals_single_env_stepping():
    env = BatchedAntPinpad(3, parse_task_set("ant-pretrain", 4), seed=11)
    env.reset()
    singles = [env.clone([i]) for i in range(3)]
    rng = np.random.default_rng(0)
    for _ in range(40):
        a = rng.uniform(-1, 1, (3, 8))
        out = env.step(a)
        for i, s in enumerate(singles):
            o1, r1, te1, tr1, info1 = s.step(a[i : i + 1])
            np.testing.assert_array_equal(o1[0], out[0][i])
            assert r1[0] == out[1][i] and te1[0] == out[2][i] and tr1[0] == out[3][i]
            assert info1["visited"][0] == info["visited"][i] if (info := out[4]) else True


def test_same_seed_same_rollout():
    def roll(seed):
        env = BatchedAntPinpad(4, parse_task_set("ant-pretrain", 4), seed=seed)
        obs = [env.reset()]
        rng = np.random.default_rng(1)
        for _ in range(10):
            obs.append(env.step(rng.uniform(-1, 1, (4, 8)))[0])
        return np.stack(obs)

    assert np.array_equal(roll(2), roll(2))
    assert not np.array_equal(roll(2), roll(3))


def test_clear_errors():
    with pytest.raises(TaskError, match="colour"):
        BatchedAntPinpad(2, [(0, 5)])
    with pytest.raises(TaskError):
        gym.make("internalrl/AntPinpad-v0", task="0-x")
    with pytest.raises(ValueError, match="do not fit"):
        AntSpec(size=2, num_objects=4, num_walls=1)
    with pytest.raises(ValueError, match="cell_size"):
        AntSpec(cell_size=0)
    with pytest.raises(ValueError, match="frame_skip"):
        AntSpec(frame_skip=0)
    with pytest.raises(ValueError, match="num_envs"):
        BatchedAntPinpad(0, [(0, 1)])
    env = make()
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.full((1, 8), np.nan))
    with pytest.raises(ValueError, match="render_mode"):
        AntPinpadEnv(render_mode="ansi")


def test_render_draws_layout():
    env = make(seed=4)
    img = render_rgb(env, 0, path=[env.xy[0]])
    px = img.shape[0] // env.spec.size
    r, c = divmod(wall_cell(env), env.spec.size)
    assert (img[r * px + px // 2 + 12, c * px + px // 2 + 12] == 64).all() or (img[r * px + 3, c * px + 3] == 64).all()


def test_expert_guidance_points_along_a_safe_shortest_path():
    from internalrl.experts.ant import MOVE_XY, direction_maps, expert_obs_dim, expert_observation, guidance

    env = make(task=(0, 1, 2), seed=2)
    g = env.spec.size
    maps = direction_maps(env)[0]  # (cells, 4)
    target = env.colour_cell[0, 0]
    dist = env.layout.dist[0, 0]
    for cell in range(env.spec.num_cells):
        if env.cell_identity[0, cell] >= 0 or dist[cell] >= 10_000:
            continue
        for move in np.flatnonzero(maps[cell]):  # every suggested move lowers the distance by one
            r, c = divmod(cell, g)
            dr, dc = [(-1, 0), (1, 0), (0, -1), (0, 1)][move]
            nxt = (r + dr) * g + (c + dc)
            assert dist[nxt] == dist[cell] - 1
            assert env.cell_identity[0, nxt] < 0 or nxt == target
    _, here, d = guidance(env, waypoints=False)
    assert np.allclose(np.linalg.norm(d[0]), 1.0) and np.allclose(d[0], here[0] @ MOVE_XY / np.linalg.norm(here[0] @ MOVE_XY))
    # waypoint direction: towards the centre of the cell a suggested move leads to
    _, here_w, d_w = guidance(env)
    assert np.array_equal(here_w, here) and np.allclose(np.linalg.norm(d_w[0]), 1.0)
    if here[0].sum() == 1:
        move = int(np.flatnonzero(here[0])[0])
        to = centre(env, env.cell[0]) + MOVE_XY[move] * env.spec.cell_size - env.xy[0]
        np.testing.assert_allclose(d_w[0], to / np.linalg.norm(to))
    assert (d_w[0] @ MOVE_XY[here[0]].T > 0).all()  # never against a suggested move
    eo = expert_observation(env, env.observation())
    assert eo.shape == (1, expert_obs_dim(env.spec)) == (1, 113)


def test_partial_reset_leaves_other_environments_running():
    env = BatchedAntPinpad(4, parse_task_set("ant-pretrain", 4), seed=6)
    env.reset()
    rng = np.random.default_rng(0)
    for _ in range(5):
        env.step(rng.uniform(-1, 1, (4, 8)))
    teleport(env, 1, centre(env, wall_cell(env, 1)))
    env.step(np.zeros((4, 8)))
    assert env.done[1]
    keep = [0, 2, 3]
    before = (env.qpos[keep].copy(), env.cell_identity[keep].copy(), env.t[keep].copy())
    obs = env.reset(indices=[1])
    assert not env.done[1] and env.t[1] == 0 and env.progress[1] == 0
    assert np.array_equal(env.cell[1], env.layout.agent[1]) and env.cell_identity[1, env.cell[1]] == -1
    np.testing.assert_array_equal(env.qpos[keep], before[0])
    np.testing.assert_array_equal(env.cell_identity[keep], before[1])
    np.testing.assert_array_equal(env.t[keep], before[2])
    np.testing.assert_allclose(obs[1, 27:29] * env.spec.half_width, env.xy[1], atol=1e-6)


def test_grid_moves_match_floor_geometry():
    from internalrl.envs.gridworld import neighbour_table
    from internalrl.experts.ant import MOVE_XY

    spec = AntSpec()
    c, nb = cell_centres(spec), neighbour_table(spec.size)
    for cell in range(spec.num_cells):
        for move in range(4):
            if nb[cell, move] >= 0:
                np.testing.assert_allclose(c[nb[cell, move]] - c[cell], MOVE_XY[move] * spec.cell_size)


def test_expert_dataset_format(tmp_path):
    import torch

    from internalrl.data import load_trajectories, make_batch
    from internalrl.experts.ant import AntExpertPolicy, expert_obs_dim, generate_ant_dataset, write_ant_dataset

    torch.manual_seed(0)
    spec = AntSpec(horizon=60)
    policy = AntExpertPolicy(expert_obs_dim(spec))  # untrained: a single-colour task succeeds now and then
    tasks = [(0,), (1,), (2,), (3,)]
    arrays, stats = generate_ant_dataset(3, tasks, seed=0, policy=policy, mean_actions=False, spec=spec,
                                         num_envs=64, max_rollouts=256, progress=False)
    n = stats["episodes_kept"]
    assert n >= 1 and stats["expert_episodes_failed"] == stats["expert_episodes_rolled_out"] - stats["expert_episodes_succeeded"]
    L = arrays["lengths"].astype(int)
    tmax = L.max()
    assert arrays["observations"].shape == (n, tmax + 1, 41) and arrays["observations"].dtype == np.float32
    assert arrays["actions"].shape == (n, tmax, 8) and np.abs(arrays["actions"]).max() <= 1
    for i in range(n):  # the subgoal is the task's colour until the end, -1 after
        assert (arrays["subgoals"][i, : L[i]] == tasks[arrays["task_id"][i]][0]).all()
        assert (arrays["subgoals"][i, L[i]:] == -1).all()
    write_ant_dataset(tmp_path / "d", arrays, stats, tasks, spec)
    data = load_trajectories(tmp_path / "d")
    assert data.card["obs_format"] == "dense" and data.obs_dim == 41
    batch = make_batch(data, np.arange(n))
    assert batch.obs.shape[-1] == 41 and batch.actions.shape[-1] == 8
