"""The frozen teacher: eval mode, no gradients and input re-normalisation, enforced in one place."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from distill.errors import DistillError

Norm = tuple[Sequence[float], Sequence[float]]
"""Per-channel (mean, std); length-1 sequences are scalars."""

IDENTITY_NORM: Norm = ((0.0,), (1.0,))


def as_logits(out: Any) -> Tensor:
    """The logits in a model's output: a tensor, the first item of a tuple/list, or ``.logits``."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    if isinstance(getattr(out, "logits", None), Tensor):
        return out.logits
    raise DistillError(f"model returned {type(out).__name__}, expected a logits tensor (B, num_classes)")


Keys = str | list[str] | None
"""Which fields of a dict input a model reads: one key (passed positionally), several (passed as keyword
arguments, like ``input_ids`` and ``attention_mask``), or None for the whole input (a dict as keywords)."""


def select(x: Any, keys: Keys, who: str = "model") -> Any:
    """The part of a batch's input that a model reading ``keys`` gets (see ``Keys``)."""
    if keys is None:
        return x
    if not isinstance(x, dict):
        raise DistillError(f"{who} reads input key(s) {keys!r} but the data's inputs are one tensor, not a dict")
    if isinstance(keys, str) and keys not in x and (group := {k: v for k, v in x.items()
                                                               if k.startswith(keys + ".")}):
        return group  # a prefix: every field under it (one tokenisation of a text: teacher.input_ids, ...)
    wanted = [keys] if isinstance(keys, str) else list(keys)
    missing = [k for k in wanted if k not in x]
    if missing:
        raise DistillError(f"{who} reads input key(s) {missing} that the data does not have (keys: {sorted(x)})")
    return x[keys] if isinstance(keys, str) else {k: x[k] for k in wanted}


def feed(model: nn.Module, x: Any, keys: Keys = None, who: str = "model") -> Any:
    """Call ``model`` on the fields of ``x`` it reads: a tensor positionally, a dict as keyword arguments.
    A ``FrozenTeacher`` (``reads_whole_input``) gets the whole input and selects its own fields."""
    if getattr(model, "reads_whole_input", False):
        return model(x)
    part = select(x, keys, who)
    return model(**part) if isinstance(part, dict) else model(part)


def _check_norm(name: str, norm: Any) -> tuple[list[float], list[float]]:
    try:
        mean, std = ([float(v) for v in (p if isinstance(p, Sequence) else [p])] for p in norm)
    except (TypeError, ValueError):
        raise DistillError(f"{name} must be (mean, std) per channel, got {norm!r}") from None
    if len(mean) != len(std) or not mean:
        raise DistillError(f"{name}: mean and std need the same non-zero length, got {norm!r}")
    if any(s <= 0 for s in std):
        raise DistillError(f"{name}: std must be positive, got {std}")
    return mean, std


def renorm_affine(student_norm: Norm | None, teacher_norm: Norm | None) -> tuple[Tensor, Tensor] | None:
    """(scale, shift) of length C with ``x_t = x_s * scale + shift``, or None when no change is needed.

    ``x_s = (x - m_s) / s_s`` and ``x_t = (x - m_t) / s_t`` give ``scale = s_s / s_t`` and
    ``shift = (m_s - m_t) / s_t``. A missing ``student_norm`` means the student sees raw inputs.
    """
    if teacher_norm is None:
        return None
    m_s, s_s = _check_norm("student_norm", IDENTITY_NORM if student_norm is None else student_norm)
    m_t, s_t = _check_norm("teacher_norm", teacher_norm)
    if (m_s, s_s) == (m_t, s_t):
        return None
    if len(m_s) > 1 and len(m_t) > 1 and len(m_s) != len(m_t):
        raise DistillError(f"student_norm has {len(m_s)} channels but teacher_norm has {len(m_t)}")
    c = max(len(m_s), len(m_t))
    # float64 for the arithmetic, so the composed affine map matches the direct one to float32 precision.
    ms, ss, mt, st = (torch.tensor(v, dtype=torch.float64).expand(c) for v in (m_s, s_s, m_t, s_t))
    return (ss / st).float(), ((ms - mt) / st).float()


