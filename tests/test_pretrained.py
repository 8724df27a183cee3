"""Shipped models: export from a run, load with checks, evaluate from the CLI, and
``--base-model shipped`` filling a run's base_model stage."""
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from internalrl import pretrained
from internalrl.cli import main
from internalrl.pretrained import PretrainedError

# a tiny run's settings; the model and train ones are what a shipped model fixes
MODEL = ["--set", "model.width=16", "--set", "model.depth=2", "--set", "model.heads=2", "--set", "model.head_dim=8",
         "--set", "model.mlp=16", "--set", "model.max_len=48", "--set", "train.steps=4", "--set", "train.batch_size=8",
         "--set", "train.eval_every=2", "--set", "train.snapshots=1", "--set", "train.warmup_steps=1"]
REST = ["--set", "data.num_episodes=40", "--set", "env.horizon=40", "--set", "eval.num_envs=8",
        "--set", "controllers.steps=2", "--set", "controllers.batch_size=4", "--set", "controllers.sweep=false",
        "--no-progress"]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """-> (run directory, root holding the shipped model "grid" exported from it)."""
    tmp = tmp_path_factory.mktemp("pretrained")
    run = tmp / "run"
    for command in ("data", "train", "controllers"):
        assert main([command, "--out", str(run), *MODEL, *REST]) == 0
    root = tmp / "assets"
    assert pretrained.export(run, "grid", root, {"hardware": "test machine"}) == root / "grid"
    return run, root


def _copy(shipped, tmp_path):
    root = tmp_path / "assets"
    shutil.copytree(shipped[1], root)
    return root


def test_load_returns_the_runs_frozen_model_and_controllers(shipped):
    run, root = shipped
    assert pretrained.available(root) == ["grid"]
    p = pretrained.load("grid", root)
    assert p.layer == p.config.control_layer() == 1 and p.config.model.width == 16
    assert not p.model.training and not any(q.requires_grad for q in p.model.parameters())
    assert not any(q.requires_grad for q in p.controllers.parameters())
    for k, v in load_file(str(run / "base_model" / "model.safetensors")).items():
        assert torch.equal(p.model.state_dict()[k], v), k
    for k, v in load_file(str(run / "controllers" / "controllers_layer1.safetensors")).items():
        assert torch.equal(p.controllers.state_dict()[k], v), k
    card = p.card
    assert card["seed"] == 0 and card["steps"] == 4 and card["hardware"] == "test machine"
    assert card["training_seconds"] > 0 and "heldout_action_nll" in card["measured"]["base_model"]
    assert (p.path / "card.md").read_text().startswith("# grid")
    assert json.loads((p.path / "config.json").read_text())["model"]["width"] == 16


def test_export_never_replaces_a_model_unless_asked(shipped, tmp_path):
    run, _ = shipped
    root = _copy(shipped, tmp_path)
    before = (root / "grid" / "manifest.json").read_bytes()
    with pytest.raises(PretrainedError, match="already exists"):
        pretrained.export(run, "grid", root)
    assert (root / "grid" / "manifest.json").read_bytes() == before
    pretrained.export(run, "grid", root, {"summary": "again"}, overwrite=True)
    assert pretrained.load("grid", root).card["summary"] == "again"
    assert sorted(p.name for p in root.iterdir()) == ["grid"]  # no temporary folders left
    with pytest.raises(PretrainedError, match="no finished controllers"):
        shutil.rmtree(tmp_path / "half", ignore_errors=True)
        shutil.copytree(run, tmp_path / "half")
        shutil.rmtree(tmp_path / "half" / "controllers")
        pretrained.export(tmp_path / "half", "other", root)
    assert not (root / "other").exists()


