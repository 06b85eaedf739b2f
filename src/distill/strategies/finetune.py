"""The fine-tuning baseline of cross-task transfer: a trainable copy of a teacher with a new head."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from distill.errors import DistillError
from distill.models import FrozenTeacher
from distill.taps import last_linear

if TYPE_CHECKING:
    from distill.data import DataSplits
    from distill.plan import TeacherPart


class Preprocessed(nn.Module):
    """A trainable model fed as its teacher was: the teacher's normalisation and input size (``FrozenTeacher``'s,
    without its freezing)."""

    def __init__(self, model: nn.Module, prep: FrozenTeacher) -> None:
        super().__init__()
        self.model = model
        self.prep = prep  # no weights (its buffers stay out of state dicts), but it moves with .to(device)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.prep.resized(self.prep.renormalise(x)))


def with_new_head(part: TeacherPart, data: DataSplits, seed: int) -> nn.Module:
    """A copy of the teacher, every weight trainable, its last Linear layer replaced by a freshly initialised one
    (from ``seed``) with ``data.num_classes`` outputs."""
    model = copy.deepcopy(part.model)
    head = last_linear(model)
    if head is None:
        raise DistillError(f"cross_task finetune: the teacher ({type(model).__name__}) has no Linear layer to "
                           "replace with a head for this task")
    parent_name, _, attr = head.rpartition(".")
    parent = model.get_submodule(parent_name)
    old = getattr(parent, attr)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        setattr(parent, attr, nn.Linear(old.in_features, data.num_classes, bias=old.bias is not None))
    for p in model.parameters():
        p.requires_grad_(True)
    model.train()
    prep = FrozenTeacher(nn.Identity(), student_norm=(tuple(data.mean), tuple(data.std)),
                         teacher_norm=part.normalize, resize=part.resize)
    return Preprocessed(model, prep)
