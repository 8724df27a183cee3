"""The Hawk backbone (Griffin's recurrent block): the scan is the recurrence, step-wise equals
whole-sequence at every split, gradients reach every parameter, and bad widths are named."""
from dataclasses import replace

import pytest
import torch

from internalrl.config import ConfigError, load_config
from internalrl.models.hawk import LRU_C, linear_scan
from internalrl.models.sequence_model import ModelConfig, SequenceModel
from internalrl.train import load_model, save_model

CFG = ModelConfig(obs_dim=41, action_dim=8, action_type="gaussian", obs_type="gaussian", width=32, depth=4,
                  heads=4, mlp=48, backbone="hawk", max_len=64)


def make(dtype=torch.float32, **kw):
    torch.manual_seed(0)
    m = SequenceModel(replace(CFG, **kw)).to(dtype)
    with torch.no_grad():  # move the zero-initialised biases off zero so they matter
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return m.eval()


def obs(b=3, t=30, seed=0, dtype=torch.float32):
    return torch.randn(b, t, CFG.obs_dim, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("t", [1, 2, 3, 8, 37, 130])
def test_scan_equals_the_sequential_recurrence(t):
    g = torch.Generator().manual_seed(t)
    a = torch.rand(2, t, 5, generator=g, dtype=torch.float64)
    b = torch.randn(2, t, 5, generator=g, dtype=torch.float64)
    h0 = torch.randn(2, 5, generator=g, dtype=torch.float64)
    for start in (None, h0):
        h, want = start if start is not None else torch.zeros(2, 5, dtype=torch.float64), []
        for i in range(t):
            h = a[:, i] * h + b[:, i]
            want.append(h)
        assert torch.allclose(linear_scan(a, b, start), torch.stack(want, 1), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layer", [0, 1, 2, 3, 4])
def test_stepwise_equals_whole_sequence_at_every_split(dtype, layer):
    model = make(dtype)
    x = obs(dtype=dtype)
    u = torch.randn(CFG.width, CFG.width, generator=torch.Generator().manual_seed(1)).to(dtype) * 0.1
    edit = lambda e: e + e @ u.T  # noqa: E731
    full = model(x, layer=layer, intervention=edit)
    state = model.initial_state(3)
    outs = []
    for t in range(x.shape[1]):
        outs.append(model.upper(edit(model.lower(x[:, t : t + 1], layer, state)), layer, state))
    assert torch.allclose(torch.cat([o.action for o in outs], 1), full.action, atol=1e-5)
    assert torch.allclose(torch.cat([o.next_obs for o in outs], 1), full.next_obs, atol=1e-5)
    assert state.position == x.shape[1]
    assert not torch.allclose(full.action, model(x).action, atol=1e-3)  # the edit did something


@pytest.mark.parametrize("layer", [0, 1, 2, 3, 4])
def test_lower_then_upper_is_the_whole_model(layer):
    model = make()
    x = obs()
    whole = model(x)
    split = model.upper(model.lower(x, layer), layer)
    assert torch.allclose(split.action, whole.action, atol=1e-6)
    assert torch.allclose(split.next_obs, whole.next_obs, atol=1e-6)
    assert torch.allclose(model.residual_stream(x)[layer], model.lower(x, layer), atol=1e-6)


def test_chunks_of_steps_and_a_long_episode_equal_the_sequence():
    model = make()
    x = obs(t=20)
    state = model.initial_state(3)
    a = model(x[:, :7], state=state).action
    b = model(x[:, 7:], state=state).action
    assert torch.allclose(torch.cat([a, b], 1), model(x).action, atol=1e-5)
    # an ant episode's length, one step at a time, in float32
    x = obs(b=2, t=500, seed=3)
    state = model.initial_state(2)
    steps = torch.cat([model(x[:, t : t + 1], state=state).action for t in range(500)], 1)
    assert torch.allclose(steps, model(x).action, atol=1e-5)


def test_causal():
    model = make()
    x = obs()
    y = x.clone()
    y[:, 20:] = -y[:, 20:]
    assert torch.allclose(model(x).action[:, :20], model(y).action[:, :20], atol=1e-6)
    assert not torch.allclose(model(x).action[:, 20:], model(y).action[:, 20:])


def test_selecting_rows_keeps_their_state():
    model = make()
    x = obs(t=12)
    full = model(x).action
    state = model.initial_state(3)
    model(x[:, :5], state=state)
    state.select_(torch.tensor([2, 0]))
    rest = model(x[[2, 0], 5:], state=state).action
    assert torch.allclose(rest, full[[2, 0], 5:], atol=1e-5)


def test_gradients_reach_every_parameter():
    model = make().train()
    x = obs()
    out = model(x)
    loss = -(model.action_log_prob(out, torch.randn(3, 30, 8)).mean()
             + 10 * model.obs_log_prob(out, torch.randn(3, 30, 41)).mean())
    loss.backward()
    names = [n for n, p in model.named_parameters()]
    assert any("lru.a_logit" in n for n in names) and any("lru.gates" in n for n in names)
    assert any("conv" in n for n in names) and "action_log_std" in names
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_decay_is_initialised_as_griffin():
    model = make()
    for blk in model.blocks:
        a_c = torch.sigmoid(blk.lru.a_logit) ** LRU_C
        assert a_c.min() >= 0.9 - 1e-6 and a_c.max() <= 0.999 + 1e-6
        assert blk.lru.gates.weight.shape == (4, 8, 16)  # 4 diagonal blocks of 8 channels, two gates


def test_save_load_round_trip(tmp_path):
    model = make()
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.cfg.backbone == "hawk"
    x = obs()
    assert torch.equal(loaded(x).action, model(x).action)


def test_lru_width_differs_from_width():
    model = make(lru_width=24, heads=3)
    assert model.blocks[0].lru.a_logit.shape == (24,)
    x = obs(t=10)
    state = model.initial_state(3)
    steps = torch.cat([model(x[:, t : t + 1], state=state).action for t in range(10)], 1)
    assert torch.allclose(steps, model(x).action, atol=1e-5)


def test_widths_that_do_not_split_into_heads_name_the_field():
    with pytest.raises(ValueError, match=r"model\.width \(30\) must be divisible by model\.heads \(4\)"):
        SequenceModel(replace(CFG, width=30))
    with pytest.raises(ValueError, match=r"model\.lru_width \(10\) must be divisible by model\.heads \(4\)"):
        SequenceModel(replace(CFG, lru_width=10))
    with pytest.raises(ValueError, match="model.backbone must be one of transformer, hawk"):
        SequenceModel(replace(CFG, backbone="mamba"))
    # the transformer does not split its width into heads: the same width is fine there
    SequenceModel(replace(CFG, width=30, backbone="transformer", head_dim=8))
    with pytest.raises(ConfigError, match=r"model\.width \(250\) must be divisible by model\.heads \(8\)"):
        load_config("paper", ["model.backbone=hawk", "model.width=250", "model.heads=8"])


def test_scan_gradient_is_the_recurrence_gradient():
    g = torch.Generator().manual_seed(5)
    a = torch.rand(2, 11, 3, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(2, 11, 3, generator=g, dtype=torch.float64).requires_grad_()
    h0 = torch.randn(2, 3, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(linear_scan, (a, b, h0))
    assert torch.autograd.gradcheck(lambda a, b: linear_scan(a, b), (a, b))
