"""Token-level distillation divergences, as language-model distillation uses them (and valid for any logits).

Per token, with teacher distribution p = softmax(t / T) and student q = softmax(s / T) over the vocabulary:

- ``fkl``, forward KL (Hinton's; "supervised KD" in GKD):   KL(p || q) = sum p (log p - log q)
- ``rkl``, reverse KL (MiniLLM, Gu et al. 2024):            KL(q || p)
- ``jsd``, generalized Jensen-Shannon (GKD, Agarwal et al. 2024), as TRL's ``generalized_jsd_loss`` computes it:
  with m = beta p + (1 - beta) q, beta KL(p || m) + (1 - beta) KL(q || m); beta = 0 is taken as forward KL and
  beta = 1 as reverse KL (TRL's convention; the formula itself vanishes at both ends)
- ``tv``, total variation:                                  0.5 sum |p - q|
- ``skl``, skew KL (DistiLLM, Ko et al. 2024):              KL(p || skew p + (1 - skew) q)
- ``srkl``, skew reverse KL (DistiLLM):                      KL(q || skew q + (1 - skew) p)

Each is averaged over the tokens that count (``weights``; padding and prompt tokens excluded) and computed in
fp32. T divides both logits with no T^2 factor, as in TRL's GKD trainer and DistiLLM (LLM distillation runs at
T = 1). DistiLLM's skew losses drop the teacher's entropy term (a constant for the student): ours keep it, so
the value is the divergence itself and the gradient is the same.

Memory: at a vocabulary of 49,152 one token's fp32 softmax is 192 KiB, so a (batch x sequence, V) pair of them
is what explodes. ``token_divergence`` computes tokens in chunks of ``chunk`` rows and, while it has a chunk's
softmaxes, also that chunk's gradient; it keeps only the gradient (in the logits' dtype, the size of the logits
themselves). So at most one chunk of (chunk, V) fp32 temporaries exists at a time, backward included. The
method's cross-entropy on token logits (``alpha``) is computed in the same pass, into the same gradient buffer:
one read of the logits and one (tokens, V) gradient for both terms instead of two summed by autograd. A chunk
is also kept under 16 MiB per fp32 temporary (64 tokens at V = 49,152): pieces that size are reused by the C
allocator, while larger ones are mapped afresh and page-faulted in on every use.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.methods.base import METHODS, Method, labelled_cross_entropy
from distill.types import Batch, LossOutput, ModelOutput, Needs, StepContext

IGNORE = -100  # target id of tokens that do not count (padding, prompt)
Divergence = Callable[[Tensor, Tensor], Tensor]  # (n, V) student and teacher log-probs -> (n,) per token


def _kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    """KL(a || b) per row of (n, V) log-probs -> (n,); 0 log 0 = 0."""
    return (log_a.exp() * (log_a - log_b)).nan_to_num(0.0, 0.0, 0.0).sum(dim=-1)


def _mix(log_a: Tensor, log_b: Tensor, w: float) -> Tensor:
    """log(w a + (1 - w) b), stably, for 0 < w < 1: (n, V)."""
    return torch.logaddexp(log_a + math.log(w), log_b + math.log1p(-w))


def divergence(name: str, beta: float = 0.5, skew: float = 0.1) -> Divergence:
    """The per-token divergence ``name`` (see the module docstring) as a function of (student, teacher)
    log-probs."""
    if name == "fkl":
        return lambda s, t: _kl(t, s)
    if name == "rkl":
        return lambda s, t: _kl(s, t)
    if name == "tv":
        return lambda s, t: 0.5 * (t.exp() - s.exp()).abs().sum(dim=-1)
    if name == "jsd":
        if beta <= 0.0:
            return lambda s, t: _kl(t, s)
        if beta >= 1.0:
            return lambda s, t: _kl(s, t)

        def jsd(s: Tensor, t: Tensor) -> Tensor:
            m = _mix(t, s, beta)
            return beta * _kl(t, m) + (1.0 - beta) * _kl(s, m)
        return jsd
    if name == "skl":
        return lambda s, t: _kl(t, _mix(t, s, skew))
    if name == "srkl":
        return lambda s, t: _kl(s, _mix(s, t, skew))
    raise ValueError(f"unknown divergence {name!r} (known: {', '.join(DIVERGENCES)})")


DIVERGENCES = ("fkl", "rkl", "jsd", "tv", "skl", "srkl")


Pair = Callable[[Tensor, slice], tuple[Tensor, Tensor]]  # (n, V) fp32 student logits of rows -> both log-probs
CHUNK_BYTES = 16 << 20  # the most one (chunk, V) fp32 temporary may take (module docstring)


Extra = Callable[[Tensor, slice], Tensor]  # (n, V) fp32 student logits of rows -> (n,) per-token extra term
# One chunk's work: (s_c (n, V) fp32 logits of ``rows``, per-token weights w (n,), coefficients (c_div, c_extra),
# out (n, V) fp32 to fill with the gradient of c_div * divergence + c_extra * extra, or None) -> the chunk's two
# weighted sums (divergence, extra; 0 without an extra term), as scalars
Step = Callable[[Tensor, slice, Tensor, tuple[float, float], Tensor | None], tuple[Tensor, Tensor]]


def autograd_step(fn: Divergence, pair: Pair, extra: Extra | None) -> Step:
    """A chunk step whose gradient autograd takes through ``fn(*pair(s_c, rows))`` and ``extra(s_c, rows)``."""
    def step(s_c: Tensor, rows: slice, w: Tensor, coef: tuple[float, float], out: Tensor | None):
        with torch.enable_grad():
            x = s_c.detach().requires_grad_(out is not None)  # (n, V)
            div = (fn(*pair(x, rows)) * w).sum()
            ext = (extra(x, rows) * w).sum() if extra is not None else div.new_zeros(())
            if out is not None:
                # a term whose coefficient is 0 stays out of the graph: its gradient is 0, not 0 * (inf or nan)
                terms = [c * v for c, v in zip(coef, (div, ext)) if c and v.requires_grad]
                out.copy_(torch.autograd.grad(sum(terms), x)[0]) if terms else out.zero_()
        return div.detach(), ext.detach()
    return step


def _pass(s: Tensor, weights: Tensor, step: Step, chunk: int, coef: tuple[float, float],
          grad: Tensor | None) -> Tensor:
    """One chunked pass: (2,) [weighted divergence sum, weighted extra sum]; fills ``grad`` (N, V), when given,
    with the gradient of coef[0] * divergence + coef[1] * extra."""
    total = torch.zeros(2, dtype=torch.float32, device=s.device)
    chunk = max(1, min(chunk, CHUNK_BYTES // (4 * s.shape[-1])))
    for lo in range(0, s.shape[0], chunk):
        rows = slice(lo, lo + chunk)
        w = weights[rows]
        if not bool((w != 0).any()):
            continue  # padding only: no loss, zero gradient
        s_c = s[rows].detach().float()  # (n, V) fp32, a view when the logits are fp32
        out = None if grad is None else grad[rows] if grad.dtype == torch.float32 else torch.empty_like(s_c)
        div, ext = step(s_c, rows, w, coef, out)
        if out is not None and grad.dtype != torch.float32:
            grad[rows] = out
        total[0] += div
        total[1] += ext
    return total


class _Chunked(torch.autograd.Function):
    """(2,) [divergence, extra] summed over token chunks by ``step`` (``Step``); the extra term is a second
    per-token loss of the student's logits alone (the cross-entropy, so it shares the pass). The gradient is
    computed with the forward for 1 * divergence + ``alpha`` * extra, which is what the loss uses (see the module
    docstring); a backward with other weights (a per-term gradient, as the loss-scale check takes) recomputes
    the chunks. The teacher gets no gradient."""

    @staticmethod
    def forward(ctx, s: Tensor, weights: Tensor, step: Step, chunk: int,  # type: ignore[override]
                alpha: float, fused: bool) -> Tensor:
        grad = torch.zeros_like(s) if ctx.needs_input_grad[0] else None  # (N, V), the logits' dtype
        total = _pass(s, weights, step, chunk, (1.0, alpha), grad)
        # the logits are kept only with an extra term, for a per-term backward (the cross-entropy it replaces
        # would keep a (N, V) log-softmax anyway); without one, nothing of size (N, V) but the gradient is kept
        keep = s if fused else torch.empty(0)
        ctx.save_for_backward(grad if grad is not None else torch.empty(0), keep, weights)
        ctx.args = (step, chunk, alpha, fused)
        return total

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return (None,) * 6
        grad, s, weights = ctx.saved_tensors
        step, chunk, alpha, fused = ctx.args
        g_div, g_ext = float(g[0]), float(g[1])
        if not fused or g_ext == alpha * g_div or math.isclose(g_ext, alpha * g_div, rel_tol=1e-5):
            return (grad * g[0],) + (None,) * 5
        other = torch.zeros_like(s)
        _pass(s, weights, step, chunk, (g_div, g_ext), other)
        return (other,) + (None,) * 5


def chunked(s: Tensor, weights: Tensor, step: Step, chunk: int, ce: tuple[Tensor, float] | None) -> Tensor:
    """Run ``step`` over (N, V) logits in chunks: the divergence as a scalar, or with ``ce`` = (target, alpha)
    (the step computing the cross-entropy as its extra term) the (2,) [divergence, cross-entropy]."""
    if ce is None:
        return _Chunked.apply(s, weights, step, int(chunk), 0.0, False)[0]
    return _Chunked.apply(s, weights, step, int(chunk), float(ce[1]), True)


def _cross_entropy(target: Tensor) -> Extra:
    """The per-token cross-entropy of raw logits against ``target`` (N,) (-100: 0) as an extra term."""
    def cross_entropy(s_c: Tensor, rows: slice) -> Tensor:
        return F.cross_entropy(s_c, target[rows], ignore_index=IGNORE, reduction="none")  # (n,)
    return cross_entropy


def _flat(logits: Tensor, mask: Tensor | None, T: float, chunk: int) -> tuple[Tensor, Tensor]:
    """(..., V) logits -> (N, V); mask (...) -> per-token weights (N,) of the mean over counted tokens."""
    if T <= 0 or chunk < 1:
        raise ValueError("T must be positive and chunk at least 1")
    s = logits.reshape(-1, logits.shape[-1])
    m = torch.ones(s.shape[0], device=s.device) if mask is None else mask.reshape(-1).to(s.device).float()
    if m.shape[0] != s.shape[0]:
        raise ValueError(f"mask has {m.shape[0]} tokens, the logits {s.shape[0]}")
    return s, m / m.sum().clamp(min=1.0)


def token_divergence(student_logits: Tensor, teacher_logits: Tensor, *, name: str = "fkl",
                     mask: Tensor | None = None, T: float = 1.0, beta: float = 0.5, skew: float = 0.1,
                     chunk: int = 256, ce: tuple[Tensor, float] | None = None) -> Tensor:
    """Mean over counted tokens of divergence ``name`` between teacher and student: logits (..., V) (e.g.
    (B, S, V) or (B, C)), ``mask`` (...) of tokens that count (bool or 0/1; default all) -> scalar fp32.
    ``chunk``: tokens per chunk of fp32 work (memory: about 8 x chunk x V x 4 bytes at once). With ``ce`` =
    (targets (...), alpha): (2,) [divergence, cross-entropy of the raw logits over the same tokens], both from
    one pass over the logits, the gradient taken for divergence + alpha * cross-entropy."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ")
    s, weights = _flat(student_logits, mask, T, chunk)
    t = teacher_logits.reshape(s.shape).detach()  # (N, V)

    def pair(s_c: Tensor, rows: slice) -> tuple[Tensor, Tensor]:
        return F.log_softmax(s_c / T, dim=-1), F.log_softmax(t[rows].float() / T, dim=-1)
    extra = _cross_entropy(ce[0].reshape(-1).to(s.device)) if ce is not None else None
    return chunked(s, weights, autograd_step(divergence(name, beta, skew), pair, extra), chunk, ce)


