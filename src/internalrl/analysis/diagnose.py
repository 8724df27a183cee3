"""Diagnoses of a finished run: ``internalrl diagnose NAME RUN``.

* ``free-play-failures``: how the base model's free-play episodes fail (which wrong colour ended
  each one, and how confident the failing step was);
* ``code-content``: what the frozen metacontroller's code z carries (linear probes of the
  subgoal, the successor chosen, the walking direction, the first action);
* ``code-search``: whether *any* codes steer the base model through a task through the
  metacontroller's decoder (a cross-entropy search over code tables, an oracle choosing the row).

Each reads the run's own config (``run.json``), prints its table and returns the numbers.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..config import Config
from ..data import Trajectories, load_trajectories, make_batch
from ..envs.gridworld import BatchedGridPinpad
from ..envs.tasks import parse_task_set
from ..errors import RunDirError
from ..live import LiveRows
from ..rundir import stored_config


@dataclass
class FinishedRun:
    """What a diagnosis reads of a run directory: its config, base model, clean data D* with its
    held-out episodes, and (when it has one) the frozen metacontroller."""
    root: Path
    cfg: Config
    base: torch.nn.Module
    data: Trajectories
    val_idx: np.ndarray
    meta: torch.nn.Module | None = None


def load_finished_run(root: str | Path, metacontroller: str | None = None, overrides: list[str] = ()) -> FinishedRun:
    """The run at ``root`` on the CPU, with its own config (``overrides``: ``section.field=value``
    changes to it, e.g. the layer of a metacontroller trained elsewhere); ``metacontroller``: the
    folder whose frozen metacontroller (``frozen.safetensors``) to load too, e.g. ``"metacontroller"``."""
    from ..config import load_config
    from ..metacontroller import Metacontroller
    from ..train import load_model, load_weights

    root = Path(root)
    cfg = stored_config(root)
    if cfg is None:
        raise RunDirError(f"{root} is not an internalrl run (no run.json)")
    cfg = load_config(overrides=list(overrides), base=cfg)
    for stage in ("data", "base_model"):
        if not (root / stage / "DONE").exists():
            raise RunDirError(f"{root} has no finished {stage} stage; run `internalrl run --out {root}` first")
    if metacontroller and not (root / metacontroller / "frozen.safetensors").exists():
        raise RunDirError(f"{root} has no finished {metacontroller} stage (no {metacontroller}/frozen.safetensors); "
                          f"run `internalrl metacontroller --out {root}` first")
    base = load_model(root / "base_model")
    clean = root / "data_clean"  # D* (ε = 0): the training data itself when ε = 0
    data = load_trajectories(clean if (clean / "DONE").exists() else root / "data")
    _, val_idx = data.split(cfg.data.val_fraction)
    meta = None
    if metacontroller:
        meta = load_weights(Metacontroller(cfg.metacontroller, base.cfg.width), root / metacontroller / "frozen.safetensors")
        meta.eval()
    return FinishedRun(root, cfg, base, data, val_idx, meta)


def compass_direction(agent, target, size: int):
    """The main compass direction from grid cell ``agent`` to cell ``target`` (ints or arrays):
    0 up, 1 down, 2 left, 3 right; vertical when the two axes tie."""
    agent, target = np.asarray(agent), np.asarray(target)
    dy, dx = target // size - agent // size, target % size - agent % size
    return np.where(np.abs(dy) >= np.abs(dx), np.where(dy < 0, 0, 1), np.where(dx < 0, 2, 3))


def linear_probe(x: torch.Tensor, y: np.ndarray, test: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """A softmax regression from ``x`` (N, D) to the labels ``y`` (N,), fit (300 full-batch Adam
    steps on standardised inputs) where ``test`` is False and scored where it is True.
    Returns (accuracy, majority-class rate) on the test rows."""
    y = torch.as_tensor(y)
    test = torch.as_tensor(test)
    tr, te = ~test, test
    classes = int(y.max()) + 1
    mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-6
    xs = (x - mu) / sd
    torch.manual_seed(seed)  # the probe's initial weights, so reruns print the same numbers
    lin = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.Adam(lin.parameters(), lr=0.05)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(lin(xs[tr]), y[tr])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = float((lin(xs[te]).argmax(1) == y[te]).float().mean())
    majority = float(torch.bincount(y[te], minlength=classes).max()) / int(te.sum())
    return acc, majority


# ------------------------------------------------------------------ free-play failures
FAILURE_KINDS = (
    "new subgoal: cyclic successor (an A→B-type transition)",
    "new subgoal: back onto the pair just done",
    "new subgoal: a pair's second colour",
    "new subgoal: another pair",
    "inside a subgoal: back onto the first colour",
    "inside a subgoal: another colour",
)


def failure_kind(before: list[int], wrong: int, colours_per_subgoal: int, num_colours: int) -> str:
    """Which of :data:`FAILURE_KINDS` a wrong colour ``wrong`` is, after the colours ``before``.
    At the start of a new subgoal (the previous pair complete, or the first colour): the cyclic
    successor (the colour after the last, 3 → 4, 7 → 0: one of the post-training transitions
    A→B, B→C, C→D, D→A that no pretraining task contains), back onto the pair just done, a
    pair's second colour without its first, or another pair's first colour. Inside a subgoal:
    back onto the colour just visited, or any other colour."""
    if len(before) % colours_per_subgoal == 0:
        if before and wrong == (before[-1] + 1) % num_colours:
            return FAILURE_KINDS[0]
        if before and wrong in before[-colours_per_subgoal:]:
            return FAILURE_KINDS[1]
        return FAILURE_KINDS[2] if wrong % colours_per_subgoal else FAILURE_KINDS[3]
    return FAILURE_KINDS[4] if wrong == before[-1] else FAILURE_KINDS[5]


def free_play_failures(run: FinishedRun, episodes: int = 4096, seed: int = 0, log: Callable = print) -> dict:
    """Roll the base model out in free play (no task given, as the ``eval_base`` stage does) and
    sort every episode that a wrong colour ended by :func:`failure_kind`; also the probability
    the model gave the failing step's action. Shares are of all episodes."""
    cfg, base = run.cfg, run.base
    spec = cfg.env.spec()
    env = BatchedGridPinpad(episodes, parse_task_set(cfg.env.pretrain_tasks, spec.num_objects), spec, seed=seed)
    obs = env.reset(free_play=True)
    gen = torch.Generator().manual_seed(seed)
    state = base.initial_state(env.num_envs, "cpu")
    rows = LiveRows(env.num_envs, "cpu")
    visits = [[] for _ in range(env.num_envs)]
    fail_prob = np.full(env.num_envs, np.nan)  # the probability of the action that ended the episode on a wrong colour
    with torch.no_grad():
        for _ in range(spec.horizon):
            keep = rows.shrink(env)
            if keep is not None:
                state.select_(keep)
            live = rows.idx.numpy()
            out = base(torch.as_tensor(obs)[rows.idx][:, None], state=state)  # one cached step
            probs = torch.softmax(out.action[:, -1], -1)
            action = torch.multinomial(probs, 1, generator=gen)[:, 0]
            obs, _, _, _, info = env.step(rows.actions(action))
            failed = info["failure"][live]
            fail_prob[live[failed]] = probs[failed, action[failed]].numpy()
            for i in np.flatnonzero(info["visited"] >= 0):
                visits[i].append(int(info["visited"][i]))
            if env.done.all():
                break
    kinds = Counter(failure_kind(visits[i][:-1], visits[i][-1], spec.colours_per_subgoal, spec.num_objects)
                    for i in np.flatnonzero(~np.isnan(fail_prob)))
    n = env.num_envs
    failed = np.isfinite(fail_prob)
    res = {"episodes": n, "seed": seed, "success": float(env.succeeded.mean()), "wrong_colour": float(failed.mean()),
           "time_limit": float((~env.succeeded & ~failed).mean()),
           "failing_step_probability_median": float(np.nanmedian(fail_prob)) if failed.any() else None,
           "failing_step_probability_mean": float(np.nanmean(fail_prob)) if failed.any() else None,
           "failing_steps_below_0.1": float(np.mean(fail_prob[failed] < 0.1)) if failed.any() else None,
           "kinds": {k: c / n for k, c in kinds.most_common()}}
    log(f"free play, {n} episodes (seed {seed}): success {res['success']:.3f}, wrong colour {res['wrong_colour']:.3f}, "
        f"time limit {res['time_limit']:.3f}")
    if failed.any():
        log(f"the failing step's action had probability: median {res['failing_step_probability_median']:.3f}, "
            f"mean {res['failing_step_probability_mean']:.3f}, below 0.1 in {res['failing_steps_below_0.1']:.2f} "
            "of failures")
    log("wrong colours, by kind (share of all episodes):")
    for kind, share in res["kinds"].items():
        log(f"  {kind:55s} {share:.3f}")
    return res


