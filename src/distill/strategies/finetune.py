"""Fine-tuning for cross-task transfer: a trainable copy of a model trained for another task, its head replaced
by a fresh one for this task (the teacher's network, or the student's architecture trained on the source task)."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from distill.errors import DistillError
from distill.io import load_into, load_weights
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


def with_new_head(part: TeacherPart, data: DataSplits, seed: int) -> Preprocessed:
    """A copy of the teacher, every weight trainable, its last Linear layer replaced by a freshly initialised one
    (from ``seed``) with ``data.num_classes`` outputs."""
    model = copy.deepcopy(part.model)
    _replace_head(model, data.num_classes, seed, "the teacher")
    for p in model.parameters():
        p.requires_grad_(True)
    model.train()
    prep = FrozenTeacher(nn.Identity(), student_norm=(tuple(data.mean), tuple(data.std)),
                         teacher_norm=part.normalize, resize=part.resize, margin=part.margin)
    return Preprocessed(model, prep)


def from_source(student: nn.Module, path: str, num_classes: int, seed: int) -> nn.Module:
    """A copy of ``student`` holding the weights at ``path`` (the same architecture trained on the source task),
    all but its head: the last Linear layer is freshly initialised (from ``seed``) for ``num_classes`` classes."""
    model = copy.deepcopy(student)
    head = _head_path(model, "the student")
    body = {k: v for k, v in load_weights(path).items() if k.rpartition(".")[0] != head}  # its old head dropped
    own_head = {k: v for k, v in model.state_dict().items() if k.rpartition(".")[0] == head}
    load_into(model, {**body, **own_head}, f"strategy.student_source {path}")
    _replace_head(model, num_classes, seed, "the student")
    return model


def _head_path(model: nn.Module, who: str) -> str:
    head = last_linear(model)
    if head is None:
        raise DistillError(f"cross_task: {who} ({type(model).__name__}) has no Linear layer to replace with a head "
                           "for this task")
    return head


def _replace_head(model: nn.Module, num_classes: int, seed: int, who: str) -> None:
    """Swap ``model``'s last Linear layer for a fresh one with ``num_classes`` outputs, drawn from ``seed``."""
    parent_name, _, attr = _head_path(model, who).rpartition(".")
    parent = model.get_submodule(parent_name)
    old = getattr(parent, attr)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        setattr(parent, attr, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
