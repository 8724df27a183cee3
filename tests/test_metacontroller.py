import pytest
import torch

from internalrl.controller import apply_controller
from internalrl.data import Batch
from internalrl.metacontroller import Metacontroller, MetacontrollerConfig, metacontroller_loss
from internalrl.models.sequence_model import ModelConfig, SequenceModel

W = 16


def meta(**kw):
    torch.manual_seed(0)
    m = Metacontroller(MetacontrollerConfig(rank=kw.pop("rank", 4), **kw), W)
    with torch.no_grad():  # a decoder away from zero so the controller matters
        m.decoder[-1].weight.normal_(0, 0.3)
    return m


def inputs(b=2, t=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, W, generator=g), torch.ones(b, t, dtype=torch.bool), torch.randn(b, t, 8, generator=g)


def test_controller_is_an_explicit_matrix_product():
    for rank in (4, 0):
        m = meta(rank=rank)
        e, mask, eps = inputs()
        out = m(e, mask, noise=eps)
        a, b = m.decode(out.code)
        u = a if b is None else a @ b.transpose(-1, -2)  # (B, T, W, W)
        assert torch.allclose(out.residual, e + torch.einsum("btij,btj->bti", u, e), atol=1e-5)
        assert torch.allclose(apply_controller(e, *m.decode(out.code)), out.residual, atol=1e-6)


def test_first_step_switches_and_codes_integrate_temporally():
    m = meta()
    e, mask, eps = inputs()
    out = m(e, mask, noise=eps)
    assert torch.all(out.switch_gate[:, 0] == 1)
    proposal = out.mean + out.log_std.exp() * eps
    assert torch.allclose(out.code[:, 0], proposal[:, 0])
    for t in range(1, e.shape[1]):
        beta = out.switch_gate[:, t : t + 1]
        assert torch.allclose(out.code[:, t], beta * proposal[:, t] + (1 - beta) * out.code[:, t - 1], atol=1e-6)
    assert ((out.switch_gate >= 0) & (out.switch_gate <= 1)).all()


def test_switch_is_causal_but_encoder_sees_the_future():
    m = meta()
    e, mask, eps = inputs()
    s = torch.randn(2, m.cfg.sequence_dim)
    f = e.clone()
    f[:, 6:] += torch.randn_like(f[:, 6:])
    a, b = m(e, mask, sequence=s, noise=eps), m(f, mask, sequence=s, noise=eps)
    assert torch.allclose(a.switch_gate[:, :6], b.switch_gate[:, :6])  # β_t for t < 6 ignores e_6 onwards
    assert not torch.allclose(a.switch_gate[:, 6:], b.switch_gate[:, 6:])
    # with the sequence embedding computed from e, the proposals at early steps see the change
    a, b = m(e, mask, noise=eps), m(f, mask, noise=eps)
    assert not torch.allclose(a.mean[:, 0], b.mean[:, 0])
    # ... while the switching unit takes no input from s
    assert m.switch_unit[0].in_features == W + m.cfg.history_dim + m.cfg.code_dim


def test_always_switch_gives_beta_one():
    m = meta(switch="always")
    e, mask, eps = inputs()
    assert torch.all(m(e, mask, noise=eps).switch_gate == 1)


def test_sequence_embedding_ignores_padding():
    m = meta()
    e, mask, _ = inputs(b=1, t=10)
    short_mask = mask.clone()
    short_mask[:, 6:] = False
    junk = e.clone()
    junk[:, 6:] = 100.0
    assert torch.allclose(m.sequence_embedding(e, short_mask), m.sequence_embedding(junk, short_mask), atol=1e-6)


def test_gru_sequence_is_nn_grus_both_ways_with_the_same_gradients():
    """The metacontroller's own GRU loop (fast backward) against nn.GRU on a packed sequence and GRUCell steps."""
    from torch import nn

    from internalrl.metacontroller import gru_sequence

    m = meta()
    e, mask, _ = inputs(b=3, t=12)
    mask[1, 7:] = False
    mask[2, 1:] = False
    e.requires_grad_(True)
    rnn = m.sequence_rnn
    packed = nn.utils.rnn.pack_padded_sequence(e, mask.sum(1), batch_first=True, enforce_sorted=False)
    ref, _ = rnn(packed)
    ref, _ = nn.utils.rnn.pad_packed_sequence(ref, batch_first=True, total_length=12)
    ns = rnn.hidden_size
    fwd = gru_sequence(e, rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0) * mask[..., None]
    bwd = gru_sequence(e, rnn.weight_ih_l0_reverse, rnn.weight_hh_l0_reverse, rnn.bias_ih_l0_reverse,
                       rnn.bias_hh_l0_reverse, reverse_mask=mask)
    assert torch.allclose(fwd, ref[..., :ns], atol=1e-6) and torch.allclose(bwd, ref[..., ns:], atol=1e-6)
    g_ref = torch.autograd.grad(ref.pow(2).sum(), [e, rnn.weight_hh_l0_reverse])
    g_new = torch.autograd.grad((fwd.pow(2).sum() + bwd.pow(2).sum()), [e, rnn.weight_hh_l0_reverse])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g_ref, g_new))
    h, steps = torch.zeros(3, m.cfg.history_dim), []  # the history: h_{t-1}, from the cell stepped
    for t in range(12):
        steps.append(h)
        h = m.history(e[:, t], h)
    assert torch.allclose(m.history_states(e), torch.stack(steps, 1), atol=1e-6)


