"""``layers: auto``: a model's stages found from one dry run, and teacher and student stages paired by relative depth.

A *stage* is where a network's feature map changes resolution or channel count: the output of a residual stage
(``layer1`` of a CIFAR ResNet, ``block2`` of a WRN), of a VGG block, of a conv-BN-ReLU unit of a plain CNN. It is
found for any model, zoo or external, from the shapes its modules produce, without knowing its code:

1. Every module's output is recorded in completion order; spatial outputs (``(B, C, L)`` or ``(B, C, H, W)``
   with more than one position) are cut into *segments* of consecutive equal shapes.
2. A segment that runs no parameterised leaf module (a pooling between two blocks) is no stage. Otherwise its
   stage is the last module to finish in it: the outermost container when there is one (``layer1``, not its last
   block), else the last leaf (``features.0.relu``).
3. A container never holds earlier stages of other shapes (a ``features`` trunk is no stage: its units are);
   earlier picks of the same shape inside a later pick (the blocks of ``layer1``) give way to it; a leading
   stem of leaf modules (``conv1``/``bn1``) is dropped when the stages proper are containers. Bottleneck
   blocks, whose inner units change width, may come out unit by unit: give their layers by hand.

Each stage also names its pre-activation value (``preact``): the input of the activation module it ends with
(``layer1.2.relu:input``), or the stage output itself when it ends in none (a pre-activation WRN block). A model
with no spatial stage (an MLP) has its hidden Linear layers as stages. ``embedding`` is the head's input
(``fc:input``): the penultimate vector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from distill.errors import DistillError
from distill.taps import first_tensor, last_linear

if TYPE_CHECKING:
    from distill.methods.base import MethodSet

Shape = tuple[int, ...]

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish, nn.Tanh)

KINDS = ("stages", "stages_preact", "stages_tpreact+embedding", "middle", "last", "embedding")
"""What a method taps under ``layers: auto``: every stage (AT, NST, VID, ...), every stage before its
activation on both sides (AB, OFD), the student's stages against the teacher's pre-activations plus both
embeddings (ReviewKD, as mdistiller), the middle stage (the FitNets hint), the last stage's map (SP, FT), or the
penultimate vector (RKD, PKT, CRD, ...)."""


@dataclass(frozen=True)
class Stage:
    """One stage: its output tap, its pre-activation tap (the output itself when there is no activation), and
    the output's shape (batch dimension included)."""

    path: str
    preact: str
    shape: Shape


@dataclass(frozen=True)
class Layout:
    """A model's stages in forward order and its penultimate embedding (``<head>:input``; None without a
    Linear head)."""

    stages: tuple[Stage, ...]
    embedding: str | None
    embedding_shape: Shape | None


@dataclass(frozen=True)
class _Call:
    name: str
    module: nn.Module
    shape: Shape


def find_layout(run: nn.Module, x: Any, *, hooked: nn.Module | None = None, call: Any = None) -> Layout:
    """The stages of ``hooked`` (default ``run``) from one dry run of ``run`` on ``x`` in eval mode, no grad.

    ``call(run, x)`` runs the model (default ``run(x)``); a frozen teacher wrapper runs its wrapped model, which
    is what ``hooked`` names."""
    hooked = run if hooked is None else hooked
    calls, head_input = _trace(run, hooked, x, call)
    spatial = _stages(calls)
    stages = spatial if spatial else _vector_stages(calls, hooked)
    head = last_linear(hooked)
    emb = f"{head}:input" if head is not None and head_input is not None and len(head_input) == 2 else None
    return Layout(tuple(stages), emb, head_input if emb else None)


def _trace(run: nn.Module, hooked: nn.Module, x: Any, call: Any) -> tuple[list[_Call], Shape | None]:
    calls: list[_Call] = []
    head = last_linear(hooked)
    head_input: list[Shape] = []
    handles = []
    for name, module in hooked.named_modules():
        if not name:
            continue

        def hook(m: nn.Module, args: tuple[Any, ...], out: Any, name: str = name) -> None:
            t = first_tensor(out)
            if t is not None:
                calls.append(_Call(name, m, tuple(t.shape)))
            if name == head and (a := first_tensor(args[:1])) is not None:
                head_input.append(tuple(a.shape))

        handles.append(module.register_forward_hook(hook))
    modes = [(m, m.training) for m in run.modules()]
    run.eval()  # no BatchNorm statistics updated by the dry run
    try:
        with torch.no_grad():
            call(run, x) if call is not None else run(x)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            m.training = mode
    return calls, (head_input[-1] if head_input else None)


