"""The Method contract and the method registry.

A method is a pure loss over tensors wrapped by a thin ``nn.Module`` holding its hyper-parameters (and any
connectors, as submodules, so they train with the student). It returns named, already-weighted terms.
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from distill.connectors import AUTO
from distill.errors import DistillError
from distill.registry import Registry
from distill.stages import Layout, auto_pairs
from distill.types import Batch, LossOutput, ModelOutput, Needs, SetupContext, StepContext

METHODS: Registry[type[Method]] = Registry("method", "distill.methods", adapt="distill.extend:_method")


class Method(nn.Module):
    """Base class: subclasses set ``needs`` and implement ``forward``."""

    needs: ClassVar[Needs] = Needs()
    teacher_key: str | None = None  # with several teachers: the one this method reads (None: the ensemble)
    auto_layers: ClassVar[str | None] = None  # what ``layers: auto`` taps (a kind of ``distill.stages.KINDS``)
    token_level: ClassVar[bool] = False  # takes a language model's (B, S, V) logits with (B, S) targets
    cross_tokenizer: ClassVar[bool] = False  # teacher and student logits may have different vocabularies

    def __new__(cls, *args: Any, **kwargs: Any) -> Method:
        # Remember the constructor's arguments, so a method object built in Python can be written back as a
        # recipe entry (``spec()``) and fingerprinted for resume.
        obj = super().__new__(cls)
        sig = inspect.signature(cls.__init__)
        try:
            bound = sig.bind(obj, *args, **kwargs)
            bound.apply_defaults()
            init = {k: v for k, v in list(bound.arguments.items())[1:]
                    if sig.parameters[k].kind not in (_VAR_POS, _VAR_KW)}
        except TypeError:  # __init__ itself will report the bad call
            init = None
        object.__setattr__(obj, "_init_args", init)
        return obj

    def spec(self) -> dict[str, Any] | None:
        """``{"name": <registered name>, **constructor arguments}``: this method as a recipe entry, or None when
        its class is not registered or an argument is not plain data (numbers, strings, lists, dicts)."""
        init = getattr(self, "_init_args", None)
        name = next((n for n in METHODS.names() if METHODS.get(n) is type(self)), None)
        if init is None or name is None or not _plain(init):
            return None
        return {"name": name, **init}

    def forward(self, s: ModelOutput, t: ModelOutput | None, batch: Batch,
                ctx: StepContext) -> LossOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def setup(self, ctx: SetupContext) -> None:
        """Called once before the optimizer is built, with probed tap shapes: build connectors here."""

    def diagnose(self, teacher_logits: Tensor) -> list[str]:
        """Warnings about this method's setting for a sample of teacher logits (B, C); default none."""
        return []

    def accepts_topk(self) -> bool:
        """True when the loss is exact on cached top-k teacher logits plus their tail (``ModelOutput.topk``)
        with k < C; methods that need every teacher logit keep the default (they get a dense cache only)."""
        return False

    def accepts_sampled(self) -> bool:
        """True when the loss is linear in the teacher's probabilities, so that sampled sparse targets
        (``cache.select: sample``, an unbiased estimate of them) give it an unbiased gradient."""
        return False

    def cache_temperatures(self) -> tuple[float, ...]:
        """Temperatures whose log-sum-exp the teacher cache must store for this method (see TopKLogits)."""
        return ()


_VAR_POS, _VAR_KW = inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD


def _plain(value: Any) -> bool:
    """True for JSON-able data: what a recipe can hold."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return isinstance(value, dict) and all(isinstance(k, str) and _plain(v) for k, v in value.items())


def labelled_cross_entropy(logits: Tensor, target: Tensor, count: float | None = None,
                           smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy over the labelled samples of a batch; unlabelled (-1) samples are skipped.

    logits: (B, C); target: (B,) with -1 for transfer-set samples. A batch with no label gives a zero that
    still belongs to the graph, so the caller need not special-case it. No host sync and no boolean
    indexing: the sum over labelled samples is divided by their count on the device. ``count``
    (``Batch.labelled_count``): the divisor to use instead, so that data-parallel ranks holding different
    numbers of labels still average to the global batch's mean. ``smoothing``: label smoothing (Szegedy et al.
    2016; torch's convention, ``smoothing / C`` on every class).

    Token logits (B, S, V) with targets (B, S) average over the tokens whose target is not negative (-100:
    padding, the Hugging Face convention).
    """
    if logits.ndim > 2:
        logits, target = logits.flatten(0, -2), target.flatten().clamp(min=-1)  # (B S, V), (B S,)
    total = nn.functional.cross_entropy(logits.float(), target, ignore_index=-1, reduction="sum",
                                        label_smoothing=smoothing)
    if count is not None:
        return total / max(float(count), 1e-12) if count > 0 else total * 0.0
    return total / (target >= 0).sum().clamp(min=1)


