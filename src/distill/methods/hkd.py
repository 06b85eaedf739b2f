"""Zhou et al., ICCV 2021, "Distilling Holistic Knowledge with Graph Neural Networks" (HKD).

Each network's penultimate embedding is projected by a linear head to ``feat_dim`` and L2-normalised (``e``,
individual knowledge). Its batch forms a k-nearest-neighbour graph (``distill.methods.graph.knn_graph``: cosine
distance between softmax outputs, each instance plus its ``knn - 1`` nearest), and a one-hop graph convolution
(DGL's TAGConv with k=1, as in the reference: ``g = normalize(W [e, P e] + b)`` with ``P = D^-1/2 A D^-1/2``,
the mean over the neighbourhood) aggregates the embeddings into holistic ones (``g``). Both are distilled
contrastively, InfoNCE at temperature ``nce_t`` against ``nce_k`` negatives drawn from momentum memory banks of
every training sample's embedding (``M_s``, ``M_t``)::

    L(a, p, M) = -1/B sum_i log( exp(<a_i, p_i>/T) / (exp(<a_i, p_i>/T) + sum_k exp(<a_i, M[n_ik]>/T)) )
    individual = L(e_s, M_t[i], M_s) + L(e_t, M_s[i], M_t)
    holistic   = L(g_s, S(M_t[i], g_t), M_s) + L(g_t, S(M_s[i], g_s), M_t)
    hkd = beta * (individual + holistic),     S(m, g) = normalize(smooth_m * m + (1 - smooth_m) * g)  (no grad)

Choices, all the reference code's (github.com/wyc-ruiker/HKD, ``distiller_zoo/GNN.py``) unless said otherwise:

- the graph is built on each network's own softmax outputs, detached (``graph: own``); ``graph: teacher`` makes
  the student aggregate its embeddings over the teacher's graph instead (not in the reference);
- negatives come from the anchor's *own* network's bank and the positive from the other network's (what the
  reference's ``NCEAverage`` returns); the holistic positive is the other bank's entry smoothed towards the other
  network's holistic embedding (``smooth_m`` 0.75), and the banks move with the individual embeddings
  (``nce_m`` 0.9, then renormalised), after the loss;
- defaults: ``feat_dim`` 128, ``knn`` 8, ``nce_t`` 0.07, ``beta`` 3 (the reference's ``-b 3``; ``-a 0`` is
  ``ce + hkd``, ``-a 1`` is ``kd + hkd``), on ``fc:input``; ``nce_k`` 4096 as in ``crd`` here (the reference
  16384), clamped to the training set's size minus one;
- label-free negatives: drawn uniformly over the training set without the sample itself (``crd``'s sampler). The
  reference draws them from other classes only, which needs a label for every sample: a transfer set has none;
- a batch smaller than ``knn`` gets a complete graph (the reference skips the holistic term there).

The teacher's features are detached: only its projection head and graph convolution train. Under torchrun the
banks follow the global batch as in ``crd``; each rank's graph is over its own chunk of the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.connectors import auto_needs, is_auto, require_resolved
from distill.engine import dist
from distill.errors import DistillError
from distill.methods.base import METHODS, Method
from distill.methods.crd import Embed, contrast_logits, momentum_update, sample_contrast_indices
from distill.methods.graph import knn_graph, propagation
from distill.methods.rkd import tapped
from distill.types import Batch, LossOutput, ModelOutput, Needs, SetupContext, StepContext

GRAPHS = ("own", "teacher")


def info_nce(anchor: Tensor, positive: Tensor, memory: Tensor, negatives: Tensor, T: float) -> Tensor:
    """InfoNCE of anchors (B, D) against their positives (B, D) and the bank rows ``memory[negatives]``
    (memory (N, D), negatives (B, K)) -> scalar: cross-entropy with the positive as class 0, mean over B."""
    pos = (anchor.float() * positive.float()).sum(dim=1, keepdim=True) / T  # (B, 1)
    logits = torch.cat([pos, contrast_logits(anchor, memory, negatives, T)], dim=1)  # (B, 1 + K)
    return F.cross_entropy(logits, torch.zeros_like(negatives[:, 0]))


def smoothed(rows: Tensor, value: Tensor, momentum: float) -> Tensor:
    """(B, D) bank rows moved towards (B, D) ``value`` and renormalised, without gradient: a holistic positive."""
    return F.normalize(momentum * rows.float() + (1.0 - momentum) * value.detach().float(), dim=1)  # (B, D)


def hkd_loss(e_s: Tensor, e_t: Tensor, g_s: Tensor, g_t: Tensor, memory_s: Tensor, memory_t: Tensor,
             index: Tensor, negatives: Tensor, T: float, smooth_m: float) -> tuple[Tensor, Tensor]:
    """(individual, holistic) InfoNCE sums of the module docstring.

    e_*: (B, D) individual and g_*: (B, D) holistic embeddings, L2-normalised; memory_*: (N, D) banks; index: (B,)
    the batch's rows in the banks; negatives: (B, K) bank rows to contrast against.
    """
    pos_s, pos_t = memory_s[index].detach(), memory_t[index].detach()  # (B, D) each network's entry of i
    individual = info_nce(e_s, pos_t, memory_s, negatives, T) + info_nce(e_t, pos_s, memory_t, negatives, T)
    holistic = (info_nce(g_s, smoothed(pos_t, g_t, smooth_m), memory_s, negatives, T)
                + info_nce(g_t, smoothed(pos_s, g_s, smooth_m), memory_t, negatives, T))
    return individual, holistic


class GraphConv(nn.Module):
    """One-hop TAGConv and L2 norm: (B, D) vertex features, (B, B) propagation ``P`` -> normalize(W [h, P h] + b)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(2 * dim, dim)

    def forward(self, h: Tensor, prop: Tensor) -> Tensor:
        return F.normalize(self.linear(torch.cat([h, prop @ h], dim=1)), dim=1)  # (B, dim)


