"""The run directory under stress: two processes on one folder, kills at any write, two threads,
bad input. Each test runs the tiny config of test_cli.py."""
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from internalrl.cli import main

from test_cli import TINY

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    return {**env, **extra}


def _snapshot(root: Path) -> dict:
    """Every file of every finished stage, by content."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.relative_to(root).parts[0].startswith(".")
            and (root / p.relative_to(root).parts[0] / "DONE").exists()}


# ------------------------------------------------------------------ one process per run directory
HOLDER = """
import sys
from internalrl.config import load_config
from internalrl.rundir import RunDir
run = RunDir(sys.argv[1], load_config("quick", [a for a in sys.argv[2:] if "=" in a]))  # as every command does
print("holding", flush=True)
sys.stdin.read()
"""


def test_a_second_process_on_a_run_directory_is_refused_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["data", "--out", str(out), *TINY]) == 0
    before = _snapshot(out)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), *TINY], env=_env(), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        capsys.readouterr()
        for argv in (["train", "--out", str(out), *TINY], ["run", "--out", str(out), *TINY],
                     ["rl", "--out", str(out), "--method", "raw", *TINY]):
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert f"pid {holder.pid}" in err and socket.gethostname() in err and "in use" in err, err
        assert _snapshot(out) == before and not (out / "base_model").exists()
    finally:
        holder.kill()  # a killed holder leaves no stale lock
        holder.wait()
    assert main(["train", "--out", str(out), *TINY]) == 0
    assert (out / "base_model" / "DONE").exists()


# ------------------------------------------------------------------ kills at any write
KILLER = """
import os, pathlib, signal, sys, io
import torch
mode, k, word = sys.argv[1], int(sys.argv[2]), sys.argv[3]  # die at the k-th write whose path holds `word`
count = [0]
def hit(path):
    count[0] += word in str(path)
    return word in str(path) and count[0] == k
def die():
    os.kill(os.getpid(), signal.SIGKILL)
real_save, real_wb, real_wt, real_replace = torch.save, pathlib.Path.write_bytes, pathlib.Path.write_text, os.replace
def save(obj, f, *a, **kw):
    if mode == "torn" and hit(f):  # half the bytes reach the file, then the process dies
        buf = io.BytesIO(); real_save(obj, buf)
        with open(f, "wb") as fh: fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        die()
    return real_save(obj, f, *a, **kw)
