"""Loss-scale safety: each loss term's pull on the student, measured before the first optimizer step.

Why: at its paper weight a distillation term can pull on the student orders of magnitude harder than the
cross-entropy (FitNets' hint, beta 100, on a teacher with large features) and collapse it to chance. So the
engine runs the loss on the first ``train.loss_scale.batches`` batches of epoch 0 and takes each named term's
gradient L2 norm w.r.t. the student's trainable parameters, averaged over batches and ranks; it warns about a
term over ``max_ratio`` times the cross-entropy's, and weights a ``weight: auto`` method to ``target`` times it.
The result goes to ``<role>/loss_scale.json``, from which a resumed run reads its auto weights back.

It leaves no trace, so training after it is bit-identical to training without it: it runs on copies of the
student and methods (BatchNorm statistics, memory banks, Python state untouched), inside ``fork_rng``, on batches
peeked from the loader. Warm-ups (DKD, ReviewKD) are measured at the last step's context: full strength.
"""

from __future__ import annotations

import copy
import itertools
import json
from contextlib import ExitStack
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from distill.engine import dist
from distill.engine.scale_report import is_ce, method_name, summary_line, warnings
from distill.errors import DistillError
from distill.io import write_json
from distill.methods.base import Method, MethodSet
from distill.methods.ce import CE
from distill.recipe import LossScaleSpec
from distill.types import Batch, LossOutput, StepContext

if TYPE_CHECKING:
    from distill.engine.loop import FitJob

FILE = "loss_scale.json"


@dataclass
class Scale:
    """Mean gradient norms per term (``auto`` methods at weight 1.0), the method (index) that made each term, each
    ``auto`` method's loss norm at weight 1.0, and the cross-entropy terms' together (None: there is none)."""

    terms: dict[str, float]
    owners: dict[str, int]
    auto: dict[int, float]
    ce: float | None
    batches: int


def check_loss_scale(job: FitJob, step: Any, *, resumed: bool) -> None:
    """Measure, warn and set ``weight: auto`` weights for ``job`` (see the module doc); ``step``: the loop's
    ``_Step``; ``resumed``: a checkpoint was loaded (auto weights then come back from ``loss_scale.json``)."""
    spec = job.train.loss_scale or LossScaleSpec()
    auto = _auto(job.methods)
    if not auto and (not spec.check or resumed or _only_ce(job.methods)):
        return  # nothing to check (no distillation term), or checked when the run started
    if resumed and _restore(job, auto):
        return
    if (scale := measure(job, step, spec.batches)) is None:
        return
    weights = auto_weights(job.methods, scale, spec.target)
    for i, w in weights.items():
        job.methods.weights[i] = w
    norms = scaled_norms(scale, weights)
    found = warnings(job.methods, norms, scale, spec.max_ratio) if spec.check else []
    lines = [summary_line(job.desc, norms, scale)]
    lines += [f"{job.desc}: weight: auto: {method_name(job.methods.methods[i])} weight {w:.4g} (gradient norm "
              f"{scale.auto[i]:.3g} at weight 1, {spec.target:g}x the cross-entropy's)" for i, w in weights.items()]
    for line in lines + found:
        job.log(line)
    names = {i: method_name(job.methods.methods[i]) for i in weights}
    record = {"fingerprint": job.fingerprint, **spec.model_dump(), "batches": scale.batches, "norms": norms,
              "measured": scale.terms, "ratios": {k: v / scale.ce for k, v in norms.items()} if scale.ce else {},
              "auto": {str(i): {"method": names[i], "norm_at_weight_1": scale.auto[i], "weight": w}
                       for i, w in weights.items()}, "weights": list(job.methods.weights), "warnings": found}
    dist.on_main(partial(write_json, job.out_dir / FILE, record))  # the folder exists: _start made it


