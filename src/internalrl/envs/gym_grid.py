"""Gymnasium face of gridworld-pinpad: ``gymnasium.make("internalrl/GridPinpad-v0")``."""
from __future__ import annotations

from typing import Any, Sequence

import gymnasium as gym
import numpy as np

from .gridworld import BatchedGridPinpad, GridSpec, render_rgb
from .tasks import GRID_POSTTRAIN_TASK, parse_task_set, task_str


class GridPinpadEnv(gym.Env):
    """One gridworld-pinpad episode at a time (a batch of one underneath).

    ``task`` is a task string (``"0-1-2-3"``), a named task set (``"grid-pretrain"``: a task
    is drawn per episode) or a list of task strings. ``info`` carries the ground-truth
    ``subgoal`` (-1 once done), ``progress`` (colours visited correctly), ``task`` and
    ``visited`` (the colour entered this step, -1 if none).
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}

    def __init__(
        self,
        task: str | Sequence[str] = GRID_POSTTRAIN_TASK,
        size: int = 7,
        num_objects: int = 8,
        num_walls: int = 4,
        horizon: int = 100,
        render_mode: str | None = None,
    ) -> None:
        self.spec_ = GridSpec(size=size, num_objects=num_objects, num_walls=num_walls, horizon=horizon)
        self.tasks = parse_task_set(task, num_objects)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(self.spec_.obs_dim,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(4)
        self._env: BatchedGridPinpad | None = None
        self._path: list[int] = []

    def _info(self) -> dict[str, Any]:
        env = self._env
        task = env.tasks[int(env.task_index[0])]
        return {
            "subgoal": int(env.subgoal()[0]),
            "progress": int(env.progress[0]),
            "task": task_str(task),
        }

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._env = BatchedGridPinpad(1, self.tasks, self.spec_, seed=self.np_random)
        obs = self._env.reset()
        self._path = [int(self._env.agent[0])]
        return obs[0], {**self._info(), "visited": -1}

    def step(self, action):
        if self._env is None:
            raise RuntimeError("call reset() before step()")
        obs, reward, terminated, truncated, info = self._env.step(np.array([int(action)]))
        self._path.append(int(self._env.agent[0]))
        return (
            obs[0],
            float(reward[0]),
            bool(terminated[0]),
            bool(truncated[0]),
            {**self._info(), "visited": int(info["visited"][0])},
        )

    def render(self):
        if self._env is None or self.render_mode is None:
            return None
        if self.render_mode == "ansi":
            return self._env.render_text(0) + "\n"
        return render_rgb(self._env, 0, path=self._path)
