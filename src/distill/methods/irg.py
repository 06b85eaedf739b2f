"""Liu et al., CVPR 2019, "Knowledge Distillation via Instance Relationship Graph" (IRG).

Each tapped layer gives a graph over the batch: instances are vertices, squared Euclidean distances between them
the edges (``distill.methods.graph``). The student matches the teacher's vertices (logits), edges (every layer)
and the transformation between consecutive feature maps (how far each instance moves from one stage to the next):

    loss = w_vert * MSE(z_s, z_t) + w_edge * mean_l MSE(E_s^l, E_t^l) + w_tran * mean_pairs MSE(Tr_s, Tr_t)

Edges and transformations are divided by their largest value, so the widths of student and teacher may differ
and no connector is needed. The official code is Caffe; defaults follow the PyTorch reimplementation in
Knowledge-Distillation-Zoo (w_vert 0.1, w_edge 5, w_tran 5, edges on two stage outputs and the embedding,
transformation between the two stages). The layer default here is the embedding alone (``auto``: the head's
input, ``fc:input`` of a zoo model), which has no transformation; name two stage outputs first for the paper's
setting, e.g. ``student_layers: [layer2, layer3, "fc:input"]`` on the zoo ResNets (docs/BENCHMARKS.md does).
"""

from __future__ import annotations

import torch.nn.functional as F

from distill.connectors import layer_lists
from distill.methods.base import METHODS, Method
from distill.methods.graph import distance_graph, transition
from distill.methods.rkd import paired_features, relation_needs
from distill.types import Batch, LossOutput, ModelOutput, StepContext


@METHODS.register("irg")
class IRG(Method):
    """Instance relationship graph: vertex, edge and transformation terms; returns only its own terms."""

    auto_layers = "embedding"

    def __init__(self, w_vert: float = 0.1, w_edge: float = 5.0, w_tran: float = 5.0,
                 student_layers: list[str] | str = "auto", teacher_layers: list[str] | str = "auto") -> None:
        super().__init__()
        self.w_vert, self.w_edge, self.w_tran = w_vert, w_edge, w_tran
        self.needs = relation_needs("irg", student_layers, teacher_layers)
        self.s_layers, self.t_layers = layer_lists("irg", student_layers, teacher_layers)

    def forward(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        assert t is not None, "irg needs teacher outputs"
        pairs = paired_features("irg", s, t, self.s_layers, self.t_layers)  # [(student, teacher)] per layer
        vert = self.w_vert * F.mse_loss(s.logits.float(), t.logits.detach().float())
        edge = self.w_edge * sum(F.mse_loss(distance_graph(fs), distance_graph(ft)) for fs, ft in pairs) / len(pairs)
        maps = [(fs, ft) for fs, ft in pairs if fs.ndim >= 3 and ft.ndim >= 3]  # feature maps, in layer order
        steps = list(zip(maps[:-1], maps[1:]))
        tran = vert * 0.0
        if steps:
            tran = self.w_tran * sum(F.mse_loss(transition(a[0], b[0]), transition(a[1], b[1]))
                                     for a, b in steps) / len(steps)
        return LossOutput(vert + edge + tran, {"irg_vert": vert, "irg_edge": edge, "irg_tran": tran})
