"""End to end on a tiny config: the stages, the run directory's guarantees, and bad input."""
import json

import pytest
import torch

from internalrl.cli import main
from internalrl.train import CheckpointError

TINY = ["--set", "data.num_episodes=60", "--set", "model.width=16", "--set", "model.depth=2",
        "--set", "model.heads=2", "--set", "model.head_dim=8", "--set", "model.mlp=16",
        "--set", "train.steps=6", "--set", "train.batch_size=8", "--set", "train.eval_every=3",
        "--set", "train.checkpoint_every=2", "--set", "train.snapshots=2", "--set", "train.warmup_steps=1",
        "--set", "eval.num_envs=8", "--set", "probe.train_episodes=20", "--set", "probe.test_episodes=10",
        "--set", "probe.fit_steps=5", "--set", "controllers.steps=3", "--set", "controllers.batch_size=4",
        "--set", "metacontroller.steps=3", "--set", "metacontroller.batch_size=4", "--set", "rl.episodes=8",
        "--set", "rl.batch_size=4", "--set", "rl.policy_hidden=8", "--set", "env.horizon=40", "--set", "model.max_len=48",
        "--no-progress"]


def test_run_writes_results_and_report_then_skips_finished_stages(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *TINY]) == 0
    results = json.loads((out / "results.json").read_text())
    assert {"data", "base_model", "eval_base", "probes", "controllers", "metacontroller", "injection"} <= set(results)
    inj = json.loads((out / "injection" / "metrics.json").read_text())
    assert inj["inject_step"] == 5 and len(inj["bank"]["codes_per_subgoal"]) == 4  # the grid's four pairs
    assert inj["unseen_transition"]["from"] == 0 and inj["unseen_transition"]["to"] == 1  # A -> B
    assert 0 <= results["eval_base"]["free_play_completion"] <= 1
    assert (out / "report.html").read_text().count("<img") >= 8
    assert len(list((out / "base_model" / "snapshots").glob("*.safetensors"))) == 2
    curve = json.loads((out / "eval_base" / "metrics.json").read_text())["free_play"]["over_training"]
    assert sorted(curve, key=int) == ["3", "6"] and curve["6"] == results["eval_base"]["free_play_completion"]
    for stage in ("data", "base_model", "eval_base"):
        assert json.loads((out / stage / "metrics.json").read_text())
    meta = json.loads((out / "metacontroller" / "metrics.json").read_text())["frozen"]
    # switch metrics while it trained (every step of 3 here), the last on the same held-out episodes as the final one
    assert [r["step"] for r in meta["over_training"]] == [1, 2, 3]
    assert meta["over_training"][-1]["f1"] == meta["f1"] and meta["over_training"][-1]["kl"] == meta["kl"]
    report = (out / "report.html").read_text()
    assert "held-out next-action accuracy" in report and "free play: a pretraining task completed" in report
    assert "heldout_action_accuracy" not in report and "at never" not in report and "<td>n/a</td>" not in report
    assert "success 0.8 not reached" in report or "success 0.8 first reached after" in report
    printed = capsys.readouterr().out  # the headline numbers, not only where the report is
    assert "free play:" in printed and "switch F1" in printed and "RL internal on" in printed and "report:" in printed
    weights = (out / "base_model" / "model.safetensors").read_bytes()
    assert main(["run", "--out", str(out), *TINY]) == 0
    assert capsys.readouterr().out.count("finished earlier, skipped") == 9
    assert main(["injection", "--out", str(out)]) == 0  # the stage's own command, on the finished run
    assert "injection: finished earlier, skipped" in capsys.readouterr().out
    assert (out / "base_model" / "model.safetensors").read_bytes() == weights


def _tiny_data(tmp_path):
    """-> the TINY config and a freshly generated TINY dataset (through the `data` command)."""
    from internalrl.config import load_config
    from internalrl.data import load_trajectories

    out = tmp_path / "run"
    assert main(["data", "--out", str(out), *TINY]) == 0
    return load_config("quick", [a for a in TINY if "=" in a]), load_trajectories(out / "data")


