import pytest

from internalrl.config import ConfigError, TrainConfig, load_config
from internalrl.train import lr_at


def test_warmup_then_cosine_to_the_floor():
    tc = TrainConfig(steps=1000, lr=1e-3, warmup_steps=100, final_lr_fraction=0.25)
    assert lr_at(0, tc) == pytest.approx(1e-5)
    assert lr_at(99, tc) == pytest.approx(1e-3)
    assert lr_at(100, tc) == pytest.approx(1e-3)
    lrs = [lr_at(s, tc) for s in range(100, 1000)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # decays monotonically
    assert lr_at(1000, tc) == pytest.approx(0.25e-3)


def test_floor_one_is_constant_and_bad_floor_is_refused():
    tc = TrainConfig(steps=50, lr=2e-3, warmup_steps=0, final_lr_fraction=1.0)
    assert {lr_at(s, tc) for s in range(50)} == {2e-3}
    with pytest.raises(ConfigError, match="train.final_lr_fraction"):
        load_config("quick", ["train.final_lr_fraction=1.5"])
