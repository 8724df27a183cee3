"""--tensorboard: the training stages' scalars in RUN/tensorboard/, the same artifacts as without it,
and a clear error when TensorBoard is not installed."""
import sys

import pytest

from internalrl.cli import main

from test_cli import TINY


def _tags(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_training_stages_write_tensorboard_scalars_and_the_same_artifacts(tmp_path):
    pytest.importorskip("tensorboard")
    out, plain = tmp_path / "run", tmp_path / "plain"
    assert main(["data", "--out", str(out), *TINY]) == 0
    for command in ("train", "metacontroller"):
        assert main([command, "--out", str(out), "--tensorboard", "--no-progress"]) == 0
    assert main(["rl", "--out", str(out), "--method", "internal", "--tensorboard", "--no-progress"]) == 0
    base = _tags(out / "tensorboard" / "base_model")
    assert {"train/action_nll", "train/action_accuracy", "train/lr", "train/tokens_per_s",
            "heldout/action_nll", "heldout/action_accuracy"} <= set(base)
    assert len(base["heldout/action_accuracy"]) == 2  # train.steps=6, eval_every=3
    meta = _tags(out / "tensorboard" / "metacontroller")
    for label in ("frozen", "cotrained"):
        assert {f"{label}/action_nll", f"{label}/kl", f"{label}/heldout_switch_f1"} <= set(meta)
        assert len(meta[f"{label}/heldout_switch_f1"]) == 3  # monitored at every one of the 3 steps
    (rl,) = (out / "tensorboard").glob("rl_internal_*")
    success = _tags(rl)["rl/success"]
    assert len(success) == 2 and all(0 <= s <= 1 for s in success)  # rl.episodes=8 in batches of 4
    for command in ("data", "train"):  # the artifacts do not depend on the flag
        assert main([command, "--out", str(plain), *TINY]) == 0
    assert (plain / "base_model" / "model.safetensors").read_bytes() == (out / "base_model" / "model.safetensors").read_bytes()
    assert not (plain / "tensorboard").exists()


def test_tensorboard_missing_is_a_user_error_saying_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as when not installed
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY, "--tensorboard"]) == 2
    err = capsys.readouterr().err
    assert "tensorboard" in err and "pip install" in err
    assert not out.exists()  # nothing started
