"""Data contracts shared by data, models, methods and the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

UNLABELLED = -1
"""Target value of a transfer-set sample: seen by distillation through teacher targets only."""


@dataclass
class Batch:
    """One mini-batch.

    input:  (B, ...) float tensor, already normalised for the student; or a dict of named (B, ...) tensors
            (several fields of each sample: token ids and mask, or one field per modality), from which each
            model reads the keys its spec names.
    target: (B,) long tensor; ``UNLABELLED`` (-1) marks transfer-set samples.
    index:  (B,) long tensor of dataset indices (CRD-style methods need them).
    extras: anything else a method may ask for by name.
    view:   which augmented view of its samples ``input`` is (``distill.data.augment``; 0 without
            augmentation): with ``index`` it names the teacher-cache rows that labelled exactly this input.
    labelled_count: what the cross-entropy divides its sum by; None: this batch's own labelled count. Under
            torchrun, the global batch's labelled count times this rank's share of the batch, so that the
            ranks' losses average to the global mean even when their chunks hold different numbers of labels.
            0: the batch has no labels at all, only targets for the distillation terms (GKD's on-policy
            batches, whose targets are the student's own sampled tokens): label terms are zero on it.
    """

    input: Tensor | dict[str, Tensor]
    target: Tensor
    index: Tensor
    extras: dict[str, Any] = field(default_factory=dict)
    view: int = 0
    labelled_count: float | None = None

    @property
    def labelled(self) -> Tensor:
        """(B,) bool mask of samples that carry a label."""
        return self.target != UNLABELLED

    def to(self, device: torch.device | str) -> Batch:
        """Move tensors to ``device`` (non-blocking where possible)."""
        move = lambda t: t.to(device, non_blocking=True) if isinstance(t, Tensor) else t  # noqa: E731
        x = {k: move(v) for k, v in self.input.items()} if isinstance(self.input, dict) else move(self.input)
        return Batch(x, move(self.target), move(self.index),
                     {k: move(v) for k, v in self.extras.items()}, self.view, self.labelled_count)


@dataclass
class TopKLogits:
    """A teacher's logits as stored by the teacher cache: the k largest and the log-sum-exp of all of them.

    values:  (B, k) fp32 logits of the top-k classes (at T=1), largest first; (B, S, k) per token of a
             language model (C is then the vocabulary).
    indices: (B, k) long class indices of ``values`` ((B, S, k)).
    lse:     {T: (B,) fp32} ``logsumexp(logits / T)`` over all C classes ((B, S)), for every temperature the
             cache was built for; it fixes the exact probability mass of the classes outside the top k.
    num_classes: C. When k == C the logits are complete (``dense``).
    sampled: ``cache.select: sample`` (``distill.cache.sample``): ``values`` are then not logits but the
             log-weights of k draws from the teacher's distribution at the cache's sampling temperature (an
             unbiased estimate of it; ``PAD`` where no draw landed), and ``lse`` is not needed to read them.
    """

    values: Tensor
    indices: Tensor
    lse: dict[float, Tensor]
    num_classes: int
    sampled: bool = False

    @property
    def dense(self) -> bool:
        """True when every class is stored (``k: all``) as a logit."""
        return not self.sampled and self.values.shape[-1] == self.num_classes


@dataclass
class ModelOutput:
    """What a model produced on a batch: logits (B, C) and the tapped features by path.

    ``topk`` is set when the outputs come from the teacher cache; with k < C, ``logits`` then spreads the
    tail's mass evenly over the missing classes and only methods with ``sparse_teacher`` may use it.
    ``by_teacher``: with several teachers (strategy multi_teacher), ``logits`` is their ensemble and each
    teacher's own outputs are here by name, for the methods that name the teacher they read.
    """

    logits: Tensor
    feats: dict[str, Tensor] = field(default_factory=dict)
    topk: TopKLogits | None = None
    by_teacher: dict[str, ModelOutput] = field(default_factory=dict)


@dataclass
class LossOutput:
    """A method's result: ``loss`` is the weighted sum the engine backprops; ``terms`` are
    the weighted components (summing to ``loss``) for logging."""

    loss: Tensor
    terms: dict[str, Tensor]


@dataclass(frozen=True)
class Needs:
    """What a method needs from the engine.

    teacher: needs teacher outputs at all (``ce`` does not).
    taps: module paths whose outputs must be captured on student/teacher.
    live_teacher: True when cached teacher logits do not suffice (feature methods).
    """

    teacher: bool = True
    student_taps: tuple[str, ...] = ()
    teacher_taps: tuple[str, ...] = ()
    live_teacher: bool = False


@dataclass
class StepContext:
    """Where training is: lets methods schedule themselves (e.g. warm-up of a loss weight)."""

    epoch: int  # epoch within the current stage, from 0
    step: int  # optimizer step within the current stage, from 0
    epochs: int  # epochs of the current stage
    steps_per_epoch: int
    stage: str = "main"  # "pretrain" while methods' pre-training stages run (e.g. FitNet hints)


@dataclass
class SetupContext:
    """What a method learns once before training, from a dry run: the shapes (batch dim included) of
    the taps it asked for, and the dataset's size and class count (memory banks need them)."""

    student_shapes: dict[str, tuple[int, ...]]
    teacher_shapes: dict[str, tuple[int, ...]]
    num_samples: int
    num_classes: int
    by_teacher: dict[str, dict[str, tuple[int, ...]]] = field(default_factory=dict)  # named teachers' shapes
