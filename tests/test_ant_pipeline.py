"""The ant-pinpad's first stages from the command line (data, train, evaluate --env ant) on a tiny
config, the ant presets, and runs of one environment refusing commands of the other."""
import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("mujoco")

from internalrl.cli import main  # noqa: E402
from internalrl.config import ConfigError, load_config  # noqa: E402
from internalrl.train import load_model  # noqa: E402

from test_cli import TINY  # noqa: E402

ANT_TINY = ["--set", "data.num_episodes=20", "--set", "model.width=16", "--set", "model.depth=2",
            "--set", "model.heads=2", "--set", "model.mlp=16", "--set", "train.steps=6", "--set", "train.batch_size=4",
            "--set", "train.eval_every=3", "--set", "train.checkpoint_every=2", "--set", "train.snapshots=2",
            "--set", "train.warmup_steps=1", "--set", "eval.num_envs=4", "--set", "probe.train_episodes=10",
            "--set", "probe.test_episodes=10", "--set", "probe.fit_steps=5", "--set", "controllers.steps=3", "--set", "controllers.batch_size=4",
            "--set", "metacontroller.steps=3", "--set", "metacontroller.batch_size=4", "--set", "rl.episodes=4",
            "--set", "rl.batch_size=2", "--set", "rl.policy_hidden=8", "--set", "eval.inject_step=3", "--no-progress"]


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def ant_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ant") / "run"
    assert main(["data", "--env", "ant", "--out", str(out), *ANT_TINY]) == 0
    portable = out.parent / "ant_base.safetensors"  # training that accumulates, as the grid's
    assert main(["train", "--out", str(out), "--checkpoint-file", str(portable), "--no-progress"]) == 0  # the run's own config
    from internalrl.portable import read_header

    assert read_header(portable)["finished"] == "True" and int(read_header(portable)["step"]) == 6
    assert main(["evaluate", "--out", str(out), "--no-progress"]) == 0
    assert main(["probe", "--out", str(out), "--no-progress"]) == 0
    assert main(["controllers", "--out", str(out), "--no-progress"]) == 0
    assert main(["metacontroller", "--out", str(out), "--no-progress"]) == 0
    assert main(["rl", "--out", str(out), "--no-progress"]) == 0  # internal RL on the post-training task
    assert main(["rl", "--method", "raw", "--out", str(out), "--no-progress"]) == 0
    assert main(["injection", "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("grid") / "run"
    assert main(["data", "--out", str(out), *TINY]) == 0
    return out


def test_ant_stages_write_their_numbers(ant_run):
    stored = json.loads((ant_run / "run.json").read_text())["config"]
    assert stored["env"]["name"] == "ant" and stored["model"]["backbone"] == "hawk"
    assert stored["train"]["obs_loss_weight"] == 10.0
    res = json.loads((ant_run / "results.json").read_text())
    assert res["data"]["episodes"] == 20 and res["data"]["actions"] == "sampled"
    assert res["data_clean"]["episodes"] == 20 and res["data_clean"]["actions"] == "mean"
    card = json.loads((ant_run / "data" / "card.json").read_text())
    assert card["obs_format"] == "dense" and card["expert"]["weights"] == "ant_expert.safetensors"
    base = res["base_model"]
    for key in ("heldout_action_nll", "heldout_obs_nll", "heldout_clean_action_nll", "expert_action_entropy"):
        assert isinstance(base[key], float), key
    model = load_model(ant_run / "base_model")
    assert model.cfg.backbone == "hawk" and model.cfg.action_type == "gaussian" and model.cfg.obs_dim == 41
    ev = res["eval_base"]
    for name, expert in (("free_play", "expert_pretrain_success"), ("posttrain", "expert_posttrain_success")):
        raw = ev[f"{name}_success"]
        assert 0 <= raw <= 1 and 0 <= ev[expert] <= 1
        if ev[expert] > 0:
            assert ev[f"{name}_normalised"] == pytest.approx(raw / ev[expert])
        else:
            assert ev[f"{name}_normalised"] is None
    assert sum(ev["free_play_outcomes"].values()) == pytest.approx(1.0)
    metrics = json.loads((ant_run / "eval_base" / "metrics.json").read_text())
    assert metrics["free_play"]["episodes"] == 4 and metrics["posttrain"]["expert"]["episodes"] == 4
    probes = res["probes"]
    assert len(probes["accuracy_per_layer"]) == 3 and all(0 <= a <= 1 for a in probes["accuracy_per_layer"])
    assert 0.25 <= probes["majority_class_rate"] <= 1  # 4 colours
    over = json.loads((ant_run / "probes" / "metrics.json").read_text())["over_training"]
    assert sorted(map(int, over)) == [3, 6]  # both snapshots
    ctl = res["controllers"]
    assert ctl["rank"] == "full" and ctl["layers"] == [0, 1, 2] and ctl["layer"] == 1
    for key in ("posttrain_success_per_layer", "posttrain_success_greedy_per_layer", "pretrain_success_per_layer"):
        assert len(ctl[key]) == 3 and all(0 <= v <= 1 for v in ctl[key]), key
    assert isinstance(ctl["heldout_nll"], float)
    assert sorted(p.name for p in (ant_run / "controllers").glob("controllers_layer*.safetensors")) == [
        f"controllers_layer{i}.safetensors" for i in range(3)]
    meta = res["metacontroller"]
    assert meta["rank"] == "full" and meta["layer"] == 1
    for key in ("f1", "action_nll", "kl", "cotrained_f1", "cotrained_action_nll"):
        assert isinstance(meta[key], float), key
    assert (ant_run / "metacontroller" / "frozen.safetensors").exists()
    assert (ant_run / "metacontroller" / "cotrained_base.safetensors").exists()
    for method in ("internal", "raw"):
        rl = res[f"rl_{method}_0-1-2-3_4ep"]
        assert rl["method"] == method and rl["episodes"] == 4 and 0 <= rl["final_success"] <= 1
    closed = json.loads((ant_run / "rl_internal_0-1-2-3_4ep" / "metrics.json").read_text())["closed_loop"]
    assert closed["episodes"] == 4 and set(closed["codes"]) <= {"decisions", "subgoal"}  # no direction probe on torques
    assert load_model(ant_run / "rl_raw_0-1-2-3_4ep", "policy").cfg.backbone == "hawk"
    inj = res["injection"]
    assert inj["inject_step"] == 3
    for key in ("mid_episode_success_without", "mid_episode_success_with", "unseen_transition_success_with"):
        assert inj[key] is None or 0 <= inj[key] <= 1, key


def test_ant_report_has_every_stage(ant_run, capsys):
    before = {k: v for k, v in _files(ant_run).items() if not k.startswith(("report", "figures"))}
    assert main(["report", "--out", str(ant_run)]) == 0
    page = (ant_run / "report.html").read_text()
    for title in ("Expert data", "Base model", "Base model as a policy", "Linear probes", "Supervised subgoal controllers",
                  "Metacontroller", "Reinforcement learning", "Switching in closed loop", "Latent code injection"):
        assert f">{title}</h" in page, title
    assert "colour 0" in page or "normalised" in page
    assert {k: v for k, v in _files(ant_run).items() if not k.startswith(("report", "figures"))} == before


def test_the_ant_model_ships_and_evaluates_normalised(ant_run, tmp_path, capsys):
    from internalrl import pretrained

    root = tmp_path / "assets"
    pretrained.export(ant_run, "ant", root)
    p = pretrained.load("ant", root)
    assert p.config.env.name == "ant" and p.model.cfg.backbone == "hawk" and p.controllers.rank is None  # full rank
    assert p.metacontroller is not None and p.policy is not None and "ant-pinpad" in p.card["summary"]
    for policy in ("base", "controllers", "internal"):
        assert main(["pretrained", "eval", "ant", "--root", str(root), "--policy", policy, "--episodes", "3",
                     "--json"]) == 0
        res = json.loads(capsys.readouterr().out)
        assert res["env"] == "ant" and res["episodes"] == 3 and 0 <= res["success_rate"] <= 1, policy
        assert res["task"] == ("ant-pretrain" if policy == "base" else "0-1-2-3")
        if res["expert_success_rate"] > 0:
            assert res["normalised_success"] == pytest.approx(res["success_rate"] / res["expert_success_rate"])
        else:
            assert res["normalised_success"] is None
    assert main(["pretrained", "eval", "ant", "--root", str(root), "--task", "0-7", "--json"]) == 2
    assert "colour" in capsys.readouterr().err


def test_the_alpha_sweep_runs_on_the_ant(ant_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(ant_run, run)
    assert main(["sweep-alpha", "--out", str(run), "--alphas", "0,1", "--tensorboard", "--no-progress"]) == 0
    assert any((run / "tensorboard" / "alpha_sweep").iterdir())  # scalars, as on the grid
    points = json.loads((run / "alpha_sweep" / "metrics.json").read_text())["points"]
    assert sorted((p["variant"], p["alpha"]) for p in points) == [("cotrained", 0.0), ("cotrained", 1.0),
                                                                  ("frozen", 0.0), ("frozen", 1.0)]
    assert "rate–distortion" in (run / "report.html").read_text()


def _artifacts(root):  # the stages' files: results.json and the report are rewritten by design
    return {k: v for k, v in _files(root).items() if k != "results.json" and not k.startswith(("report", "figures"))}


def test_finished_ant_stages_are_skipped(ant_run, capsys):
    before = _artifacts(ant_run)
    assert main(["evaluate", "--out", str(ant_run), "--no-progress"]) == 0
    assert "eval_base: finished earlier, skipped" in capsys.readouterr().out
    assert main(["train", "--env", "ant", "--out", str(ant_run), "--no-progress"]) == 0
    assert main(["run", "--out", str(ant_run), "--no-progress"]) == 0  # every stage finished: all skipped
    out = capsys.readouterr().out
    # train, then run's ten: data, data_clean, base_model, eval_base, probes, controllers, metacontroller, both RL runs,
    # injection
    assert out.count("finished earlier, skipped") == 1 + 10 and "done in" in out
    assert _artifacts(ant_run) == before
    assert "wall_seconds_last_invocation" in json.loads((ant_run / "results.json").read_text())["timings"]
    assert "code injection:" in out and "normalised by the expert" in out  # the headline numbers


def test_a_grid_command_on_an_ant_run_is_refused(ant_run, capsys):
    before = _files(ant_run)
    for cmd in (["train", "--env", "grid"], ["data", "--env", "grid"], ["evaluate", "--env", "grid", "--preset", "quick"]):
        assert main([*cmd, "--out", str(ant_run), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "holds an ant run" in err and "--env grid" in err and "nothing was changed" in err
    for cmd in (["experiment", "--env", "ant", "--out", str(ant_run)], ["steerability", str(ant_run)]):
        assert main(cmd) == 2
        assert "does not run on the ant-pinpad yet" in capsys.readouterr().err
    assert _files(ant_run) == before


def test_an_ant_command_on_a_grid_run_is_refused(grid_run, capsys):
    before = _files(grid_run)
    for cmd in (["data", "--env", "ant"], ["train", "--env", "ant"], ["evaluate", "--env", "ant", "--preset", "quick"]):
        assert main([*cmd, "--out", str(grid_run), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "holds a grid run" in err and "--env ant" in err and "nothing was changed" in err
    assert _files(grid_run) == before


@pytest.mark.parametrize("flags, message", [
    (["--set", "model.width=30"], "model.width (30) must be divisible by model.heads (4)"),
    (["--set", "model.lru_width=10"], "model.lru_width (10) must be divisible by model.heads (4)"),
    (["--set", "model.action_type=categorical"], "model.action_type must be 'gaussian'"),
    (["--set", "env.name=grid"], "env.name cannot be changed by an override"),
    (["--preset", "long"], "unknown preset 'long' for env ant"),
])
def test_bad_ant_configs_name_the_field_and_write_nothing(tmp_path, capsys, flags, message):
    out = tmp_path / "new"
    assert main(["data", "--env", "ant", "--out", str(out), *flags, "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_ant_presets():
    paper = load_config("paper", env="ant")
    m, t = paper.model, paper.train
    assert (m.backbone, m.width, m.depth, m.heads, m.mlp, m.mlp_type, m.recurrent_width) == ("hawk", 256, 8, 8, 512,
                                                                                            "relu", 256)
    assert (t.batch_size, t.steps, t.lr, t.weight_decay, t.obs_loss_weight) == (512, 204_800, 3e-4, 0.03, 10.0)
    assert (paper.env.size, paper.env.num_objects, paper.env.num_walls, paper.env.horizon) == (4, 4, 1, 500)
    assert paper.env.posttrain_task == "0-1-2-3" and paper.controllers.rank == 0 and paper.metacontroller.rank == 0
    quick = load_config("quick", env="ant")
    assert quick.env.name == "ant" and quick.model.obs_dim == 41 and quick.model.action_dim == 8
    assert load_config("quick").env.name == "grid"
    with pytest.raises(ConfigError, match="unknown environment 'mars'"):
        load_config("quick", env="mars")


def test_config_and_bench_commands_for_the_ant(tmp_path, capsys):
    assert main(["config", "--env", "ant"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["env"]["name"] == "ant" and cfg["model"]["backbone"] == "hawk"
    out = tmp_path / "bench.json"
    assert main(["bench", "--env", "ant", "--envs", "2", "--json", str(out), *ANT_TINY[:-1]]) == 0
    res = json.loads(out.read_text())
    for backbone in ("hawk", "transformer"):
        assert res[backbone]["pretraining"]["tokens_per_s"] > 0
        assert res[backbone]["acting_model_only"]["steps"] == 2 * 500
        assert res[backbone]["acting_with_env"]["env_steps_per_s"] > 0
    assert res["metacontroller_training"]["sequence_length"] == 300
    assert res["metacontroller_training"]["train_steps_per_s"] > 0


def test_heading_encoder_reads_the_ant_layout_and_keeps_step_sequence_parity():
    import numpy as np
    import torch

    from internalrl.envs.ant import AntSpec, BatchedAntPinpad, obs_layout
    from internalrl.envs.tasks import parse_task_set
    from internalrl.models.sequence_model import SequenceModel

    cfg = load_config("quick", env="ant", overrides=["model.obs_encoder=heading", "model.width=16", "model.heads=2",
                                                     "model.mlp=16"])
    m, spec = cfg.model, cfg.env.spec()
    layout = obs_layout(spec)
    assert m.heading_offsets == layout["colours"].start and m.heading_count == spec.num_objects + spec.num_walls
    assert load_config("quick", env="ant").model.heading_count == 0  # left alone unless asked for
    env = BatchedAntPinpad(2, parse_task_set(cfg.env.pretrain_tasks, spec.num_objects), spec, seed=0)
    obs = [env.reset()]
    rng = np.random.default_rng(0)
    for _ in range(30):
        obs.append(env.step(rng.uniform(-1, 1, (2, 8)))[0])
    obs = torch.as_tensor(np.stack(obs, 1), dtype=torch.float32)
    # the velocity read is the torso's: its x, y are the symlog of the world-frame velocity MuJoCo reports
    v = obs[:, -1, m.heading_velocity : m.heading_velocity + 2]
    want = torch.as_tensor(np.sign(env.qvel[:, :2]) * np.log1p(np.abs(env.qvel[:, :2])), dtype=torch.float32)
    assert torch.allclose(v, want, atol=1e-5)
    torch.manual_seed(0)
    model = SequenceModel(m).eval()
    state = model.initial_state(2)
    steps = torch.cat([model(obs[:, t : t + 1], state=state).action for t in range(obs.shape[1])], 1)
    assert torch.allclose(steps, model(obs).action, atol=1e-5)
    loss = model(obs).action.square().sum()
    loss.backward()
    assert model.embed.linear.weight.grad[:, m.obs_dim:].abs().sum() > 0  # the heading inputs reach the model


def test_heading_features_point_at_what_lies_ahead():
    import torch

    from internalrl.models.sequence_model import HeadingEmbedding

    emb = HeadingEmbedding(obs_dim=6, width=4, velocity=0, offsets=2, count=2)
    obs = torch.tensor([[0.0, 2.0, 0.0, 3.0, 1.0, 0.0]])  # moving +y; offset 0 straight ahead, offset 1 to the side
    along, across, cos = emb.features(obs).view(3, 2)
    assert torch.allclose(along, torch.tensor([3.0, 0.0])) and torch.allclose(cos, torch.tensor([1.0, 0.0]))
    assert torch.allclose(across.abs(), torch.tensor([0.0, 1.0]))
    still = torch.tensor([[0.0, 0.0, 0.0, 3.0, 1.0, 0.0]])
    assert torch.equal(emb.features(still), torch.zeros(1, 6))  # a still torso has no heading
    with pytest.raises(ConfigError, match="model.obs_encoder=heading needs a 2-D velocity"):
        load_config("quick", overrides=["model.obs_encoder=heading"])  # the grid has no velocity
