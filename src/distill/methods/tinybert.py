"""Jiao et al. 2020, "TinyBERT: Distilling BERT for Natural Language Understanding" (Findings of EMNLP).

Transformer-layer distillation between a student and a teacher transformer that share a tokenizer, through a
layer map ``student_layers[i] -> teacher_layers[i]`` (indices into ``<prefix>.N``):

- ``attention``: per mapped layer, the mean squared error between the two layers' attention maps, head by head
  (the same number of heads on both sides, as in the paper);
- ``hidden``: per mapped layer, MSE(H_s W_h, H_t), ``W_h`` a Linear connector learnt with the student when the
  hidden sizes differ (the paper's W_h);
- ``embedding``: MSE(E_s W_e, E_t) on the embedding layers' outputs;
- ``logits``: the soft cross-entropy -softmax(z_t / T) . log_softmax(z_s / T) (the paper's prediction loss).

Each term's weight is its argument (the paper weighs them all 1). With ``pretrain_epochs`` > 0 the run follows
the paper's two stages: intermediate-layer distillation (attention + hidden + embedding) alone first, then the
prediction loss alone; with 0 (default) all terms are trained together in one stage.

Deviation, stated: the paper matches the attention *scores* before the softmax; transformers exposes the
*probabilities* (tap ``<layer>.attention.self:1`` with ``attn_implementation: eager``), as MiniLM matches them. The
default map is TinyBERT's uniform map ``g(m) = m * N / M`` for a 3-layer student of a 6-layer teacher
(all-MiniLM-L6-v2: student layers 0, 1, 2 <- teacher layers 1, 3, 5); TinyBERT-4 of BERT-base is
``student_layers: [0, 1, 2, 3]``, ``teacher_layers: [2, 5, 8, 11]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.connectors import paired_features, probed_shapes
from distill.errors import DistillError
from distill.methods.base import METHODS, Method
from distill.types import Batch, LossOutput, ModelOutput, Needs, SetupContext, StepContext


def soft_cross_entropy(student: Tensor, teacher: Tensor, T: float = 1.0) -> Tensor:
    """(B, C) student and teacher logits -> scalar: mean over the batch of -p_t(T) . log p_s(T)."""
    p_t = F.softmax(teacher.float() / T, dim=1)
    return -(p_t * F.log_softmax(student.float() / T, dim=1)).sum(1).mean()


@METHODS.register("tinybert")
class TinyBERT(Method):
    """``attention * sum MSE(A_s, A_t) + hidden * sum MSE(W_h H_s, H_t) + embedding * MSE(W_e E_s, E_t)
    + logits * soft_CE(z_s, z_t; T)`` over the mapped layers."""

    def __init__(self, student_layers: list[int] = [0, 1, 2],  # noqa: B006  (never mutated; shown as default)
                 teacher_layers: list[int] = [1, 3, 5],  # noqa: B006
                 attention: float = 1.0, hidden: float = 1.0, embedding: float = 1.0, logits: float = 1.0,
                 T: float = 1.0, pretrain_epochs: int = 0, prefix: str = "backbone.encoder.layer",
                 attention_module: str = "attention.self:1", embeddings: str = "backbone.embeddings") -> None:
        super().__init__()
        _check_map(student_layers, teacher_layers)
        for name, w in (("attention", attention), ("hidden", hidden), ("embedding", embedding), ("logits", logits)):
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
                raise DistillError(f"tinybert: {name} is a weight >= 0, got {w!r}")
        if isinstance(pretrain_epochs, bool) or not isinstance(pretrain_epochs, int) or pretrain_epochs < 0:
            raise DistillError(f"tinybert: pretrain_epochs must be an integer >= 0, got {pretrain_epochs!r}")
        if T <= 0:
            raise DistillError(f"tinybert: T must be > 0, got {T!r}")
        self.w = {"attention": float(attention), "hidden": float(hidden), "embedding": float(embedding)}
        self.logit_weight, self.T, self.pretrain_epochs = float(logits), float(T), pretrain_epochs
        pairs = {"attention": [(f"{prefix}.{s}.{attention_module}", f"{prefix}.{t}.{attention_module}")
                               for s, t in zip(student_layers, teacher_layers)],
                 "hidden": [(f"{prefix}.{s}", f"{prefix}.{t}") for s, t in zip(student_layers, teacher_layers)],
                 "embedding": [(embeddings, embeddings)]}
        self.pairs = {k: v for k, v in pairs.items() if self.w[k] > 0}
        every = [p for v in self.pairs.values() for p in v]
        self.needs = Needs(teacher=True, live_teacher=bool(every),
                           student_taps=tuple(dict.fromkeys(s for s, _ in every)),
                           teacher_taps=tuple(dict.fromkeys(t for _, t in every)))
        self.connectors = nn.ModuleDict()

    def setup(self, ctx: SetupContext) -> None:
        """Check the mapped taps' shapes and build W_h / W_e where the hidden sizes differ."""
        for kind, pairs in self.pairs.items():
            shapes = probed_shapes("tinybert", ctx, pairs)
            for (s_path, t_path), (s, t) in zip(pairs, shapes):
                _check_shapes(kind, s_path, t_path, s, t)
            if kind != "attention":
                self.connectors[kind] = nn.ModuleList(
                    nn.Identity() if s[-1] == t[-1] else nn.Linear(s[-1], t[-1]) for s, t in shapes)

    def _intermediate(self, s: ModelOutput, t: ModelOutput | None) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        for kind, pairs in self.pairs.items():
            feats = paired_features("tinybert", s, t, pairs)
            if kind == "attention":
                losses = [F.mse_loss(fs.float(), ft.float()) for fs, ft in feats]  # (B, h, T, T) each
            else:
                if kind not in self.connectors:
                    raise RuntimeError("tinybert: setup(ctx) must run before forward (it builds W_h, W_e)")
                losses = [F.mse_loss(conn(fs).float(), ft.float())  # (B, T, H) each
                          for conn, (fs, ft) in zip(self.connectors[kind], feats)]
            terms[f"tinybert_{kind}"] = self.w[kind] * torch.stack(losses).sum()
        return terms

    def forward(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        if t is None:
            raise DistillError("tinybert: needs teacher outputs")
        terms = {} if self.pretrain_epochs else self._intermediate(s, t)
        if self.logit_weight > 0:
            terms["tinybert_logits"] = self.logit_weight * soft_cross_entropy(s.logits, t.logits, self.T)
        if not terms:
            return LossOutput(s.logits.sum() * 0, {})
        return LossOutput(torch.stack(list(terms.values())).sum(), terms)

    def pretrain_loss(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        """Stage 1 (``pretrain_epochs``): intermediate-layer distillation alone."""
        terms = self._intermediate(s, t)
        return LossOutput(torch.stack(list(terms.values())).sum(), terms)


def _check_map(student_layers: list[int], teacher_layers: list[int]) -> None:
    for side, layers in (("student_layers", student_layers), ("teacher_layers", teacher_layers)):
        if not isinstance(layers, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                   for i in layers):
            raise DistillError(f"tinybert: {side} must be a list of layer indices >= 0, got {layers!r}")
    if len(student_layers) != len(teacher_layers):
        raise DistillError(f"tinybert: student_layers and teacher_layers are paired by position (the layer map) "
                           f"but have {len(student_layers)} and {len(teacher_layers)} entries")


def _check_shapes(kind: str, s_path: str, t_path: str, s: tuple[int, ...], t: tuple[int, ...]) -> None:
    if kind == "attention":
        if len(s) != 4 or len(t) != 4:
            raise DistillError(f"tinybert: attention taps must be (B, heads, T, T) maps, got student {s_path!r} "
                               f"{s} and teacher {t_path!r} {t}")
        if s[1] != t[1]:
            raise DistillError(f"tinybert: attention is matched head by head, but the student's layer has {s[1]} "
                               f"heads ({s_path!r}) and the teacher's {t[1]} ({t_path!r}); give the student "
                               f"{t[1]} heads or set attention: 0")
    elif len(s) != 3 or len(t) != 3:
        raise DistillError(f"tinybert: {kind} taps must be (B, T, H) token states, got student {s_path!r} {s} "
                           f"and teacher {t_path!r} {t}")
    if s[-2] != t[-2] or (kind == "attention" and s[-1] != t[-1]):
        raise DistillError(f"tinybert: student {s_path!r} has {s[-2]} tokens and teacher {t_path!r} {t[-2]}: "
                           "TinyBERT compares token by token, so both must read one tokenisation")