def write_bytes(self, data):
    if mode == "torn" and hit(self):
        real_wb(self, data[: len(data) // 2]); die()
    return real_wb(self, data)
def write_text(self, data, *a, **kw):
    if mode == "torn" and hit(self):
        real_wt(self, data[: len(data) // 2], *a, **kw); die()
    return real_wt(self, data, *a, **kw)
def replace(a, b, **kw):
    if mode == "before-rename" and hit(b): die()
    real_replace(a, b, **kw)
    if mode == "after-rename" and hit(b): die()
torch.save, pathlib.Path.write_bytes, pathlib.Path.write_text, os.replace = save, write_bytes, write_text, replace
from internalrl.cli import main
sys.exit(main(sys.argv[4:]))
"""


def _comparable(root: Path) -> tuple[dict, dict]:
    weights = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*.safetensors")
               if not p.relative_to(root).parts[0].startswith(".")}
    results = json.loads((root / "results.json").read_text())
    results.pop("timings", None)
    return weights, results


def test_a_pipeline_killed_at_random_writes_resumes_to_the_same_weights_and_results(tmp_path):
    ref = tmp_path / "ref"
    assert main(["run", "--out", str(ref), *TINY]) == 0
    out = tmp_path / "killed"
    rng = np.random.default_rng(0)
    env = _env(INTERNALRL_CHECKPOINT_SECONDS="0")  # every loop checkpoints every step: many writes to be killed at
    killed = 0
    # half-written checkpoints, kills around their renames, and anywhere else (stage renames, results.json)
    plan = [("torn", "checkpoint", 4), ("after-rename", "checkpoint", 6), ("torn", "checkpoint", 8),
            ("before-rename", "", 30), ("torn", "", 30), ("before-rename", "checkpoint", 8)]
    for mode, word, most in plan:
        k = int(rng.integers(1, most + 1))
        r = subprocess.run([sys.executable, "-c", KILLER, mode, str(k), word, "run", "--out", str(out), *TINY],
                           env=env, capture_output=True, text=True)
        assert r.returncode in (0, -signal.SIGKILL), r.stderr[-2000:]  # killed, or finished: never an error
        killed += r.returncode == -signal.SIGKILL
    assert killed >= 3
    r = subprocess.run([sys.executable, "-c", KILLER, "none", "0", "", "run", "--out", str(out), *TINY],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    (w_ref, res_ref), (w_out, res_out) = _comparable(ref), _comparable(out)
    assert sorted(w_ref) == sorted(w_out) and len(w_ref) >= 8
    for name in w_ref:
        assert w_ref[name] == w_out[name], name
    assert res_ref == res_out
    assert not list(out.glob(".*.partial")) and not list(out.rglob(".*.tmp")) and not list(out.rglob("checkpoint*"))


def test_every_training_stage_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """A loop stopped after its first checkpoint and rerun ends with the weights of an uninterrupted one."""
    from internalrl import checkpoint as ck
    from internalrl.cli import main as cli

    ref, out = tmp_path / "ref", tmp_path / "out"
    assert cli(["run", "--out", str(ref), *TINY]) == 0
    calls = []
    real = ck.Checkpoint.save

    def save_then_stop(self, step, extra=None):  # the first checkpoint of each loop, then a "kill"
        real(self, step, extra)
        if self.path is not None and self.path not in calls:
            calls.append(self.path)
            raise KeyboardInterrupt

    monkeypatch.setattr(ck, "CHECKPOINT_SECONDS", 0.0)
    monkeypatch.setattr(ck.Checkpoint, "save", save_then_stop)
    for _ in range(30):
        if cli(["run", "--out", str(out), *TINY]) == 0:
            break
    names = {p.name for p in calls}
    assert {"checkpoint.pt", "checkpoint_frozen.pt", "checkpoint_cotrained.pt", "checkpoint_layer0.pt"} <= names
    assert sum(p.parent.name.startswith(".rl_") for p in calls) == 2  # internal and raw RL
    (w_ref, res_ref), (w_out, res_out) = _comparable(ref), _comparable(out)
    assert w_ref == w_out and res_ref == res_out


def test_diverging_training_stops_with_the_setting_to_lower(tmp_path, capsys):
    out = tmp_path / "run"
    flags = [*TINY, "--set", "train.lr=1e30", "--set", "train.warmup_steps=0"]
    assert main(["data", "--out", str(out), *flags]) == 0
    assert main(["train", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "training diverged" in err and "Lower train.lr" in err
    assert not (out / "base_model").exists()


def test_a_checkpoint_in_the_earlier_three_file_layout_still_resumes(tmp_path):
    from safetensors.torch import save_file

    from internalrl.config import load_config
    from internalrl.data import load_trajectories
    from internalrl.train import train_base_model

    assert main(["data", "--out", str(tmp_path / "run"), *TINY]) == 0
    cfg, data = load_config("quick", [a for a in TINY if "=" in a]), load_trajectories(tmp_path / "run" / "data")
    full, _ = train_base_model(cfg, data, tmp_path / "full", progress=False)
    work = tmp_path / "old"
    train_base_model(cfg, data, work, progress=False, stop_after=3)
    blob = torch.load(work / "checkpoint.pt", weights_only=True)
    for f in work.glob("checkpoint.pt*"):
        f.unlink()
    save_file({k: v.contiguous() for k, v in blob["modules"]["model"].items()}, str(work / "checkpoint.safetensors"))
    torch.save(blob["optimizers"]["opt"], work / "checkpoint_optim.pt")
    (work / "checkpoint.json").write_text(json.dumps({"step": 3, "train_seconds": 1.0}))
    resumed, _ = train_base_model(cfg, data, work, progress=False)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert not (work / "checkpoint.json").exists()


# ------------------------------------------------------------------ two threads
def test_two_threads_give_the_same_weights_twice(tmp_path):
    """The egocentric encoder's backward must not depend on how threads split the work."""
    wide = [*TINY, "--set", "model.width=64", "--set", "train.batch_size=32", "--set", "train.steps=4"]
    hashes = []
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for i in range(2):
            out = tmp_path / f"run{i}"
            assert main(["data", "--out", str(out), *wide]) == 0
            assert main(["train", "--out", str(out), *wide]) == 0
            hashes.append(hashlib.sha256((out / "base_model" / "model.safetensors").read_bytes()).hexdigest())
    finally:
        torch.set_num_threads(threads)
    assert hashes[0] == hashes[1]


def test_egocentric_embedding_gradients_are_bitwise_repeatable_with_two_threads():
    from internalrl.data import grid_observations
    from internalrl.envs.gridworld import GridSpec
    from internalrl.models.sequence_model import EgocentricEmbedding

    spec = GridSpec(7, 8, 4, 100)
    g = torch.Generator().manual_seed(0)
    layout = torch.full((64, 49), -1)
    for b in range(64):
        layout[b, torch.randperm(49, generator=g)[:12]] = torch.arange(12)
    obs = grid_observations(layout, torch.randint(0, 49, (64, 65), generator=g), spec)
    emb = EgocentricEmbedding(7, spec.obs_dim, 64)
    upstream = torch.randn(64, 65, 64, generator=g)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = set()
        for _ in range(10):
            emb.zero_grad()
            (emb(obs) * upstream).sum().backward()
            grads.add(emb.linear.weight.grad.numpy().tobytes())
    finally:
        torch.set_num_threads(threads)
    assert len(grads) == 1
