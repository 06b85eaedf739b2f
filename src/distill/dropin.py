"""``DistillationModel``: distillation as one module that drops into your own training loop.

    dm = distill.DistillationModel(student, teacher, methods=[distill.methods.KD(T=4)])
    opt = torch.optim.SGD(dm.parameters(), lr=0.05)        # the student's and the connectors' parameters
    for x, y in loader:
        logits = dm(x)                                      # what the student returns
        loss = dm.loss(y).loss                              # the methods' weighted sum for that forward
        opt.zero_grad(); loss.backward(); opt.step()
    torch.save(dm.student.state_dict(), "student.pt")      # the bare student, unchanged

The teacher is frozen in one place (``FrozenTeacher``: eval mode, no gradients, never in ``parameters()``);
features are tapped by module path with forward hooks and connectors are built from probed shapes, exactly as
the engine does for recipes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from distill.engine import as_fp32, setup_methods
from distill.errors import DistillError, error_boundary
from distill.methods import METHODS, Method, MethodSet
from distill.models import FrozenTeacher, Keys, as_logits, feed
from distill.taps import FeatureTaps
from distill.types import UNLABELLED, Batch, LossOutput, ModelOutput, StepContext


class DistillationModel(nn.Module):
    """Student + frozen teacher + methods as one module for a hand-written loop.

    methods: Method objects or registered names (``"kd"``). ``example``: a batch of inputs, needed when a method
    taps features (connectors must exist before you build the optimizer); without it, methods that need no
    connectors set up on the first forward. ``num_samples``: the dataset size (memory-bank methods such as CRD).
    ``teacher_norm``/``student_norm``: (mean, std) when the teacher expects other input normalisation.
    ``student_inputs``/``teacher_inputs``: the keys of a dict input each reads. ``steps_per_epoch``/``epochs``:
    for methods that schedule themselves over training.
    """

    @error_boundary
    def __init__(self, student: nn.Module, teacher: nn.Module, methods: Sequence[Method | str], *,
                 example: Any = None, num_samples: int = 0, student_inputs: Keys = None,
                 teacher_inputs: Keys = None, student_norm: Any = None, teacher_norm: Any = None,
                 steps_per_epoch: int = 1, epochs: int = 1) -> None:
        super().__init__()
        built = [METHODS.get(m)() if isinstance(m, str) else m for m in methods]
        if not built or not all(isinstance(m, Method) for m in built):
            raise DistillError("DistillationModel: methods must be a non-empty list of Method objects or names")
        self.student = student
        self.teacher = teacher if isinstance(teacher, FrozenTeacher) else FrozenTeacher(
            teacher, student_norm=student_norm, teacher_norm=teacher_norm, inputs=teacher_inputs)
        self.methods = MethodSet(built)
        self.student_inputs = student_inputs
        self.num_samples, self.steps_per_epoch, self.epochs = num_samples, steps_per_epoch, epochs
        if any(getattr(m, "pretrain_epochs", 0) for m in built):
            raise DistillError("DistillationModel runs one stage; methods with a pre-training stage (FitNet hints, "
                               "...) need distill.fit or a recipe")
        # attached in _setup, once ``layers: auto`` methods know their layers
        self._s_taps, self._t_taps = FeatureTaps(student, []), FeatureTaps(self.teacher.model, [])
        self._ready, self._last, self._step = False, None, 0
        if example is not None:
            self._setup(example)
        elif self.methods.student_taps or self.methods.teacher_taps:
            raise DistillError("DistillationModel: these methods tap features and build connectors from their "
                               "shapes; pass example=<a batch of inputs> so they exist before you create the optimizer")

    def _setup(self, x: Any) -> None:
        with torch.no_grad():
            classes = int(self.teacher(x).shape[-1])
        setup_methods(self.methods, self.student, self.teacher, x, num_samples=self.num_samples,
                      num_classes=classes, inputs=self.student_inputs)
        self._s_taps = FeatureTaps(self.student, self.methods.student_taps).attach()
        self._t_taps = FeatureTaps(self.teacher.model, self.methods.teacher_taps).attach()
        self.methods.to(next(self.student.parameters(), torch.zeros(0)).device)
        self._ready = True

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[tuple[str, nn.Parameter]]:
        """The student's and the methods' (connectors') parameters; never the frozen teacher's."""
        for name, p in super().named_parameters(prefix, recurse, remove_duplicate):
            if not name.startswith(f"{prefix}.teacher." if prefix else "teacher."):
                yield name, p

    def forward(self, x: Any) -> Any:
        """Run the student (and, in training mode, the teacher) on ``x``; returns what the student returns."""
        if not self._ready:
            self._setup(x)
        out = feed(self.student, x, self.student_inputs, "student")
        s = ModelOutput(as_logits(out), dict(self._s_taps.feats))
        self._s_taps.clear()
        t = None
        if self.training and self.methods.needs_teacher:
            t = ModelOutput(self.teacher(x), dict(self._t_taps.feats))
            self._t_taps.clear()
        self._last = (s, t, x) if self.training else None
        return out

    def loss(self, target: Tensor | None = None, index: Tensor | None = None) -> LossOutput:
        """The weighted distillation loss of the last training-mode forward and its named terms.

        target: (B,) labels (-1 for unlabelled samples; None: all unlabelled). index: (B,) dataset indices, for
        methods with memory banks."""
        if self._last is None:
            raise DistillError("DistillationModel.loss() needs a forward in training mode first (dm.train(); dm(x))")
        s, t, x = self._last
        b, device = s.logits.shape[0], s.logits.device
        target = torch.full((b,), UNLABELLED, device=device) if target is None else target.to(device)
        index = torch.arange(b, device=device) if index is None else index.to(device)
        ctx = StepContext(epoch=self._step // self.steps_per_epoch, step=self._step, epochs=self.epochs,
                          steps_per_epoch=self.steps_per_epoch)
        self._step += 1
        self._last = None  # one loss per forward: a second call would reuse freed graph buffers
        return self.methods(as_fp32(s), as_fp32(t), Batch(x, target, index), ctx)

    def remove_hooks(self) -> None:
        """Detach the feature taps (the student is then exactly the module you passed in)."""
        self._s_taps.remove()
        self._t_taps.remove()
