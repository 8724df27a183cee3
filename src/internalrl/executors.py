"""Running an experiment's tasks: in this process one after another (``local``), or as Ray tasks
on a local Ray cluster or an existing one (``ray``).

An experiment is a list of :class:`internalrl.experiments.Task` s, each naming the tasks it needs
finished (``deps``), and one function that runs a task (:func:`internalrl.experiments.run_task`);
both executors call that same function, so a task computes the same numbers wherever it runs.
:func:`execute` starts every task whose dependencies have finished (at most ``max_parallel`` at
once), prints one line per finished task with its headline number, runs every task that does not
depend on a failed one, and raises the first failure at the end.

Ray is an optional dependency (``pip install 'internalrl[ray]'``). Each Ray task asks for
``cpus_per_task`` CPUs (torch then uses that many threads) and, when the cluster has GPUs, one GPU.
With an address the executor joins a running cluster; the run directories must then be on storage
every node sees, at the same absolute path.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable

from .errors import ConfigError

INSTALL_RAY = "pip install 'internalrl[ray]'"


def _say(msg: str) -> None:
    print(f"[internalrl] {msg}", flush=True)


class LocalExecutor:
    """Every task in this process, one at a time, in the order given (dependencies come first)."""

    name = "local"
    max_parallel = 1

    def __init__(self, progress: bool = True) -> None:
        self.progress = progress

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def submit(self, fn: Callable, task) -> tuple:
        return (fn, task)

    def wait(self, handles: list) -> tuple[object, object]:
        """Run the first submitted task: -> (its handle, its result or the exception it raised)."""
        handle = handles[0]
        fn, task = handle
        try:
            return handle, fn(task, self.progress)
        except Exception as e:  # noqa: BLE001 (reported with the task's name, re-raised at the end)
            return handle, e


def _ray_call(fn: Callable, task, cpus: float):
    """What a Ray worker runs: the task, with torch using the CPUs the task asked for."""
    import torch

    torch.set_num_threads(max(1, int(cpus)))
    return fn(task, False)  # no progress bars: many tasks share one terminal


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--executor ray needs Ray, which is not installed; install it with: {INSTALL_RAY}") from None
    return ray


class RayExecutor:
    """Tasks as Ray tasks. Without ``address``, starts a Ray cluster on this machine with ``num_cpus``
    CPUs (default: every CPU; ``max_parallel`` x ``cpus_per_task`` when ``max_parallel`` is given) and
    stops it at the end; with one, joins that cluster. A process that already called ``ray.init`` keeps
    its cluster."""

    name = "ray"

    def __init__(self, address: str | None = None, max_parallel: int | None = None, cpus_per_task: float = 1,
                 gpus_per_task: float | None = None, num_cpus: int | None = None) -> None:
        self.ray = import_ray()
        self.address = address
        self.cpus_per_task = cpus_per_task
        self.gpus_per_task = gpus_per_task
        self.max_parallel = max_parallel or 10**9  # without a limit, Ray's scheduler fits tasks to the CPUs
        if num_cpus is None and address is None:
            num_cpus = (max_parallel * max(1, int(cpus_per_task))) if max_parallel else os.cpu_count() or 1
        self.num_cpus = num_cpus
        self.started = False
        self._remote = None
        if address is not None:
            _check_reachable(address)

    def __enter__(self) -> "RayExecutor":
        ray = self.ray
        if not ray.is_initialized():
            env = {k: v for k, v in os.environ.items() if k.startswith("INTERNALRL_")}  # e.g. the checkpoint interval
            kw = dict(include_dashboard=False, logging_level="WARNING", log_to_driver=False,
                      runtime_env={"env_vars": env} if env else None)
            if self.address is None:  # "local": a new cluster, even where `ray start` left one to join
                ray.init(address="local", num_cpus=self.num_cpus, **kw)
            else:
                try:
                    ray.init(address=self.address, **kw)
                except (ConnectionError, RuntimeError, ValueError) as e:
                    raise ConfigError(
                        f"cannot join the Ray cluster at {self.address} ({type(e).__name__}: {str(e)[:200]}). Is it "
                        "running (`ray status` on its head node)? A cluster with token authentication (Ray's default "
                        "since 2.5x) needs RAY_AUTH_MODE=token and its token on this machine too") from None
            self.started = True
        gpus = self.gpus_per_task
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        self.gpus = gpus
        self._remote = ray.remote(_ray_call).options(num_cpus=self.cpus_per_task, num_gpus=gpus)
        res = ray.cluster_resources()
        where = (("joined the cluster at " + self.address) if self.address else "started a local cluster") \
            if self.started else "the cluster this process joined earlier"
        _say(f"ray: {where}: "
             f"{res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs; each task asks for {self.cpus_per_task:g} "
             f"CPU{'s' if self.cpus_per_task != 1 else ''}{f' and {gpus:g} GPU' if gpus else ''}")
        return self

    def __exit__(self, *exc) -> None:
        if self.started:
            self.ray.shutdown()
            self.started = False

    def submit(self, fn: Callable, task):
        return self._remote.remote(fn, task, self.cpus_per_task)

    def wait(self, handles: list) -> tuple[object, object]:
        ray = self.ray
        ready, _ = ray.wait(handles, num_returns=1)
        handle = ready[0]
        try:
            return handle, ray.get(handle)
        except ray.exceptions.RayTaskError as e:  # the task raised: report its own exception
            cause = getattr(e, "cause", None)
            return handle, cause if isinstance(cause, BaseException) else e
        except ray.exceptions.RayError as e:  # the worker or its node died (after Ray's own retries)
            return handle, e


def _check_reachable(address: str) -> None:
    """Refuse a ``HOST:PORT`` address nothing listens at, before anything is written (Ray itself retries
    for minutes). ``auto`` and ``ray://`` addresses are left to Ray."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as e:
        raise ConfigError(f"cannot join the Ray cluster at {address}: nothing answers there ({e.strerror or e}). "
                          "Start it with `ray start --head --port PORT` on the head node, or pass its address") from None