@METHODS.register("hkd")
class HKD(Method):
    """Holistic KD (Zhou et al., ICCV 2021); terms ``hkd_ind`` and ``hkd_graph`` (both times ``beta``).

    One tap per network, by default (``auto``) the penultimate embedding (``fc:input`` of a zoo model; maps are
    flattened). The heads, graph convolutions and memory banks (``num_samples x feat_dim`` each, buffers:
    checkpointed) are built in ``setup``; ``batch.index`` must index the training set seen there. Combine with
    ``ce`` or ``kd``.
    """

    auto_layers = "embedding"

    def __init__(self, student_layers: list[str] | str = "auto", teacher_layers: list[str] | str = "auto",
                 feat_dim: int = 128, knn: int = 8, nce_k: int = 4096, nce_t: float = 0.07, nce_m: float = 0.9,
                 smooth_m: float = 0.75, beta: float = 3.0, graph: str = "own") -> None:
        super().__init__()
        auto = is_auto("hkd", student_layers, teacher_layers)
        if not auto and (len(student_layers) != 1 or len(teacher_layers) != 1):
            raise DistillError(f"hkd: student_layers and teacher_layers take one layer each, got "
                               f"{student_layers!r} and {teacher_layers!r}")
        if feat_dim < 1 or knn < 1 or nce_k < 1 or nce_t <= 0 or not (0 <= nce_m < 1 and 0 <= smooth_m <= 1):
            raise DistillError("hkd: need feat_dim, knn, nce_k >= 1, nce_t > 0, 0 <= nce_m < 1, 0 <= smooth_m <= 1")
        if graph not in GRAPHS:
            raise DistillError(f"hkd: graph must be one of {GRAPHS}, got {graph!r}")
        student_layers, teacher_layers = (['auto'], ['auto']) if auto else (student_layers, teacher_layers)
        self.s_layer, self.t_layer, self.graph = student_layers[0], teacher_layers[0], graph
        self.feat_dim, self.knn, self.nce_k, self.nce_t = feat_dim, knn, nce_k, nce_t
        self.nce_m, self.smooth_m, self.beta = nce_m, smooth_m, beta
        self.needs = auto_needs() if auto else Needs(teacher=True, student_taps=(self.s_layer,),
                                                     teacher_taps=(self.t_layer,), live_teacher=True)
        self.embed_s: Embed | None = None
        self.embed_t: Embed | None = None
        self.gnn_s: GraphConv | None = None
        self.gnn_t: GraphConv | None = None
        self.register_buffer("memory_s", torch.zeros(0, feat_dim))  # placeholders: setup() sizes them
        self.register_buffer("memory_t", torch.zeros(0, feat_dim))
        self._index_checked = False

    def setup(self, ctx: SetupContext) -> None:
        """Projection heads and graph convolutions from the probed tap shapes; the two memory banks."""
        require_resolved("hkd", [] if self.s_layer == "auto" else [self.s_layer])
        dims = []
        for shapes, layer, role in ((ctx.student_shapes, self.s_layer, "student"),
                                    (ctx.teacher_shapes, self.t_layer, "teacher")):
            if layer not in shapes:
                raise DistillError(f"hkd: no probed shape for {role} layer {layer!r} (probed: {sorted(shapes)})")
            dims.append(math.prod(shapes[layer][1:]))
        if ctx.num_samples < 2:
            raise DistillError(f"hkd: needs at least 2 training samples for negatives, got {ctx.num_samples}")
        self.embed_s, self.embed_t = Embed(dims[0], self.feat_dim), Embed(dims[1], self.feat_dim)
        self.gnn_s, self.gnn_t = GraphConv(self.feat_dim), GraphConv(self.feat_dim)
        std = 1.0 / math.sqrt(self.feat_dim / 3)  # the reference's initialisation: uniform in +-std
        self.memory_s = torch.rand(ctx.num_samples, self.feat_dim) * 2 * std - std  # (N, D)
        self.memory_t = torch.rand(ctx.num_samples, self.feat_dim) * 2 * std - std  # (N, D)
        self._index_checked = False

    def forward(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        assert t is not None, "hkd needs teacher outputs"
        if self.embed_s is None or self.embed_t is None or self.gnn_s is None or self.gnn_t is None:
            raise DistillError("hkd: setup() must run before the first forward (it builds the memory banks)")
        n = self.memory_s.shape[0]
        index = self._index(batch, n)  # (B,)
        e_s = self.embed_s(tapped("hkd", s, self.s_layer, "student").float())  # (B, D)
        e_t = self.embed_t(tapped("hkd", t, self.t_layer, "teacher").detach().float())  # (B, D)
        adj_t = knn_graph(F.softmax(t.logits.float(), dim=1), self.knn)  # (B, B), no gradient
        adj_s = adj_t if self.graph == "teacher" else knn_graph(F.softmax(s.logits.float(), dim=1), self.knn)
        g_s, g_t = self.gnn_s(e_s, propagation(adj_s)), self.gnn_t(e_t, propagation(adj_t))  # (B, D) each
        # Data-parallel: draw for the global batch (the same draws on every rank) and keep our rows, as crd does.
        sizes = dist.gather_sizes(index.shape[0], index.device)
        index_all = dist.gather_cat(index, sizes)  # (G,)
        lo = sum(sizes[:dist.rank()])
        negatives = sample_contrast_indices(index_all, n, min(self.nce_k, n - 1))[lo:lo + index.shape[0], 1:]
        individual, holistic = hkd_loss(e_s, e_t, g_s, g_t, self.memory_s, self.memory_t, index, negatives,
                                        self.nce_t, self.smooth_m)
        if self.training:  # banks move after the loss: this batch was contrasted with the previous entries
            both = dist.gather_cat(torch.cat([e_s.float(), e_t.float()], dim=1), sizes)  # (G, 2D)
            momentum_update(self.memory_s, index_all, both[:, :self.feat_dim], self.nce_m)
            momentum_update(self.memory_t, index_all, both[:, self.feat_dim:], self.nce_m)
        ind, hol = self.beta * individual, self.beta * holistic
        return LossOutput(ind + hol, {"hkd_ind": ind, "hkd_graph": hol})

    def _index(self, batch: Batch, n: int) -> Tensor:
        """The batch's (B,) bank rows; checked once per setup to fall inside the banks (one host sync)."""
        index = batch.index.to(self.memory_s.device).long()
        if not self._index_checked:
            lo, hi = int(index.min()), int(index.max())
            if lo < 0 or hi >= n:
                raise DistillError(f"hkd: batch.index spans [{lo}, {hi}] but the memory banks hold {n} samples "
                                   "(setup's num_samples); the indices must be positions in the training set")
            self._index_checked = True
        return index