def test_killed_training_resumes_to_the_same_weights(tmp_path):
    from internalrl.train import train_base_model

    cfg, data = _tiny_data(tmp_path)
    full, _ = train_base_model(cfg, data, tmp_path / "full", progress=False)
    model, info = train_base_model(cfg, data, tmp_path / "resumed", progress=False, stop_after=3)
    assert model is None and info["stopped_at"] == 3
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["step"] == 3
    resumed, _ = train_base_model(cfg, data, tmp_path / "resumed", progress=False)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    # the log has each row once, as if never interrupted
    assert (tmp_path / "resumed" / "train_log.jsonl").read_text().count('"step": 6,') == \
        (tmp_path / "full" / "train_log.jsonl").read_text().count('"step": 6,') == 2
    # the finished state stays until the stage is published: a second call trains nothing
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["step"] == 6
    again, _ = train_base_model(cfg, data, tmp_path / "resumed", progress=False, stop_after=1)
    assert again is not None and torch.equal(again.state_dict()["embed.linear.weight"], full.state_dict()["embed.linear.weight"])
    # a damaged newest checkpoint falls back to the one before it; both damaged: refused with what to do
    train_base_model(cfg, data, tmp_path / "bad", progress=False, stop_after=3)
    (tmp_path / "bad" / "checkpoint.pt").write_bytes(b"junk")
    fallback, _ = train_base_model(cfg, data, tmp_path / "bad", progress=False)
    assert torch.equal(fallback.state_dict()["embed.linear.weight"], full.state_dict()["embed.linear.weight"])
    for f in ("checkpoint.pt", "checkpoint.pt.prev"):
        (tmp_path / "bad" / f).write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="delete"):
        train_base_model(cfg, data, tmp_path / "bad", progress=False)


def test_monitoring_the_switch_leaves_the_trained_metacontroller_unchanged(tmp_path):
    from internalrl.metacontroller import train_metacontroller
    from internalrl.train import train_base_model

    cfg, data = _tiny_data(tmp_path)
    base, _ = train_base_model(cfg, data, tmp_path / "base", progress=False)
    train_idx, val_idx = data.split(cfg.data.val_fraction)
    calls = []

    def monitor(m):
        calls.append(m.training)
        m.eval()
        torch.randn(3)  # the global random stream may move: training must not depend on it
        return {"x": 1.0}

    runs = [train_metacontroller(base, data, train_idx, cfg.metacontroller, 1, 7, "cpu", progress=False,
                                 monitor=mon, monitor_every=2) for mon in (None, monitor)]
    assert calls == [True, True]  # after steps 2 and 3 (the last), each time back in training mode
    assert runs[1][0].monitored == [{"step": 2, "x": 1.0}, {"step": 3, "x": 1.0}] and runs[0][0].monitored == []
    assert runs[0][1] == runs[1][1]
    for a, b in zip(runs[0][0].state_dict().values(), runs[1][0].state_dict().values()):
        assert torch.equal(a, b)


def test_binarizing_phase_adds_switch_noise_in_the_last_steps_only(tmp_path):
    from dataclasses import replace

    from internalrl.metacontroller import train_metacontroller
    from internalrl.train import train_base_model

    cfg, data = _tiny_data(tmp_path)
    base, _ = train_base_model(cfg, data, tmp_path / "base", progress=False)
    train_idx, _ = data.split(cfg.data.val_fraction)
    mc = replace(cfg.metacontroller, steps=5, binarize_fraction=0.4)
    meta, _ = train_metacontroller(base, data, train_idx, mc, 1, 7, "cpu", progress=False,
                                   monitor=lambda m: {"noisy": m.noisy_switch}, monitor_every=1)
    assert [r["noisy"] for r in meta.monitored] == [False, False, False, True, True]
    assert not meta.noisy_switch  # acting after training: no noise
    plain, _ = train_metacontroller(base, data, train_idx, replace(mc, binarize_fraction=0.0), 1, 7, "cpu", progress=False)
    assert not plain.noisy_switch and any(not torch.equal(a, b) for a, b in
                                          zip(meta.state_dict().values(), plain.state_dict().values()))


def test_bad_input_exits_nonzero_and_keeps_finished_artifacts(tmp_path, capsys):
    assert main(["run", "--preset", "nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert main(["run", "--out", str(tmp_path / "x"), "--set", "env.size=1"]) == 2
    assert "env" in capsys.readouterr().err
    assert main(["run", "--out", str(tmp_path / "x"), "--set", "env.posttrain_task=0-1-9"]) == 2
    assert "colour" in capsys.readouterr().err
    assert main(["run", "--out", str(tmp_path / "x"), "--set", "train.stepz=3"]) == 2
    assert "unknown config field 'train.stepz'" in capsys.readouterr().err

    out = tmp_path / "run"
    assert main(["data", "--out", str(out), *TINY]) == 0
    card = (out / "data" / "card.json").read_text()
    # the same folder with another config: refused, nothing touched
    assert main(["data", "--out", str(out), *TINY, "--seed", "5"]) == 2
    assert "another run's artifacts" in capsys.readouterr().err
    assert (out / "data" / "card.json").read_text() == card
    # a stage whose input is missing says which command to run
    assert main(["evaluate", "--out", str(out), *TINY]) == 2
    assert "internalrl train" in capsys.readouterr().err
    # a folder with unrelated files is not taken over
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["data", "--out", str(tmp_path / "other"), *TINY]) == 2
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_corrupt_checkpoint_is_reported(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *TINY]) == 0
    # a corrupt finished model: evaluation refuses it with a clear message
    (out / "base_model" / "model.safetensors").write_bytes(b"broken")
    import shutil

    shutil.rmtree(out / "eval_base")
    assert main(["evaluate", "--out", str(out), *TINY]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert not (out / "eval_base").exists()


def test_alpha_sweep_writes_points_and_figure(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *TINY]) == 0
    assert main(["sweep-alpha", "--out", str(out), "--alphas", "0,0.5", *TINY]) == 0
    points = json.loads((out / "alpha_sweep" / "metrics.json").read_text())["points"]
    assert [(p["variant"], p["alpha"]) for p in points] == [("frozen", 0.0), ("frozen", 0.5), ("cotrained", 0.0), ("cotrained", 0.5)]
    assert (out / "alpha_sweep" / "rate_distortion.png").stat().st_size > 1000
    assert "rate–distortion" in (out / "report.html").read_text()
    assert main(["sweep-alpha", "--out", str(out), "--alphas", "x", *TINY]) == 2


