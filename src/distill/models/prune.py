"""Pruning-initialised students: a structurally pruned copy of a trained teacher, at a target size.

Channels (conv filters, hidden units) are removed with torch-pruning (the ``auto`` extra), whose dependency graph
keeps coupled layers consistent (a residual stage's convolutions, BatchNorm, the Linear after a flatten). The
classifier keeps its outputs, so the student predicts the teacher's classes.

Choices, and why:

- **Uniform (local) pruning**, one ratio for every layer, not global ranking: global ranking compares channel
  scores across layers of different sizes and can strip one layer almost bare (torch-pruning offers
  ``max_pruning_ratio`` against it). Minitron (Muralidharan et al. 2024) likewise prunes each width axis to one
  size in every layer, and prefers width pruning to depth pruning. A uniform ratio keeps every stage that a
  feature method taps, at the teacher's spatial sizes with fewer channels: the student is a thinner teacher.
- **Group L2 magnitude importance** (``tp.importance.GroupMagnitudeImportance(p=2)``, torch-pruning's default):
  a channel's score sums over every layer it couples. It reads weights only, so the example batch serves graph
  tracing alone and the result is a function of the teacher's weights and the target.
- **Reaching the target**: each layer of ``n`` channels keeps ``int(n * (1 - ratio))``, so the size (parameters,
  or MACs per sample) falls monotonically with the ratio, in steps at the ratios ``1 - k/n``. Bisection over those
  steps, each try on a fresh copy, finds the largest uniform pruning whose size is at most the target. One step
  can move layers of several widths at once (16, 32, 64 all change at ``1 - k/16``), so a second bisection moves
  them to the next step one width at a time. The result is at most the target and below it by less than one
  such move: under 5% for the zoo's ResNets and MLPs pruned to 1/2 ... 1/16 of their size, up to ~10% for targets
  of a few hundred to a thousand parameters (a 7,610-parameter ``cnn`` pruned to 951), in about 2 log2(widest
  layer) prunings (a second for resnet32 on CPU; a MACs target counts each try, some seconds).
- **Deterministic**: same weights and target, same structure and weights. Saved weights alone do not describe a
  pruned architecture, so evaluating or resuming rebuilds it by pruning the teacher again.

torch_pruning is imported inside the functions, never when ``distill`` is imported.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from distill.errors import DistillError, first_line

Init = Literal["pruned", "random"]
INSTALL = "pip install 'distill[auto]'"


def require_torch_pruning() -> Any:
    """The torch_pruning module, or one DistillError line saying how to install it."""
    try:
        import torch_pruning
    except ImportError:
        raise DistillError(f"a pruning-initialised student (from_teacher: prune) needs torch-pruning: {INSTALL}") \
            from None
    return torch_pruning


def param_count(model: nn.Module) -> int:
    """Trainable and frozen parameters (buffers such as BatchNorm's running statistics not counted)."""
    return sum(p.numel() for p in model.parameters())


def mac_count(model: nn.Module, example: Tensor) -> int:
    """Multiply-accumulates of one forward pass on one sample (torch-pruning's op counter)."""
    tp = require_torch_pruning()
    macs, _ = tp.utils.count_ops_and_params(model, example[:1])
    return int(macs)


def classifier(model: nn.Module, example: Tensor) -> nn.Module:
    """The last Linear or convolution the forward pass runs: the layer producing the logits, kept whole so the
    class count stays (its inputs still shrink with the layer before it)."""
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, _i, _o: order.append(mod)) for m in model.modules()
             if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    was = model.training
    try:
        with torch.no_grad():
            model.eval()(example)  # eval: a forward in training mode would move BatchNorm's running statistics
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    if not order:
        raise DistillError(f"{type(model).__name__} has no Linear or convolution layer to prune")
    return order[-1]


def _widths(model: nn.Module, keep: nn.Module) -> list[int]:
    """The output widths of the prunable layers (every Linear and convolution but the classifier)."""
    widths = [_width(m) for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
              and m is not keep]
    if not widths:
        raise DistillError(f"{type(model).__name__}: only its classifier has weights to prune")
    return widths


def candidate_ratios(widths: list[int]) -> list[float]:
    """One ratio per distinct uniformly pruned structure, from least to most pruned. A layer of ``n`` channels
    keeps ``int(n * (1 - ratio))``, which changes only at ratios ``1 - k/n``; between two neighbouring such points
    every layer keeps the same count, so their midpoint stands for that structure (and sits far from a point, where
    rounding could tip ``int``). The last keeps one channel in the narrowest layer, none fewer."""
    high = 1.0 - 1.0 / min(widths)
    points = sorted({0.0} | {1.0 - k / n for n in set(widths) for k in range(1, n) if 1.0 - k / n <= high})
    return [(a + b) / 2 for a, b in zip(points, points[1:])]


def prune_at(model: nn.Module, example: Tensor, ratio: float, layers: dict[str, float] | None = None) -> nn.Module:
    """A pruned deep copy of ``model`` (eval mode while tracing, so BatchNorm statistics stay the teacher's), every
    prunable layer keeping ``int(n * (1 - ratio))`` of its ``n`` channels; ``layers``: other ratios for the groups
    of these layers (by module path)."""
    tp = require_torch_pruning()
    pruned = copy.deepcopy(model).eval()
    if ratio > 0 or layers:
        try:
            pruner = tp.pruner.BasePruner(
                pruned, example, importance=tp.importance.GroupMagnitudeImportance(p=2), global_pruning=False,
                pruning_ratio=ratio, ignored_layers=[classifier(pruned, example)],
                pruning_ratio_dict={pruned.get_submodule(n): r for n, r in (layers or {}).items()} or None)
            pruner.step()
        except DistillError:
            raise
        except Exception as e:  # a model torch-pruning cannot trace or prune: one line, not its traceback
            raise DistillError(f"torch-pruning could not prune {type(model).__name__}: {first_line(e)}") from None
    return pruned