@pytest.mark.parametrize("damage, message", [
    (lambda f: f.joinpath("model.safetensors").write_bytes(f.joinpath("model.safetensors").read_bytes()[:-10]),
     "model.safetensors is truncated"),
    (lambda f: f.joinpath("controllers.safetensors").write_bytes(
        bytes([f.joinpath("controllers.safetensors").read_bytes()[0] ^ 1]) + f.joinpath("controllers.safetensors").read_bytes()[1:]),
     "controllers.safetensors is corrupt"),
    (lambda f: f.joinpath("card.md").unlink(), "card.md is missing"),
])
def test_damaged_files_are_named(shipped, tmp_path, capsys, damage, message):
    root = _copy(shipped, tmp_path)
    damage(root / "grid")
    with pytest.raises(PretrainedError, match=message):
        pretrained.load("grid", root)
    capsys.readouterr()
    assert main(["pretrained", "eval", "grid", "--root", str(root), "--episodes", "4", "--json"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and message in out.err


def test_cli_list_and_eval(shipped, capsys):
    _, root = shipped
    assert main(["pretrained", "list", "--root", str(root)]) == 0
    assert capsys.readouterr().out.startswith("grid  7x7 gridworld base model (transformer), width 16")
    assert main(["pretrained", "eval", "grid", "--root", str(root), "--policy", "controllers", "--episodes", "20",
                 "--seed", "3", "--greedy", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)  # exactly one JSON object
    assert res["policy"] == "controllers" and res["greedy"] is True and res["seed"] == 3 and res["episodes"] == 20
    assert res["task"] == "0-1-2-3-4-5-6-7-0-1-2-3" and 0 <= res["success_rate"] <= 1 and res["layer"] == 1
    assert main(["pretrained", "eval", "grid", "--root", str(root), "--episodes", "20", "--json"]) == 0
    free = json.loads(capsys.readouterr().out)
    assert free["free_play"] and free["task"] == "grid-pretrain" and free["policy"] == "base"
    assert main(["pretrained", "eval", "grid", "--root", str(root), "--task", "0-1-2-3", "--episodes", "20",
                 "--no-progress"]) == 0
    assert "task 0-1-2-3: success" in capsys.readouterr().out
    for bad, msg in ((["--task", "0-9"], "only 8 colours"), (["--episodes", "0"], "--episodes")):
        assert main(["pretrained", "eval", "grid", "--root", str(root), *bad]) == 2
        out = capsys.readouterr()
        assert out.out == "" and msg in out.err
    assert main(["pretrained", "eval", "nope", "--root", str(root)]) == 2
    assert "available: grid" in capsys.readouterr().err


def test_greedy_rollouts_take_the_argmax_and_draw_no_randomness(shipped):
    from internalrl.analysis.controllers import rollout_with_controllers
    from internalrl.envs.gridworld import BatchedGridPinpad
    from internalrl.envs.tasks import parse_task_set

    p = pretrained.load("grid", shipped[1])
    out = p.model(torch.zeros(3, 1, p.config.model.obs_dim))
    assert torch.equal(p.model.sample_action(out, temperature=0.0), out.action[:, -1].argmax(-1))
    spec, tasks = p.config.env.spec(), parse_task_set("0-1-2-3", 8)
    runs = [rollout_with_controllers(p.model, p.controllers, p.layer, BatchedGridPinpad(32, tasks, spec, seed=5),
                                     torch_seed, "cpu", temperature=0.0) for torch_seed in (0, 1)]
    assert runs[0] == runs[1]  # the action generator's seed does not matter when greedy


def test_base_model_shipped_fills_the_stage_and_the_run_remembers(shipped, tmp_path, capsys, monkeypatch):
    _, root = shipped
    out = tmp_path / "run"
    monkeypatch.setenv(pretrained.ROOT_ENV, str(tmp_path / "empty"))
    assert main(["train", "--out", str(out), "--base-model", "shipped", *REST]) == 2
    assert "no shipped model for this environment" in capsys.readouterr().err and not out.exists()
    monkeypatch.setenv(pretrained.ROOT_ENV, str(root))
    assert main(["train", "--out", str(out), "--base-model", "shipped", "--set", "model.width=32", *REST]) == 2
    assert "drop model.width=32" in capsys.readouterr().err
    assert main(["data", "--out", str(out), "--base-model", "shipped", *REST]) == 0
    assert main(["train", "--out", str(out), *REST]) == 0  # follows the run's recorded choice
    assert (out / "base_model" / "model.safetensors").read_bytes() == (root / "grid" / "model.safetensors").read_bytes()
    sha = pretrained.load("grid", root).sha256
    meta = json.loads((out / "run.json").read_text())
    assert meta["base_model"]["choice"] == "shipped" and meta["base_model"]["sha256"] == sha
    assert meta["config"]["model"]["width"] == 16 and meta["config"]["train"]["steps"] == 4
    for f in ("config.json", "metrics.json"):
        assert json.loads((out / "base_model" / f).read_text())["source"]["sha256"] == sha
    capsys.readouterr()
    assert main(["evaluate", "--out", str(out), "--base-model", "train", *REST]) == 2
    assert "made with --base-model shipped" in capsys.readouterr().err
    assert not (out / "eval_base").exists()
    # without --base-model a new run takes the default, and a trained run refuses the shipped model
    monkeypatch.setattr(pretrained, "DEFAULT_BASE_MODEL", "train")
    trained = tmp_path / "trained"
    assert main(["data", "--out", str(trained), *MODEL, *REST]) == 0
    assert json.loads((trained / "run.json").read_text())["base_model"] == {"choice": "train"}
    assert main(["train", "--out", str(trained), "--base-model", "shipped", *REST]) == 2
    assert "made with --base-model train" in capsys.readouterr().err
    monkeypatch.setattr(pretrained, "DEFAULT_BASE_MODEL", "shipped")
    assert main(["data", "--out", str(tmp_path / "by_default"), *REST]) == 0
    assert json.loads((tmp_path / "by_default" / "run.json").read_text())["base_model"]["sha256"] == sha


def test_base_model_by_name_picks_that_shipped_model(shipped, tmp_path, capsys, monkeypatch):
    run, root = shipped
    root = _copy(shipped, tmp_path)
    assert pretrained.export(run, "grid-other", root, {"hardware": "test machine"}) == root / "grid-other"
    monkeypatch.setenv(pretrained.ROOT_ENV, str(root))
    out = tmp_path / "named"
    assert main(["data", "--out", str(out), "--base-model", "nope", *REST]) == 2
    err = capsys.readouterr().err
    assert "--base-model must be shipped, train or the name of a shipped model (grid, grid-other)" in err
    assert not out.exists()
    assert main(["data", "--out", str(out), "--base-model", "grid-other", *REST]) == 0
    assert main(["train", "--out", str(out), *REST]) == 0  # the recorded name, not the environment's default
    meta = json.loads((out / "run.json").read_text())["base_model"]
    assert meta["name"] == "grid-other" and meta["sha256"] == pretrained.load("grid-other", root).sha256
    assert main(["evaluate", "--out", str(out), "--base-model", "grid", *REST]) == 2
    assert "was made from shipped model 'grid-other'" in capsys.readouterr().err
    assert not (out / "eval_base").exists()
    # a shipped model of another environment is refused by name
    assert main(["data", "--out", str(tmp_path / "other_env"), "--base-model", "grid-other", *REST,
                 "--set", "env.horizon=41"]) == 2
    assert "trained on another environment" in capsys.readouterr().err and not (tmp_path / "other_env").exists()


def test_the_default_is_to_train_until_a_model_is_shipped():
    assert pretrained.DEFAULT_BASE_MODEL == "train" or pretrained.available(pretrained.default_root())


def test_export_can_ship_the_steerability_protocols_controllers(shipped, tmp_path):
    run, _ = shipped
    work = tmp_path / "run"
    shutil.copytree(run, work)
    root = tmp_path / "assets"
    with pytest.raises(PretrainedError, match="no finished steerability"):
        pretrained.export(work, "grid", root, controllers_from="steerability")
    assert main(["steerability", str(work), "--steps", "2", "--batch-size", "4", "--episodes", "8", "--rank", "4",
                 "--layer", "2", "--no-progress"]) == 0
    assert main(["pretrained", "export", str(work), "grid", "--root", str(root),
                 "--controllers-from", "steerability"]) == 0
    p = pretrained.load("grid", root)
    assert p.layer == 2 and p.controllers.rank == 4 and p.config.controllers.steps == 2
    for k, v in load_file(str(work / "steerability" / "controllers_layer2.safetensors")).items():
        assert torch.equal(p.controllers.state_dict()[k], v), k
    assert "steerability" in p.card["measured"]


def test_export_of_a_snapshots_protocol_ships_that_snapshot(shipped, tmp_path, capsys):
    """Controllers measured on a training snapshot ship with the snapshot's weights, not the final model's."""
    from safetensors.torch import save_file

    run, _ = shipped
    work = tmp_path / "run"
    shutil.copytree(run, work)
    final = load_file(str(work / "base_model" / "model.safetensors"))
    earlier = {k: v + 0.01 for k, v in final.items()}  # stands in for the model at step 2
    save_file(earlier, str(work / "base_model" / "snapshots" / "step_0000002.safetensors"))
    assert main(["steerability", str(work), "--snapshot", "2", "--steps", "2", "--batch-size", "4", "--episodes", "8",
                 "--rank", "4", "--layer", "2", "--no-progress"]) == 0
    root = tmp_path / "assets"
    assert main(["pretrained", "export", str(work), "grid", "--root", str(root), "--controllers-from",
                 "steerability_step2", "--policy-from", "rl_internal"]) == 2
    assert "snapshot at step 2" in capsys.readouterr().err and not (root / "grid").exists()
    assert main(["pretrained", "export", str(work), "grid", "--root", str(root),
                 "--controllers-from", "steerability_step2"]) == 0
    p = pretrained.load("grid", root)
    for k, v in earlier.items():
        assert torch.equal(p.model.state_dict()[k], v), k
    assert p.card["steps"] == 2 and p.card["snapshot_of_run_steps"] == 4
    assert list(p.card["measured"]) == ["steerability_step2"]  # the run's other stages measured the final model


def test_the_shipped_grid_model_loads_and_steps():
    """The package's own shipped model: checksums hold, the model is frozen and its controllers act."""
    from internalrl.envs.gridworld import BatchedGridPinpad
    from internalrl.envs.tasks import parse_task_set

    p = pretrained.load("grid")
    assert "grid" in pretrained.available()
    assert p.layer == p.config.control_layer() and p.controllers.num_subgoals == 4
    assert not any(q.requires_grad for q in p.model.parameters())
    assert {"seed", "steps", "training_seconds", "hardware", "measured"} <= set(p.card)
    env = BatchedGridPinpad(4, parse_task_set("0-1-2-3", 8), p.config.env.spec(), seed=0)
    obs = torch.as_tensor(env.reset())[:, None]
    with torch.no_grad():
        e = p.model.lower(obs, p.layer)
        steered = p.controllers(e, torch.as_tensor(env.subgoal())[:, None])
        out = p.model.upper(steered, p.layer)
    assert out.action.shape == (4, 1, 4) and not torch.equal(steered, e)


def test_a_run_with_internal_rl_ships_its_metacontroller_and_policy(shipped, tmp_path, capsys):
    run = tmp_path / "run"
    extra = ["--set", "metacontroller.steps=2", "--set", "metacontroller.batch_size=4", "--set", "rl.episodes=4",
             "--set", "rl.batch_size=2", "--set", "rl.policy_hidden=8"]
    for command in ("data", "train", "controllers", "metacontroller", "rl"):
        assert main([command, "--out", str(run), *MODEL, *REST, *extra]) == 0
    root = tmp_path / "assets"
    pretrained.export(run, "grid", root)
    p = pretrained.load("grid", root)
    assert p.metacontroller is not None and p.policy is not None
    assert not any(q.requires_grad for q in [*p.metacontroller.parameters(), *p.policy.parameters()])
    folder = next(run.glob("rl_internal_*"))
    for k, v in load_file(str(folder / "policy.safetensors")).items():
        assert torch.equal(p.policy.state_dict()[k], v), k
    assert p.card["policy_from"] == folder.name and "internal-RL policy" in p.card["summary"]
    capsys.readouterr()
    assert main(["pretrained", "eval", "grid", "--root", str(root), "--policy", "internal", "--episodes", "6",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["policy"] == "internal" and res["episodes"] == 6 and 0 <= res["success_rate"] <= 1
    assert res["task"] == "0-1-2-3-4-5-6-7-0-1-2-3" and res["layer"] == 1
    # the policy's file is checked like the others
    (root / "grid" / "policy.safetensors").write_bytes(b"x")
    assert main(["pretrained", "eval", "grid", "--root", str(root), "--policy", "internal", "--json"]) == 2
    assert "policy.safetensors is truncated" in capsys.readouterr().err


def test_internal_policy_needs_a_shipped_policy(shipped, capsys):
    assert main(["pretrained", "eval", "grid", "--root", str(shipped[1]), "--policy", "internal", "--json"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and "has no internal-RL policy" in out.err
