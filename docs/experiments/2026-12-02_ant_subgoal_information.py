"""Is the ant's subgoal (the next colour) decodable at all, and from what?

The ant base model's linear subgoal probes sit at chance at every layer (docs/ant.md). This asks
whether the information is there to be decoded: from the observation alone (where the torso moves
against where each colour lies), linearly and with a small MLP, and from the base model's residual
stream with the same MLP. Reads a finished ant run directory (its D* and base model).

    python docs/experiments/2026-12-02_ant_subgoal_information.py runs/ant-long [--episodes 400]

Prints one JSON object: accuracy of each decoder on held-out episodes and the majority-class rate.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from internalrl.analysis.probes import collect_residuals, fit_probe
from internalrl.data import load_trajectories
from internalrl.train import load_model

VEL = slice(13, 15)  # symlog of the torso's world-frame (x, y) velocity (qvel[0:2]; obs_layout: proprio 0:27)
COLOURS = slice(29, 37)  # colour k's cell centre minus the torso, (x, y) per colour


def steps_of(data, idx):
    """Observations (N, 41) and subgoals (N,) of every valid step of episodes ``idx``."""
    obs, sub = [], []
    for i in idx:
        n = int(data.arrays["lengths"][i])
        obs.append(data.arrays["observations"][i, :n])
        sub.append(data.arrays["subgoals"][i, :n])
    obs, sub = np.concatenate(obs), np.concatenate(sub)
    keep = sub >= 0
    return torch.tensor(obs[keep], dtype=torch.float32), torch.tensor(sub[keep], dtype=torch.long)


def heading_rule(obs: torch.Tensor) -> torch.Tensor:
    """The colour whose direction is closest to the direction the torso moves."""
    vel = obs[:, VEL]
    off = obs[:, COLOURS].reshape(-1, 4, 2)
    cos = (off * vel[:, None]).sum(-1) / (off.norm(dim=-1) * vel.norm(dim=-1, keepdim=True)).clamp(min=1e-6)
    return cos.argmax(-1)


def heading_features(obs: torch.Tensor) -> torch.Tensor:
    vel = obs[:, VEL]
    off = obs[:, COLOURS].reshape(-1, 4, 2)
    cos = (off * vel[:, None]).sum(-1) / (off.norm(dim=-1) * vel.norm(dim=-1, keepdim=True)).clamp(min=1e-6)
    return torch.cat([obs, cos, off.norm(dim=-1)], -1)


def fit_mlp(x, y, k, steps=1500, seed=0):
    torch.manual_seed(seed)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-5)
    net = nn.Sequential(nn.Linear(x.shape[1], 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, k))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(steps):
        j = torch.randint(len(x), (4096,))
        loss = F.cross_entropy(net((x[j] - mean) / std), y[j])
        opt.zero_grad(), loss.backward(), opt.step()
    return lambda z: net((z - mean) / std)


@torch.no_grad()
def predict(decoder, x):
    return decoder(x).argmax(-1)


def accuracy(pred, y):
    return round(float((pred == y).float().mean()), 3)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("--episodes", type=int, default=400, help="fitted on this many episodes, scored on as many others")
    a = p.parse_args()
    torch.set_num_threads(1)
    data = load_trajectories(f"{a.run_dir}/data_clean")
    train_idx, val_idx = data.split(0.05)  # the data config's val_fraction
    fit_idx, test_idx = train_idx[: a.episodes], val_idx[: a.episodes]
    xo, yo = steps_of(data, fit_idx)
    to, ty = steps_of(data, test_idx)
    out = {"majority_class_rate": round(float(torch.bincount(ty).max() / len(ty)), 3),
           "fit_steps": len(yo), "test_steps": len(ty)}
    out["observation_heading_rule"] = accuracy(heading_rule(to), ty)
    out["observation_linear"] = accuracy(predict(fit_probe(xo, yo, 4), to), ty)
    out["observation_plus_heading_linear"] = accuracy(predict(fit_probe(heading_features(xo), yo, 4),
                                                              heading_features(to)), ty)
    out["observation_mlp"] = accuracy(predict(fit_mlp(xo, yo, 4), to), ty)
    model = load_model(f"{a.run_dir}/base_model", device=torch.device("cpu"))
    rtr, rytr, _, _ = collect_residuals(model, data, fit_idx, torch.device("cpu"))
    rte, ryte, _, _ = collect_residuals(model, data, test_idx, torch.device("cpu"))
    kt, ke = rytr >= 0, ryte >= 0
    out["residual_linear_per_layer"], out["residual_mlp_per_layer"] = [], []
    for layer in range(rtr.shape[0]):
        lin = predict(fit_probe(rtr[layer][kt], rytr[kt], 4), rte[layer][ke])
        out["residual_linear_per_layer"].append(accuracy(lin, ryte[ke]))
        mlp = predict(fit_mlp(rtr[layer][kt], rytr[kt], 4), rte[layer][ke])
        out["residual_mlp_per_layer"].append(accuracy(mlp, ryte[ke]))
        print(f"layer {layer}: linear {out['residual_linear_per_layer'][-1]}, mlp {out['residual_mlp_per_layer'][-1]}",
              flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
