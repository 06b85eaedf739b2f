"""Sampled sparse teacher targets for the teacher cache (``cache.select: sample``).

Random Sampling KD (Anshumann et al. 2025, "Sparse Logit Sampling: Accelerating Knowledge Distillation in
LLMs"): instead of the teacher's k most probable tokens, the cache stores k draws with replacement from the
teacher's distribution p = softmax(t / T), as the distinct tokens drawn and their frequencies w = count / k.
The empirical distribution is an unbiased estimate of p, so any loss linear in p (forward KL, i.e. the
cross-entropy -sum p log q against the student's full softmax q) gets an unbiased gradient, where top-k targets
are biased towards the head and say nothing about the tail's shape. The price is variance, and only a loss
linear in the teacher's probabilities may use such targets (``Method.accepts_sampled``).

Stored per position: the k slots' log-weights (``PAD`` where no draw landed: fewer than k distinct tokens
were drawn, and the slot holds the most probable undrawn token) and their ids. The draws come from one fixed
stream of uniforms per (view, row, position, draw), inverted through the teacher's CDF, so the same teacher
and inputs give the same cache whatever the batch size that built it.
"""

from __future__ import annotations

import torch
from torch import Tensor

SEED = 0  # the uniforms' seed; in the fingerprint, so another seed is another cache
PAD = -1e4  # log-weight of a slot no draw hit: finite in fp16, and exp() of it is exactly 0 in fp32
ROWS = 256  # positions per pass of the (rows, V) temporaries (three of them: p, its CDF, the counts)


def uniforms(views: int, n: int, tail: tuple[int, ...], k: int) -> Tensor:
    """The fixed uniforms of every draw the cache makes: (views, n, *tail, k) in [0, 1)."""
    return torch.rand((views, n, *tail, k), generator=torch.Generator().manual_seed(SEED))


def draw(logits: Tensor, u: Tensor, T: float) -> tuple[Tensor, Tensor]:
    """Logits (..., V) and uniforms (..., k) -> (log-weights (..., k), ids (..., k)): k draws with replacement
    from softmax(logits / T), one per uniform, as distinct ids (most drawn first, then the most probable undrawn
    ids, weight 0) and log(count / k) (``PAD`` for weight 0)."""
    lead, v, k = logits.shape[:-1], logits.shape[-1], u.shape[-1]
    flat, uu = logits.reshape(-1, v), u.reshape(-1, k).to(logits.device)  # (N, V) (N, k)
    logw, ids = torch.empty_like(uu), torch.empty(uu.shape, dtype=torch.long, device=flat.device)
    for lo in range(0, flat.shape[0], ROWS):
        rows = slice(lo, lo + ROWS)
        p = torch.softmax(flat[rows].float() / T, dim=-1)  # (n, V)
        cdf = p.cumsum(dim=-1)  # (n, V)
        drawn = torch.searchsorted(cdf, uu[rows] * cdf[:, -1:], right=True).clamp_(max=v - 1)  # (n, k)
        counts = torch.zeros_like(p).scatter_add_(1, drawn, torch.ones_like(drawn, dtype=p.dtype))  # (n, V)
        top = (counts + p).topk(k, dim=-1).indices  # counts are whole numbers and p < 1: drawn ids first
        w = counts.gather(1, top) / k  # (n, k)
        logw[rows] = torch.where(w > 0, w.clamp(min=1.0 / k).log(), torch.full_like(w, PAD))
        ids[rows] = top
    return logw.reshape(*lead, k), ids.reshape(*lead, k)
