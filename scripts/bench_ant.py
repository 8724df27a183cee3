"""Ant-pinpad stepping speed: control steps per second, single env (Gymnasium) and batched.

    OMP_NUM_THREADS=1 taskset -c 1 python scripts/bench_ant.py [--seconds 3]

Random actions; finished environments are reset as soon as the whole batch is done, so the
numbers count only live environment steps.
"""
from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np

import internalrl.envs  # noqa: F401
from internalrl.envs.ant import BatchedAntPinpad
from internalrl.envs.tasks import parse_task_set


def bench_gym(seconds: float) -> float:
    env = gym.make("internalrl/AntPinpad-v0", task="ant-pretrain")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        _, _, term, trunc, _ = env.step(rng.uniform(-1, 1, 8).astype(np.float32))
        steps += 1
        if term or trunc:
            env.reset()
    return steps / (time.perf_counter() - start)


def bench_batched(n: int, seconds: float) -> float:
    env = BatchedAntPinpad(n, parse_task_set("ant-pretrain", 4), seed=0)
    env.reset()
    rng = np.random.default_rng(0)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        live = int((~env.done).sum())
        env.step(rng.uniform(-1, 1, (n, 8)))
        steps += live
        if env.done.all():
            env.reset()
    return steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=3.0)
    args = p.parse_args()
    print(f"gymnasium AntPinpad-v0 (N=1)   {bench_gym(args.seconds):9.0f} steps/s")
    for n in (1, 64, 256):
        print(f"BatchedAntPinpad N={n:<4}        {bench_batched(n, args.seconds):9.0f} steps/s")


if __name__ == "__main__":
    main()