@METHODS.register("token_kd")
class TokenKD(Method):
    """Token-level KD with a choice of divergence (module docstring): ``divergence`` one of fkl, rkl, jsd, tv,
    skl, srkl; ``beta`` GKD's JSD mixture; ``skew`` DistiLLM's skew; ``T`` temperature (no T^2 factor);
    ``alpha`` a cross-entropy term on the labels, relative to the divergence's 1 (0 by default: GKD and
    DistiLLM train on the divergence alone); ``chunk`` tokens per chunk of fp32 work.

    Logits (B, C) count every sample (labelled or not); logits (B, S, V) with targets (B, S) count the positions
    whose target is not -100 (the Hugging Face convention for padding and prompt tokens).
    """

    needs = Needs(teacher=True)
    token_level = True

    def __init__(self, divergence: str = "fkl", T: float = 1.0, beta: float = 0.5, skew: float = 0.1,
                 alpha: float = 0.0, chunk: int = 256) -> None:
        super().__init__()
        if divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {', '.join(DIVERGENCES)}, got {divergence!r}")
        if not 0.0 <= beta <= 1.0 or not 0.0 < skew < 1.0:
            raise ValueError(f"beta must be in [0, 1] and skew in (0, 1), got beta={beta}, skew={skew}")
        if T <= 0 or chunk < 1:
            raise ValueError("T must be positive and chunk at least 1")
        self.divergence, self.T, self.beta, self.skew = divergence, T, beta, skew
        self.alpha, self.chunk = alpha, chunk

    def forward(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        assert t is not None, "token_kd needs teacher outputs"
        target = batch.target
        mask = target != IGNORE if target.shape == s.logits.shape[:-1] and s.logits.ndim > 2 else None
        # token logits with targets: the cross-entropy shares the divergence's chunked pass (one read of the
        # logits, one gradient buffer for both terms)
        # labelled_count 0: the targets are the student's own samples (GKD's on-policy batches), not labels
        labels = self.alpha and batch.labelled_count != 0
        fused = (target.reshape(-1), self.alpha) if labels and mask is not None else None
        opts = dict(name=self.divergence, mask=mask, T=self.T, beta=self.beta, skew=self.skew, chunk=self.chunk,
                    ce=fused)
        if t.topk is not None and not t.topk.dense:  # a sparse teacher cache: exact on top-k plus the tail
            from distill.methods.token_sparse import token_divergence_topk

            top = t.topk
            out = token_divergence_topk(s.logits, top.values, top.indices, top.lse[float(self.T)],
                                        sampled=top.sampled, **opts)
        else:
            out = token_divergence(s.logits, t.logits, **opts)
        if fused is not None:
            terms = {self.divergence: out[0], "ce": self.alpha * out[1]}
        else:
            terms = {self.divergence: out}
            if self.alpha and not labels:
                terms["ce"] = s.logits.new_zeros((), dtype=torch.float32)
            elif self.alpha:
                terms["ce"] = self.alpha * (
                    F.cross_entropy(s.logits.flatten(0, -2).float(), target.flatten(), ignore_index=IGNORE)
                    if s.logits.ndim > 2 else labelled_cross_entropy(s.logits, target, batch.labelled_count))
        return LossOutput(sum(terms.values()), terms)

    def accepts_topk(self) -> bool:
        """Exact on cached top-k teacher logits plus their tail bucket (``token_divergence_topk``)."""
        return True

    def accepts_sampled(self) -> bool:
        """Forward KL is linear in the teacher's probabilities: sampled targets give an unbiased gradient."""
        return self.divergence == "fkl" or (self.divergence == "jsd" and self.beta <= 0.0)

    def cache_temperatures(self) -> tuple[float, ...]:
        return (float(self.T),)
