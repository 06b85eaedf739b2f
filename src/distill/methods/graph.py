"""Batch graphs for the relation-graph methods: instances are vertices, their feature distances the edges.

One place for graph construction, shared by ``irg`` (dense distance graphs, transitions between layers) and
``hkd`` (k-nearest-neighbour graphs and their normalised propagation matrix).
"""

from __future__ import annotations

import torch
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


def cosine_distance(x: Tensor, eps: float = 1e-7) -> Tensor:
    """(B, ...) features -> (B, B) cosine distances ``1 - <x_i, x_j> / (|x_i| |x_j|)``, the product of the
    norms clamped at ``eps`` (zero rows are at distance 1 from everything)."""
    flat = x.flatten(1)  # (B, D)
    norm = flat.norm(dim=1, keepdim=True)  # (B, 1)
    return 1.0 - (flat @ flat.t()) / (norm @ norm.t()).clamp(min=eps)  # (B, B)


def knn_graph(x: Tensor, k: int) -> Tensor:
    """(B, ...) features -> (B, B) 0/1 adjacency of the k-nearest-neighbour graph by cosine distance.

    Row i holds ones at i itself and at its k - 1 nearest other instances: ``A[i, j] = 1`` when vertex i
    aggregates vertex j, and every row sums to k. The vertex itself is always one of its k (its distance is
    set to -1 first, as in the HKD reference code); k is clamped to B, where the graph becomes complete.
    A graph is a structure, not a loss: no gradient flows through it.
    """
    with torch.no_grad():
        d = cosine_distance(x.detach().float())  # (B, B)
        d.fill_diagonal_(-1.0)
        nearest = d.topk(min(k, d.shape[0]), dim=1, largest=False).indices  # (B, k)
        return torch.zeros_like(d).scatter_(1, nearest, 1.0)  # (B, B)


def propagation(adj: Tensor, eps: float = 1e-12) -> Tensor:
    """(B, B) adjacency (row i: what vertex i aggregates) -> ``D^-1/2 A D^-1/2`` with D the row sums (each
    vertex's in-degree), the normalisation of DGL's TAGConv (the HKD reference's graph convolution). On a k-NN graph
    from ``knn_graph`` every degree is k, so this is ``A / k``: the mean over each vertex's neighbourhood."""
    inv_sqrt = adj.sum(dim=1).clamp(min=eps).rsqrt()  # (B,)
    return inv_sqrt[:, None] * adj * inv_sqrt[None, :]  # (B, B)
