"""Ant-pinpad (SPEC §1.2): the MuJoCo ant on a ``G×G`` floor of cells laid out like the
gridworld, stepped as N environments at once.

Layout, tasks and rules mirror :mod:`internalrl.envs.gridworld`: each episode samples the
coloured cells, the wall cells and the start cell uniformly without overlap (a layout is
resampled until every admissible task has a grid-level path that never crosses a wall or a
wrong colour); every environment holds a *set* of admissible tasks and a per-environment
``consistent`` mask; a subgoal is a single colour (``colours_per_subgoal = 1``).

Geometry. The floor is centred on the origin; cell ``(row, col)`` (flat index
``row * G + col``) has its centre at ``x = (col + 0.5)·s − G·s/2``, ``y = G·s/2 − (row + 0.5)·s``,
so row 0 is the top (+y) row and the gridworld's *up / down / left / right* are
``+y / −y / −x / +x``. The ant's *cell* is the cell holding its torso centre (x, y).

Rules, checked after every control step:

* **visited**: the torso centre enters a coloured cell from another cell;
* **failure** (terminated, reward 0): the torso centre enters a wall cell or leaves the floor
  (outside the ``G×G`` cells counts as wall — the gridworld's edge is not passable either),
  the torso height leaves ``[0.2, 1.0]``, or a colour other than the next one is visited;
* **success** (terminated, reward 1): the visited colours spell an admissible task;
* **truncated**: ``horizon`` control steps without either.

Environments do not auto-reset; a finished environment is no longer simulated and returns
reward 0 and both flags False until :meth:`BatchedAntPinpad.reset`.

Reset: torso at the start cell's centre plus ``U(±start_noise·s/2)`` in x and y, height
0.75, uniformly random yaw; hinge angles and all 14 velocities uniform in ``±0.1``.
[choice] ``start_noise = 0.5`` (the middle half of the cell): with the whole cell (1.0), 17%
of episodes ended within a few steps under *zero* torque because the sagging torso drifted a
few centimetres over the border into a wall or a wrong colour (measured over 256 resets with
1 m cells).

[choice] values (all fields of :class:`AntSpec`):

* ``cell_size`` s = **2.0 m** — a 4×4 floor is 8 m across and a 3-colour task is about 10–15 m
  of walking in 25 s (``T = 500`` steps). 1.0 m (the first choice, about the ant's leg span)
  leaves ±0.5 m around a cell's centre line, so a stride's sway or a slightly wrong heading ends
  the episode in a wall or a wrong colour; Gymnasium-Robotics' AntMaze uses 4 m cells, which
  would ask for ~1 m/s on average within T. 2 m sits between (the expert was trained at 2 m;
  1 m was not retried with its final recipe, see docs/ant.md);
* physics ``timestep`` = **0.01 s**, ``frame_skip`` = **5** → control step **0.05 s** (as in
  Gymnasium's Ant); ``integrator`` = **Euler** (4× faster than RK4 on this model, measured:
  ~20k vs ~5k control steps/s on one core, and stable for the ant);
* motor ``gear`` = 150, as in the standard ant.

The model is the standard Gymnasium ant body (torso sphere, four two-segment legs, eight
hinge joints driven by motors with ``ctrlrange [-1, 1]``) written here as an MJCF string, on
a plane. Actions: ``(N, 8)`` torques in ``[-1, 1]`` (clipped), in actuator order
``hip_4, ankle_4, hip_1, ankle_1, hip_2, ankle_2, hip_3, ankle_3``.

Observation layout, ``D = 27 + 2 + 2·O + 2·W + 2`` (41 with the paper's O=4, W=1); see
:func:`obs_layout` for the offsets:

======================  ====  ====================================================
``proprio``             27    ``symlog`` of qpos[2:] (torso z, quaternion w x y z, 8 hinge
                              angles) then qvel (torso linear velocity, angular velocity,
                              8 hinge velocities)
``position``            2     torso (x, y) divided by the half-width ``G·s/2``: in [-1, 1]
``colours``             2·O   centre of colour k's cell minus torso (x, y), for k = 0..O-1,
                              divided by ``G·s/2`` (so in [-2, 2])
``walls``               2·W   the same for wall cells 0..W-1
``in_cell``             2     torso (x, y) minus its cell's centre, divided by ``s/2``:
                              in [-1, 1]
======================  ====  ====================================================

The observation shows neither the task nor what has been visited.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .gridworld import BatchedGridPinpad, GridSpec, draw_cells, pad_tasks
from .tasks import Task, TaskError, advance_tasks, next_colours, subgoals_of

try:  # MuJoCo is the optional ``ant`` extra
    import mujoco
except ImportError:  # pragma: no cover - exercised only without the extra
    mujoco = None

ANT_MJCF = """
<mujoco model="ant-pinpad">
  <compiler angle="degree" inertiafromgeom="true"/>
  <option integrator="{integrator}" timestep="{timestep}"/>
  <default>
    <joint armature="1" damping="1" limited="true"/>
    <geom conaffinity="0" condim="3" density="5.0" friction="1 0.5 0.5" margin="0.01" rgba="0.8 0.6 0.4 1"/>
  </default>
  <worldbody>
    <geom name="floor" type="plane" conaffinity="1" condim="3" pos="0 0 0" size="{floor} {floor} 1" rgba="0.8 0.9 0.8 1"/>
    <body name="torso" pos="0 0 0.75">
      <geom name="torso_geom" type="sphere" pos="0 0 0" size="0.25"/>
      <joint name="root" type="free" armature="0" damping="0" limited="false" margin="0.01" pos="0 0 0"/>
      <body name="front_left_leg" pos="0 0 0">
        <geom type="capsule" fromto="0 0 0 0.2 0.2 0" size="0.08"/>
        <body name="aux_1" pos="0.2 0.2 0">
          <joint name="hip_1" type="hinge" axis="0 0 1" pos="0 0 0" range="-30 30"/>
          <geom type="capsule" fromto="0 0 0 0.2 0.2 0" size="0.08"/>
          <body pos="0.2 0.2 0">
            <joint name="ankle_1" type="hinge" axis="-1 1 0" pos="0 0 0" range="30 70"/>
            <geom type="capsule" fromto="0 0 0 0.4 0.4 0" size="0.08"/>
          </body>
        </body>
      </body>
      <body name="front_right_leg" pos="0 0 0">
        <geom type="capsule" fromto="0 0 0 -0.2 0.2 0" size="0.08"/>
        <body name="aux_2" pos="-0.2 0.2 0">
          <joint name="hip_2" type="hinge" axis="0 0 1" pos="0 0 0" range="-30 30"/>
          <geom type="capsule" fromto="0 0 0 -0.2 0.2 0" size="0.08"/>
          <body pos="-0.2 0.2 0">
            <joint name="ankle_2" type="hinge" axis="1 1 0" pos="0 0 0" range="-70 -30"/>
            <geom type="capsule" fromto="0 0 0 -0.4 0.4 0" size="0.08"/>
          </body>
        </body>
      </body>
      <body name="back_leg" pos="0 0 0">
        <geom type="capsule" fromto="0 0 0 -0.2 -0.2 0" size="0.08"/>
        <body name="aux_3" pos="-0.2 -0.2 0">
          <joint name="hip_3" type="hinge" axis="0 0 1" pos="0 0 0" range="-30 30"/>
          <geom type="capsule" fromto="0 0 0 -0.2 -0.2 0" size="0.08"/>
          <body pos="-0.2 -0.2 0">
            <joint name="ankle_3" type="hinge" axis="-1 1 0" pos="0 0 0" range="-70 -30"/>
            <geom type="capsule" fromto="0 0 0 -0.4 -0.4 0" size="0.08"/>
          </body>
        </body>
      </body>
      <body name="right_back_leg" pos="0 0 0">
        <geom type="capsule" fromto="0 0 0 0.2 -0.2 0" size="0.08"/>
        <body name="aux_4" pos="0.2 -0.2 0">
          <joint name="hip_4" type="hinge" axis="0 0 1" pos="0 0 0" range="-30 30"/>
          <geom type="capsule" fromto="0 0 0 0.2 -0.2 0" size="0.08"/>
          <body pos="0.2 -0.2 0">
            <joint name="ankle_4" type="hinge" axis="1 1 0" pos="0 0 0" range="30 70"/>
            <geom type="capsule" fromto="0 0 0 0.4 -0.4 0" size="0.08"/>
          </body>
        </body>
      </body>
    </body>
  </worldbody>
  <actuator>
    <motor joint="hip_4" ctrllimited="true" ctrlrange="-1 1" gear="{gear}"/>
    <motor joint="ankle_4" ctrllimited="true" ctrlrange="-1 1" gear="{gear}"/>
    <motor joint="hip_1" ctrllimited="true" ctrlrange="-1 1" gear="{gear}"/>
    <motor joint="ankle_1" ctrllimited="true" ctrlrange="-1 1" gear="{gear}"/>
    <motor joint="hip_2" ctrllimited="true" ctrlrange="-1 1" gear="{gear}"/>
    <motor joint="ankle_2" ctrllimited="true" ctrlrange="-1 1" gear="{gear}"/>
    <motor joint="hip_3" ctrllimited="true" ctrlrange="-1 1" gear="{gear}"/>
    <motor joint="ankle_3" ctrllimited="true" ctrlrange="-1 1" gear="{gear}"/>
  </actuator>
