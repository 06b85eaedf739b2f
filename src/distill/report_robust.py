"""The report's "Robustness" table: clean, FGSM and PGD top-1 per model (``eval.robustness``, distill.robustness)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def robustness_table(models: dict[str, dict[str, Any]], pct: Callable[[float | None], str]) -> list[str]:
    """Markdown lines of the Robustness section (none when no model has robustness metrics); ``pct``: the report's
    percentage formatter."""
    rows = {r: m for r, m in models.items() if m.get("fgsm_top1") is not None}
    if not rows:
        return []
    first = next(iter(rows.values()))
    eps, steps, n = first.get("robust_eps"), first.get("pgd_steps"), first.get("robust_samples")
    lo, hi = first.get("robust_range") or (float("nan"), float("nan"))
    lines = ["## Robustness", "",
             f"White-box attacks on each model itself (cross-entropy on the true labels) over the first {n} test "
             f"samples; eps = {eps:g} in raw input units (before normalisation), inputs kept in [{lo:g}, {hi:g}]. "
             f"FGSM: one signed-gradient step; PGD-{steps}: a random start in the eps-ball and {steps} steps of "
             f"{first.get('pgd_step_size'):g}, each projected back. A model whose softmax saturates can give zero "
             "input gradients and look robust to these attacks without being so (gradient masking): the last column "
             "is the share of samples whose input gradient is exactly zero.", "",
             f"| model | clean top-1 | FGSM eps={eps:g} | PGD-{steps} eps={eps:g} | zero gradient |",
             "|---|---:|---:|---:|---:|"]
    for role, m in rows.items():
        cells = [role.replace("|", "\\|"), pct(m.get("robust_clean_top1")), pct(m.get("fgsm_top1")),
                 pct(m.get("pgd_top1")), pct(m.get("zero_grad_share"))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]
