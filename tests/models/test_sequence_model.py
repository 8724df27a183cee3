from dataclasses import replace

import numpy as np
import pytest
import torch

from internalrl.models.sequence_model import ModelConfig, SequenceModel
from internalrl.models.transformer import relative_bucket
from internalrl.train import CheckpointError, load_model, save_model

CFG = ModelConfig(obs_dim=37, action_dim=4, width=32, depth=4, heads=2, head_dim=16, mlp=64, max_len=64)


@pytest.fixture(params=[("relu", 0), ("swiglu", 0), ("relu", 3)], ids=["relu", "swiglu", "upper_window3"])
def model(request):
    torch.manual_seed(0)
    mlp_type, window = request.param
    m = SequenceModel(replace(CFG, mlp_type=mlp_type, upper_window=window))
    with torch.no_grad():  # move the zero-initialised biases off zero so they matter
        for blk in m.blocks:
            blk.rel_bias.weight.normal_()
    return m.eval()


def obs(b=3, t=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, t, CFG.obs_dim, generator=g) < 0.2).float()


def test_stepwise_cached_equals_whole_sequence(model):
    x = obs()
    full = model(x)
    state = model.initial_state(3)
    steps = [model(x[:, t : t + 1], state=state) for t in range(x.shape[1])]
    assert torch.allclose(torch.cat([s.action for s in steps], 1), full.action, atol=1e-5)
    assert torch.allclose(torch.cat([s.next_obs for s in steps], 1), full.next_obs, atol=1e-5)
    assert state.position == x.shape[1]


@pytest.mark.parametrize("layer", [0, 2, 4])
def test_split_halves_stepwise_equal_sequence_with_intervention(model, layer):
    x = obs()
    u = torch.randn(CFG.width, CFG.width) * 0.1
    edit = lambda e: e + e @ u.T  # noqa: E731
    full = model(x, layer=layer, intervention=edit)
    state = model.initial_state(3)
    out = []
    for t in range(x.shape[1]):
        e = model.lower(x[:, t : t + 1], layer, state)
        out.append(model.upper(edit(e), layer, state).action)
    assert torch.allclose(torch.cat(out, 1), full.action, atol=1e-5)
    assert not torch.allclose(full.action, model(x).action, atol=1e-3)  # the edit did something


def test_chunked_steps_equal_sequence(model):
    x = obs(t=20)
    state = model.initial_state(3)
    a = model(x[:, :7], state=state).action
    b = model(x[:, 7:], state=state).action
    assert torch.allclose(torch.cat([a, b], 1), model(x).action, atol=1e-5)


def test_causal(model):
    x = obs()
    y = x.clone()
    y[:, 20:] = 1 - y[:, 20:]
    assert torch.allclose(model(x).action[:, :20], model(y).action[:, :20], atol=1e-6)
    assert not torch.allclose(model(x).action[:, 20:], model(y).action[:, 20:])


def test_residual_stream_matches_lower(model):
    x = obs()
    stream = model.residual_stream(x)
    assert len(stream) == CFG.depth + 1
    for layer in range(CFG.depth + 1):
        assert torch.allclose(stream[layer], model.lower(x, layer), atol=1e-6)
    with pytest.raises(ValueError, match="layer must be in 0..4"):
        model.lower(x, 5)


@pytest.mark.parametrize("window", [1, 3])
def test_upper_window_limits_what_the_upper_half_sees_of_the_past(window):
    torch.manual_seed(0)
    m = SequenceModel(replace(CFG, upper_window=window)).eval()
    half = CFG.depth // 2
    assert [blk.window for blk in m.blocks] == [0] * half + [window] * (CFG.depth - half)
    e = m.lower(obs(), half)
    moved = e.clone()
    moved[:, 10] += torch.randn(CFG.width)  # rewrite the residual at layer L/2 at one step
    changed = (m.upper(moved, half).action - m.upper(e, half).action).abs().amax(dim=(0, 2)) > 1e-6
    reach = (CFG.depth - half) * (window - 1) + 1  # each upper block looks window - 1 steps further back
    assert changed.nonzero().flatten().tolist() == list(range(10, 10 + reach))
    # the lower half still reads the whole past: an early observation changes later residuals at L/2
    x = obs()
    y = x.clone()
    y[:, 0] = 1 - y[:, 0]
    assert not torch.allclose(m.lower(x, half)[:, -1], m.lower(y, half)[:, -1])


