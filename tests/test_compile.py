import json
import math

import pytest
import torch

from internalrl.baselines.compile import CompILE, CompileConfig, compile_loss, length_log_prior
from internalrl.data import Batch
from internalrl.envs.gridworld import BatchedGridPinpad, GridSpec
from internalrl.envs.tasks import parse_task_set
from internalrl.models.sequence_model import ModelConfig, SequenceModel
from internalrl.rl.internal import rollout_internal
from internalrl.rl.policy import RecurrentCodePolicy

W, D, LAYER = 16, 30, 1


def make_model(obs_dim=D, **kw):
    torch.manual_seed(0)
    m = CompILE(CompileConfig(rank=kw.pop("rank", 4), hidden=kw.pop("hidden", 16), **kw), W, obs_dim, 4)
    with torch.no_grad():  # a decoder away from zero so codes matter; boundaries that land inside episodes
        m.decoder[-1].weight.normal_(0, 0.3)
        m.boundary_head[-1].weight.normal_(0, 2.0)
        m.switch_unit[-1].weight.normal_(0, 2.0)
    return m


def frozen_base(obs_dim=D):
    torch.manual_seed(0)
    base = SequenceModel(ModelConfig(obs_dim=obs_dim, width=W, depth=2, heads=2, head_dim=8, mlp=16)).eval()
    for p in base.parameters():
        p.requires_grad_(False)
    return base


def batch(b=6, t=14, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[0, 5:] = False
    mask[1, 9:] = False
    mask[2, 1:] = False  # a one-step episode
    return Batch(torch.randn(b, t + 1, D, generator=g), torch.randint(0, 4, (b, t), generator=g), mask,
                 torch.zeros(b, t, dtype=torch.long))


def test_segment_masks_partition_every_step_into_at_most_four_segments():
    m = make_model()
    x = batch()
    valid = x.mask.float()
    m.train()
    seg = m(x.obs[:, :-1], x.actions, x.mask, torch.Generator().manual_seed(0))
    b, t = x.mask.shape
    assert seg.segment_mask.shape == (b, 4, t) and seg.codes.shape == (b, 4, 8)
    assert seg.boundary_sample.shape == (b, 3, t + 1) and seg.kl_z.shape == (b, 4) and seg.kl_b.shape == (b, 3)
    assert (seg.segment_mask >= 0).all()
    assert torch.allclose(seg.segment_mask.sum(1), valid, atol=1e-5)  # soft: still sums to one on every step
    assert (seg.kl_z >= 0).all() and (seg.kl_b >= -1e-5).all()

    m.eval()
    seg = m(x.obs[:, :-1], x.actions, x.mask)
    mask = seg.segment_mask
    assert torch.equal(mask.sum(1), valid)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}  # hard: each step in exactly one segment
    idx = mask.argmax(1)
    assert torch.equal(torch.where(x.mask, idx, 0), torch.where(x.mask, seg.hard_segment(), 0))
    lengths = x.mask.sum(1)
    for i in range(b):
        L = int(lengths[i])
        ends = seg.boundaries[i].tolist()
        assert all(1 <= e <= L for e in ends)
        assert all(a < c or a == c == L for a, c in zip(ends, ends[1:]))  # increasing, or no further segment
        steps = idx[i, :L]
        assert (steps[1:] >= steps[:-1]).all()  # segments are contiguous and in order
        assert len(steps.unique()) <= 4 and int(steps[0]) == 0
    assert (seg.hard_segment()[x.mask].max() > 0)  # some boundary falls inside an episode
    assert torch.equal(seg.hard_segment()[2], torch.zeros(t, dtype=torch.long)) or not x.mask[2, 1:].any()


def test_length_prior_is_a_truncated_poisson_with_the_tail_at_the_end():
    start, length = torch.tensor([0, 3, 7]), torch.tensor([10, 10, 7])
    log_p = length_log_prior(start, length, 12, rate=4.0)
    p = log_p.exp()
    z = 1 - math.exp(-4.0)
    assert abs(p[0, 2] - 4.0 ** 2 * math.exp(-4.0) / 2 / z) < 1e-6  # ℓ = 2
    assert abs(p[1, 4] - 4.0 * math.exp(-4.0) / z) < 1e-6  # ℓ = 1 from start 3
    for i in range(3):
        allowed = (torch.arange(12) > start[i]) & (torch.arange(12) <= length[i]) | (torch.arange(12) == length[i])
        assert abs(float(p[i][allowed].sum()) - 1) < 1e-5
    assert abs(float(p[2, 7]) - 1) < 1e-6  # nothing left to split: the only position is the end


