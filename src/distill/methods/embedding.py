"""Sentence-embedding distillation (Reimers & Gurevych 2020, "Making Monolingual Sentence Embeddings Multilingual
using Knowledge Distillation", EMNLP; the ``MSELoss`` of sentence-transformers), with a cosine and a relational
term.

The student's pooled sentence embedding is matched to the teacher's: ``mse`` (the paper's loss: the mean squared
error between the two vectors, through a Linear connector when the widths differ, as sentence-transformers adds a
Dense layer), ``cosine`` (1 - cos per sentence: only the direction, which is what cosine-similarity search reads)
and ``similarity`` (relational: the mean squared error between the (B, B) cosine-similarity matrices of the
batch, width-free, so it needs no connector). Each term's weight is its argument; a zero weight switches it off.

The default tap, ``pool``, is the pooled sentence embedding of the ``hf`` and ``static`` models; for a zoo model
tap ``fc:input`` (its penultimate embedding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.connectors import build_connector, feature_needs, layer_pairs, paired_features, probed_shapes
from distill.errors import DistillError
from distill.methods.base import METHODS, Method
from distill.types import Batch, LossOutput, ModelOutput, SetupContext, StepContext


def embedding_mse(student: Tensor, teacher: Tensor) -> Tensor:
    """(B, D) and (B, D) -> scalar: mean over every element of (student - teacher)^2 (Reimers & Gurevych)."""
    return F.mse_loss(student.float(), teacher.float())


def embedding_cosine(student: Tensor, teacher: Tensor) -> Tensor:
    """(B, D) and (B, D) -> scalar: mean over sentences of 1 - cos(student_i, teacher_i)."""
    return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=1)).mean()


def cosine_matrix(x: Tensor) -> Tensor:
    """(B, D) -> (B, B): cosine similarity of every pair of rows."""
    u = F.normalize(x.float(), dim=1)
    return u @ u.T


def similarity_mse(student: Tensor, teacher: Tensor) -> Tensor:
    """(B, Ds) and (B, Dt) -> scalar: mean squared error between the two (B, B) cosine-similarity matrices."""
    return F.mse_loss(cosine_matrix(student), cosine_matrix(teacher))


@METHODS.register("embedding")
class EmbeddingDistillation(Method):
    """``mse * MSE(connector(s), t) + cosine * (1 - cos(connector(s), t)) + similarity * MSE(S_s, S_t)`` on
    the pooled sentence embeddings (``pool``), S the batch's cosine-similarity matrix."""

    def __init__(self, student_layers: list[str] = ["pool"],  # noqa: B006  (never mutated; shown as default)
                 teacher_layers: list[str] = ["pool"],  # noqa: B006
                 mse: float = 1.0, cosine: float = 0.0, similarity: float = 0.0) -> None:
        super().__init__()
        for name, w in (("mse", mse), ("cosine", cosine), ("similarity", similarity)):
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
                raise DistillError(f"embedding: {name} is a weight >= 0, got {w!r}")
        if mse == cosine == similarity == 0:
            raise DistillError("embedding: every term's weight is 0 (mse, cosine, similarity); set one above 0")
        self.pairs = layer_pairs("embedding", student_layers, teacher_layers)
        self.needs = feature_needs(self.pairs)
        self.mse, self.cosine, self.similarity = float(mse), float(cosine), float(similarity)
        self.connectors = nn.ModuleList()

    def setup(self, ctx: SetupContext) -> None:
        """A Linear connector per pair when the widths differ and a term compares the vectors themselves."""
        shapes = probed_shapes("embedding", ctx, self.pairs)
        for (s_path, t_path), (s, t) in zip(self.pairs, shapes):
            if len(s) != 2 or len(t) != 2:
                raise DistillError(f"embedding: taps must be (B, D) embeddings, got student {s_path!r} {s} and "
                                   f"teacher {t_path!r} {t}; tap the pooled embedding ('pool', or 'fc:input')")
        direct = self.mse > 0 or self.cosine > 0
        self.connectors = nn.ModuleList(build_connector(s, t) if direct else nn.Identity() for s, t in shapes)

    def forward(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        if len(self.connectors) != len(self.pairs):
            raise RuntimeError("embedding: setup(ctx) must run before forward (it builds the connectors)")
        parts: dict[str, list[Tensor]] = {"mse": [], "cosine": [], "similarity": []}
        for conn, (fs, ft) in zip(self.connectors, paired_features("embedding", s, t, self.pairs)):
            fs, ft = fs.flatten(1), ft.flatten(1)  # (B, Ds), (B, Dt)
            if self.mse > 0:
                parts["mse"].append(self.mse * embedding_mse(conn(fs), ft))
            if self.cosine > 0:
                parts["cosine"].append(self.cosine * embedding_cosine(conn(fs), ft))
            if self.similarity > 0:
                parts["similarity"].append(self.similarity * similarity_mse(fs, ft))
        terms = {f"embedding_{k}": torch.stack(v).sum() for k, v in parts.items() if v}
        return LossOutput(torch.stack(list(terms.values())).sum(), terms)
