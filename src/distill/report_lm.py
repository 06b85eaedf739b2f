"""The report's table for language models: perplexity, next-token top-1, agreement, generation speed."""

from __future__ import annotations

from typing import Any


def is_lm(models: dict[str, dict]) -> bool:
    """True when the report's models are language models (they have a perplexity)."""
    return any(m.get("ppl") is not None for m in models.values())


def lm_table(models: dict[str, dict], fmt: Any) -> list[str]:
    """Markdown lines of the language-model table; ``fmt`` is the report's (pct, size, fmt, num) helpers."""
    pct, size, number, num = fmt
    lines = ["| role | params | size | perplexity | next-token top-1 last | top-1 best (epoch) | agreement w/ teacher "
             "| generation (tokens/s, batch 1) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for role, m in models.items():
        best = pct(num(m, "top1_best"))
        if m.get("best_epoch") is not None:
            best += f" (ep {m['best_epoch']})"
        lines.append("| " + " | ".join([role.replace("|", "\\|"), number(num(m, "params"), ",.0f"),
                                        size(num(m, "size_bytes")), number(num(m, "ppl"), ".2f"),
                                        pct(num(m, "top1_last")), best, pct(num(m, "agreement")),
                                        number(num(m, "tokens_per_s"), ".1f")]) + " |")
    return lines


def lm_summary(s: dict[str, float]) -> list[str]:
    """Sentences on perplexity and generation speed (only what was computed)."""
    parts = []
    if "ppl_ratio" in s:
        parts.append(f"held-out perplexity of the student is {s['ppl_ratio']:.3f}x the scratch student's")
    if "generation_speedup" in s:
        parts.append(f"it generates {s['generation_speedup']:.1f}x as many tokens per second as the teacher")
    return parts