</mujoco>
"""

NUM_ACTIONS = 8
PROPRIO_DIM = 27  # qpos[2:] (13) + qvel (14)
START_HEIGHT = 0.75
#: no observation entry exceeds this: symlog of the largest float64 is ~710, positions are small
SYMLOG_BOUND = 1000.0


def symlog(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


@dataclass(frozen=True)
class AntSpec:
    size: int = 4
    num_objects: int = 4
    num_walls: int = 1
    horizon: int = 500
    colours_per_subgoal: int = 1
    cell_size: float = 2.0
    timestep: float = 0.01
    frame_skip: int = 5
    integrator: str = "Euler"
    gear: float = 150.0
    start_noise: float = 0.5  # fraction of the half cell the start position may deviate
    joint_noise: float = 0.1
    min_height: float = 0.2
    max_height: float = 1.0

    def __post_init__(self) -> None:
        GridSpec(self.size, self.num_objects, self.num_walls, self.horizon, self.colours_per_subgoal)
        if not self.cell_size > 0:
            raise ValueError(f"cell_size must be positive, got {self.cell_size}")
        if not self.timestep > 0:
            raise ValueError(f"timestep must be positive, got {self.timestep}")
        if self.frame_skip < 1:
            raise ValueError(f"frame_skip must be at least 1, got {self.frame_skip}")
        if self.integrator not in ("Euler", "RK4", "implicit", "implicitfast"):
            raise ValueError(f"integrator must be Euler, RK4, implicit or implicitfast, got {self.integrator!r}")
        if not self.gear > 0:
            raise ValueError(f"gear must be positive, got {self.gear}")
        if not 0 <= self.start_noise <= 1:
            raise ValueError(f"start_noise must be in [0, 1] (a fraction of the half cell), got {self.start_noise}")
        if self.joint_noise < 0:
            raise ValueError(f"joint_noise must be non-negative, got {self.joint_noise}")
        if not 0 <= self.min_height < START_HEIGHT < self.max_height:
            raise ValueError(f"need 0 <= min_height < {START_HEIGHT} < max_height, got "
                             f"[{self.min_height}, {self.max_height}]")

    @property
    def grid(self) -> GridSpec:
        return GridSpec(self.size, self.num_objects, self.num_walls, self.horizon, self.colours_per_subgoal)

    @property
    def num_cells(self) -> int:
        return self.size * self.size

    @property
    def half_width(self) -> float:
        return self.size * self.cell_size / 2

    @property
    def control_dt(self) -> float:
        return self.timestep * self.frame_skip

    @property
    def obs_dim(self) -> int:
        return PROPRIO_DIM + 2 + 2 * self.num_objects + 2 * self.num_walls + 2

    @property
    def num_subgoals(self) -> int:
        return -(-self.num_objects // self.colours_per_subgoal)


def obs_layout(spec: AntSpec) -> dict[str, slice]:
    """Named slices of the observation vector (see the module docstring)."""
    o, w = spec.num_objects, spec.num_walls
    edges = np.cumsum([0, PROPRIO_DIM, 2, 2 * o, 2 * w, 2])
    names = ("proprio", "position", "colours", "walls", "in_cell")
    return {n: slice(int(a), int(b)) for n, a, b in zip(names, edges[:-1], edges[1:])}


def heading_layout(spec: AntSpec) -> tuple[int, int, int]:
    """Where the heading encoder (``model.obs_encoder=heading``) reads the observation: the index of
    the torso's x velocity (symlog of qvel[0], y follows), of the first colour's offset, and how many
    (x, y) offsets follow it (the colours, then the walls)."""
    layout = obs_layout(spec)
    qvel_x = layout["proprio"].start + 13  # proprio: qpos[2:] (13 numbers), then qvel (14), free joint first
    return qvel_x, layout["colours"].start, spec.num_objects + spec.num_walls


def build_model(spec: AntSpec):
    """The ant MjModel for ``spec``."""
    if mujoco is None:
        raise ImportError("Ant-pinpad needs MuJoCo: pip install 'internalrl[ant]' (or pip install mujoco)")
    xml = ANT_MJCF.format(integrator=spec.integrator, timestep=spec.timestep,
                          floor=max(10.0, 2 * spec.half_width + 5), gear=spec.gear)
    return mujoco.MjModel.from_xml_string(xml)


class BatchedAntPinpad:
    """N ant-pinpad environments stepped together: one ``MjModel``, N ``MjData``.

    The physics of each environment is advanced with ``mujoco.mj_step(model, data,
    nstep=frame_skip)`` in a loop (measured as fast as ``mujoco.rollout`` on one core for
    N = 64 and 256, and faster for N = 1); everything else — cells, visiting, termination,
    rewards, task-set consistency — is array arithmetic over N.
    """

    def __init__(
        self,
        num_envs: int,
        tasks: Sequence[Task],
        spec: AntSpec = AntSpec(),
        seed: int | np.random.Generator | None = None,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be at least 1, got {num_envs}")
        if not tasks:
            raise TaskError("at least one task is needed")
        for t in tasks:
            if len(t) == 0:
                raise TaskError("a task needs at least one colour")
            bad = [c for c in t if not 0 <= c < spec.num_objects]
            if bad:
                raise TaskError(
                    f"task {'-'.join(map(str, t))} names colour(s) {bad}; this ant-pinpad has "
                    f"colours 0..{spec.num_objects - 1}"
                )
        self.spec = spec
        self.num_envs = num_envs
        self.tasks = [tuple(int(c) for c in t) for t in tasks]
        self.task_table, self.task_len = pad_tasks(self.tasks)
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        # the grid-level layout (cells, walls, start, safe distance maps) is the gridworld's
        self.layout = BatchedGridPinpad(num_envs, self.tasks, spec.grid, seed=self.rng)
        self.model = build_model(spec)
        self.data = [mujoco.MjData(self.model) for _ in range(num_envs)]
        self._ar = np.arange(num_envs)
        self._cell_xy = cell_centres(spec)  # (cells, 2)
        self.done = np.ones(num_envs, dtype=bool)  # nothing to step before reset()

    # ------------------------------------------------------------------ reset
    def reset(self, task_index: np.ndarray | None = None, free_play: bool = False,
              indices: np.ndarray | None = None) -> np.ndarray:
        """Fresh layouts and ant poses. ``task_index`` picks each environment's task
        (default: uniform); ``free_play`` admits every task of the set everywhere.
        ``indices`` resets only those environments (``task_index`` then has one entry per
        index); the others keep running. Returns the observation of all N."""
        spec = self.spec
        if indices is None:
            idx = self._ar
            self.layout.reset(task_index=task_index, free_play=free_play)
            lay = self.layout
            self.consistent = lay.consistent.copy()
            self.task_index = lay.task_index.copy()
            self.qpos = np.zeros((self.num_envs, self.model.nq))
            self.qvel = np.zeros((self.num_envs, self.model.nv))
            self.cell = np.zeros(self.num_envs, dtype=np.int64)
            self.progress = np.zeros(self.num_envs, dtype=np.int64)
            self.t = np.zeros(self.num_envs, dtype=np.int64)
            self.done = np.zeros(self.num_envs, dtype=bool)
            self.succeeded = np.zeros(self.num_envs, dtype=bool)
        else:
            idx = np.unique(np.asarray(indices, dtype=np.int64))
            if len(idx) == 0:
                return self.observation()
            if idx[0] < 0 or idx[-1] >= self.num_envs:
                raise ValueError(f"indices must lie in [0, {self.num_envs})")
            if not hasattr(self, "qpos"):
                raise RuntimeError("call reset() without indices first")
            lay = BatchedGridPinpad(len(idx), self.tasks, spec.grid, seed=self.rng)
            lay.reset(task_index=task_index, free_play=free_play)
            for key in ("cell_identity", "colour_cell", "agent", "dist", "consistent", "task_index"):
                getattr(self.layout, key)[idx] = getattr(lay, key)
            self.consistent[idx] = lay.consistent
            self.task_index[idx] = lay.task_index
            self.progress[idx] = 0
            self.t[idx] = 0
            self.done[idx] = False
            self.succeeded[idx] = False
        m = len(idx)
        xy = self._cell_xy[lay.agent] + self.rng.uniform(-1, 1, (m, 2)) * spec.start_noise * spec.cell_size / 2
        yaw = self.rng.uniform(-np.pi, np.pi, m)
        joints = self.rng.uniform(-spec.joint_noise, spec.joint_noise, (m, NUM_ACTIONS))
        vel = self.rng.uniform(-spec.joint_noise, spec.joint_noise, (m, self.model.nv))
        for j, i in enumerate(idx):
            d = self.data[i]
            mujoco.mj_resetData(self.model, d)
            d.qpos[0:2] = xy[j]
            d.qpos[2] = START_HEIGHT
            d.qpos[3:7] = (np.cos(yaw[j] / 2), 0.0, 0.0, np.sin(yaw[j] / 2))
            d.qpos[7:] = joints[j]
            d.qvel[:] = vel[j]
            mujoco.mj_forward(self.model, d)
            self.qpos[i] = d.qpos
            self.qvel[i] = d.qvel
        self.cell[idx] = self.cell_of(self.qpos[idx, :2])
        self.layout.agent = np.maximum(self.cell, 0)
        return self.observation()

    # ------------------------------------------------------------ layout facts
    @property
    def cell_identity(self) -> np.ndarray:
        """(N, cells) wall ids 0..W-1, colours W..W+O-1, -1 empty (as the gridworld)."""
        return self.layout.cell_identity

    @property
    def colour_cell(self) -> np.ndarray:
        return self.layout.colour_cell

    @property
    def wall_cell(self) -> np.ndarray:
        """(N, W) the cell of wall id j, for j = 0..W-1."""
        ident = self.cell_identity
        is_wall = (ident >= 0) & (ident < self.spec.num_walls)
        order = np.argsort(np.where(is_wall, ident, np.iinfo(np.int64).max), axis=1, kind="stable")
        return order[:, : self.spec.num_walls]

    def cell_colour(self) -> np.ndarray:
        return self.layout.cell_colour()

    def cell_of(self, xy: np.ndarray) -> np.ndarray:
        """Flat cell index of each (x, y), -1 off the floor."""
        s, h, g = self.spec.cell_size, self.spec.half_width, self.spec.size
        col = np.floor((xy[..., 0] + h) / s).astype(np.int64)
        row = np.floor((h - xy[..., 1]) / s).astype(np.int64)
        inside = (col >= 0) & (col < g) & (row >= 0) & (row < g)
        return np.where(inside, row * g + col, -1)

    @property
    def xy(self) -> np.ndarray:
        return self.qpos[:, :2]

    @property
    def height(self) -> np.ndarray:
        return self.qpos[:, 2]

    # ------------------------------------------------------------ observation
    def observation(self) -> np.ndarray:
        spec = self.spec
        h = spec.half_width
        xy = self.qpos[:, :2]
        proprio = symlog(np.concatenate([self.qpos[:, 2:], self.qvel], axis=1))
        colours = (self._cell_xy[self.colour_cell] - xy[:, None]) / h  # (N, O, 2)
        walls = (self._cell_xy[self.wall_cell] - xy[:, None]) / h  # (N, W, 2)
        here = np.maximum(self.cell, 0)
        in_cell = (xy - self._cell_xy[here]) / (spec.cell_size / 2)
        obs = np.concatenate([proprio, xy / h, colours.reshape(self.num_envs, -1),
                              walls.reshape(self.num_envs, -1), in_cell], axis=1)
        return obs.astype(np.float32)

    def next_colour(self) -> np.ndarray:
        """(N,) the next colour to visit, or -1 when it is ambiguous (free play) or done."""
        return next_colours(self.task_table, self.progress, self.consistent, self.done)

    def subgoal(self) -> np.ndarray:
        """(N,) ground-truth subgoal (the next colour), -1 if unknown or done."""
        return subgoals_of(self.next_colour(), self.spec.colours_per_subgoal)

    # ------------------------------------------------------------------- step
    def step(self, actions: np.ndarray):
        """``actions (N, 8)`` in [-1, 1] (clipped). Returns ``obs (N, D), reward (N,),
        terminated (N,), truncated (N,), info``."""
        spec = self.spec
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape != (self.num_envs, NUM_ACTIONS):
            raise ValueError(f"expected actions of shape ({self.num_envs}, {NUM_ACTIONS}), got {actions.shape}")
        if not np.isfinite(actions).all():
            raise ValueError("actions must be finite")
        actions = np.clip(actions, -1.0, 1.0)
        active = ~self.done
        for i in np.flatnonzero(active):
            d = self.data[i]
            d.ctrl[:] = actions[i]
            mujoco.mj_step(self.model, d, nstep=spec.frame_skip)
            self.qpos[i] = d.qpos
            self.qvel[i] = d.qvel

        new = self.cell_of(self.qpos[:, :2])
        off = new < 0
        safe = np.where(off, 0, new)
        ident = self.cell_identity[self._ar, safe]
        wall = off | ((ident >= 0) & (ident < spec.num_walls))
        z = self.qpos[:, 2]
        unhealthy = ~np.isfinite(z) | (z < spec.min_height) | (z > spec.max_height)
        crashed = active & (wall | unhealthy)
        moved = active & (new != self.cell)
        colour = np.where(off | wall, -1, np.where(ident >= spec.num_walls, ident - spec.num_walls, -1))
        visited = moved & ~crashed & (colour >= 0)
        self.cell = np.where(active, new, self.cell)
        self.layout.agent = np.maximum(self.cell, 0)

        self.consistent, self.progress, success, wrong = advance_tasks(
            self.task_table, self.task_len, self.progress, self.consistent, colour, visited)
        self.t = self.t + active
        terminated = active & (success | wrong | crashed)
        truncated = active & ~terminated & (self.t >= spec.horizon)
        self.done = self.done | terminated | truncated
        self.succeeded |= success
        info = {
            "visited": np.where(visited, colour, -1),
            "progress": self.progress.copy(),
            "subgoal": self.subgoal(),
            "success": success,
            "failure": wrong | crashed,
            "wrong_colour": wrong,
            "hit_wall": active & wall,
            "fell": active & unhealthy & ~wall,
            "cell": self.cell.copy(),
        }
        return self.observation(), success.astype(np.float32), terminated, truncated, info

    # ----------------------------------------------------------- utilities
    def clone(self, indices: Sequence[int]) -> "BatchedAntPinpad":
        """A new batch holding copies of environments ``indices`` in their current state
        (layouts, task sets, physics). Its random generator is a fresh one."""
        idx = np.asarray(indices, dtype=np.int64)
        out = BatchedAntPinpad(len(idx), self.tasks, self.spec, seed=0)
        lay, src = out.layout, self.layout
        for key in ("cell_identity", "colour_cell", "agent", "dist", "consistent", "task_index"):
            setattr(lay, key, getattr(src, key)[idx].copy())
        for key in ("consistent", "task_index", "qpos", "qvel", "cell", "progress", "t", "done", "succeeded"):
            setattr(out, key, getattr(self, key)[idx].copy())
        for j, i in enumerate(idx):
            mujoco.mj_copyData(out.data[j], self.model, self.data[i])
        return out

    def render_text(self, i: int = 0) -> str:
        self.layout.agent = np.maximum(self.cell, 0)
        return self.layout.render_text(i)


def cell_centres(spec: AntSpec) -> np.ndarray:
    """(cells, 2) world (x, y) of every cell centre."""
    rows, cols = np.divmod(np.arange(spec.num_cells), spec.size)
    x = (cols + 0.5) * spec.cell_size - spec.half_width
    y = spec.half_width - (rows + 0.5) * spec.cell_size
    return np.stack([x, y], axis=1)


def render_rgb(env: BatchedAntPinpad, i: int = 0, path: Sequence[Sequence[float]] = (), cell_px: int = 48) -> np.ndarray:
    """(H, W, 3) uint8 top-down picture of environment i: coloured cells, walls (dark grey),
    the torso path as a grey line of dots, and the ant as a black disc with a white tick
    pointing along its heading."""
    spec = env.spec
    g, px = spec.size, cell_px
    size = g * px
    img = draw_cells(env.cell_identity[i], g, spec.num_walls, px)

    def to_px(xy):
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        col = (xy[:, 0] + spec.half_width) / spec.cell_size * px
        row = (spec.half_width - xy[:, 1]) / spec.cell_size * px
        return row, col

    yy, xx = np.mgrid[0:size, 0:size]
    if len(path):
        rows, cols = to_px(path)
        for j, (r, c) in enumerate(zip(rows, cols)):
            ri, ci = int(round(r)), int(round(c))
            shade = int(150 - 100 * j / max(1, len(rows) - 1))
            img[max(0, ri - 1) : ri + 2, max(0, ci - 1) : ci + 2] = shade
    r, c = to_px(env.qpos[i, :2])
    disc = (yy - r[0]) ** 2 + (xx - c[0]) ** 2 <= (px * 0.25) ** 2
    img[disc] = 0
    w, _, _, zq = env.qpos[i, 3:7]
    yaw = 2 * np.arctan2(zq, w)
    for s in np.linspace(0, px * 0.25, 8):
        ri, ci = int(round(r[0] - s * np.sin(yaw))), int(round(c[0] + s * np.cos(yaw)))
        if 0 <= ri < size and 0 <= ci < size:
            img[ri, ci] = 255
    return img