def _is_spatial(shape: Shape) -> bool:
    return len(shape) >= 3 and math.prod(shape[2:]) > 1


def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def _is_leaf(m: nn.Module) -> bool:
    return not any(True for _ in m.children())


def _inside(name: str, outer: str) -> bool:
    return name.startswith(outer + ".")


def _segments(calls: list[_Call]) -> list[list[_Call]]:
    """Consecutive spatial calls of equal (per-sample) shape; vectors in between (a squeeze-excite branch) and
    1x1 maps (global pooling) do not cut a segment."""
    segs: list[list[_Call]] = []
    for c in calls:
        if not _is_spatial(c.shape):
            continue
        if segs and segs[-1][-1].shape[1:] == c.shape[1:]:
            segs[-1].append(c)
        else:
            segs.append([c])
    return segs


def _stages(calls: list[_Call]) -> list[Stage]:
    chosen: list[_Call] = []
    for seg in _segments(calls):
        if not any(_is_leaf(c.module) and _has_params(c.module) for c in seg):
            continue  # only pooling or activations: the step between two stages
        free = [c for c in seg if not any(_holds_other(c, p, calls) for p in chosen)]
        containers = [c for c in free if not _is_leaf(c.module) and _has_params(c.module)]
        pick = (containers or free or seg)[-1]
        chosen = [p for p in chosen if not _inside(p.name, pick.name)] + [pick]
    if any(not _is_leaf(c.module) for c in chosen):  # a leaf stem before the first container stage
        first = next(i for i, c in enumerate(chosen) if not _is_leaf(c.module))
        chosen = chosen[first:]
    return [Stage(c.name, _preact(c, calls), c.shape) for c in chosen]


def _holds_other(c: _Call, p: _Call, calls: list[_Call]) -> bool:
    """True when ``c`` cannot be a stage because of the earlier pick ``p``: ``c`` is part of ``p``, or a trunk
    holding ``p`` of another shape (``features`` around ``features.0``). A block whose first operation still
    runs at the previous shape (a pre-activation block's BN) may hold that operation."""
    if _inside(c.name, p.name):
        return True
    if not _inside(p.name, c.name) or p.shape[1:] == c.shape[1:]:
        return False
    first = next(x for x in calls if _inside(x.name, c.name) and _is_leaf(x.module))
    return first.name != p.name


def _preact(stage: _Call, calls: list[_Call]) -> str:
    """``<activation>:input`` when the last leaf to finish inside the stage is an activation module keeping the
    stage's shape; else the stage's own output."""
    end = max(i for i, c in enumerate(calls) if c.name == stage.name)
    inner = [c for c in calls[:end + 1] if (c.name == stage.name or _inside(c.name, stage.name))
             and _is_leaf(c.module)]
    last = inner[-1] if inner else None
    if last is not None and isinstance(last.module, ACTIVATIONS) and last.shape == stage.shape:
        return f"{last.name}:input"
    return stage.name


def _vector_stages(calls: list[_Call], hooked: nn.Module) -> list[Stage]:
    """An MLP's stages: every Linear layer but the head, in forward order (their outputs, before activation)."""
    head = last_linear(hooked)
    seen: dict[str, _Call] = {}
    for c in calls:
        if isinstance(c.module, nn.Linear) and c.name != head and len(c.shape) == 2:
            seen.setdefault(c.name, c)
    return [Stage(c.name, c.name, c.shape) for c in seen.values()]


def resolve_auto_layers(methods: MethodSet, model: nn.Module, teacher: nn.Module | None, x: Any, *,
                        inputs: Any = None, targets: Any = None) -> None:
    """Find the student's and each teacher's stages from a dry run on ``x`` and give the ``auto`` methods their
    layer pairs."""
    from distill.models import feed

    student = find_layout(model, x, call=lambda m, v: feed(m, v, inputs, "student"))
    layouts: dict[str | None, Layout] = {}
    if teacher is not None:
        layouts[None] = find_layout(teacher, x, hooked=getattr(teacher, "model", teacher))
    members = getattr(getattr(targets, "ensemble", None), "members", {})
    for key, member in members.items():
        layouts[key] = find_layout(member, x, hooked=getattr(member, "model", member))
    methods.resolve_layers(student, layouts)


