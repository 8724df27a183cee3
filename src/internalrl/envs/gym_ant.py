"""Gymnasium face of ant-pinpad: ``gymnasium.make("internalrl/AntPinpad-v0")``."""
from __future__ import annotations

from typing import Any, Sequence

import gymnasium as gym
import numpy as np

from .ant import NUM_ACTIONS, SYMLOG_BOUND, AntSpec, BatchedAntPinpad, render_rgb
from .tasks import ANT_POSTTRAIN_TASK, parse_task_set, task_str


class AntPinpadEnv(gym.Env):
    """One ant-pinpad episode at a time (a batch of one underneath).

    ``task`` is a task string (``"0-1-2-3"``), a named task set (``"ant-pretrain"``: a task
    is drawn per episode) or a list of task strings. Other keyword arguments are fields of
    :class:`~internalrl.envs.ant.AntSpec` (``size``, ``num_objects``, ``num_walls``,
    ``horizon``, ``cell_size``, ``frame_skip``, ...). ``info`` carries the ground-truth
    ``subgoal`` (the next colour; -1 once done), ``progress`` (colours visited correctly),
    ``task``, ``visited`` (the colour entered this step, -1 if none) and ``cell``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        task: str | Sequence[str] = ANT_POSTTRAIN_TASK,
        size: int = 4,
        num_objects: int = 4,
        num_walls: int = 1,
        horizon: int = 500,
        render_mode: str | None = None,
        **spec_kwargs: Any,
    ) -> None:
        self.spec_ = AntSpec(size=size, num_objects=num_objects, num_walls=num_walls, horizon=horizon, **spec_kwargs)
        self.tasks = parse_task_set(task, num_objects)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": int(round(1 / self.spec_.control_dt))}
        self.observation_space = gym.spaces.Box(-SYMLOG_BOUND, SYMLOG_BOUND, shape=(self.spec_.obs_dim,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(NUM_ACTIONS,), dtype=np.float32)
        self._env: BatchedAntPinpad | None = None
        self._path: list[np.ndarray] = []

    def _info(self) -> dict[str, Any]:
        env = self._env
        k = int(env.task_index[0])
        return {
            "subgoal": int(env.subgoal()[0]),
            "progress": int(env.progress[0]),
            "task": task_str(env.tasks[k]),
            "cell": int(env.cell[0]),
        }

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if self._env is None:
            self._env = BatchedAntPinpad(1, self.tasks, self.spec_, seed=self.np_random)
        self._env.rng = self._env.layout.rng = self.np_random
        obs = self._env.reset()
        self._path = [self._env.xy[0].copy()]
        return obs[0], {**self._info(), "visited": -1}

    def step(self, action):
        if self._env is None:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action, dtype=np.float64).reshape(1, NUM_ACTIONS)
        obs, reward, terminated, truncated, info = self._env.step(action)
        self._path.append(self._env.xy[0].copy())
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
        return render_rgb(self._env, 0, path=self._path)
