"""Linear probes (SPEC §4, paper Fig. 3, A1, Table A6): from the residual after every block
(layer 0 = the input embedding) decode the ground-truth subgoal with a linear softmax
classifier, fitted on one set of episodes and scored on another."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data import Trajectories, make_batch
from ..models.sequence_model import SequenceModel


@torch.no_grad()
def collect_residuals(model: SequenceModel, data: Trajectories, idx: np.ndarray, device, batch_size: int = 128):
    """Residuals of every valid step. Returns ``feats (layers+1, steps, W)``, ``subgoal
    (steps,)``, ``segment_pos (steps,)`` (steps since the current subgoal began) and
    ``episode (steps,)`` (row of ``idx`` each step came from)."""
    feats, labels, seg, ep = [], [], [], []
    for i in range(0, len(idx), batch_size):
        rows = idx[i : i + batch_size]
        batch = make_batch(data, rows).to(device)
        stream = torch.stack(model.residual_stream(batch.obs[:, :-1]))  # (L+1, B, T, W)
        m = batch.mask
        feats.append(stream[:, m].cpu())
        labels.append(batch.subgoals[m].cpu())
        seg.append(segment_positions(batch.subgoals)[m].cpu())
        ep.append(torch.arange(i, i + len(rows))[:, None].expand_as(m)[m.cpu()])
    return torch.cat(feats, 1), torch.cat(labels), torch.cat(seg), torch.cat(ep)


def segment_positions(subgoals: torch.Tensor) -> torch.Tensor:
    """(B, T): steps since the subgoal last changed (0 on the first step of a segment)."""
    b, t = subgoals.shape
    change = torch.ones_like(subgoals, dtype=torch.bool)
    change[:, 1:] = subgoals[:, 1:] != subgoals[:, :-1]
    steps = torch.arange(t, device=subgoals.device).expand(b, t)
    last_change = torch.cummax(torch.where(change, steps, torch.zeros_like(steps)), dim=1).values
    return steps - last_change


class LinearProbe(torch.nn.Module):
    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("std", torch.ones(width))
        self.linear = torch.nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x - self.mean) / self.std)


def fit_probe(x: torch.Tensor, y: torch.Tensor, num_classes: int, steps: int = 300, lr: float = 0.05,
              weight_decay: float = 1e-4, seed: int = 0) -> LinearProbe:
    """Full-batch multinomial logistic regression on standardised features."""
    torch.manual_seed(seed)
    probe = LinearProbe(x.shape[-1], num_classes)
    probe.mean.copy_(x.mean(0))
    probe.std.copy_(x.std(0).clamp(min=1e-5))
    opt = torch.optim.Adam(probe.linear.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        loss = F.cross_entropy(probe(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return probe.eval()


def probe_layers(model: SequenceModel, data: Trajectories, train_idx: np.ndarray, test_idx: np.ndarray,
                 num_classes: int, device, max_segment_pos: int = 10, steps: int = 300) -> dict:
    """Fit one probe per layer; accuracy per layer and per position within a subgoal segment."""
    xtr, ytr, _, _ = collect_residuals(model, data, train_idx, device)
    xte, yte, pos, _ = collect_residuals(model, data, test_idx, device)
    keep_tr, keep_te = ytr >= 0, yte >= 0
    pos = pos[keep_te].clamp(max=max_segment_pos)
    per_layer, by_pos, probes = [], [], []
    for layer in range(xtr.shape[0]):
        probe = fit_probe(xtr[layer][keep_tr], ytr[keep_tr], num_classes, steps=steps)
        with torch.no_grad():
            correct = (probe(xte[layer][keep_te]).argmax(-1) == yte[keep_te]).float()
        per_layer.append(float(correct.mean()))
        by_pos.append([float(correct[pos == p].mean()) if (pos == p).any() else None
                       for p in range(max_segment_pos + 1)])
        probes.append(probe)
    chance = float(torch.bincount(yte[keep_te], minlength=num_classes).max() / keep_te.sum())
    return {"accuracy_per_layer": per_layer, "accuracy_by_segment_position": by_pos,
            "majority_class_rate": chance, "train_steps": int(keep_tr.sum()), "test_steps": int(keep_te.sum()),
            "probes": probes}


@torch.no_grad()
def decode_episode(model: SequenceModel, probes: list[LinearProbe], data: Trajectories, episode: int, device):
    """(layers+1, T, classes) probe probabilities along one episode, and its (T,) subgoals."""
    batch = make_batch(data, np.array([episode])).to(device)
    stream = model.residual_stream(batch.obs[:, :-1])
    probs = torch.stack([F.softmax(p(s[0].cpu()), -1) for p, s in zip(probes, stream)])
    return probs.numpy(), batch.subgoals[0].cpu().numpy()
