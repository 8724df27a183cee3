"""scripts/train_gpu.py on CPU with tiny settings, the compact checkpoint it writes, and
`internalrl train --init-from` continuing from it."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from internalrl.cli import main
from internalrl.compact import CompactCheckpoint, save_compact
from internalrl.config import dumps, load_config
from internalrl.models.sequence_model import SequenceModel

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_gpu.py"
SETS = ["model.width=16", "model.depth=2", "model.heads=2", "model.head_dim=8", "model.mlp=16", "model.max_len=48",
        "train.batch_size=8", "train.warmup_steps=2", "data.num_episodes=40", "env.horizon=40"]
ARGS = ["--device", "cpu", *(a for s in SETS for a in ("--set", s))]
LIMIT = 16 * 2 ** 20


def _script():
    spec = importlib.util.spec_from_file_location("train_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Clock:
    """A clock that moves one second every time it is read: the script's time limit then
    falls after a fixed amount of work, whatever the machine's speed."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        self.t += 1.0
        return self.t


def test_runs_stop_at_the_time_limit_and_resume_the_step_count(tmp_path, capsys):
    gpu = _script()
    ck_path = tmp_path / "ck.safetensors"
    assert gpu.main(["--checkpoint", str(ck_path), "--minutes", "1", "--log-every", "5", *ARGS], clock=Clock()) == 0
    out = capsys.readouterr().out
    first = CompactCheckpoint(ck_path)
    assert 0 < first.step < 256_000 and "stopped (time limit)" in out and "step 5/256000 action_nll" in out
    assert "tokens/s" in out and f"--init-from {ck_path}" in out
    assert ck_path.stat().st_size < LIMIT and (tmp_path / "ck_data" / "card.json").exists()  # the data stage's data
    assert first.config["model"]["width"] == 16 and first.adam_v.keys() == first.weights.keys()
    assert gpu.main(["--checkpoint", str(ck_path), "--minutes", "1", *ARGS], clock=Clock()) == 0
    out = capsys.readouterr().out
    second = CompactCheckpoint(ck_path)
    assert f"step {first.step} of 256000" in out and second.step > first.step
    assert second.adam_step == second.step and second.extra["train_seconds"] > first.extra["train_seconds"]
    # a run with another config is refused, the checkpoint untouched
    before = ck_path.read_bytes()
    assert gpu.main(["--checkpoint", str(ck_path), "--minutes", "1", *ARGS, "--set", "model.mlp=32"], clock=Clock()) == 2
    assert "model.mlp: 16 in the checkpoint, 32 now" in capsys.readouterr().err
    assert ck_path.read_bytes() == before


def test_a_run_that_reaches_the_last_step_stops_there(tmp_path, capsys):
    gpu = _script()
    ck_path = tmp_path / "ck.safetensors"
    args = ["--checkpoint", str(ck_path), "--minutes", "30", "--data", str(tmp_path / "d"), *ARGS, "--set", "train.steps=3"]
    assert gpu.main(args) == 0
    assert CompactCheckpoint(ck_path).step == 3 and "stopped (finished) at step 3 of 3" in capsys.readouterr().out
    assert gpu.main(args) == 0 and CompactCheckpoint(ck_path).step == 3


def test_the_paper_models_checkpoint_fits_and_restores_what_it_keeps(tmp_path):
    cfg = load_config("paper")
    model = SequenceModel(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    out = model(torch.rand(2, 3, cfg.model.obs_dim))
    (out.action.sum() + out.next_obs.mean()).backward()
    opt.step()
    path = tmp_path / "paper.safetensors"
    size = save_compact(path, model, opt, 7, dumps(cfg))
    assert size == path.stat().st_size < LIMIT  # 13.3 MiB: 4 bytes a parameter
    fresh = SequenceModel(cfg.model)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=3e-4)
    ck = CompactCheckpoint(path)
    ck.restore(fresh, fresh_opt)
    assert ck.step == 7 and ck.adam_step == 1
    for (name, p), q in zip(model.named_parameters(), fresh.parameters()):
        assert torch.equal(p.detach().bfloat16().float(), q.detach()), name
        state = fresh_opt.state[q]
        assert torch.equal(state["exp_avg_sq"], opt.state[p]["exp_avg_sq"].bfloat16().float())
        assert not state["exp_avg"].any() and float(state["step"]) == 1
    fresh_opt.step()  # the restored optimiser steps


def test_train_init_from_continues_the_checkpoints_weights(tmp_path, capsys):
    gpu = _script()
    ck_path = tmp_path / "ck.safetensors"
    assert gpu.main(["--checkpoint", str(ck_path), "--minutes", "1", *ARGS], clock=Clock()) == 0
    ck = CompactCheckpoint(ck_path)
    # lr ~0: what the run finishes with is what it started from
    run_args = ["--preset", "paper", *(a for s in SETS for a in ("--set", s)), "--set", "train.steps=2",
                "--set", "train.lr=1e-12", "--set", "train.snapshots=1", "--set", "train.warmup_steps=0",
                "--set", "train.device=cpu", "--no-progress"]
    out = tmp_path / "run"
    assert main(["data", "--out", str(out), *run_args]) == 0
    assert main(["train", "--out", str(out), *run_args, "--init-from", str(tmp_path / "nope.safetensors")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    assert main(["train", "--out", str(out), *run_args, "--init-from", str(ck_path)]) == 0
    trained = load_file(str(out / "base_model" / "model.safetensors"))
    for name, w in ck.weights.items():
        assert torch.allclose(trained[name], w.float(), atol=1e-6), name
    record = json.loads((out / "base_model" / "config.json").read_text())["init_from"]
    assert record["sha256"] == ck.sha256() and record["step"] == ck.step
    capsys.readouterr()
    assert main(["train", "--out", str(out), *run_args, "--init-from", str(ck_path)]) == 2
    assert "already has a finished base model" in capsys.readouterr().err
    # another architecture is refused before anything is trained
    other = tmp_path / "other"
    wide = [*run_args, "--set", "model.mlp=32"]
    assert main(["data", "--out", str(other), *wide]) == 0
    assert main(["train", "--out", str(other), *wide, "--init-from", str(ck_path)]) == 2
    assert "model.mlp: 16 in the checkpoint, 32 here" in capsys.readouterr().err
    assert not (other / "base_model").exists()
