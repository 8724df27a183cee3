"""Ant expert: the quarter-turn relabelling of the legs, waypoint guidance, weights round trip."""
import numpy as np
import pytest

pytest.importorskip("mujoco")

import mujoco  # noqa: E402
import torch  # noqa: E402

from internalrl.envs.ant import AntSpec, BatchedAntPinpad, cell_centres  # noqa: E402
from internalrl.experts.ant import (  # noqa: E402
    OUTCOMES, AntExpertConfig, AntExpertPolicy, MOVE_XY, _overrides, canonical_observation, evaluate_ant_expert,
    expert_obs_dim, guidance, load_ant_expert, quarter_turns, real_actions, rollout_expert, save_policy,
    shaped_reward, training_end,
)
from internalrl.envs.tasks import parse_task_set  # noqa: E402


def _moving_env(n=4, seed=0):
    env = BatchedAntPinpad(n, [(0, 1, 2)], AntSpec(cell_size=4.0), seed=seed)
    env.reset()
    rng = np.random.default_rng(1)
    for _ in range(10):
        env.step(rng.uniform(-0.3, 0.3, (n, 8)))
    return env, rng


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_relabelled_ant_is_the_same_physics(k):
    """Put a second ant in the relabelled state of the first: driving the first with the
    mapped-back actions and the second with the actions themselves keeps them identical."""
    env, rng = _moving_env()
    kk = np.full(env.num_envs, k)
    eo, _ = canonical_observation(env, env.observation(), symmetry=True, k=kk)
    twin = env.clone(range(env.num_envs))
    for i in range(env.num_envs):
        pro = eo[i, :27].astype(np.float64)
        raw = np.sign(pro) * np.expm1(np.abs(pro))  # undo symlog
        d = twin.data[i]
        d.qpos[2:], d.qvel[:] = raw[:13], raw[13:]
        mujoco.mj_forward(twin.model, d)
        twin.qpos[i], twin.qvel[i] = d.qpos, d.qvel
    zero = np.zeros(env.num_envs, dtype=np.int64)
    for _ in range(20):
        a = rng.uniform(-1, 1, (env.num_envs, 8))
        env.step(real_actions(a, kk))
        twin.step(a)
    e1, _ = canonical_observation(env, env.observation(), symmetry=True, k=kk)
    e2, _ = canonical_observation(twin, twin.observation(), symmetry=True, k=zero)
    # proprioception and the plain observation agree (the heading-frame extras use the floor
    # projection of the real torso's heading plus k quarter turns, which differs by a little
    # from the relabelled torso's own projection when the torso tilts)
    np.testing.assert_allclose(e1[:, :41], e2[:, :41], atol=2e-3)
    np.testing.assert_allclose(env.xy, twin.xy, atol=1e-4)


def test_quarter_turns_bring_the_direction_forward():
    env, _ = _moving_env(n=8, seed=3)
    maps, here, d = guide = guidance(env)
    eo, k = canonical_observation(env, env.observation(), guide, symmetry=True)
    assert eo.shape == (8, expert_obs_dim(env.spec)) and np.array_equal(k, quarter_turns(env, d))
    body = eo[:, -4:-2]  # the direction in the relabelled body frame
    has = np.linalg.norm(d, axis=1) > 0
    assert (body[has, 0] >= np.cos(np.pi / 4) - 1e-5).all()
    np.testing.assert_allclose(np.linalg.norm(body[has], axis=1), 1.0, atol=1e-5)
    assert np.array_equal(real_actions(np.eye(8)[:1].repeat(8, 0), np.zeros(8, int)), np.eye(8)[:1].repeat(8, 0))


def test_waypoint_direction_leads_into_the_suggested_cell():
    env = BatchedAntPinpad(16, [(0, 1, 2)], AntSpec(), seed=4)
    env.reset()
    _, here, d = guidance(env)
    centres = cell_centres(env.spec)
    for i in range(16):
        if here[i].sum() == 1:
            target = centres[env.cell[i]] + MOVE_XY[np.flatnonzero(here[i])[0]] * env.spec.cell_size
            to = target - env.xy[i]
            np.testing.assert_allclose(d[i], to / np.linalg.norm(to), atol=1e-9)


def test_weights_round_trip_keeps_the_observation_options(tmp_path):
    torch.manual_seed(0)
    p = AntExpertPolicy(expert_obs_dim(AntSpec()), 16, symmetry=True, waypoints=True)
    save_policy(p, tmp_path / "w.safetensors")
    q = load_ant_expert(tmp_path / "w.safetensors")
    assert q.symmetry and q.waypoints and q.hidden == 16
    x = torch.randn(3, p.obs_dim)
    torch.testing.assert_close(p.dist(x).mean, q.dist(x).mean)
    assert [f.name for f in tmp_path.iterdir()] == ["w.safetensors"]  # written via a temporary file, renamed


