import numpy as np
import torch

from internalrl.envs.gridworld import BatchedGridPinpad, GridSpec
from internalrl.envs.tasks import parse_task_set
from internalrl.evaluate import rollout_base_model
from internalrl.models.sequence_model import ModelConfig, SequenceModel

SPEC = GridSpec(size=5, num_objects=4, num_walls=2, horizon=30)
TASKS = parse_task_set("0-1-2-3,2-3-0-1", 4)


def _model(seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(obs_dim=SPEC.obs_dim, width=16, depth=2, heads=2, head_dim=8, mlp=32, max_len=64)
    return SequenceModel(cfg).eval()


def test_free_play_outcomes_partition_the_episodes_and_match_the_environment():
    env = BatchedGridPinpad(256, TASKS, SPEC, seed=0)
    res = rollout_base_model(_model(), env, free_play=True, seed=0)
    f = res["failures"]
    total = res["success_rate"] + f["wrong_colour_within_subgoal"] + f["wrong_colour_new_subgoal"] + f["timeout"]
    assert abs(total - 1.0) < 1e-9
    # an untrained model wanders: it times out or walks onto a wrong colour, and the counts say which
    hit_horizon = float((~env.succeeded & (env.t >= SPEC.horizon)).mean())  # includes a wrong colour at step T
    assert 0 < f["timeout"] <= hit_horizon
    assert f["wrong_colour_within_subgoal"] + f["wrong_colour_new_subgoal"] > 0
    assert res["colours_done_mean"] == float(env.progress.mean())
    common = res["common_failures"]
    wrong = f["wrong_colour_within_subgoal"] + f["wrong_colour_new_subgoal"]
    assert 0 < sum(common.values()) <= round(wrong * 256)
    for seq in common:  # a failed sequence is no prefix of an admissible task
        colours = tuple(int(c) for c in seq.split("-"))
        assert not any(t[: len(colours)] == colours for t in TASKS)


def test_rollouts_are_deterministic_by_seed():
    a = rollout_base_model(_model(), BatchedGridPinpad(64, TASKS, SPEC, seed=3), free_play=True, seed=7, record=2)
    b = rollout_base_model(_model(), BatchedGridPinpad(64, TASKS, SPEC, seed=3), free_play=True, seed=7, record=2)
    assert a["success_rate"] == b["success_rate"] and np.array_equal(a["paths"], b["paths"])


def test_internal_rollout_benchmark_counts_raw_steps_and_decisions():
    from internalrl.bench import bench_internal
    from internalrl.config import load_config

    cfg = load_config("quick", ["model.width=16", "model.heads=2", "model.head_dim=8", "model.mlp=16",
                                "metacontroller.rank=4", "rl.policy_hidden=8"])
    res = bench_internal(cfg, 32)
    assert res["num_envs"] == 32
    assert 32 <= res["raw_env_steps"] <= 32 * cfg.env.horizon  # every episode takes at least one step
    assert res["decisions_per_episode"] >= 1.0  # the first step always takes a code
    assert res["raw_env_steps_per_s"] > 0


def test_metacontroller_training_benchmark_runs_on_grid_episodes():
    from internalrl.bench import bench_metacontroller_train
    from internalrl.config import load_config
    from internalrl.data import Trajectories, generate_grid, make_batch
    from internalrl.envs.tasks import parse_task_set

    cfg = load_config("quick", ["model.width=16", "model.heads=2", "model.head_dim=8", "model.mlp=16",
                                "metacontroller.rank=4", "metacontroller.batch_size=4"])
    spec = cfg.env.spec()
    arrays, _ = generate_grid(4, parse_task_set(cfg.env.pretrain_tasks, spec.num_objects), spec, seed=0, progress=False)
    batch = make_batch(Trajectories(arrays, {"obs_format": "grid", "env": spec.__dict__}), np.arange(4))
    res = bench_metacontroller_train(cfg, batch, steps=1)
    assert res["batch_size"] == 4 and res["sequence_length"] == batch.actions.shape[1]
    assert res["train_steps_per_s"] > 0