def parse_floats(text: str, flag: str) -> list[float]:
    """Comma-separated numbers of a command-line flag; anything else is refused naming the flag."""
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated numbers, got {text!r}") from None


def executor_from_args(args, progress: bool):
    """The executor a command's ``--executor``, ``--ray-address``, ``--max-parallel``, ``--cpus-per-task`` and
    ``--gpus-per-task`` ask for; with ``--ray-address``, ``--out`` must be an absolute path every node sees."""
    from pathlib import Path

    if args.ray_address is not None and (args.out is None or not Path(args.out).is_absolute()):
        raise ConfigError(f"--ray-address runs tasks on other machines: --out must be an absolute path on storage every "
                          f"node sees (a shared filesystem mounted at the same path), got {args.out!r}")
    return make_executor(args.executor, progress, args.ray_address, args.max_parallel, args.cpus_per_task,
                         args.gpus_per_task)


def make_executor(name: str, progress: bool = True, address: str | None = None, max_parallel: int | None = None,
                  cpus_per_task: float = 1, gpus_per_task: float | None = None):
    if max_parallel is not None and max_parallel < 1:
        raise ConfigError(f"--max-parallel must be at least 1, got {max_parallel}")
    if not cpus_per_task > 0:
        raise ConfigError(f"--cpus-per-task must be positive, got {cpus_per_task}")
    if gpus_per_task is not None and gpus_per_task < 0:
        raise ConfigError(f"--gpus-per-task must be at least 0, got {gpus_per_task}")
    if name == "local":
        if address is not None:
            raise ConfigError("--ray-address goes with --executor ray")
        return LocalExecutor(progress)
    if name == "ray":
        return RayExecutor(address, max_parallel, cpus_per_task, gpus_per_task)
    raise ConfigError(f"unknown executor {name!r}; choose local or ray")


def execute(tasks: list, fn: Callable, executor) -> dict[str, dict]:
    """Run ``tasks`` (each with ``label`` and ``deps``, labels of tasks listed before it) through
    ``executor``: ``fn(task, progress)`` -> a result dict with ``summary`` (its headline, in words),
    ``seconds``, ``skipped`` (finished by an earlier invocation) and ``resumed`` (continued from a checkpoint). Prints one line per finished task.
    Returns ``{label: result}``; when tasks failed, runs every task that does not need them, then
    raises the first failure (the others are printed)."""
    labels = [t.label for t in tasks]
    if len(set(labels)) != len(labels):
        raise ValueError("task labels must be unique")
    seen: set[str] = set()
    for t in tasks:
        missing = [d for d in t.deps if d not in seen]
        if missing:
            raise ValueError(f"task {t.label!r} needs {missing}, which is not listed before it")
        seen.add(t.label)
    n, k = len(tasks), 0
    results: dict[str, dict] = {}
    failed: dict[str, BaseException] = {}
    blocked: list[str] = []
    pending = list(tasks)
    running: list[tuple] = []  # (handle, task)
    t_start = time.perf_counter()
    with executor:
        while pending or running:
            for t in list(pending):
                if any(d in failed or d in blocked for d in t.deps):
                    pending.remove(t)
                    blocked.append(t.label)
                elif all(d in results for d in t.deps) and len(running) < executor.max_parallel:
                    pending.remove(t)
                    running.append((executor.submit(fn, t), t))
            if not running:
                break
            handle, outcome = executor.wait([h for h, _ in running])
            i = next(i for i, (h, _) in enumerate(running) if h is handle or h == handle)
            _, t = running.pop(i)
            k += 1
            if isinstance(outcome, BaseException):
                failed[t.label] = outcome
                _say(f"[{k}/{n}] {t.label}: FAILED: {type(outcome).__name__}: {str(outcome).splitlines()[0] if str(outcome) else ''}")
                continue
            results[t.label] = outcome
            when = "finished earlier" if outcome.get("skipped") else \
                f"{outcome['seconds']:.0f} s" + (", continued from a checkpoint" if outcome.get("resumed") else "")
            _say(f"[{k}/{n}] {t.label}: {outcome['summary']} ({when})")
    if failed:
        first = next(iter(failed.values()))
        _say(f"{len(failed)} of {n} tasks failed" + (f", {len(blocked)} did not start (they need a failed one)"
                                                       if blocked else "")
             + f"; {len(results)} finished. Re-run the same command: finished stages are skipped, "
             "interrupted trainings continue from their checkpoints.")
        for label, e in failed.items():
            print(f"  {label}: {type(e).__name__}: {e}", file=sys.stderr)
        raise first
    _say(f"{n} tasks in {time.perf_counter() - t_start:.0f} s ({executor.name} executor)")
    return results