def measure(job: FitJob, step: Any, batches: int) -> Scale | None:
    """Mean gradient norms over the first ``batches`` batches of epoch 0, on copies of the student and methods
    (None, logged, when the student cannot be copied and nothing is ``auto``)."""
    from distill.engine.loop import _loss, attach_taps  # here: the loop imports this module

    data = peek(job.loader, batches)
    if not data and job.methods.auto:
        raise DistillError("weight: auto: the training loader has no batch to measure on")
    if not data or (copies := _copies(job)) is None:
        return None
    model, methods = copies
    params = _student_params(job, model)
    twin = replace(job, model=model, methods=methods)
    probe = copy.copy(step)
    probe.model = model  # the plain copy, not a compiled or DDP-wrapped forward
    sums: dict[str, Tensor] = {}
    owners: dict[str, int] = {}
    with torch.random.fork_rng(devices=_cuda(job.device)), ExitStack() as stack:
        model.train()
        methods.train()
        s_taps, t_taps = attach_taps(twin, stack)
        calls = _record_calls(methods, stack)
        for batch in data:
            calls.clear()
            out = _loss(probe, twin, probe.batch(batch, job.device), _full_strength(job), s_taps, t_taps)
            owners = _owners(out, calls)
            for key, value in _norms(out, calls, methods.auto, params).items():
                sums[key] = sums.get(key, 0.0) + value
    keys = list(sums)
    means = dist.mean_across_ranks(torch.stack([sums[k] for k in keys]).to(job.device) / len(data)).tolist()
    found = dict(zip(keys, means))
    return Scale(terms={k[5:]: v for k, v in found.items() if k.startswith("term:")}, owners=owners,
                 auto={int(k[5:]): v for k, v in found.items() if k.startswith("auto:")},
                 ce=found.get("ce"), batches=len(data))


def auto_weights(methods: MethodSet, scale: Scale, target: float) -> dict[int, float]:
    """Method index -> the weight that makes its gradient norm ``target`` times the cross-entropy's."""
    out = {}
    for i in methods.auto:
        name = f"methods.{i} ({method_name(methods.methods[i])})"
        own_ce = [t for t, owner in scale.owners.items() if owner == i and is_ce(t)]
        if own_ce:
            raise DistillError(f"{name}: weight: auto scales a method against the cross-entropy, but its own terms "
                               f"include it ({own_ce[0]}); give it a number")
        if not scale.ce:
            raise DistillError(f"{name}: weight: auto needs a cross-entropy gradient to scale against (a ce term and "
                               f"labelled samples in the first {scale.batches} batches); give a number")
        if not scale.auto.get(i, 0.0) > 0:
            raise DistillError(f"{name}: weight: auto: its loss has no gradient on the student in the first "
                               f"{scale.batches} batches; give a number")
        out[i] = target * scale.ce / scale.auto[i]
    return out


def scaled_norms(scale: Scale, weights: dict[int, float]) -> dict[str, float]:
    """The terms' norms at the final weights (``auto`` methods were measured at 1.0, and norms scale linearly)."""
    return {t: n * weights.get(scale.owners.get(t, -1), 1.0) for t, n in scale.terms.items()}


def peek(loader: Any, n: int) -> list[Batch]:
    """The first ``n`` batches of epoch 0 (the run's first), the loader's epoch set back afterwards."""
    epoch = getattr(loader, "epoch", 0)
    loader.set_epoch(0)
    batches = iter(loader)
    try:
        return list(itertools.islice(batches, n))
    finally:
        getattr(batches, "close", lambda: None)()  # stops a streamed split's DataLoader mid-epoch
        loader.set_epoch(epoch)


def _norms(out: LossOutput, calls: list[tuple[int, LossOutput]], auto: list[int],
           params: list[nn.Parameter]) -> dict[str, Tensor]:
    """One batch's gradient norms: ``term:<name>`` per term, ``ce`` for the cross-entropy terms together and
    ``auto:<i>`` for each auto method's own loss."""
    found = {f"term:{k}": _grad_norm(v, params) for k, v in out.terms.items()}
    ce = [v for k, v in out.terms.items() if is_ce(k)]
    if ce:
        found["ce"] = _grad_norm(sum(ce), params)
    losses = {i: o.loss for i, o in reversed(calls)}  # a method's first call of the step
    for i in auto:
        if i not in losses:
            raise DistillError(f"methods.{i}: weight: auto: the method was not called in the main stage")
        found[f"auto:{i}"] = _grad_norm(losses[i], params)
    return found