def test_training_command_refuses_bad_input_and_keeps_existing_weights(tmp_path, capsys):
    from internalrl.cli import main

    torch.manual_seed(0)
    w = tmp_path / "w.safetensors"
    save_policy(AntExpertPolicy(expert_obs_dim(AntSpec()), 16), w)
    before = w.read_bytes()
    for argv, says in ((["--out", str(w)], "already exists"),
                       (["--out", str(tmp_path / "new.safetensors"), "--set", "velocity_cap=0"], "velocity_cap"),
                       (["--out", str(tmp_path / "new.safetensors"), "--set", "num_envs=0"], "num_envs"),
                       (["--out", str(tmp_path / "new.pt")], ".safetensors"),
                       (["--out", str(tmp_path / "new.safetensors"), "--init", str(tmp_path / "no.safetensors")],
                        "no ant expert weights")):
        capsys.readouterr()
        assert main(["ant-expert", "train", *argv]) == 2
        assert says in capsys.readouterr().err
    assert w.read_bytes() == before and sorted(f.name for f in tmp_path.iterdir()) == ["w.safetensors"]


def test_config_overrides_are_typed():
    o = _overrides(["cell_size=1.5", "symmetry=false", "update_epochs=3", "tasks=0-1,2-3"])
    assert o == {"cell_size": 1.5, "symmetry": False, "update_epochs": 3, "tasks": ("0-1", "2-3")}
    AntExpertConfig(**o)
    with pytest.raises(SystemExit):
        _overrides(["nope=1"])


def test_training_ends_on_tip_over_and_height_limit():
    env = BatchedAntPinpad(4, [(0, 1, 2)], AntSpec(), seed=0)
    env.reset()
    env.qpos[:, 2] = [0.6, 0.97, 0.6, 0.97]  # torso heights inside the environment's [0.2, 1.0]
    env.qpos[1:3, 3:7] = [0.0, 1.0, 0.0, 0.0]  # rows 1 and 2 on their backs (quaternion w=0, x=1)
    env.done[3] = True  # a finished row never ends again
    assert training_end(env, AntExpertConfig()).tolist() == [False, True, True, False]
    assert training_end(env, AntExpertConfig(height_limit=0.95)).tolist() == [False, True, True, False]
    env.qpos[1:3, 3:7] = [1.0, 0.0, 0.0, 0.0]  # upright again
    assert training_end(env, AntExpertConfig()).tolist() == [False, False, False, False]
    assert training_end(env, AntExpertConfig(height_limit=0.95)).tolist() == [False, True, False, False]
    with pytest.raises(ValueError, match="height_limit"):
        AntExpertConfig(height_limit=0.7)


def test_velocity_cap_limits_only_the_intrinsic_reward():
    env = BatchedAntPinpad(3, [(0, 1, 2)], AntSpec(), seed=0)
    env.reset()
    speed = np.array([2.0, 0.3, -1.0])  # m/s along d
    d = np.tile([1.0, 0.0], (3, 1))
    xy_before = env.xy - env.spec.control_dt * speed[:, None] * d
    actions = np.zeros((3, 8))
    info = {"visited": np.array([-1, 1, -1]), "failure": np.array([False, False, True])}
    plain = shaped_reward(env, AntExpertConfig(velocity_cap=float("inf"), failure_penalty=1.0), xy_before, d, actions,
                          np.zeros(3), info)
    capped = shaped_reward(env, AntExpertConfig(velocity_cap=0.5, failure_penalty=1.0), xy_before, d, actions,
                           np.zeros(3), info)
    np.testing.assert_allclose(plain - capped, [1.5, 0.0, 0.0], atol=1e-6)  # only the row above the cap loses
    np.testing.assert_allclose(plain, speed + [0.05, 1.05, -0.95], atol=1e-6)  # the visit, failure, alive terms stay
    with pytest.raises(ValueError, match="velocity_cap"):
        AntExpertConfig(velocity_cap=0.0)


def test_evaluation_outcomes_match_how_each_episode_ended():
    # a flailing untrained policy on small cells: episodes end in every way but success
    spec = AntSpec(cell_size=1.0, horizon=30)
    torch.manual_seed(0)
    policy = AntExpertPolicy(expert_obs_dim(spec), 32)
    with torch.no_grad():
        policy.log_std.fill_(0.5)
    env = BatchedAntPinpad(64, parse_task_set("ant-pretrain", spec.num_objects), spec, seed=0)
    r = rollout_expert(policy, env, False, torch.Generator().manual_seed(0))
    out = np.array(OUTCOMES)[r["outcome"]]
    assert {"wrong colour", "wall", "fell", "time limit"} <= set(out)
    np.testing.assert_array_equal(out == "success", r["success"])
    np.testing.assert_array_equal(out == "time limit", r["lengths"] == spec.horizon)
    ident = env.cell_identity[np.arange(64), np.maximum(env.cell, 0)]
    on_wall = (env.cell < 0) | (ident < spec.num_walls)
    assert on_wall[out == "wall"].all() and not on_wall[out == "wrong colour"].any()
    z = env.qpos[:, 2]
    assert ((z < spec.min_height) | (z > spec.max_height))[out == "fell"].all()
    res = evaluate_ant_expert(policy, "ant-pretrain", num_episodes=20, seed=0, spec=spec, num_envs=8)
    assert res["episodes"] == 20 and list(res["outcomes"]) == list(OUTCOMES)
    assert sum(res["outcomes"].values()) == pytest.approx(1.0)
    assert res["outcomes"]["success"] == pytest.approx(res["success_rate"])