def test_relative_buckets_are_monotone_and_bounded():
    d = torch.arange(0, 500)
    b = relative_bucket(d, 32, 128)
    assert (b[:16] == d[:16]).all() and (b.diff() >= 0).all() and b.max() == 31


def test_cache_overflow_is_a_clear_error(model):
    state = model.initial_state(1)
    with pytest.raises(RuntimeError, match="max_len"):
        model(obs(1, CFG.max_len + 1), state=state)


def test_save_load_round_trip_and_corrupt_checkpoint(model, tmp_path):
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    x = obs()
    assert torch.equal(loaded(x).action, model(x).action)
    with pytest.raises(CheckpointError, match="no model"):
        load_model(tmp_path / "nothing")
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(tmp_path)


def test_gaussian_heads_give_finite_log_probs():
    cfg = ModelConfig(obs_dim=10, action_dim=3, action_type="gaussian", obs_type="gaussian", width=16, depth=1,
                      heads=2, head_dim=8, mlp=16)
    m = SequenceModel(cfg)
    x = torch.randn(2, 5, 10)
    out = m(x)
    assert m.action_log_prob(out, torch.randn(2, 5, 3)).shape == (2, 5)
    assert torch.isfinite(m.obs_log_prob(out, torch.randn(2, 5, 10))).all()
    assert m.sample_action(out).shape == (2, 3)


def test_bad_model_config_names_the_field():
    with pytest.raises(ValueError, match="model.action_type"):
        SequenceModel(ModelConfig(action_type="beta"))
    with pytest.raises(ValueError, match="model.mlp_type"):
        SequenceModel(ModelConfig(mlp_type="gelu"))
    with pytest.raises(ValueError, match="model.upper_window"):
        SequenceModel(ModelConfig(upper_window=-1))
    with pytest.raises(ValueError, match="model.upper_window"):
        SequenceModel(ModelConfig(backbone="hawk", upper_window=4))


def test_egocentric_window_puts_neighbours_at_fixed_offsets():
    from internalrl.envs.gridworld import BatchedGridPinpad, GridSpec
    from internalrl.envs.tasks import parse_task_set
    from internalrl.models.sequence_model import EgocentricGrid

    env = BatchedGridPinpad(64, parse_task_set("grid-pretrain", 8), GridSpec(), seed=0)
    obs = torch.as_tensor(env.reset())
    window = EgocentricGrid(7, 637)(obs)[:, : 13 * 13 * 13].reshape(64, 13, 13, 13)
    for i in range(64):
        r, c = divmod(int(env.agent[i]), 7)
        for dr in range(-6, 7):
            for dc in range(-6, 7):
                cell = window[i, 6 + dr, 6 + dc]
                rr, cc = r + dr, c + dc
                if 0 <= rr < 7 and 0 <= cc < 7:
                    ident = env.cell_identity[i, rr * 7 + cc]
                    want = torch.zeros(13)
                    if ident >= 0:
                        want[ident] = 1
                    assert torch.equal(cell, want)
                else:
                    assert cell[12] == 1 and cell[:12].sum() == 0  # outside the grid


@pytest.mark.parametrize("encoder", ["egocentric", "conv"])
def test_grid_encoders_keep_step_sequence_parity(encoder):
    torch.manual_seed(0)
    cfg = ModelConfig(obs_dim=637, width=32, depth=2, heads=2, head_dim=16, mlp=64, obs_encoder=encoder)
    m = SequenceModel(cfg).eval()
    from internalrl.envs.gridworld import BatchedGridPinpad, GridSpec
    from internalrl.envs.tasks import parse_task_set

    env = BatchedGridPinpad(3, parse_task_set("grid-pretrain", 8), GridSpec(), seed=0)
    seq = [env.reset()]
    for _ in range(12):
        seq.append(env.step(np.random.default_rng(len(seq)).integers(0, 4, 3))[0])
    x = torch.as_tensor(np.stack(seq, 1))
    state = m.initial_state(3)
    steps = torch.cat([m(x[:, t : t + 1], state=state).action for t in range(x.shape[1])], 1)
    assert torch.allclose(steps, m(x).action, atol=1e-5)
    with pytest.raises(ValueError, match="grid_size"):
        SequenceModel(ModelConfig(obs_dim=100, obs_encoder=encoder))


