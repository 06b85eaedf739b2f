"""What the loss-scale check says: the summary line, the warnings, and how a method and its weights read."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from distill.methods.base import Method, MethodSet

if TYPE_CHECKING:
    from distill.engine.scale import Scale

# a method's own weighting arguments, named in the warning (fitnet beta 100, rkd w_dist 25, kd alpha 0.1, ...)
_WEIGHT_ARGS = re.compile(r"^(alpha|beta|gamma|weight|w_\w+|\w+_alpha|\w+_beta)$")


def warnings(methods: MethodSet, norms: dict[str, float], scale: Scale, max_ratio: float) -> list[str]:
    """A line per distillation term whose gradient norm is over ``max_ratio`` times the cross-entropy's (without
    one: the largest other term's). Methods with their own cross-entropy term (kd, dkd, dist) are left out: their
    alpha/beta are the user's balance of labels and teacher, and Hinton's T^2 makes the soft term dominate by
    design (kd alpha 0.1, beta 0.9 at T 4 measures ~30x on recipes/mnist-cnn-gap.yaml)."""
    blended = {scale.owners[t] for t in norms if is_ce(t) and t in scale.owners}
    lines = []
    for term, norm in norms.items():
        if is_ce(term) or scale.owners.get(term) in blended:
            continue
        ref, what = _reference(term, norms, scale.ce)
        if ref and norm > max_ratio * ref:
            i = scale.owners.get(term)
            desc = f" ({describe(methods, i)})" if i is not None else ""
            advice = "the student may collapse: lower its weight or set weight: auto" if scale.ce else \
                "it drowns the other terms: lower its weight"
            lines.append(f"warning: {term} gradient is {_times(norm / ref)} {what}{desc}; {advice}")
    return lines


def describe(methods: MethodSet, i: int) -> str:
    """A method with its weighting arguments and weight, e.g. ``fitnet beta 100`` or ``kd alpha 0.1, beta 0.9``."""
    method, weight = methods.methods[i], methods.weights[i]
    init = getattr(method, "_init_args", None) or {}
    args = [f"{k} {v:g}" for k, v in init.items()
            if _WEIGHT_ARGS.match(k) and isinstance(v, (int, float)) and not isinstance(v, bool)]
    if i in methods.auto:
        args.append(f"weight auto ({weight:.4g})")
    elif weight != 1.0:
        args.append(f"weight {weight:g}")
    return f"{method_name(method)} {', '.join(args)}".strip()


def is_ce(term: str) -> bool:
    """True for a cross-entropy term as MethodSet names it: ``ce``, ``kd.ce``, ``student.ce``, ``ce[teacher]``."""
    return term.rsplit(".", 1)[-1].split("[", 1)[0] == "ce"


def summary_line(desc: str, norms: dict[str, float], scale: Scale) -> str:
    parts = [f"{t} {n:.3g}" + (f" ({_times(n / scale.ce)})" if scale.ce and not is_ce(t) else "")
             for t, n in norms.items()]
    return f"{desc}: loss scale: gradient norms on the student ({scale.batches} batches): {', '.join(parts)}"


def _reference(term: str, norms: dict[str, float], ce: float | None) -> tuple[float, str]:
    """What ``term`` is compared with: the cross-entropy, else the largest other term (0: nothing)."""
    if ce:
        return ce, "the cross-entropy's"
    others = {k: v for k, v in norms.items() if k != term and v > 0}
    if not others:
        return 0.0, ""
    top = max(others, key=others.__getitem__)
    return others[top], f"{top}'s (the largest other term)"


def _times(ratio: float) -> str:
    return f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.2g}x"


def method_name(method: Method) -> str:
    spec = method.spec() if isinstance(method, Method) else None
    return spec["name"] if spec else type(method).__name__.lower()