def test_rl_command_runs_each_method_and_refuses_unknown_ones(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *TINY]) == 0
    for method in ("no-switch", "cotrained"):
        assert main(["rl", "--out", str(out), "--method", method, "--task", "0-1", "--episodes", "4", *TINY]) == 0
        assert (out / f"rl_{method}_0-1_4ep" / "DONE").exists()
        # the trained policy in closed loop: switches against the subgoal changes reached, the codes' content
        closed = json.loads((out / f"rl_{method}_0-1_4ep" / "metrics.json").read_text())["closed_loop"]
        assert closed["episodes"] == 8 and 0 <= closed["success_rate"] <= 1
        assert closed["switching"]["episodes"] == 8 and closed["switching"]["decisions_per_subgoal"] > 0
        assert 0 <= closed["teacher_forced_f1"] <= 1 and "subgoal" in closed["codes"]
    assert (out / "metacontroller_noswitch" / "DONE").exists()
    assert "Switching in closed loop" in (out / "report.html").read_text()
    raw = [p for p in out.glob("rl_raw_*") if (p / "DONE").exists()]
    assert raw and all("closed_loop" not in json.loads((p / "metrics.json").read_text()) for p in raw)
    capsys.readouterr()
    assert main(["rl", "--out", str(out), "--method", "nope", *TINY]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main(["rl", "--out", str(out), "--task", "0-9", *TINY]) == 2
    assert "colour" in capsys.readouterr().err


def test_noisy_data_comes_with_a_clean_copy(tmp_path):
    out = tmp_path / "run"
    assert main(["data", "--out", str(out), *TINY, "--set", "data.epsilon=0.2"]) == 0
    noisy = json.loads((out / "data" / "card.json").read_text())
    clean = json.loads((out / "data_clean" / "card.json").read_text())
    assert noisy["epsilon"] == 0.2 and clean["epsilon"] == 0.0
    assert json.loads((out / "results.json").read_text())["data_clean"]["epsilon"] == 0.0


def test_ant_data_says_plainly_when_the_expert_produces_nothing(tmp_path, capsys):
    pytest.importorskip("mujoco")
    from internalrl.envs.ant import AntSpec
    from internalrl.experts.ant import AntExpertPolicy, expert_obs_dim, save_policy

    torch.manual_seed(0)  # an untrained expert: it succeeds in none of its 50 tries
    weights = tmp_path / "w.safetensors"
    save_policy(AntExpertPolicy(expert_obs_dim(AntSpec())), weights)
    out = tmp_path / "ant"
    assert main(["ant-data", "--out", str(out), "--episodes", "1", "--weights", str(weights), "--no-progress"]) == 2
    assert "no successful episode" in capsys.readouterr().err
    assert not (out / "data").exists()


def test_experiment_matrix_writes_fig8_and_table(tmp_path):
    out = tmp_path / "exp"
    args = ["experiment", "--out", str(out), "--base-seeds", "2", "--meta-seeds", "2", "--methods", "internal,raw",
            "--task", "0-1", *[a for a in TINY if a != "--no-progress"], "--no-progress"]
    assert main(args) == 0
    res = json.loads((out / "experiment.json").read_text())
    assert res["table"]["internal"]["runs"] == 4 and res["table"]["raw"]["runs"] == 2
    assert (out / "fig8.png").stat().st_size > 1000
    assert (out / "base1" / "metacontroller_m1" / "DONE").exists()
    assert main([*args[:-1], "--methods", "internal,nope", "--no-progress"]) == 2


COMMANDS = ["run", "data", "train", "evaluate", "probe", "controllers", "metacontroller", "rl", "experiment",
            "sweep-alpha", "ant-data", "ant-expert", "steerability", "diagnose", "report", "bench", "config", "pretrained"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: internalrl {command}")