def _first_at_most(size: Callable[[int], int], n: int, target: int) -> int:
    """The first index in [0, n) whose size is at most ``target``, by bisection (``size`` non-increasing in the
    index; ``size(n - 1) <= target`` is given)."""
    lo, hi = -1, n - 1  # invariant: size(lo) > target >= size(hi); index -1 is the unpruned model
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if size(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def prune_to(model: nn.Module, example: Tensor, *, target: int, measure: Literal["params", "macs"] = "params",
             what: str = "target") -> nn.Module:
    """A copy of ``model`` pruned uniformly to the largest size at most ``target`` parameters (or MACs per
    sample). ``what`` names the target in errors (``student.target_params``). The model is left unchanged."""
    example = example[:2]  # tracing needs one batch; magnitude importance never reads the values
    count = (lambda m: param_count(m)) if measure == "params" else (lambda m: mac_count(m, example))
    full = count(model)
    unit = "parameters" if measure == "params" else "MACs per sample"
    if target >= full:
        raise DistillError(f"{what} {target:,} is not below the teacher's {full:,} {unit}: nothing to prune "
                           f"(choose a smaller target)")
    ratios = candidate_ratios(_widths(model, classifier(model, example)))
    smallest = count(prune_at(model, example, ratios[-1]))
    if smallest > target:
        raise DistillError(f"{what} {target:,} is below the smallest uniform pruning of {type(model).__name__} "
                           f"({smallest:,} {unit}, one channel left in its narrowest layer): choose a larger target")
    best = _first_at_most(lambda i: count(prune_at(model, example, ratios[i])), len(ratios), target)
    if best == 0:
        return prune_at(model, example, ratios[0])
    return _refine(model, example, ratios[best - 1], ratios[best], count, target)


def _refine(model: nn.Module, example: Tensor, above: float, within: float, count: Callable[[nn.Module], int],
            target: int) -> nn.Module:
    """Between the uniform pruning just too large (ratio ``above``) and the one that fits (``within``): one step of
    the ratio can move layers of several widths at once (16, 32 and 64 all change at 1 - k/16), so move them one
    width at a time, narrowest first, and keep the fewest moves that fit. Layers of one width move together: a
    residual stage's convolutions keep one channel count, so the stages that methods tap stay the teacher's (a
    layer moved alone would put a shape change inside a stage). Each move shrinks the model, so bisection over
    the number of moves applies; all moved is the ``within`` pruning."""
    keep = classifier(model, example)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
              and m is not keep and _kept(m, above) != _kept(m, within)}
    widths = sorted({_width(m) for m in layers.values()})

    def moved(j: int) -> nn.Module:  # the first j + 1 widths moved to ``within``
        ratios = {n: within for n, m in layers.items() if _width(m) in widths[:j + 1]}
        return prune_at(model, example, above, ratios)
    return moved(_first_at_most(lambda j: count(moved(j)), len(widths), target))


def _width(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _kept(layer: nn.Module, ratio: float) -> int:
    """The channels a layer keeps at a uniform ratio (torch-pruning's local rule)."""
    return int(_width(layer) * (1 - ratio))


def reinitialise(model: nn.Module, seed: int) -> nn.Module:
    """Every parameter of ``model`` drawn afresh from ``seed``, in place: torch's own initialisation of each layer
    (``reset_parameters``, which also clears BatchNorm statistics), then He init for convolutions and unit
    BatchNorm, what the zoo's fresh convolutional students start from (``distill.models.base.init_weights``)."""
    from distill.models.base import init_weights

    torch.manual_seed(seed)
    for m in model.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
    init_weights(model)
    return model


def pruned_student(teacher: nn.Module, example: Tensor, *, target_params: int | None = None,
                   target_macs: int | None = None, init: Init = "pruned", seed: int = 0,
                   where: str = "student") -> nn.Module:
    """A student pruned from ``teacher`` (the raw architecture with its trained weights, not a FrozenTeacher) to
    exactly one of ``target_params`` / ``target_macs``, in training mode. ``init: pruned`` keeps the teacher's
    surviving weights; ``init: random`` keeps only the structure, every weight drawn from ``seed`` (the baseline of
    a random-initialised student of the same size). ``example``: a batch of training inputs, for tracing."""
    if (target_params is None) == (target_macs is None):
        raise DistillError(f"{where}.from_teacher: prune needs exactly one of target_params, target_macs")
    if not isinstance(example, Tensor):  # torch-pruning traces a model called on one tensor
        raise DistillError(f"{where}.from_teacher: prune needs a teacher that reads one tensor, not a dict of fields")
    measure: Literal["params", "macs"] = "params" if target_macs is None else "macs"
    target = int(target_params if target_macs is None else target_macs)  # type: ignore[arg-type]
    was = teacher.training
    try:
        student = prune_to(teacher, example, target=target, measure=measure, what=f"{where}.target_{measure}")
    finally:
        teacher.train(was)
    if init == "random":
        reinitialise(student, seed)
    return student.train()
