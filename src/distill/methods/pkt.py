"""Passalis & Tefas, ECCV 2018, "Learning Deep Representations with Probabilistic Knowledge Transfer" (PKT).

Each network's embeddings define, for every sample i, a distribution over the batch from a cosine-similarity
kernel; the student matches the teacher's conditional distributions::

    x_i = f_i / (||f_i|| + eps)                          (rows, flattened)
    K(a, b) = (<x_a, x_b> + 1) / 2                       in [0, 1], all B x B entries, diagonal included
    p_{j|i} = K(t_i, t_j) / sum_k K(t_i, t_k)            (teacher; q_{j|i} likewise for the student)
    L = mean over all B^2 entries of p_{j|i} * log((p_{j|i} + eps) / (q_{j|i} + eps)),   eps = 1e-7
    loss = beta * sum over layer pairs

This is the reference code exactly (RepDistiller ``distiller_zoo/PKT.py``, ``cosine_similarity_loss``, lines
17-42, "code from author" github.com/passalis/probabilistic_kt; mdistiller's ``PKT`` is the same): the
self-similarity entries i = j are kept although the paper's sums run over j != i, because beta = 30000
(RepDistiller's ``scripts/run_cifar_distill.sh``, also mdistiller) was tuned for this reduction. Only B x B
kernels are compared, so widths may differ.
"""

from __future__ import annotations

import torch
from torch import Tensor

from distill.connectors import layer_lists
from distill.methods.base import METHODS, Method
from distill.methods.rkd import paired_features, relation_needs
from distill.types import Batch, LossOutput, ModelOutput, StepContext


def conditional_probabilities(f: Tensor, eps: float = 1e-7) -> Tensor:
    """(B, ...) -> (B, B) p_{j|i} from the cosine kernel over the whole batch (diagonal included); rows sum to 1."""
    x = f.flatten(1)  # (B, D)
    x = x / (x.norm(dim=1, keepdim=True) + eps)  # (B, D), the reference's norm + eps (zero rows stay zero)
    kernel = (x @ x.t() + 1.0) / 2.0  # (B, B) in [0, 1]
    return kernel / kernel.sum(dim=1, keepdim=True)  # (B, B)


def pkt_loss(f_s: Tensor, f_t: Tensor, eps: float = 1e-7) -> Tensor:
    """KL(teacher || student) of the neighbour distributions, mean over all B^2 entries: (B, ...) x2 -> scalar."""
    p = conditional_probabilities(f_t, eps)  # (B, B) teacher
    q = conditional_probabilities(f_s, eps)  # (B, B) student
    return (p * torch.log((p + eps) / (q + eps))).mean()


@METHODS.register("pkt")
class PKT(Method):
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018); returns only ``pkt`` = beta * loss."""

    auto_layers = "embedding"  # RepDistiller's feat[-1]: the pooled penultimate vector

    def __init__(self, beta: float = 30000.0, student_layers: list[str] | str = "auto",
                 teacher_layers: list[str] | str = "auto") -> None:
        super().__init__()
        self.beta = beta
        self.needs = relation_needs("pkt", student_layers, teacher_layers)
        self.s_layers, self.t_layers = layer_lists("pkt", student_layers, teacher_layers)

    def forward(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        pairs = paired_features("pkt", s, t, self.s_layers, self.t_layers)
        term = self.beta * sum(pkt_loss(fs, ft) for fs, ft in pairs)
        return LossOutput(term, {"pkt": term})