def test_loss_is_finite_and_trains_compile_but_not_the_frozen_base():
    base, m, x = frozen_base(), make_model(), batch()
    m.train()
    res = compile_loss(base, m, LAYER, x, torch.Generator().manual_seed(0))
    assert torch.isfinite(res["loss"]) and res["action_nll"] > 0 and res["switch_loss"] > 0
    cfg = m.cfg
    want = res["action_nll"] + cfg.alpha_z * res["kl_z"] + cfg.alpha_b * res["kl_b"] + cfg.switch_weight * res["switch_loss"]
    assert torch.allclose(res["loss"], want)
    res["loss"].backward()
    assert all(p.grad is None for p in base.parameters())
    for name in ("embed.0.weight", "encoder.weight_ih_l0", "encoder.weight_ih_l0_reverse", "boundary_head.0.weight",
                 "end_logit", "posterior.0.weight", "decoder.2.weight", "switch_unit.0.weight",
                 "history_rnn.weight_ih_l0"):
        grad = dict(m.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_hard_segmentation_nll_equals_running_each_step_with_its_segment_code():
    """With hard boundaries, what CompILE is trained on is the controlled model driven by each
    step's segment code, the thing internal RL executes; in training, the mask-weighted mixture."""
    base, m, x = frozen_base(), make_model(), batch()
    m.eval()
    with torch.no_grad():
        res = compile_loss(base, m, LAYER, x)
        seg = res["out"]
        code = seg.codes.gather(1, seg.hard_segment()[..., None].expand(-1, -1, 8))  # (B, T, n_z)
        residual = base.lower(x.obs[:, :-1], LAYER)
        nll = -base.action_log_prob(base.upper(m.control(residual, code), LAYER), x.actions)
    mask = x.mask.float()
    assert torch.allclose(res["action_nll"], (nll * mask).sum() / mask.sum(), atol=1e-5)
    assert torch.equal(res["prev_codes"][:, 1:], code[:, :-1]) and (res["prev_codes"][:, 0] == 0).all()
    assert (seg.hard_segment()[x.mask] > 0).any()  # more than one code in play
    m.train()
    res = compile_loss(base, m, LAYER, x, torch.Generator().manual_seed(0))
    seg = res["out"]
    mixed = (seg.segment_mask[..., None] * seg.codes[:, :, None]).sum(1)  # (B, T, n_z)
    assert torch.allclose(res["step_codes"], mixed, atol=1e-6)
    assert not torch.allclose(mixed[x.mask], seg.codes.gather(1, seg.hard_segment()[..., None].expand(-1, -1, 8))[x.mask])


def test_causal_switch_reads_no_future_input_and_steps_equal_the_sequence():
    base, m, x = frozen_base(), make_model(), batch()
    m.eval()
    t = 6
    obs = x.obs[:, :-1]
    future = obs.clone()
    future[:, t + 1 :] += torch.randn_like(future[:, t + 1 :])
    prev = torch.randn(obs.shape[0], obs.shape[1], 8)
    with torch.no_grad():
        r1, r2 = base.lower(obs, LAYER), base.lower(future, LAYER)
        b1, b2 = m.switch_gates(r1, prev), m.switch_gates(r2, prev)
        assert torch.equal(b1[:, : t + 1], b2[:, : t + 1])  # β_{1:t} untouched by o_{t+1:}
        assert not torch.allclose(b1[:, t + 1 :], b2[:, t + 1 :])
        assert torch.all(b1[:, 0] == 1)
        # the step-wise path RL uses gives the same gates
        h = torch.zeros(obs.shape[0], m.cfg.history_dim)
        steps = []
        for i in range(obs.shape[1]):
            steps.append(m.gate(r1[:, i], h, prev[:, i], first=(i == 0)))
            h = m.history(r1[:, i], h)
        assert torch.allclose(torch.stack(steps, 1), b1, atol=1e-5)
        # ... whereas CompILE's segmenter is non-causal: its first segment's code sees the future
        s1 = m(obs, x.actions, torch.ones_like(x.mask))
        s2 = m(future, x.actions, torch.ones_like(x.mask))
        assert not torch.allclose(s1.mean[:, 0], s2.mean[:, 0])


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    from internalrl.pipeline import _load_compile
    from internalrl.train import CheckpointError, save_weights

    base, m, x = frozen_base(), make_model(), batch()
    m.eval()
    save_weights(m, tmp_path / "compile.safetensors")
    loaded = _load_compile(tmp_path / "compile.safetensors", m.cfg, base, "cpu")
    assert not loaded.training
    with torch.no_grad():
        a, b = compile_loss(base, m, LAYER, x), compile_loss(base, loaded, LAYER, x)
        for k in ("loss", "action_nll", "kl_z", "kl_b", "switch_loss", "switch_logits"):
            assert torch.equal(a[k], b[k]), k
        assert torch.equal(a["out"].boundaries, b["out"].boundaries) and torch.equal(a["out"].codes, b["out"].codes)
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="corrupt"):
        _load_compile(tmp_path / "bad.safetensors", m.cfg, base, "cpu")


