"""Forward + backward of the egocentric observation embedding at the quick preset's sizes, and
whether its gradients are bitwise repeatable at this thread count.

    OMP_NUM_THREADS=1 python scripts/bench_egocentric_embedding.py 1
    OMP_NUM_THREADS=2 python scripts/bench_egocentric_embedding.py 2
"""
import sys
import time

import torch

from internalrl.data import grid_observations
from internalrl.envs.gridworld import GridSpec
from internalrl.models.sequence_model import EgocentricEmbedding

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
spec = GridSpec(7, 8, 4, 100)
batch, steps, width = 64, 100, 64  # quick: batch 64, width 64; steps: the longest episode of a batch
g = torch.Generator().manual_seed(0)
layout = torch.full((batch, spec.num_cells), -1)
for b in range(batch):
    layout[b, torch.randperm(spec.num_cells, generator=g)[: spec.num_walls + spec.num_objects]] = \
        torch.arange(spec.num_walls + spec.num_objects)
obs = grid_observations(layout, torch.randint(0, spec.num_cells, (batch, steps + 1), generator=g), spec)
emb = EgocentricEmbedding(spec.size, spec.obs_dim, width)
upstream = torch.randn(batch, steps + 1, width, generator=g)
grads, times = set(), []
for i in range(110):
    emb.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    (emb(obs) * upstream).sum().backward()
    times.append(time.perf_counter() - t0)
    grads.add(emb.linear.weight.grad.numpy().tobytes())
times = sorted(times[10:])
print(f"threads {torch.get_num_threads()}: forward+backward min {1e3 * times[0]:.2f} ms, median "
      f"{1e3 * times[len(times) // 2]:.2f} ms; distinct gradients over 110 repeats: {len(grads)}")