class MethodSet(nn.Module):
    """The recipe's methods with their weights; sums their terms. The engine only talks to this."""

    def __init__(self, methods: list[Method], weights: list[float | str] | None = None) -> None:
        super().__init__()
        self.methods = nn.ModuleList(methods)
        given = list(weights or [1.0] * len(methods))
        # `weight: auto`: 1.0 until the engine measures the loss scale and sets it (distill.engine.scale)
        self.auto = [i for i, w in enumerate(given) if w == "auto"]
        self.weights = [1.0 if w == "auto" else float(w) for w in given]

    @property
    def pretrain_epochs(self) -> int:
        """Length of the pre-training stage: the longest any method declares (0: none)."""
        return max((int(getattr(m, "pretrain_epochs", 0)) for m in self.methods), default=0)

    @property
    def needs_teacher(self) -> bool:
        return any(m.needs.teacher for m in self.methods)

    @property
    def live_teacher(self) -> bool:
        """True when some method needs the teacher itself (its features), not just its logits."""
        return bool(self.live_teacher_methods())

    def live_teacher_methods(self) -> list[str]:
        """Names of the methods that need the live teacher (its features), not just its logits."""
        return [type(m).__name__.lower() for m in self.methods if m.needs.live_teacher or m.needs.teacher_taps]

    def require_token_level(self) -> None:
        """Language-model data: every method must take (B, S, V) next-token logits (a DistillError otherwise)."""
        if other := [type(m).__name__.lower() for m in self.methods if not m.token_level]:
            raise DistillError(f"method(s) {', '.join(other)} work on class logits (B, C); this dataset predicts "
                               "tokens, (B, S, V) logits: use token_kd (and ce)")

    def check_tokenizers(self, paired: bool) -> None:
        """``paired``: teacher and student read two tokenisations (different vocabularies): every teacher-using
        method must compare across vocabularies; without them, a cross-tokenizer method has nothing to align."""
        users = [m for m in self.methods if m.needs.teacher]
        if paired and (same := [type(m).__name__.lower() for m in users if not m.cross_tokenizer]):
            raise DistillError(f"method(s) {', '.join(same)} compare teacher and student over one vocabulary, but "
                               "the data gives each its own tokenizer (data.tokenizers): use uld")

    def without_topk(self, num_classes: int, k: int) -> list[str]:
        """Names of the teacher-using methods that cannot train on a top-k cache (k < num_classes)."""
        if k >= num_classes:
            return []
        return [type(m).__name__.lower() for m in self.methods if m.needs.teacher and not m.accepts_topk()]

    def without_sampled(self) -> list[str]:
        """Names of the teacher-using methods that cannot train on sampled targets (``accepts_sampled``)."""
        return [type(m).__name__.lower() for m in self.methods if m.needs.teacher and not m.accepts_sampled()]

    def cache_temperatures(self) -> list[float]:
        """T=1 plus every temperature a method asks the cache to store."""
        return sorted({1.0, *(float(t) for m in self.methods for t in m.cache_temperatures())})

    @property
    def student_taps(self) -> list[str]:
        return sorted({p for m in self.methods for p in m.needs.student_taps})

    @property
    def teacher_taps(self) -> list[str]:
        """Taps on the teacher (the only one, or the ensemble's: methods that name no teacher)."""
        return self.taps_of(None)

    def taps_of(self, teacher: str | None) -> list[str]:
        """Teacher taps of the methods reading ``teacher`` (a name from the plan's teachers, or None)."""
        return sorted({p for m in self.methods if m.teacher_key == teacher for p in m.needs.teacher_taps})

    @property
    def named_teachers(self) -> list[str]:
        """The teachers that methods name (``MethodSpec.teacher``), in order."""
        return list(dict.fromkeys(m.teacher_key for m in self.methods if m.teacher_key is not None))

    def forward(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        total: Tensor | None = None
        terms: dict[str, Tensor] = {}
        for method, w in zip(self.methods, self.weights):
            tm = t.by_teacher[method.teacher_key] if t is not None and method.teacher_key is not None else t
            if ctx.stage == "pretrain":
                # only methods still in their declared pre-training stage contribute, with their stage loss
                if ctx.epoch >= int(getattr(method, "pretrain_epochs", 0)):
                    continue
                out = method.pretrain_loss(s, tm, batch, ctx)
            else:
                out = method(s, tm, batch, ctx)
            for name, value in out.terms.items():
                name = name if method.teacher_key is None else f"{name}[{method.teacher_key}]"
                key = name if name not in terms else f"{type(method).__name__.lower()}.{name}"
                terms[key] = value * w
            total = out.loss * w if total is None else total + out.loss * w
        if total is None:
            raise RuntimeError("no method contributes a loss in this stage")
        return LossOutput(total, terms)

    def pending_layers(self) -> list[Method]:
        """The methods whose layers are still ``auto`` (placeholder taps)."""
        return [m for m in self.methods if AUTO in m.needs.student_taps]

    def resolve_layers(self, student: Layout, teachers: dict[str | None, Layout]) -> None:
        """Give every ``auto`` method the layers ``distill.stages`` pairs for its kind, by rebuilding it in place
        with those paths (its recipe entry keeps ``auto``); ``teachers``: the layout of each teacher by the key
        methods name it with (None: the only teacher)."""
        for m in self.pending_layers():
            name = type(m).__name__.lower()
            if m.auto_layers is None or m.teacher_key not in teachers:
                raise DistillError(f"{name}: layers: auto needs the teacher's and the student's modules")
            s, t = auto_pairs(m.auto_layers, student, teachers[m.teacher_key], name)
            init, key = dict(getattr(m, "_init_args", None) or {}), m.teacher_key
            m.__init__(**{**init, "student_layers": s, "teacher_layers": t})  # type: ignore[misc]
            m.teacher_key = key

    def setup(self, ctx: SetupContext) -> None:
        """Let every method build its connectors from the probed shapes."""
        for m in self.methods:
            m.setup(ctx if m.teacher_key is None else replace(ctx, teacher_shapes=ctx.by_teacher[m.teacher_key]))

    def diagnose(self, teacher_logits: Tensor) -> list[str]:
        """Collect every method's warnings for a sample of teacher logits."""
        with torch.no_grad():
            return [w for m in self.methods for w in m.diagnose(teacher_logits)]