# ------------------------------------------------------------------ what the codes carry
CODE_LABELS = ("subgoal", "alternative", "direction", "first action")


def code_segments(run: FinishedRun, episodes: int = 4000) -> tuple[torch.Tensor, np.ndarray]:
    """On held-out expert episodes, the frozen metacontroller's code (encoder means, no sampling
    noise) at the last step of every ground-truth segment, with the segment's labels. Returns
    codes ``(segments, n_z)`` and rows ``(segments, 5)``: segment index in its episode, subgoal,
    alternative (for segments after the first: which of the successors pretraining allows after
    the previous subgoal, 0 the lower-lettered; -1 otherwise), compass direction from the agent
    to the segment's first colour when it starts, and the expert's first action."""
    cfg, base, meta, data = run.cfg, run.base, run.meta, run.data
    spec = cfg.env.spec()
    layer = cfg.meta_layer()
    val_idx = run.val_idx[:episodes]
    succ = {g: set() for g in range(spec.num_subgoals)}  # successors of each subgoal in the pretraining tasks
    for t in parse_task_set(cfg.env.pretrain_tasks, spec.num_objects):
        gs = [c // spec.colours_per_subgoal for c in t[::spec.colours_per_subgoal]]
        for x, y in zip(gs, gs[1:]):
            succ[x].add(y)
    codes, rows = [], []
    with torch.no_grad():
        for chunk in np.array_split(val_idx, max(1, len(val_idx) // 500)):
            batch = make_batch(data, chunk)
            residual = base.lower(batch.obs[:, :-1], layer)  # (batch, time, width)
            out = meta(residual, batch.mask, noise=torch.zeros(*residual.shape[:2], meta.cfg.code_dim))
            sub = batch.subgoals.numpy()
            agent = data.arrays["agent"][chunk].astype(np.int64)
            for i, ep in enumerate(chunk):
                ident = data.arrays["layout"][ep].astype(np.int64)
                cells = {int(ident[c]) - spec.num_walls: c for c in range(spec.num_cells) if ident[c] >= spec.num_walls}
                n = int(batch.mask[i].sum())
                s = sub[i, :n]
                # no pretraining task repeats a subgoal back to back, so every change of label starts a segment
                starts = [0] + [t for t in range(1, n) if s[t] != s[t - 1]]
                for k, t0 in enumerate(starts):
                    t1 = (starts[k + 1] if k + 1 < len(starts) else n) - 1
                    g = int(s[t0])
                    direction = int(compass_direction(int(agent[i, t0]), cells[spec.colours_per_subgoal * g], spec.size))
                    alt = -1
                    if k > 0:
                        options = sorted(succ[int(s[starts[k - 1]])])
                        alt = options.index(g) if g in options else -1
                    codes.append(out.code[i, t1].numpy())
                    rows.append((k, g, alt, direction, int(batch.actions[i, t0])))
    return torch.as_tensor(np.array(codes), dtype=torch.float32), np.array(rows)


def code_content(run: FinishedRun, episodes: int = 4000, log: Callable = print) -> dict:
    """Linear probes from the codes of :func:`code_segments` to each label, fit on a random 70% of
    the segments and scored on the rest, next to the majority-class rate; the first segment of
    an episode (four options, no predecessor) apart from the later ones."""
    codes, rows = code_segments(run, episodes)
    log(f"{len(rows)} segments from {len(run.val_idx[:episodes])} episodes; code norm {codes.norm(dim=1).mean():.2f}")
    res = {"segments": len(rows), "code_norm": float(codes.norm(dim=1).mean())}
    for name, sel in (("first segment", rows[:, 0] == 0), ("later segments", rows[:, 0] > 0)):
        log(f"{name} ({int(sel.sum())}):")
        res[name] = {}
        for col, label in enumerate(CODE_LABELS, start=1):
            ok = sel & (rows[:, col] >= 0)
            if label == "alternative" and name == "first segment":
                continue
            y = rows[ok, col]
            if len(y) < 2:
                continue
            perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
            test = np.zeros(len(y), dtype=bool)
            test[perm[int(0.7 * len(y)):].numpy()] = True
            acc, maj = linear_probe(codes[torch.as_tensor(ok)], y, test, 0)
            res[name][label] = {"accuracy": acc, "majority_class": maj}
            log(f"  {label:>11}: probe accuracy {acc:.3f} (majority class {maj:.3f})")
    return res


# ------------------------------------------------------------------ code search
def code_search(run: FinishedRun, task: str = "0-1-2-3", index: str = "subgoal", iterations: int = 12,
                population: int = 24, episodes: int = 256, final_episodes: int = 1024, seed: int = 0,
                log: Callable = print, init: list | None = None) -> dict:
    """A cross-entropy search over code tables for ``task``. The table has one row per oracle
    index, chosen at every decision (the first step and wherever the hardened switch fires, as
    in internal RL): ``subgoal`` (the ground-truth subgoal), ``direction`` (the main compass
    direction to the next colour) or ``both`` (subgoal × direction). Each iteration draws
    ``population`` tables around the current mean (per-entry scale starting at the prior's 1),
    rolls them all out on the same ``episodes`` layouts in one batch, and refits mean and scale
    to the best quarter by mean progress (colours visited in order / task length). Finally the
    mean table is scored on ``final_episodes`` fresh episodes beside the all-zero table and
    four tables drawn from the prior. ``init`` (rows x code_dim numbers) starts the search's mean
    there instead of at zero; with ``iterations=0`` that table is only scored."""
    from ..errors import ConfigError
    from ..rl.internal import rollout_internal

    if index not in ("subgoal", "direction", "both"):
        raise ConfigError(f"--index must be subgoal, direction or both, got {index!r}")
    if min(iterations + (init is not None), population - 1, episodes, final_episodes) < 1:
        raise ConfigError("--iterations (at least 0 with --init), --episodes must be at least 1 and --population at "
                          "least 2")
    cfg, base, meta = run.cfg, run.base, run.meta
    spec = cfg.env.spec()
    layer = cfg.meta_layer()
    tasks = parse_task_set(task, spec.num_objects)
    nz = meta.cfg.code_dim
    n_rows = {"subgoal": spec.num_subgoals, "direction": 4, "both": 4 * spec.num_subgoals}[index]

    def row_index(env: BatchedGridPinpad) -> np.ndarray:
        sub = np.maximum(env.subgoal(), 0)
        target = env.colour_cell[np.arange(env.num_envs), np.maximum(env.next_colour(), 0)]
        way = compass_direction(env.agent, target, spec.size)
        return {"subgoal": sub, "direction": way, "both": sub * 4 + way}[index]

    def evaluate(tables: torch.Tensor, n_ep: int, env_seed: int) -> tuple[np.ndarray, np.ndarray]:
        """tables (C, rows, nz) -> per-candidate success and mean progress, all on the same layouts."""
        c = tables.shape[0]
        one = BatchedGridPinpad(n_ep, tasks, spec, seed=env_seed)  # solvable layouts, copied into every block
        one.reset()
        env = BatchedGridPinpad(c * n_ep, tasks, spec, seed=env_seed, require_solvable=False)
        env.reset(task_index=np.tile(one.task_index, c))
        env.load_layout(np.tile(one.cell_identity, (c, 1)), np.tile(one.agent, c))
        owner = torch.arange(c).repeat_interleave(n_ep)
        with torch.no_grad():
            rollout_internal(base, meta, None, env, layer, seed=env_seed, device="cpu", reset=False,
                             codes=lambda t, e: tables[owner, torch.as_tensor(row_index(e))])
        success = env.succeeded.reshape(c, n_ep).mean(1)
        progress = (env.progress / env.task_len[env.task_index]).reshape(c, n_ep).mean(1)
        return success, progress

    gen = torch.Generator().manual_seed(seed)
    mean, scale = torch.zeros(n_rows, nz), torch.ones(n_rows, nz)
    if init is not None:
        try:
            start = torch.as_tensor(init, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            start = torch.empty(0)  # not a table of numbers: reported below with the shape expected
        if start.shape != (n_rows, nz):
            raise ConfigError(f"--init must hold a {n_rows} x {nz} table (one row per {index} value, one column per "
                              f"code dimension), got shape {tuple(start.shape)}")
        mean = start.clone()
    elite_n = max(2, population // 4)
    t0 = time.perf_counter()
    log(f"task {task}, index {index} ({n_rows} rows x {nz}), population {population}, {episodes} episodes each")
    history = []
    for it in range(iterations):
        cand = mean + scale * torch.randn(population, n_rows, nz, generator=gen)
        cand[0] = mean  # keep the current mean in the race
        success, progress = evaluate(cand, episodes, 1000 + it)
        elite = cand[torch.as_tensor(np.argsort(-progress, kind="stable")[:elite_n])]
        mean, scale = elite.mean(0), elite.std(0).clamp(min=0.05)
        history.append({"mean_table_success": float(success[0]), "mean_table_progress": float(progress[0]),
                        "best_success": float(success.max()), "population_success": float(success.mean())})
        log(f"iter {it:2d}: mean-table success {success[0]:.3f} progress {progress[0]:.3f} | best success "
            f"{success.max():.3f} | population mean {success.mean():.3f} | code-table norm {mean.norm():.2f} "
            f"| {time.perf_counter() - t0:.0f} s")
    final = torch.stack([mean, torch.zeros(n_rows, nz)] + [torch.randn(n_rows, nz, generator=gen) for _ in range(4)])
    success, progress = evaluate(final, final_episodes, 999_999)
    log(f"final ({final_episodes} fresh episodes): searched table success {success[0]:.3f} (progress {progress[0]:.3f}); "
        f"all-zero codes {success[1]:.3f} ({progress[1]:.3f}); prior-drawn tables "
        f"{', '.join(f'{s:.3f}' for s in success[2:])}")
    log(f"searched table row norms: {[round(float(x), 2) for x in mean.norm(dim=1)]}")
    return {"task": task, "index": index, "iterations": history, "searched_success": float(success[0]),
            "searched_progress": float(progress[0]), "zero_codes_success": float(success[1]),
            "prior_tables_success": [float(s) for s in success[2:]], "table": mean.tolist()}


DIAGNOSES = {
    "free-play-failures": "how the base model's free-play episodes fail (which wrong colour, how confidently)",
    "code-content": "what the frozen metacontroller's codes carry (linear probes: subgoal, successor, direction, action)",
    "code-search": "whether any codes steer the base model through a task via the decoder (an oracle picks the row)",
}
