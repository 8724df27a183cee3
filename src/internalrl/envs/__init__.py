"""Environments. Importing this package registers the Gymnasium ids."""
from gymnasium.envs.registration import register, registry

from .gridworld import BatchedGridPinpad, GridSpec
from .tasks import TASK_SETS, TaskError, parse_task, parse_task_set, task_str

if "internalrl/GridPinpad-v0" not in registry:
    register(id="internalrl/GridPinpad-v0", entry_point="internalrl.envs.gym_grid:GridPinpadEnv", max_episode_steps=None)
if "internalrl/AntPinpad-v0" not in registry:
    register(id="internalrl/AntPinpad-v0", entry_point="internalrl.envs.gym_ant:AntPinpadEnv", max_episode_steps=None)



def make_batched_env(spec, num_envs: int, tasks, seed=None):
    """N environments of ``spec``'s kind stepped together: :class:`BatchedGridPinpad` for a
    :class:`GridSpec`, the MuJoCo ant-pinpad (the ``ant`` extra) for an ``AntSpec``. Both
    offer ``reset``, ``observation``, ``subgoal``, ``step``, ``done``, ``progress`` and
    ``succeeded``, so a rollout written against one runs on the other."""
    if isinstance(spec, GridSpec):
        return BatchedGridPinpad(num_envs, tasks, spec, seed=seed)
    from .ant import AntSpec, BatchedAntPinpad

    if not isinstance(spec, AntSpec):
        raise TypeError(f"no batched environment for a {type(spec).__name__}; expected a GridSpec or an AntSpec")
    return BatchedAntPinpad(num_envs, tasks, spec, seed=seed)


__all__ = ["BatchedGridPinpad", "GridSpec", "make_batched_env", "TASK_SETS", "TaskError", "parse_task", "parse_task_set", "task_str"]
