"""The steerability protocol: where controlled episodes fail, which transitions are unseen, and
the command's outputs and refusals."""
import json

import numpy as np
import pytest
import torch

from internalrl.analysis.controllers import freeze, rollout_with_controllers
from internalrl.analysis.steerability import failure_breakdown, seen_transitions
from internalrl.cli import main
from internalrl.envs.gridworld import BatchedGridPinpad, GridSpec
from internalrl.envs.tasks import GRID_POSTTRAIN_TASK, parse_task, parse_task_set

from internalrl.models.sequence_model import ModelConfig, SequenceModel

TINY = ["--set", "data.num_episodes=60", "--set", "model.width=16", "--set", "model.depth=2",
        "--set", "model.heads=2", "--set", "model.head_dim=8", "--set", "model.mlp=16",
        "--set", "train.steps=6", "--set", "train.batch_size=8", "--set", "train.eval_every=3",
        "--set", "train.checkpoint_every=2", "--set", "train.snapshots=2", "--set", "train.warmup_steps=1",
        "--set", "env.horizon=40", "--set", "model.max_len=48", "--no-progress"]


def tiny_model():
    torch.manual_seed(0)
    return SequenceModel(ModelConfig(obs_dim=GridSpec().obs_dim, width=16, depth=2, heads=2, head_dim=8, mlp=32))


def test_post_training_transitions_are_all_unseen_in_pretraining():
    spec = GridSpec()
    seen = seen_transitions(parse_task_set("grid-pretrain", 8), spec)
    assert (0, 2) in seen and (3, 1) in seen  # A->C, D->B occur in pretraining
    assert not {(0, 1), (1, 2), (2, 3), (3, 0)} & seen  # A->B, B->C, C->D, D->A never do
    assert len(seen) == 8


def test_failure_breakdown_counts_each_stage_of_a_task():
    spec = GridSpec()
    task = parse_task("0-1-2-3", 8)
    # 10 episodes: 2 fail before colour 0 (1 wrong colour, 1 timeout), 1 fails inside A, 3 fail at the
    # unseen A->B transition, 1 inside B (timeout), 3 succeed
    wrong = np.zeros((5, 8), dtype=int)
    wrong[0, 4], wrong[1, 6], wrong[2, 4] = 1, 1, 3
    res = {"success_rate": 0.3, "progress_counts": [2, 1, 3, 1, 3], "wrong_colour_counts": wrong.tolist(),
           "timeout_counts": [1, 0, 0, 1, 0]}
    b = failure_breakdown(res, task, seen_transitions(parse_task_set("grid-pretrain", 8), spec), spec)
    kinds = [s["kind"] for s in b["stages"]]
    assert kinds == ["first_colour", "inside_subgoal", "transition", "inside_subgoal"]
    assert [s["reached"] for s in b["stages"]] == [10, 8, 7, 4]
    assert [s["passed"] for s in b["stages"]] == [8, 7, 4, 3]
    assert b["stages"][2]["seen"] is False and b["stages"][2]["subgoals"] == [0, 1]
    assert b["stages"][2]["wrong_colours"] == {"4": 3} and b["stages"][0]["wrong_colours"] == {"4": 1}
    assert b["unseen_transitions"]["pass_rate"] == pytest.approx(4 / 7)
    assert b["seen_transitions"]["pass_rate"] is None  # this task has no seen transition
    assert b["before_first_colour"]["episodes_failed"] == 2 and b["timeouts"] == 2
    assert b["inside_subgoal"]["pass_rate"] == pytest.approx((7 + 3) / (8 + 4))


def test_breakdown_of_a_real_rollout_adds_up():
    spec = GridSpec()
    task = parse_task(GRID_POSTTRAIN_TASK, 8)
    env = BatchedGridPinpad(32, [task], spec, seed=0)
    res = rollout_with_controllers(freeze(tiny_model()), None, 1, env, seed=1, device="cpu")
    b = failure_breakdown(res, task, seen_transitions(parse_task_set("grid-pretrain", 8), spec), spec)
    failed = sum(s["wrong_colour"] + s["timeout"] for s in b["stages"])
    assert failed + round(b["success_rate"] * 32) == 32
    for s in b["stages"]:
        assert s["reached"] - s["passed"] == s["wrong_colour"] + s["timeout"]


def test_greedy_rollout_is_deterministic_and_sampled_is_not_forced_to_be():
    model = freeze(tiny_model())
    spec = GridSpec()
    runs = []
    for seed in (1, 2):
        env = BatchedGridPinpad(16, parse_task_set("0-1-2-3", 8), spec, seed=0)
        runs.append(rollout_with_controllers(model, None, 1, env, seed=seed, device="cpu", greedy=True))
    assert runs[0]["progress_counts"] == runs[1]["progress_counts"]  # greedy ignores the sampling seed
    out = model(torch.zeros(3, 1, spec.obs_dim))
    assert model.sample_action(out, temperature=0.0).tolist() == out.action[:, -1].argmax(-1).tolist()


def test_command_writes_metrics_and_figure_and_keeps_a_finished_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["data", "--out", str(out), *TINY]) == 0
    assert main(["steerability", str(out), "--steps", "2", "--batch-size", "4", "--episodes", "8",
                 "--no-progress"]) == 2  # no base model yet
    assert "base_model" in capsys.readouterr().err
    assert main(["train", "--out", str(out), *TINY]) == 0
    args = ["steerability", str(out), "--steps", "2", "--batch-size", "4", "--episodes", "8", "--no-progress"]
    assert main(args) == 0
    m = json.loads((out / "steerability" / "metrics.json").read_text())
    assert (out / "steerability" / "steerability.png").stat().st_size > 0
    assert m["layer"] == 1 and m["protocol"]["steps"] == 2
    for key in ("posttrain_sampled", "posttrain_greedy", "pretrain_sampled", "pretrain_greedy"):
        assert 0 <= m["controllers"][key] <= 1
    assert len(m["controllers"]["posttrain_failures_sampled"]["stages"]) == 12
    assert 0 <= m["free_play"]["ceiling"] <= 1 and "bayes_optimal_nll" in m["prediction"]
    assert "steerability" in json.loads((out / "results.json").read_text())
    before = (out / "steerability" / "metrics.json").read_bytes()
    assert main(args[:-1] + ["--steps", "3", "--no-progress"]) == 0  # finished: kept, not recomputed
    assert (out / "steerability" / "metrics.json").read_bytes() == before
    assert main(["steerability", str(out), "--steps", "0", "--name", "other", "--no-progress"]) == 2
    assert "steps must be at least 1" in capsys.readouterr().err
    assert not (out / "other").exists()
    assert main(["steerability", str(tmp_path / "nowhere"), "--no-progress"]) == 2
    # a training snapshot (TINY keeps steps 3 and 6) gets its own folder; a missing one is refused
    assert main(args + ["--snapshot", "3"]) == 0
    snap = json.loads((out / "steerability_step3" / "metrics.json").read_text())
    assert snap["base_model"]["steps"] == 3 and snap["base_model"]["snapshot"] == 3
    assert main(args + ["--snapshot", "4"]) == 2
    assert "it has: 3, 6" in capsys.readouterr().err