def _grad_norm(loss: Tensor | float, params: list[nn.Parameter]) -> Tensor:
    """The L2 norm (fp64, on the CPU) of d loss / d params; 0 for a term that does not reach them."""
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True) \
        if isinstance(loss, Tensor) and loss.requires_grad else []
    parts = [g.detach().double().pow(2).sum() for g in grads if g is not None]  # one host sync per term, below
    return torch.stack([q.to(parts[0].device) for q in parts]).sum().sqrt().cpu() if parts else \
        torch.zeros((), dtype=torch.float64)


def _owners(out: LossOutput, calls: list[tuple[int, LossOutput]]) -> dict[str, int]:
    """Term -> the method that made it: MethodSet adds the called methods' terms in order (nested sets: none)."""
    made = [i for i, o in calls for _ in o.terms]
    return dict(zip(out.terms, made)) if len(made) == len(out.terms) else {}


def _record_calls(methods: MethodSet, stack: ExitStack) -> list[tuple[int, LossOutput]]:
    """(method index, its LossOutput) for every call of the set's own methods, as they happen."""
    calls: list[tuple[int, LossOutput]] = []
    for i, m in enumerate(methods.methods):
        handle = m.register_forward_hook(lambda _m, _a, out, i=i: calls.append((i, out)))
        stack.callback(handle.remove)
    return calls


def _copies(job: FitJob) -> tuple[nn.Module, MethodSet] | None:
    """Deep copies of the student and the methods (one copy: their shared parts stay shared; the teacher,
    teachers and cache are read only, so not copied); ``auto`` weights at 1.0."""
    memo = {id(x): x for x in (job.teacher, job.targets, job.cache) if x is not None}
    try:
        model, methods = copy.deepcopy((job.model, job.methods), memo)
    except Exception as e:  # a model holding something that cannot be copied (a lock, an open file)
        if job.methods.auto:
            raise DistillError(f"weight: auto: the student cannot be copied to measure on it ({e})") from None
        job.log(f"{job.desc}: loss scale: not measured, the student cannot be copied ({e})")
        return None
    for i in methods.auto:
        methods.weights[i] = 1.0
    return model, methods


def _student_params(job: FitJob, model: nn.Module) -> list[nn.Parameter]:
    """The copy's trainable parameters, less those with their own optimizer (a data-free run's generator)."""
    own = {id(p) for params, *_ in (job.groups or []) for p in params}
    names = {n for n, p in job.model.named_parameters() if id(p) in own}
    return [p for n, p in model.named_parameters() if p.requires_grad and n not in names]


def _full_strength(job: FitJob) -> StepContext:
    """The main stage's last step: warm-ups done, so a term is measured at the strength it reaches."""
    n, epochs = len(job.loader), job.train.epochs
    return StepContext(epoch=epochs - 1, step=epochs * n - 1, epochs=epochs, steps_per_epoch=n, stage="main")


def _auto(methods: MethodSet) -> list[int]:
    nested = [m for m in methods.modules() if isinstance(m, MethodSet) and m is not methods and m.auto]
    if nested:
        raise DistillError("weight: auto: this strategy nests the methods (mutual, data_free); give numbers")
    return list(getattr(methods, "auto", []))


def _only_ce(methods: MethodSet) -> bool:
    """True when cross-entropy is all there is (a teacher or a scratch student): nothing to compare."""
    return all(isinstance(m, CE) for m in methods.modules() if isinstance(m, Method))


def _restore(job: FitJob, auto: list[int]) -> bool:
    """Set the auto weights a resumed run measured when it started; False (to measure again) without them."""
    path = job.out_dir / FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = {}
    stored = record.get("auto", {}) if record.get("fingerprint") == job.fingerprint else {}
    found = all(str(i) in stored for i in auto)
    dist.agree(found, f"{job.desc}: whether {path} holds the auto weights")
    if not found:
        job.log(f"{job.desc}: weight: auto: no weights for this run in {path}; measuring on the resumed model")
        return False
    for i in auto:
        job.methods.weights[i] = float(stored[str(i)]["weight"])
    shown = ", ".join(f"{method_name(job.methods.methods[i])} {job.methods.weights[i]:.4g}" for i in auto)
    job.log(f"{job.desc}: weight: auto: {shown}, as measured when the run started ({path})")
    return True


def _cuda(device: str) -> list[int]:
    d = torch.device(device)  # fork_rng forks the CPU's generator and these devices'
    return [d.index if d.index is not None else torch.cuda.current_device()] if d.type == "cuda" else []
