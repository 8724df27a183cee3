"""Task tables (SPEC §1, Tables A1/A2) and task-string parsing.

A *task* is a sequence of colours to visit in order, written ``"0-1-4-5"``. A *task set* is
a list of tasks; an environment given a task set succeeds when the colours visited so far
spell out any one of its tasks (used for free play, where the model picks its own task).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import TaskError

Task = tuple[int, ...]

GRID_PRETRAIN_TASKS: tuple[str, ...] = (
    "0-1-4-5-0-1", "0-1-4-5-2-3", "0-1-6-7-2-3", "2-3-0-1-4-5",
    "2-3-6-7-2-3", "2-3-6-7-4-5", "4-5-0-1-4-5", "4-5-0-1-6-7",
    "4-5-2-3-6-7", "6-7-2-3-0-1", "6-7-2-3-6-7", "6-7-4-5-0-1",
    "0-1-6-7-4-5", "2-3-0-1-6-7", "4-5-2-3-0-1", "6-7-4-5-2-3",
)
GRID_POSTTRAIN_TASK = "0-1-2-3-4-5-6-7-0-1-2-3"

ANT_PRETRAIN_TASKS: tuple[str, ...] = (
    "0-3-2", "1-0-3", "2-1-0", "3-2-1", "0-2-0", "0-2-1", "0-3-1", "1-0-2",
    "1-3-1", "1-3-2", "2-0-2", "2-0-3", "2-1-3", "3-1-0", "3-1-3", "3-2-0",
)
ANT_POSTTRAIN_TASK = "0-1-2-3"

#: Named task sets a user can pass wherever a task is expected.
TASK_SETS: dict[str, tuple[str, ...]] = {
    "grid-pretrain": GRID_PRETRAIN_TASKS,
    "grid-posttrain": (GRID_POSTTRAIN_TASK,),
    "ant-pretrain": ANT_PRETRAIN_TASKS,
    "ant-posttrain": (ANT_POSTTRAIN_TASK,),
}


def parse_task(task: str | Sequence[int], num_colours: int) -> Task:
    """Parse ``"0-1-2-3"`` (or a sequence of ints) and check every colour exists."""
    if isinstance(task, str):
        parts = [p.strip() for p in task.strip().split("-")]
        if not task.strip() or any(p == "" for p in parts):
            raise TaskError(f"task {task!r} is not a dash-separated list of colours like '0-1-2-3'")
        try:
            colours = tuple(int(p) for p in parts)
        except ValueError:
            raise TaskError(
                f"task {task!r} is not a dash-separated list of colours like '0-1-2-3'"
            ) from None
    else:
        colours = tuple(int(c) for c in task)
        if not colours:
            raise TaskError("a task needs at least one colour")
    bad = [c for c in colours if not 0 <= c < num_colours]
    if bad:
        raise TaskError(
            f"task {task!r} names colour(s) {bad}, but this environment has only "
            f"{num_colours} colours (0..{num_colours - 1})"
        )
    return colours


def parse_task_set(spec: str | Sequence[str], num_colours: int) -> list[Task]:
    """A named task set (``grid-pretrain``), a single task string, a comma-separated
    list of task strings, or a sequence of task strings."""
    if isinstance(spec, str):
        if spec in TASK_SETS:
            items: Sequence[str] = TASK_SETS[spec]
        else:
            items = [s for s in spec.split(",")]
    else:
        items = list(spec)
    if not items:
        raise TaskError("a task set needs at least one task")
    return [parse_task(s, num_colours) for s in items]


def task_str(task: Sequence[int]) -> str:
    return "-".join(str(int(c)) for c in task)


# ----------------------------------------------------- task progress over N envs
# Each environment holds a set of admissible tasks (rows of a -1-padded ``task_table (K, L+1)``)
# as a boolean mask ``consistent (N, K)``, and ``progress (N,)`` colours visited correctly.

def next_colours(task_table, progress, consistent, done):
    """(N,) the next colour to visit, or -1 when the admissible tasks disagree or done."""
    expected = task_table[:, progress].T  # (N, K)
    first = expected[np.arange(len(progress)), consistent.argmax(1)]
    agree = ((expected == first[:, None]) | ~consistent).all(1)
    return np.where(agree & (first >= 0) & ~done, first, -1)


def subgoals_of(next_colour, colours_per_subgoal: int):
    """(N,) ground-truth subgoal of each next colour; -1 stays -1."""
    return np.where(next_colour >= 0, next_colour // colours_per_subgoal, -1)


def advance_tasks(task_table, task_len, progress, consistent, colour, visited):
    """Apply this step's visits (``visited (N,)``, colour entered ``colour (N,)``).
    Returns ``consistent, progress, success, failed``: a visit fails when no admissible
    task wants that colour next, and succeeds when it completes one."""
    expected = task_table[:, progress].T  # (N, K)
    match = consistent & (expected == colour[:, None])
    failed = visited & ~match.any(1)
    progressed = visited & ~failed
    consistent = np.where(progressed[:, None], match, consistent)
    progress = progress + progressed
    success = progressed & (consistent & (task_len[None, :] == progress[:, None])).any(1)
    return consistent, progress, success, failed
