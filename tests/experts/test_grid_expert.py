import numpy as np

from internalrl.envs.gridworld import UNREACHABLE, BatchedGridPinpad, GridSpec
from internalrl.envs.tasks import parse_task_set
from internalrl.experts.grid import expert_actions, optimal_action_mask, safe_action_mask

TASKS = parse_task_set("grid-pretrain", 8)


def test_expert_solves_every_pretraining_episode():
    env = BatchedGridPinpad(512, TASKS, GridSpec(), seed=0)
    rng = np.random.default_rng(0)
    env.reset()
    while not env.done.all():
        env.step(expert_actions(env, rng)[0])
    assert env.succeeded.all()


def test_expert_moves_along_shortest_safe_paths():
    env = BatchedGridPinpad(256, TASKS, GridSpec(), seed=1)
    rng = np.random.default_rng(1)
    env.reset()
    for _ in range(30):
        live = ~env.done
        target = env.next_colour()
        before = env.leg_distances(np.maximum(target, 0), env.agent).min(1)
        actions, mask = expert_actions(env, rng)
        assert mask[np.arange(256), actions].all()
        progress = env.progress.copy()
        env.step(actions)
        same_leg = live & (env.progress == progress)  # still heading for the same colour
        after = env.leg_distances(np.maximum(target, 0), env.agent).min(1)
        assert (after[same_leg] == before[same_leg] - 1).all()


def test_optimal_mask_is_uniform_over_all_shortest_actions():
    # open 7x7, colour 0 in the far corner: from the opposite corner both down and right are optimal
    spec = GridSpec(num_walls=0, num_objects=2)
    env = BatchedGridPinpad(1, [(0, 1)], spec, seed=0, require_solvable=False)
    env.reset()
    ident = np.full(49, -1)
    ident[48] = 0  # colour 0 bottom right, colour 1 top right
    ident[6] = 1
    env.load_layout(ident[None], np.array([0]))
    assert optimal_action_mask(env)[0].tolist() == [False, True, False, True]
    counts = np.bincount([expert_actions(env, np.random.default_rng(s))[0][0] for s in range(400)], minlength=4)
    assert counts[0] == counts[2] == 0 and 150 < counts[1] < 250


def test_noisy_expert_never_steps_on_a_wrong_colour():
    env = BatchedGridPinpad(256, TASKS, GridSpec(), seed=2)
    rng = np.random.default_rng(2)
    env.reset()
    while not env.done.all():
        _, _, _, _, info = env.step(expert_actions(env, rng, epsilon=0.5)[0])
        assert not info["failure"].any()
    assert safe_action_mask(env).any(1).all()
    assert env.dist.max() <= UNREACHABLE


def test_task_marginal_reference_equals_expert_when_there_is_one_task_and_is_worse_with_many():
    from internalrl.data import expert_reference, generate_grid
    from internalrl.experts.grid import task_marginal_reference

    spec = GridSpec()
    one = parse_task_set("0-1-2-3", 8)
    arrays, _ = generate_grid(64, one, spec, seed=0, chunk=64, progress=False)
    ref = expert_reference(arrays)
    marg = task_marginal_reference(arrays, one, spec)
    assert abs(marg["nll"] - ref["nll"]) < 1e-9 and abs(marg["posterior_nll"] - ref["nll"]) < 1e-9
    arrays, _ = generate_grid(128, TASKS, spec, seed=0, chunk=128, progress=False)
    many = task_marginal_reference(arrays, TASKS, spec)
    # the path tells the Bayes-optimal predictor more than the visits alone, and less than the task
    assert many["nll"] > many["posterior_nll"] + 0.05
    assert many["posterior_nll"] > expert_reference(arrays)["nll"] + 0.05
    assert np.isfinite(many["posterior_nll"])  # the expert's actions always have posterior mass


def test_task_marginal_policy_solves_a_single_task_and_only_spells_admissible_tasks():
    from internalrl.envs.gridworld import BatchedGridPinpad
    from internalrl.experts.grid import task_marginal_free_play

    spec = GridSpec()
    one = parse_task_set("0-1-2-3", 8)
    # with one admissible task the averaged policy is the expert: it always succeeds
    assert task_marginal_free_play(BatchedGridPinpad(64, one, spec, seed=1), seed=0) == 1.0
    env = BatchedGridPinpad(256, TASKS, spec, seed=2)
    rate = task_marginal_free_play(env, seed=0)
    assert 0.5 < rate < 1.0  # mixing over tasks sometimes walks onto a colour no task wants next
    assert (env.consistent[env.succeeded].sum(1) >= 1).all()


def test_soft_targets_are_the_bayes_optimal_predictor_step_by_step():
    from internalrl.data import generate_grid
    from internalrl.experts.grid import posterior_action_targets, task_marginal_reference

    spec = GridSpec()
    arrays, _ = generate_grid(96, TASKS, spec, seed=3, chunk=96, progress=False)
    soft = posterior_action_targets(arrays, TASKS, spec, chunk=40).astype(np.float64)  # chunks must not matter
    live = np.arange(soft.shape[1])[None] < arrays["lengths"][:, None]
    assert np.allclose(soft[live].sum(-1), 1, atol=2e-3) and (soft[~live] == 0).all()
    picked = np.take_along_axis(soft, arrays["actions"][..., None].astype(np.int64), -1)[..., 0]
    assert (picked[live] > 0).all()  # the expert's action always has mass
    ref = task_marginal_reference(arrays, TASKS, spec)
    assert abs(-np.log(picked[live]).mean() - ref["posterior_nll"]) < 1e-3
    # on the first step of a one-task dataset the soft target is the expert's uniform optimal set
    one = parse_task_set("0-1-2-3", 8)
    arrays, _ = generate_grid(32, one, spec, seed=4, chunk=32, progress=False)
    soft = posterior_action_targets(arrays, one, spec)
    optimal = ((arrays["optimal"][:, 0, None].astype(np.int64) >> np.arange(4)) & 1).astype(float)
    assert np.allclose(soft[:, 0], optimal / optimal.sum(1, keepdims=True), atol=1e-3)