def test_conv_encoder_sees_neighbourhoods_and_trains():
    from internalrl.models.sequence_model import ConvEmbedding

    torch.manual_seed(0)
    emb = ConvEmbedding(7, 637, 16, channels=4, layers=2)
    obs = torch.zeros(1, 7, 7, 13)
    obs[0, 3, 3, 12] = 1  # the agent in the centre, an empty grid
    base = emb(obs.reshape(1, -1))
    far, near = obs.clone(), obs.clone()
    far[0, 0, 0, 4] = 1  # a colour three cells away from anything the stem could relate it to the agent with
    near[0, 3, 4, 4] = 1
    # features are local: with two 3x3 layers the cells within 2 of a cell shape its features
    conv_out = emb.convs(obs.permute(0, 3, 1, 2))
    conv_far = emb.convs(far.permute(0, 3, 1, 2))
    assert torch.equal(conv_out[..., 3:, 3:], conv_far[..., 3:, 3:])  # 3+ cells away: untouched
    assert not torch.equal(emb(near.reshape(1, -1)), base)
    loss = emb(far.reshape(1, -1)).square().sum()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in emb.parameters())
    with pytest.raises(ValueError, match="conv_channels"):
        ModelConfig(obs_encoder="conv", conv_channels=0).validate()


def test_sparse_egocentric_embedding_equals_dense_linear_of_the_window():
    from internalrl.envs.gridworld import BatchedGridPinpad, GridSpec
    from internalrl.envs.tasks import parse_task_set
    from internalrl.models.sequence_model import EgocentricEmbedding

    torch.manual_seed(0)
    emb = EgocentricEmbedding(7, 637, 24)
    with torch.no_grad():
        emb.linear.bias.normal_()
    env = BatchedGridPinpad(50, parse_task_set("grid-pretrain", 8), GridSpec(), seed=0)
    obs = torch.as_tensor(env.reset())
    dense = emb.linear(emb.window(obs))
    assert torch.allclose(emb(obs), dense, atol=1e-5)
    assert torch.allclose(emb(obs[None]), dense[None], atol=1e-5)  # leading dims
    # an identity missing from the grid (e.g. fewer walls) and an all-zero padding step
    odd = obs.clone().view(50, 49, 13)
    odd[0, :, 3] = 0
    odd[1] = 0
    odd = odd.view(50, 637)
    assert torch.allclose(emb(odd), emb.linear(emb.window(odd)), atol=1e-5)
    # gradients reach the same columns as the dense product
    emb(obs).sum().backward()
    g_sparse = emb.linear.weight.grad.clone()
    emb.linear.weight.grad = None
    emb.linear(emb.window(obs)).sum().backward()
    assert torch.allclose(g_sparse, emb.linear.weight.grad, atol=1e-4)


def test_train_step_without_observation_loss_skips_the_observation_head(model):
    from types import SimpleNamespace

    from internalrl.data import Batch
    from internalrl.train import sequence_losses, train_step

    torch.manual_seed(1)
    obs = (torch.rand(3, 7, model.cfg.obs_dim) < 0.05).float()
    batch = Batch(obs, torch.randint(0, model.cfg.action_dim, (3, 6)), torch.ones(3, 6, dtype=torch.bool),
                  torch.zeros(3, 6, dtype=torch.long))
    calls = []
    hook = model.obs_head.register_forward_hook(lambda *a: calls.append(1))
    full = sequence_losses(model, batch)
    assert calls and set(full) >= {"action_nll", "obs_nll"}
    calls.clear()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    for lam, runs_head in ((0.0, False), (0.01, True)):
        losses = train_step(model, opt, batch, SimpleNamespace(obs_loss_weight=lam, grad_clip=1.0))
        assert bool(calls) == runs_head and ("obs_nll" in losses) == runs_head
        assert torch.allclose(losses["action_nll"], full["action_nll"])  # lr 0: the model is unchanged
        head_grad = model.obs_head.weight.grad
        assert (head_grad is not None and head_grad.abs().sum() > 0) == runs_head
        calls.clear()
    hook.remove()