def base_and_batch():
    torch.manual_seed(0)
    base = SequenceModel(ModelConfig(obs_dim=30, width=W, depth=2, heads=2, head_dim=8, mlp=16))
    obs = torch.randn(3, 9, 30)
    mask = torch.ones(3, 8, dtype=torch.bool)
    mask[0, 5:] = False
    return base, Batch(obs, torch.randint(0, 4, (3, 8)), mask, torch.zeros(3, 8, dtype=torch.long))


def test_kl_is_not_weighted_by_beta_and_counts_every_step():
    base, batch = base_and_batch()
    for p in base.parameters():
        p.requires_grad_(False)
    m = meta()
    g = torch.Generator().manual_seed(0)
    res = metacontroller_loss(base, m, 1, batch, alpha=0.5, generator=g)
    out = res["out"]
    mask = batch.mask.float()
    assert torch.allclose(res["kl"], (out.kl * mask).sum() / mask.sum())
    assert torch.allclose(res["loss"], res["action_nll"] + 0.5 * res["kl"])
    mu, ls = out.mean, out.log_std
    direct = 0.5 * (mu ** 2 + (2 * ls).exp() - 1 - 2 * ls).sum(-1)
    assert torch.allclose(out.kl, direct)


def test_no_gradient_reaches_the_frozen_base():
    base, batch = base_and_batch()
    for p in base.parameters():
        p.requires_grad_(False)
    m = meta()
    metacontroller_loss(base, m, 1, batch, alpha=0.1)["loss"].backward()
    assert all(p.grad is None for p in base.parameters())
    assert m.decoder[-1].weight.grad.abs().sum() > 0 and m.switch_unit[0].weight.grad.abs().sum() > 0
    assert m.sequence_rnn.weight_ih_l0.grad.abs().sum() > 0


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="metacontroller.switch"):
        MetacontrollerConfig(switch="hard").validate(W, 2)
    with pytest.raises(ValueError, match=r"metacontroller.binarize_fraction must be in \[0, 1\], got 1.5"):
        MetacontrollerConfig(binarize_fraction=1.5).validate(W, 2)


def test_noisy_switch_is_sharper_in_training_and_plain_when_acting():
    m = meta()
    logit = torch.linspace(-3, 3, 4001)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(m.train().gate_from_logit(logit, g), torch.sigmoid(logit))  # sigmoid switch: no noise
    m.noisy_switch = True
    noisy = m.gate_from_logit(logit, g)
    soft = torch.sigmoid(logit)
    assert not torch.allclose(noisy, soft)
    undecided = lambda b: float(((b > 0.1) & (b < 0.9)).float().mean())  # noqa: E731
    assert undecided(noisy) < 0.6 * undecided(soft)  # temperature 0.5: mostly near 0 or 1
    assert torch.equal(m.eval().gate_from_logit(logit, g), soft)  # no noise outside training


def test_kl_warmup_ramps_alpha_linearly_and_is_off_by_default():
    from internalrl.metacontroller import MetacontrollerConfig, kl_weight

    assert kl_weight(MetacontrollerConfig(alpha=0.3), 0) == 0.3
    cfg = MetacontrollerConfig(alpha=0.2, kl_warmup_steps=100)
    assert kl_weight(cfg, 0) == 0.0
    assert abs(kl_weight(cfg, 50) - 0.1) < 1e-12
    assert kl_weight(cfg, 100) == kl_weight(cfg, 5000) == 0.2
    cfg = MetacontrollerConfig(alpha=0.2, kl_free_steps=30, kl_warmup_steps=100)
    assert kl_weight(cfg, 0) == kl_weight(cfg, 29) == kl_weight(cfg, 30) == 0.0
    assert abs(kl_weight(cfg, 80) - 0.1) < 1e-12 and kl_weight(cfg, 130) == 0.2
    assert kl_weight(MetacontrollerConfig(alpha=0.2, kl_free_steps=30), 30) == 0.2  # no ramp: a step


def test_fresh_decoder_is_small_yet_passes_gradient_to_the_encoder():
    """At init U is small (the controlled model starts near the base model) but depends on z,
    so the encoder gets a first-order gradient: both factors of U = A Bᵀ at zero would be a
    saddle where the encoder's gradient is second-order small and the code never gets used."""
    base, batch = base_and_batch()
    for p in base.parameters():
        p.requires_grad_(False)
    for rank in (4, 0):
        torch.manual_seed(0)
        m = Metacontroller(MetacontrollerConfig(rank=rank), W)
        res = metacontroller_loss(base, m, 1, batch, alpha=0.0)
        e = base.lower(batch.obs[:, :-1], 1)
        ratio = float((res["out"].residual - e).detach().norm() / e.norm())
        assert 0.005 < ratio < 0.5, ratio
        res["loss"].backward()
        enc = sum(float(p.grad.norm() ** 2) for p in m.encoder.parameters()) ** 0.5
        dec = sum(float(p.grad.norm() ** 2) for p in m.decoder.parameters()) ** 0.5
        assert enc > 1e-3 * dec, (enc, dec)  # at a zero-zero init this ratio is about 1e-3 times smaller still


def test_cotrained_variant_takes_its_own_step_count_and_rejects_a_negative_one():
    from internalrl.config import ConfigError, load_config
    from internalrl.metacontroller import cotrained_config

    cfg = MetacontrollerConfig(steps=500)
    same = cotrained_config(cfg)
    assert same.cotrain and same.steps == 500 and not cfg.cotrain
    own = cotrained_config(MetacontrollerConfig(steps=500, cotrain_steps=70))
    assert own.cotrain and own.steps == 70
    assert cotrained_config(MetacontrollerConfig(steps=5, cotrain_steps=70)).steps == 5  # never longer than frozen
    with pytest.raises(ConfigError, match="metacontroller.cotrain_steps"):
        load_config("quick", ["metacontroller.cotrain_steps=-1"])
