"""Environments. Importing this package registers the Gymnasium ids."""
from gymnasium.envs.registration import register, registry

from .gridworld import BatchedGridPinpad, GridSpec
from .tasks import TASK_SETS, TaskError, parse_task, parse_task_set, task_str

if "internalrl/GridPinpad-v0" not in registry:
    register(id="internalrl/GridPinpad-v0", entry_point="internalrl.envs.gym_grid:GridPinpadEnv", max_episode_steps=None)
if "internalrl/AntPinpad-v0" not in registry:
    register(id="internalrl/AntPinpad-v0", entry_point="internalrl.envs.gym_ant:AntPinpadEnv", max_episode_steps=None)

__all__ = ["BatchedGridPinpad", "GridSpec", "TASK_SETS", "TaskError", "parse_task", "parse_task_set", "task_str"]
