"""Batch graphs for the relation-graph methods: instances are vertices, their feature distances the edges.

One place for graph construction, shared by ``irg`` (and the graph-neural variant the roadmap adds next).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def distance_graph(x: Tensor, eps: float = 1e-12) -> Tensor:
    """(B, ...) features -> (B, B) squared Euclidean distances between instances, zero diagonal, divided by
    the largest (so student and teacher graphs compare whatever their feature scales)."""
    flat = x.flatten(1)  # (B, D)
    sq = (flat * flat).sum(dim=1)  # (B,)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * flat @ flat.t()).clamp(min=eps)  # (B, B)
    d2 = d2 * (1.0 - d2.new_ones(d2.shape[0]).diag())  # no self-edges
    return d2 / d2.max().clamp(min=eps)


def transition(f1: Tensor, f2: Tensor, eps: float = 1e-12) -> Tensor:
    """Per-instance squared distance between an earlier feature map f1 (B, C1, *S1) and a later one f2
    (B, C2, *S2), divided by the largest: f1 is average-pooled to S2, and f2's channels averaged in groups of
    C2 / C1 (C2 a multiple of C1, as between the stages of a ResNet). (B,)."""
    pool = F.adaptive_avg_pool1d if f1.ndim == 3 else F.adaptive_avg_pool2d
    if f1.shape[2:] != f2.shape[2:]:
        f1 = pool(f1, f2.shape[2:])
    c1, c2 = f1.shape[1], f2.shape[1]
    if c2 != c1:
        f2 = f2.reshape(f2.shape[0], c1, c2 // c1, *f2.shape[2:]).mean(dim=2)  # (B, C1, *S2)
    d = ((f1 - f2) ** 2).flatten(1).sum(dim=1).clamp(min=eps)  # (B,)
    return d / d.max()