class FrozenTeacher(nn.Module):
    """Wraps a teacher: eval mode and no grad forced in ONE place; re-normalises inputs when the teacher
    expects different preprocessing than the student.

    Batches arrive normalised for the student, ``x_s = (x - m_s) / s_s``. With a ``teacher_norm`` that
    differs from ``student_norm`` the teacher is fed ``(x_s * s_s + m_s - m_t) / s_t``. Norm tuples are
    per channel (dim 1 of the batch) or length 1. Parameters are frozen, ``.train(mode)`` keeps the
    teacher in eval mode, and ``forward`` runs under ``torch.no_grad()`` and returns logits.
    """

    reads_whole_input = True  # ``feed`` passes it the batch's whole input: it selects its own fields

    def __init__(self, model: nn.Module, *, student_norm: Norm | None = None,
                 teacher_norm: Norm | None = None, inputs: Keys = None,
                 resize: tuple[int, ...] | None = None, margin: int = 0) -> None:
        super().__init__()
        self.wrapped = model
        self.inputs = inputs
        self.resize = tuple(resize) if resize else None  # (H, W) or (L,): a teacher trained at another size
        self.margin = margin  # a black border of this width around the resized content (MNIST's framing)
        for p in model.parameters():
            p.requires_grad_(False)
        affine = renorm_affine(student_norm, teacher_norm)
        # Non-persistent buffers: they follow .to(device) but stay out of state dicts.
        self.register_buffer("in_scale", None if affine is None else affine[0], persistent=False)
        self.register_buffer("in_shift", None if affine is None else affine[1], persistent=False)
        norm = teacher_norm or student_norm  # the teacher sees its own normalisation, else the student's
        black = torch.tensor([-m / s for m, s in zip(*norm, strict=True)]) if norm else torch.zeros(1)
        self.register_buffer("black", black, persistent=False)  # a raw 0 pixel, as the teacher sees it
        self.channels_last: bool | None = None  # decided on the first image batch (``_run``)
        self.train(False)

    @property
    def model(self) -> nn.Module:
        """The wrapped model (taps hook into it, with its own module paths)."""
        return self.wrapped

    def train(self, mode: bool = True) -> FrozenTeacher:
        """Ignore ``mode``: a teacher's BatchNorm statistics and dropout must never change."""
        return super().train(False)

    def renormalise(self, x: Tensor) -> Tensor:
        """Map a student-normalised batch (B, C, ...) to the teacher's normalisation (same shape)."""
        if self.in_scale is None:
            return x
        scale, shift = self._affine(x)
        return x * scale + shift

    def from_teacher(self, x: Tensor) -> Tensor:
        """The inverse of ``renormalise``: a batch (B, C, ...) normalised as the teacher expects, mapped to the
        student's normalisation (a data-free run generates in the teacher's space)."""
        if self.in_scale is None:
            return x
        scale, shift = self._affine(x)
        return (x - shift) / scale

    def _affine(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(scale, shift) shaped to broadcast over batch ``x``'s dim 1 (or everything), in its dtype."""
        c = self.in_scale.numel()
        if c > 1 and (x.ndim < 2 or x.shape[1] != c):
            raise DistillError(
                f"teacher re-normalisation has {c} channels but the batch has shape {tuple(x.shape)}"
            )
        shape = (1, c, *([1] * (x.ndim - 2))) if c > 1 else (1,)
        return self.in_scale.view(shape).to(x.dtype), self.in_shift.view(shape).to(x.dtype)

    def forward(self, x: Any) -> Tensor:
        """Student-normalised batch (B, ...) -> teacher logits (B, C), without autograd history.

        With dict inputs the teacher gets the fields it reads (``inputs``); re-normalisation applies to a
        tensor input only."""
        with torch.no_grad():
            return self.through(x)

    def through(self, x: Any) -> Tensor:
        """``forward`` with autograd in the input: gradients reach ``x`` (a generator learns through the teacher),
        never the teacher's parameters, which stay frozen."""
        if self.wrapped.training:  # someone called .train() on the inner model directly
            self.wrapped.eval()
        part = select(x, self.inputs, "teacher")
        if isinstance(part, dict):
            return as_logits(self.wrapped(**part))
        return as_logits(self._run(self.resized(self.renormalise(part))))

    def _run(self, x: Tensor) -> Any:
        """The wrapped model on an image batch, in channels-last memory on a CPU where its 2-D convolutions
        allow it (``distill.layout``), for good. Decided on the first batch from the model and input alone (no
        timing, so a cache built twice is the same); a model that needs contiguous memory (a ``.view`` of a conv
        output) stays as it is."""
        if self.channels_last is None:
            from distill.layout import wants_channels_last

            self.channels_last = wants_channels_last(self.wrapped, x)
            if self.channels_last:
                self.wrapped.to(memory_format=torch.channels_last)
                try:
                    return self.wrapped(x.contiguous(memory_format=torch.channels_last))
                except RuntimeError:
                    self.channels_last = False
                    self.wrapped.to(memory_format=torch.contiguous_format)
        return self.wrapped(x.contiguous(memory_format=torch.channels_last) if self.channels_last else x)

    def resized(self, x: Tensor) -> Tensor:
        """A batch (B, C, *size) resized to the teacher's input size (bilinear, or linear for 1-D signals); with
        a ``margin`` the content is resized to ``resize - 2 * margin`` and framed by a black border of that width
        (a raw 0 pixel in the teacher's normalisation), as MNIST frames a 20x20 digit in 28x28."""
        if self.resize is None or (tuple(x.shape[2:]) == self.resize and not self.margin):
            return x
        if x.ndim - 2 != len(self.resize):
            raise DistillError(f"teacher.resize {list(self.resize)} does not fit inputs of shape {tuple(x.shape)}")
        mode = "bilinear" if len(self.resize) == 2 else "linear"
        inner = tuple(n - 2 * self.margin for n in self.resize)
        x = nn.functional.interpolate(x, size=inner, mode=mode, align_corners=False)
        if not self.margin:
            return x
        c = self.black.numel()
        black = self.black.view(1, c, *([1] * (x.ndim - 2))).to(x.dtype)  # (1, C or 1, 1, ...)
        return nn.functional.pad(x - black, (self.margin,) * (2 * len(inner))) + black
