"""Gridworld-pinpad (SPEC §1.1), stepped as array operations over N environments.

Layout of one observation, ``(size, size, walls + objects + 1)`` flattened row-major:
for every cell (row-major) a one-hot over the wall identities ``0..W-1`` then the object
colours ``W..W+O-1`` (all zero when the cell is empty), then one channel that is 1 at the
agent's cell. With the paper's values that is 7·7·13 = 637 numbers. The observation shows
neither the task nor what has been visited.

A cell's *colour* is visited when the agent moves onto it from a different cell. An episode
ends on success (reward 1), on visiting a colour that is not the next one (failure), or when
the horizon runs out. Every environment holds a *set* of admissible tasks; it succeeds when
the colours visited so far spell one of them (a single task is a set of one; free play uses
the whole pretraining set).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .tasks import Task, TaskError, advance_tasks, next_colours, subgoals_of

UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3
ACTION_NAMES = ("up", "down", "left", "right")
_DELTAS = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]])
UNREACHABLE = np.int16(10_000)


@dataclass(frozen=True)
class GridSpec:
    size: int = 7
    num_objects: int = 8
    num_walls: int = 4
    horizon: int = 100
    colours_per_subgoal: int = 2

    def __post_init__(self) -> None:
        if self.size < 2:
            raise ValueError(f"grid size must be at least 2, got {self.size}")
        if self.num_objects < 1:
            raise ValueError(f"num_objects must be at least 1, got {self.num_objects}")
        if self.num_walls < 0:
            raise ValueError(f"num_walls must be non-negative, got {self.num_walls}")
        if self.num_objects + self.num_walls + 1 > self.size ** 2:
            raise ValueError(
                f"{self.num_objects} objects + {self.num_walls} walls + the agent do not fit "
                f"on a {self.size}x{self.size} grid ({self.size ** 2} cells)"
            )
        if self.horizon < 1:
            raise ValueError(f"horizon must be at least 1, got {self.horizon}")
        if self.colours_per_subgoal < 1:
            raise ValueError("colours_per_subgoal must be at least 1")

    @property
    def num_cells(self) -> int:
        return self.size * self.size

    @property
    def channels(self) -> int:
        return self.num_walls + self.num_objects + 1

    @property
    def obs_dim(self) -> int:
        return self.num_cells * self.channels

    @property
    def num_subgoals(self) -> int:
        return -(-self.num_objects // self.colours_per_subgoal)


def neighbour_table(size: int) -> np.ndarray:
    """(cells, 4) flat index of the cell each action leads to, -1 off the grid."""
    rows, cols = np.divmod(np.arange(size * size), size)
    nr = rows[:, None] + _DELTAS[None, :, 0]
    nc = cols[:, None] + _DELTAS[None, :, 1]
    inside = (nr >= 0) & (nr < size) & (nc >= 0) & (nc < size)
    return np.where(inside, nr * size + nc, -1)


def pad_tasks(tasks: Sequence[Task]) -> tuple[np.ndarray, np.ndarray]:
    """(K, Lmax+1) colours padded with -1 (one spare column), and (K,) lengths."""
    longest = max(len(t) for t in tasks)
    table = np.full((len(tasks), longest + 1), -1, dtype=np.int64)
    for k, t in enumerate(tasks):
        table[k, : len(t)] = t
    return table, np.array([len(t) for t in tasks], dtype=np.int64)


class BatchedGridPinpad:
    """N gridworld-pinpad environments stepped together.

    Environments do not auto-reset: once done, an environment ignores its actions and
    returns done until the next :meth:`reset`, so that a batch of episodes can be rolled
    out in lock-step for ``horizon`` steps.
    """

    def __init__(
        self,
        num_envs: int,
        tasks: Sequence[Task],
        spec: GridSpec = GridSpec(),
        seed: int | np.random.Generator | None = None,
        require_solvable: bool = True,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be at least 1, got {num_envs}")
        if not tasks:
            raise TaskError("at least one task is needed")
        for t in tasks:
            bad = [c for c in t if not 0 <= c < spec.num_objects]
            if bad:
                raise TaskError(
                    f"task {'-'.join(map(str, t))} names colour(s) {bad}; this grid has "
                    f"colours 0..{spec.num_objects - 1}"
                )
        self.spec = spec
        self.num_envs = num_envs
        self.tasks = [tuple(t) for t in tasks]
        self.task_table, self.task_len = pad_tasks(self.tasks)
        self.require_solvable = require_solvable
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self.neighbours = neighbour_table(spec.size)  # (cells, 4)
        self.num_resampled = 0  # layouts thrown away because no safe path existed
        self.num_layouts = 0
        self._ar = np.arange(num_envs)

    # ------------------------------------------------------------------ reset
    def reset(self, task_index: np.ndarray | None = None, free_play: bool = False) -> np.ndarray:
        """Sample fresh layouts. ``task_index`` (N,) picks each environment's task (default:
        uniform); ``free_play`` admits every task of the set in every environment."""
        n, spec, k = self.num_envs, self.spec, len(self.tasks)
        if free_play:
            self.consistent = np.ones((n, k), dtype=bool)
        else:
            if task_index is None:
                task_index = self.rng.integers(0, k, size=n)
            task_index = np.asarray(task_index, dtype=np.int64)
            if task_index.shape != (n,) or task_index.min() < 0 or task_index.max() >= k:
                raise ValueError(f"task_index must be {n} integers in [0, {k})")
            self.consistent = np.zeros((n, k), dtype=bool)
            self.consistent[self._ar, task_index] = True
        self.task_index = np.full(n, -1) if free_play else task_index

        self.cell_identity = np.full((n, spec.num_cells), -1, dtype=np.int64)
        self.colour_cell = np.zeros((n, spec.num_objects), dtype=np.int64)
        self.agent = np.zeros(n, dtype=np.int64)
        self.dist = np.zeros((n, spec.num_objects, spec.num_cells), dtype=np.int16)
        todo = np.arange(n)
        for attempt in range(1000):
            self._sample_layouts(todo)
            self.num_layouts += len(todo)
            if attempt:
                self.num_resampled += len(todo)
            if not self.require_solvable:
                break
            todo = todo[~self._solvable(todo)]
            if len(todo) == 0:
                break
        else:
            raise TaskError("could not sample a layout in which the task can be solved in "
                            f"{spec.horizon} steps; is the horizon long enough for the task?")
        self.progress = np.zeros(n, dtype=np.int64)
        self.t = np.zeros(n, dtype=np.int64)
        self.done = np.zeros(n, dtype=bool)
        self.succeeded = np.zeros(n, dtype=bool)
        return self.observation()

    def load_layout(self, cell_identity: np.ndarray, agent: np.ndarray) -> np.ndarray:
        """Set every environment's layout by hand (tests, replays): ``cell_identity (N, cells)``
        with -1 empty, ``0..W-1`` walls, ``W+k`` colour k; ``agent (N,)`` cells. Episodes restart
        from step 0 with the tasks chosen at the last :meth:`reset`. Returns the observation."""
        spec = self.spec
        ident = np.asarray(cell_identity, dtype=np.int64).reshape(self.num_envs, spec.num_cells)
        agent = np.asarray(agent, dtype=np.int64).reshape(self.num_envs)
        colour = self.cell_colour(ident)
        for i in range(self.num_envs):
            have = np.sort(colour[i][colour[i] >= 0])
            if not np.array_equal(have, np.arange(spec.num_objects)):
                raise ValueError(f"layout {i} must hold each colour 0..{spec.num_objects - 1} exactly once")
        if (ident[np.arange(self.num_envs), agent] >= 0).any():
            raise ValueError("the agent must start on an empty cell")
        self.cell_identity = ident
        self.colour_cell = np.argsort(np.where(colour >= 0, colour, spec.num_objects + 1), axis=1)[:, : spec.num_objects]
        self.agent = agent
        self.dist = self._distance_maps(ident)
        self.progress[:] = 0
        self.t[:] = 0
        self.done[:] = False
        self.succeeded[:] = False
        self.consistent = np.zeros_like(self.consistent)
        self.consistent[self._ar, np.maximum(self.task_index, 0)] = True
        self.consistent[self.task_index < 0] = True
        return self.observation()

    def _sample_layouts(self, idx: np.ndarray) -> None:
        spec = self.spec
        m = len(idx)
        perm = np.argsort(self.rng.random((m, spec.num_cells)), axis=1)
        objects = perm[:, : spec.num_objects]
        walls = perm[:, spec.num_objects : spec.num_objects + spec.num_walls]
        start = perm[:, spec.num_objects + spec.num_walls]
        ident = np.full((m, spec.num_cells), -1, dtype=np.int64)
        rows = np.arange(m)[:, None]
        ident[rows, walls] = np.arange(spec.num_walls)[None, :]
        ident[rows, objects] = spec.num_walls + np.arange(spec.num_objects)[None, :]
        self.cell_identity[idx] = ident
        self.colour_cell[idx] = objects
        self.agent[idx] = start
        self.dist[idx] = self._distance_maps(ident)

    # ------------------------------------------------------------ layout facts
    def cell_colour(self, ident: np.ndarray | None = None) -> np.ndarray:
        ident = self.cell_identity if ident is None else ident
        return np.where(ident >= self.spec.num_walls, ident - self.spec.num_walls, -1)

    def _distance_maps(self, ident: np.ndarray) -> np.ndarray:
        """(m, colours, cells): fewest moves from a cell onto colour k's cell, stepping only
        on empty cells (never a wall or another colour). The target cell itself is 0."""
        spec = self.spec
        m, c = ident.shape
        colour = self.cell_colour(ident)
        wall = (ident >= 0) & (ident < spec.num_walls)
        ks = np.arange(spec.num_objects)
        # passable[m, k, cell]: may the agent step onto this cell while heading for k?
        passable = ~wall[:, None, :] & ((colour[:, None, :] == -1) | (colour[:, None, :] == ks[None, :, None]))
        dist = np.full((m, spec.num_objects, c), UNREACHABLE, dtype=np.int16)
        target = colour[:, None, :] == ks[None, :, None]
        dist[target] = 0
        nb = self.neighbours  # (cells, 4)
        valid = nb >= 0
        nb_safe = np.where(valid, nb, 0)
        for _ in range(c):
            stepped = np.where(passable, dist, UNREACHABLE)
            via = np.where(valid[None, None], stepped[:, :, nb_safe], UNREACHABLE).min(-1) + 1
            new = np.minimum(dist, via.astype(np.int16))
            if np.array_equal(new, dist):
                break
            dist = new
        return dist

    def leg_distances(self, k: np.ndarray, cells: np.ndarray, env_idx: np.ndarray | None = None) -> np.ndarray:
        """(m, 4) moves still needed to reach colour k after taking each action from ``cells``
        (UNREACHABLE for an illegal action: a wall, off the grid or a wrong colour)."""
        env_idx = self._ar if env_idx is None else env_idx
        targets = self.neighbours[cells]  # (m, 4)
        inside = targets >= 0
        tsafe = np.where(inside, targets, 0)
        dist = self.dist[env_idx[:, None], k[:, None], tsafe]  # (m, 4)
        ident = self.cell_identity[env_idx[:, None], tsafe]
        colour = np.where(ident >= self.spec.num_walls, ident - self.spec.num_walls, -1)
        legal = inside & ((ident < 0) | (colour == k[:, None]))
        return np.where(legal, dist, UNREACHABLE)

    def _solvable(self, idx: np.ndarray) -> np.ndarray:
        """Every admissible task of each environment has a safe path within the horizon."""
        ok = np.ones(len(idx), dtype=bool)
        total = np.zeros((len(idx), len(self.tasks)), dtype=np.int64)
        for j, task in enumerate(self.tasks):
            active = self.consistent[idx, j]
            if not active.any():
                continue
            cell = self.agent[idx]
            for colour in task:
                kk = np.full(len(idx), colour)
                leg = self.leg_distances(kk, cell, idx).min(1)
                ok &= ~active | (leg < UNREACHABLE)
                total[:, j] += leg
                cell = self.colour_cell[idx, colour]
            ok &= ~active | (total[:, j] <= self.spec.horizon)
        return ok

    # ------------------------------------------------------------ observation
    def observation(self) -> np.ndarray:
        spec = self.spec
        obs = np.zeros((self.num_envs, spec.num_cells, spec.channels), dtype=np.float32)
        occupied = self.cell_identity >= 0
        e, cell = np.nonzero(occupied)
        obs[e, cell, self.cell_identity[e, cell]] = 1.0
        obs[self._ar, self.agent, spec.channels - 1] = 1.0
        return obs.reshape(self.num_envs, spec.obs_dim)

    def next_colour(self) -> np.ndarray:
        """(N,) the next colour to visit, or -1 when it is ambiguous (free play) or done."""
        return next_colours(self.task_table, self.progress, self.consistent, self.done)

    def subgoal(self) -> np.ndarray:
        """(N,) ground-truth subgoal (the pair holding the next colour), -1 if unknown."""
        return subgoals_of(self.next_colour(), self.spec.colours_per_subgoal)

    # ------------------------------------------------------------------- step
    def step(self, actions: np.ndarray):
        """Returns ``obs (N, D), reward (N,), terminated (N,), truncated (N,), info``.
        Environments already done are left untouched (reward 0, both flags False)."""
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,):
            raise ValueError(f"expected {self.num_envs} actions, got shape {actions.shape}")
        if actions.min() < 0 or actions.max() > 3:
            raise ValueError("actions must be in {0: up, 1: down, 2: left, 3: right}")
        active = ~self.done
        target = self.neighbours[self.agent, actions]
        tsafe = np.where(target >= 0, target, self.agent)
        wall = (self.cell_identity[self._ar, tsafe] >= 0) & (
            self.cell_identity[self._ar, tsafe] < self.spec.num_walls
        )
        new = np.where((target < 0) | wall | ~active, self.agent, tsafe)
        moved = new != self.agent
        self.agent = new
        colour = self.cell_colour()[self._ar, new]
        visited = moved & (colour >= 0)

        self.consistent, self.progress, success, failed = advance_tasks(
            self.task_table, self.task_len, self.progress, self.consistent, colour, visited)
        self.t = self.t + active
        terminated = active & (success | failed)
        truncated = active & ~terminated & (self.t >= self.spec.horizon)
        self.done = self.done | terminated | truncated
        self.succeeded |= success
        reward = success.astype(np.float32)
        info = {
            "visited": np.where(visited, colour, -1),
            "progress": self.progress.copy(),
            "subgoal": self.subgoal(),
            "success": success,
            "failure": failed,
        }
        return self.observation(), reward, terminated, truncated, info

    # ---------------------------------------------------------------- render
    def render_text(self, i: int = 0) -> str:
        spec = self.spec
        colour = self.cell_colour()[i]
        ident = self.cell_identity[i]
        lines = []
        for r in range(spec.size):
            row = []
            for c in range(spec.size):
                cell = r * spec.size + c
                if cell == self.agent[i]:
                    row.append("@")
                elif 0 <= ident[cell] < spec.num_walls:
                    row.append("#")
                elif colour[cell] >= 0:
                    row.append(str(colour[cell]) if colour[cell] < 10 else chr(ord("a") + colour[cell] - 10))
                else:
                    row.append(".")
            lines.append(" ".join(row))
        return "\n".join(lines)


#: RGB colours for the objects (colour k is PALETTE[k % len]); walls are dark grey.
PALETTE = np.array(
    [[230, 25, 75], [245, 130, 48], [255, 225, 25], [60, 180, 75],
     [70, 240, 240], [0, 130, 200], [145, 30, 180], [240, 50, 230],
     [170, 110, 40], [128, 128, 0], [0, 0, 128], [250, 190, 212]],
    dtype=np.uint8,
)


def draw_cells(ident: np.ndarray, size: int, num_walls: int, cell_px: int) -> np.ndarray:
    """(size*cell_px, size*cell_px, 3) uint8 picture of a layout: ``ident`` holds one identity per
    cell (< 0 empty, < num_walls a wall drawn dark grey, else an object in its colour), with grid lines."""
    px = cell_px
    img = np.full((size * px, size * px, 3), 255, dtype=np.uint8)
    for cell in range(size * size):
        r, c = divmod(cell, size)
        block = img[r * px : (r + 1) * px, c * px : (c + 1) * px]
        if 0 <= ident[cell] < num_walls:
            block[:] = 64
        elif ident[cell] >= num_walls:
            block[:] = PALETTE[(ident[cell] - num_walls) % len(PALETTE)]
        block[0, :] = block[:, 0] = 200  # grid lines
    return img


def render_rgb(env: BatchedGridPinpad, i: int = 0, path: Sequence[int] = (), cell_px: int = 24) -> np.ndarray:
    """(H, W, 3) uint8 picture of environment i: coloured cells, walls, the agent as a black
    disc and, if given, a path of flat cell indices drawn as a line of dots."""
    spec = env.spec
    g, px = spec.size, cell_px
    img = draw_cells(env.cell_identity[i], g, spec.num_walls, px)
    yy, xx = np.mgrid[0:px, 0:px] - (px - 1) / 2
    for j, cell in enumerate(path):
        r, c = divmod(int(cell), g)
        dot = yy ** 2 + xx ** 2 <= (px * 0.12) ** 2
        shade = int(80 + 140 * j / max(1, len(path) - 1))
        img[r * px : (r + 1) * px, c * px : (c + 1) * px][dot] = (shade, shade, shade)
    r, c = divmod(int(env.agent[i]), g)
    disc = yy ** 2 + xx ** 2 <= (px * 0.3) ** 2
    img[r * px : (r + 1) * px, c * px : (c + 1) * px][disc] = 0
    return img
