"""Base-model recipe options: soft targets and the observation encoders."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from internalrl.cli import main
from internalrl.config import ConfigError, load_config
from internalrl.data import generate_grid, make_batch, Trajectories
from internalrl.envs.gridworld import GridSpec
from internalrl.envs.tasks import parse_task_set
from internalrl.models.sequence_model import ModelConfig, SequenceModel
from internalrl.train import sequence_losses, with_soft_targets

TINY = ["--set", "data.num_episodes=60", "--set", "model.width=16", "--set", "model.depth=2",
        "--set", "model.heads=2", "--set", "model.head_dim=8", "--set", "model.mlp=16",
        "--set", "train.steps=4", "--set", "train.batch_size=8", "--set", "train.eval_every=2",
        "--set", "train.checkpoint_every=2", "--set", "train.snapshots=1", "--set", "train.warmup_steps=1",
        "--set", "env.horizon=40", "--set", "model.max_len=48", "--no-progress"]


@pytest.fixture(scope="module")
def small():
    spec = GridSpec()
    arrays, _ = generate_grid(24, parse_task_set("grid-pretrain", 8), spec, seed=0, chunk=24, progress=False)
    return Trajectories(arrays, {"obs_format": "grid", "env": {"size": 7, "num_objects": 8, "num_walls": 4, "horizon": 100}})


def test_soft_cross_entropy_equals_the_nll_on_one_hot_targets(small):
    torch.manual_seed(0)
    model = SequenceModel(ModelConfig(width=16, depth=1, heads=2, head_dim=8, mlp=16))
    batch = make_batch(small, np.arange(8))
    batch.soft = F.one_hot(batch.actions, 4).float()
    losses = sequence_losses(model, batch, with_obs=False)
    assert losses["soft_action_ce"].item() == pytest.approx(losses["action_nll"].item(), rel=1e-5)


def test_soft_targets_reach_the_batches_and_the_loss_follows_them(small):
    cfg = load_config("quick", ["train.soft_targets=true"])
    data = with_soft_targets(cfg, small)
    assert data.arrays["soft_targets"].shape == (*small.arrays["actions"].shape, 4)
    assert "soft_targets" not in small.arrays  # the dataset itself is left alone
    batch = make_batch(data, np.arange(6))
    assert batch.soft.shape == (*batch.actions.shape, 4)
    model = SequenceModel(ModelConfig(width=16, depth=1, heads=2, head_dim=8, mlp=16))
    loss = sequence_losses(model, batch, with_obs=False)["soft_action_ce"]
    loss.backward()
    assert model.action_head.weight.grad.abs().sum() > 0


def test_soft_targets_train_end_to_end_and_refuse_noisy_data(tmp_path):
    out = tmp_path / "run"
    assert main(["data", "--out", str(out), *TINY]) == 0
    assert main(["train", "--out", str(out), *TINY, "--set", "train.soft_targets=true"]) == 2  # another run's config
    out2 = tmp_path / "soft"
    assert main(["data", "--out", str(out2), *TINY, "--set", "train.soft_targets=true"]) == 0
    assert main(["train", "--out", str(out2), *TINY, "--set", "train.soft_targets=true"]) == 0
    rows = [json.loads(l) for l in (out2 / "base_model" / "train_log.jsonl").read_text().splitlines()]
    assert any("soft_action_ce" in r for r in rows)
    with pytest.raises(ConfigError, match="soft_targets"):
        load_config("quick", ["train.soft_targets=true", "data.epsilon=0.1"])


def test_training_accumulates_through_one_checkpoint_file(tmp_path):
    """Stop after a time limit, carry the state to a fresh run directory in one file, continue:
    the same weights as an uninterrupted run; a file from another config is refused."""
    from safetensors.torch import load_file

    from internalrl.portable import read_header

    steps = ["--set", "train.steps=6", "--set", "train.checkpoint_every=100"]
    full = tmp_path / "full"
    assert main(["data", "--out", str(full), *TINY, *steps]) == 0
    assert main(["train", "--out", str(full), *TINY, *steps]) == 0
    ckpt = tmp_path / "ckpt" / "grid.safetensors"
    first = tmp_path / "first"
    assert main(["data", "--out", str(first), *TINY, *steps]) == 0
    assert main(["train", "--out", str(first), *TINY, *steps, "--checkpoint-file", str(ckpt), "--minutes", "1e-9"]) == 0
    assert not (first / "base_model").exists() and read_header(ckpt)["step"] == "1"
    second = tmp_path / "second"  # another machine: a fresh run directory, only the file carried over
    assert main(["data", "--out", str(second), *TINY, *steps]) == 0
    assert main(["train", "--out", str(second), *TINY, *steps, "--checkpoint-file", str(ckpt), "--minutes", "1e-9"]) == 0
    assert read_header(ckpt)["step"] == "2"
    assert main(["train", "--out", str(second), *TINY, *steps, "--checkpoint-file", str(ckpt)]) == 0
    a = load_file(str(full / "base_model" / "model.safetensors"))
    b = load_file(str(second / "base_model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_header(ckpt)["finished"] == "True"
    other = tmp_path / "other"
    assert main(["data", "--out", str(other), *TINY, "--set", "train.steps=7"]) == 0
    before = ckpt.read_bytes()
    assert main(["train", "--out", str(other), *TINY, "--set", "train.steps=7", "--checkpoint-file", str(ckpt)]) == 2
    assert ckpt.read_bytes() == before
    ckpt.write_bytes(before[:100])
    assert main(["train", "--out", str(tmp_path / "first"), *TINY, *steps, "--checkpoint-file", str(ckpt)]) == 2


def test_label_smoothing_mixes_the_target_with_uniform(small):
    from types import SimpleNamespace

    from internalrl.train import train_step

    torch.manual_seed(0)
    model = SequenceModel(ModelConfig(width=16, depth=1, heads=2, head_dim=8, mlp=16))
    batch = make_batch(small, np.arange(8))
    losses = sequence_losses(model, batch, with_obs=False)
    logp = torch.log_softmax(model(batch.obs[:, :-1]).action, -1)
    m = batch.mask
    assert losses["uniform_action_ce"].item() == pytest.approx(-logp[m].mean().item(), rel=1e-5)
    # the smoothed loss is minimised by (1 - s) * one-hot + s / 4, not by the one-hot
    logits = torch.zeros(1, 4, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=1.0)
    for _ in range(500):
        lp = torch.log_softmax(logits, -1)
        loss = -(0.9 * lp[0, 2] + 0.1 * lp.mean())
        opt.zero_grad(), loss.backward(), opt.step()
    assert torch.softmax(logits, -1)[0, 2].item() == pytest.approx(0.9 + 0.1 / 4, abs=1e-3)
    tc = SimpleNamespace(obs_loss_weight=0.0, grad_clip=1.0, label_smoothing=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    out = train_step(model, opt, batch, tc)
    assert "uniform_action_ce" in out
    with pytest.raises(ConfigError, match="label_smoothing"):
        load_config("quick", ["train.label_smoothing=1"])


def test_a_checkpoint_file_without_random_state_still_resumes(tmp_path):
    """Files written before the random state and the loop's extras were packed still continue."""
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    from internalrl.portable import read_header

    steps = ["--set", "train.steps=4", "--set", "train.checkpoint_every=100"]
    run = tmp_path / "run"
    ckpt = tmp_path / "old.safetensors"
    assert main(["data", "--out", str(run), *TINY, *steps]) == 0
    assert main(["train", "--out", str(run), *TINY, *steps, "--checkpoint-file", str(ckpt), "--minutes", "1e-9"]) == 0
    with safe_open(str(ckpt), "pt") as f:
        header = dict(f.metadata())
    tensors = {k: v for k, v in load_file(str(ckpt)).items() if k != "rng.torch"}
    header.pop("extra")
    save_file(tensors, str(ckpt), metadata=header)
    fresh = tmp_path / "fresh"
    assert main(["data", "--out", str(fresh), *TINY, *steps]) == 0
    assert main(["train", "--out", str(fresh), *TINY, *steps, "--checkpoint-file", str(ckpt)]) == 0
    assert read_header(ckpt)["finished"] == "True" and (fresh / "base_model" / "model.safetensors").exists()
