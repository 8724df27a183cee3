"""Bad input of every kind exits 2 with a message that says what to fix, and leaves every finished
artifact as it was; a run's own config is reused by its stage commands; runs record their provenance."""
import errno
import json
import shutil
from pathlib import Path

import pytest
import torch

from internalrl.cli import main

from test_cli import TINY


def _finished(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and not p.name.startswith(".") and (root / p.relative_to(root).parts[0] / "DONE").exists()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run with its data and base model finished (shared: tests that damage it work on a copy)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["data", "--out", str(out), *TINY]) == 0
    assert main(["train", "--out", str(out)]) == 0  # the run's own config
    return out


def _copy(trained: Path, tmp_path: Path) -> Path:
    shutil.copytree(trained, tmp_path / "run")
    (tmp_path / "run" / ".lock").unlink(missing_ok=True)
    return tmp_path / "run"


@pytest.mark.parametrize("flags, message", [
    (["--set", "env.size=100"], "env.size must be at most 11"),
    (["--seed", "-1"], "seed must be in 0.."),
    (["--set", "train.lr=inf"], "train.lr must be a finite number"),
    (["--set", "train.lr=nan"], "train.lr must be a finite number"),
    (["--set", "rl.threshold=5"], "rl.threshold must be in (0, 1)"),
    (["--set", "metacontroller.weight_decay=-1"], "metacontroller.weight_decay must be non-negative"),
    (["--set", "metacontroller.base_lr=-0.1"], "metacontroller.base_lr must be positive"),
    (["--set", "metacontroller.encoder_hidden=0"], "metacontroller.encoder_hidden must be at least 1"),
])
def test_bad_values_are_refused_before_anything_is_written(tmp_path, capsys, flags, message):
    out = tmp_path / "new"
    assert main(["run", "--out", str(out), *TINY, *flags]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # no run.json left behind


def test_bad_values_on_an_existing_run_touch_nothing(trained, capsys):
    before = _finished(trained)
    for flags in (["--set", "train.lr=inf"], ["--set", "rl.threshold=5"], ["--seed", "-1"]):
        assert main(["train", "--out", str(trained), *flags]) == 2
        assert "must be" in capsys.readouterr().err
    # a setting a finished stage used cannot change; the message says how to use the run's own config
    assert main(["train", "--out", str(trained), "--set", "train.steps=7"]) == 2
    assert "leave out --preset and the overrides" in capsys.readouterr().err
    assert _finished(trained) == before


def test_cuda_without_cuda_is_a_config_error(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["run", "--out", str(tmp_path / "r"), *TINY, "--set", "train.device=cuda"]) == 2
    assert "train.device must be auto or cpu" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_unusable_out_folders_are_explained(tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    assert main(["data", "--out", str(tmp_path / "file"), *TINY]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["data", "--out", str(tmp_path / "file" / "sub"), *TINY]) == 2
    assert "a part of this path is a file" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "mine"


@pytest.mark.parametrize("err, message", [(errno.ENOSPC, "the disk is full"), (errno.EROFS, "read-only")])
def test_a_full_or_read_only_disk_is_a_message_and_the_run_resumes(trained, tmp_path, capsys, monkeypatch, err, message):
    import os

    run = _copy(trained, tmp_path)
    before = _finished(run)
    real = os.replace

    def failing(a, b, **kw):
        raise OSError(err, os.strerror(err), str(b))

    monkeypatch.setattr(os, "replace", failing)
    assert main(["evaluate", "--out", str(run)]) == 2
    assert message in capsys.readouterr().err
    monkeypatch.setattr(os, "replace", real)
    assert _finished(run) == before and not (run / "eval_base").exists()
    assert main(["evaluate", "--out", str(run)]) == 0  # space freed: the same command goes on


def test_read_only_out_folder_when_creating_it(tmp_path, capsys, monkeypatch):
    def read_only(self, *a, **kw):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert main(["data", "--out", str(tmp_path / "ro" / "run"), *TINY]) == 2
    assert "read-only; choose a writable --out folder" in capsys.readouterr().err


@pytest.mark.parametrize("content", ["{garbage", "[]", '{"config": 3}'])
def test_report_and_stages_on_a_damaged_run_json(trained, tmp_path, capsys, content):
    run = _copy(trained, tmp_path)
    (run / "run.json").write_text(content)
    before = _finished(run)
    for argv in (["report", "--out", str(run)], ["evaluate", "--out", str(run)], ["data", "--out", str(run), *TINY]):
        assert main(argv) == 2
        assert "run.json is corrupt" in capsys.readouterr().err
    assert _finished(run) == before


def test_a_damaged_results_json_is_rebuilt_from_the_stages(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    good = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text("garbage")
    assert main(["report", "--out", str(run)]) == 0
    assert main(["train", "--out", str(run)]) == 0  # finished: skipped, and results.json is whole again
    assert json.loads((run / "results.json").read_text()) == good


def test_corrupted_weights_are_caught_by_their_checksum(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    weights = run / "base_model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # one flipped bit in a weight: still a valid file, other numbers
    weights.write_bytes(bytes(data))
    assert main(["evaluate", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors is corrupt (its checksum differs" in err and "delete the folder" in err
    assert not (run / "eval_base").exists()


def test_a_finished_stage_that_lost_a_file_says_to_delete_and_rebuild_it(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    (run / "data" / "trajectories.npz").unlink()
    for command in ("data", "probe"):
        assert main([command, "--out", str(run)]) == 2
        err = capsys.readouterr().err
        assert "trajectories.npz" in err and f"delete the folder {run / 'data'}" in err
    shutil.rmtree(run / "data")
    assert main(["data", "--out", str(run)]) == 0  # rebuilt, the same bytes
    assert (run / "data" / "trajectories.npz").read_bytes() == (trained / "data" / "trajectories.npz").read_bytes()


def test_rl_settings_may_change_on_an_existing_run_each_in_its_own_folder(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    assert main(["rl", "--out", str(run), "--method", "raw"]) == 0
    assert main(["rl", "--out", str(run), "--method", "raw", "--set", "rl.lr=0.001"]) == 0
    folders = sorted(p.name for p in run.glob("rl_raw_*"))
    assert len(folders) == 2
    lrs = {json.loads((run / f / "config.json").read_text())["rl"]["lr"] for f in folders}
    assert lrs == {json.loads((run / "run.json").read_text())["config"]["rl"]["lr"], 0.001}
    for f in folders:  # the trained policy is kept
        assert (run / f / "policy.safetensors").exists()


def test_runs_record_their_provenance_and_keep_timings_apart(trained):
    meta = json.loads((trained / "run.json").read_text())
    prov = meta["provenance"]
    assert prov["command"].startswith("internalrl") and prov["date"] and "torch" in prov["dependencies"]
    assert "git_commit" in prov and prov["internalrl_version"]
    assert json.loads((trained / "base_model" / "provenance.json").read_text())["command"].startswith("internalrl train")
    results = json.loads((trained / "results.json").read_text())
    assert "train_seconds" in results["timings"]["base_model"]
    assert not any(k.endswith("seconds") for stage, v in results.items() if stage != "timings" for k in v)


def test_ant_expert_subcommand_help_exits_zero_like_every_command(capsys):
    for argv in (["ant-expert", "train", "--help"], ["ant-expert", "eval", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: internalrl ant-expert {argv[1]}")