def test_internal_rollout_switches_where_the_termination_head_fires():
    spec = GridSpec(horizon=20)
    base = frozen_base(spec.obs_dim)
    m = make_model(spec.obs_dim).eval()
    with torch.no_grad():  # a switch that fires on about half the steps
        torch.manual_seed(1)
        m.switch_unit[-1].weight.normal_(0, 0.5)
        m.switch_unit[-1].bias.fill_(1.0)
    policy = RecurrentCodePolicy(W, 8, hidden=8)
    env = BatchedGridPinpad(6, parse_task_set("0-1-2-3", 8), spec, seed=1)
    roll = rollout_internal(base, m, policy, env, LAYER, seed=0, device="cpu")
    assert roll.decisions[:, 0].all()
    # replay the switch over the recorded residuals with the codes in force
    z, held = torch.zeros(6, 8), []
    for t in range(spec.horizon):
        z = torch.where(roll.decisions[:, t, None], roll.codes[:, t], z)
        held.append(z)
    prev = torch.nn.functional.pad(torch.stack(held, 1)[:, :-1], (0, 0, 1, 0))
    with torch.no_grad():
        beta = m.switch_gates(roll.residuals, prev)
    live = torch.arange(spec.horizon)[None] < roll.lengths[:, None]
    assert torch.equal(roll.decisions[live], (beta > 0.5)[live])
    assert 0 < roll.decisions[:, 1:][live[:, 1:]].float().mean() < 1  # sometimes, not always


def test_bad_config_names_the_field():
    from internalrl.config import ConfigError, load_config

    with pytest.raises(ValueError, match="compile.gumbel_temperature"):
        CompileConfig(gumbel_temperature=0).validate(W)
    with pytest.raises(ConfigError, match="compile.rank"):
        load_config("quick", ["compile.rank=1000"])
    assert load_config("quick").compile.steps < CompileConfig().steps


TINY = ["data.num_episodes=40", "model.width=16", "model.depth=2", "model.heads=2", "model.head_dim=8",
        "model.mlp=16", "train.steps=2", "train.batch_size=4", "train.eval_every=2", "train.checkpoint_every=2",
        "train.snapshots=1", "train.warmup_steps=1", "eval.num_envs=4", "compile.steps=2", "compile.batch_size=4",
        "compile.hidden=8", "rl.episodes=4", "rl.batch_size=2", "rl.policy_hidden=8", "env.horizon=30",
        "model.max_len=32"]


def test_run_rl_compile_end_to_end(tmp_path):
    from internalrl.config import load_config
    from internalrl.rundir import RunDir
    from internalrl.pipeline import run_rl, stage_base_model, stage_data

    cfg = load_config("quick", TINY)
    run = RunDir(tmp_path / "run", cfg)
    stage_data(cfg, run, progress=False)
    stage_base_model(cfg, run, progress=False)
    folder = run_rl(cfg, run, "compile", task="0-1", progress=False)
    assert folder.name == "rl_compile_0-1_4ep" and (folder / "DONE").exists()
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["headline"]["method"] == "compile" and [c[0] for c in metrics["curve"]] == [2, 4]
    stage = tmp_path / "run" / "compile"
    assert (stage / "DONE").exists() and (stage / "compile.safetensors").stat().st_size > 0
    assert json.loads((stage / "config.json").read_text())["compile"]["steps"] == 2
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert 0 <= results["compile"]["segmenter_f1"] <= 1 and 1 <= results["compile"]["segments_per_episode"] <= 4
    assert run_rl(cfg, run, "compile", task="0-1", progress=False) == folder  # finished: skipped


def test_runs_made_before_a_config_section_existed_still_open(tmp_path):
    from dataclasses import replace

    from internalrl.config import load_config
    from internalrl.rundir import RunDir, RunDirError

    cfg = load_config("quick")
    RunDir(tmp_path / "run", cfg)
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    del meta["config"]["compile"]  # as written before the CompILE baseline existed
    (tmp_path / "run" / "run.json").write_text(json.dumps(meta))
    RunDir(tmp_path / "run", cfg)
    with pytest.raises(RunDirError, match="another run's artifacts"):
        RunDir(tmp_path / "run", replace(cfg, seed=3))


def test_runs_made_before_a_config_field_existed_open_only_at_its_default(tmp_path):
    from internalrl.config import load_config
    from internalrl.rundir import RunDir, RunDirError

    for preset, opens in (("paper", True), ("quick", False)):  # binarize_fraction: 0 (the default) and 0.1
        cfg = load_config(preset)
        RunDir(tmp_path / preset, cfg)
        meta = json.loads((tmp_path / preset / "run.json").read_text())
        del meta["config"]["metacontroller"]["binarize_fraction"]  # as written before the field existed
        (tmp_path / preset / "run.json").write_text(json.dumps(meta))
        if opens:
            RunDir(tmp_path / preset, cfg)
        else:
            with pytest.raises(RunDirError, match=r"metacontroller.binarize_fraction: None there, 0.1 now"):
                RunDir(tmp_path / preset, cfg)