def pair_by_depth(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """Indices (student, teacher) pairing the shorter list one to one with the stages of the longer one at the
    same relative depth (the last with the last)."""
    if n_student <= n_teacher:
        return [(i, _at_depth(i, n_student, n_teacher)) for i in range(n_student)]
    return [(_at_depth(j, n_teacher, n_student), j) for j in range(n_teacher)]


def _at_depth(i: int, n: int, m: int) -> int:
    """The index among ``m`` stages at the relative depth of stage ``i`` of ``n``."""
    return min(m - 1, max(0, round((i + 1) * m / n) - 1))


def auto_pairs(kind: str, student: Layout, teacher: Layout, method: str) -> tuple[list[str], list[str]]:
    """(student_layers, teacher_layers) for a method tapping ``kind`` (one of :data:`KINDS`)."""
    if kind not in KINDS:
        raise DistillError(f"{method}: unknown layer kind {kind!r} (one of {', '.join(KINDS)})")
    if kind == "embedding":
        return [_embedding(student, "student", method)], [_embedding(teacher, "teacher", method)]
    s, t = _need_stages(student, "student", method), _need_stages(teacher, "teacher", method)
    if kind == "last":
        return [s[-1].path], [t[-1].path]
    if kind == "middle":
        i = (len(s) - 1) // 2  # FitNets' hint: RepDistiller's hint_layer 2 of a three-stage CIFAR ResNet
        return [s[i].path], [t[_at_depth(i, len(s), len(t))].path]
    s_pre, t_pre = kind.startswith("stages_preact"), kind.startswith(("stages_preact", "stages_tpreact"))
    pairs = pair_by_depth(len(s), len(t))
    s_paths = [s[i].preact if s_pre else s[i].path for i, _ in pairs]
    t_paths = [t[j].preact if t_pre else t[j].path for _, j in pairs]
    if kind.endswith("+embedding"):
        s_paths.append(_embedding(student, "student", method))
        t_paths.append(_embedding(teacher, "teacher", method))
    return s_paths, t_paths


def _need_stages(layout: Layout, side: str, method: str) -> tuple[Stage, ...]:
    if not layout.stages:
        raise DistillError(f"{method}: layers: auto found no stage in the {side} (no feature map and no hidden "
                           f"Linear layer); give {side}_layers as module paths (`distill inspect` lists them)")
    return layout.stages


def _embedding(layout: Layout, side: str, method: str) -> str:
    if layout.embedding is None:
        raise DistillError(f"{method}: layers: auto found no penultimate embedding in the {side} (no Linear head "
                           f"fed a (B, D) vector); give {side}_layers as module paths (`distill inspect` lists them)")
    return layout.embedding


def format_layout(layout: Layout, title: str) -> str:
    """A readable list of a model's stages and embedding."""
    lines = [f"{title}:"]
    for i, st in enumerate(layout.stages):
        pre = f"  (pre-activation: {st.preact})" if st.preact != st.path else ""
        lines.append(f"  stage {i + 1}: {st.path} {_dims(st.shape)}{pre}")
    lines.append(f"  embedding: {layout.embedding} {_dims(layout.embedding_shape)}" if layout.embedding
                 else "  embedding: none")
    return "\n".join(lines)


def format_pairs(student: Layout, teacher: Layout) -> str:
    """The layer pairs ``layers: auto`` chooses for each kind of method."""
    lines = ["pairs (student <- teacher), by what a method taps:"]
    for kind in KINDS:
        try:
            s, t = auto_pairs(kind, student, teacher, kind)
        except DistillError as e:
            lines.append(f"  {kind}: none ({e})")
            continue
        sd, td = _shapes(student), _shapes(teacher)
        lines.append(f"  {kind}: " + ", ".join(f"{a} {_dims(sd.get(a))} <- {b} {_dims(td.get(b))}"
                                              for a, b in zip(s, t)))
    return "\n".join(lines)


def _shapes(layout: Layout) -> dict[str, Shape | None]:
    out: dict[str, Shape | None] = {x: st.shape for st in layout.stages for x in (st.path, st.preact)}
    if layout.embedding:
        out[layout.embedding] = layout.embedding_shape
    return out


def _dims(shape: Shape | None) -> str:
    return "" if shape is None else "(B, " + ", ".join(map(str, shape[1:])) + ")"
