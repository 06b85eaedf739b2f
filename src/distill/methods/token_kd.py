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
themselves). So at most one chunk of (chunk, V) fp32 temporaries exists at a time, backward included. A chunk
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


class _Chunked(torch.autograd.Function):
    """sum_i weights[i] * fn(*pair(s_i, rows)) over token chunks, ``pair`` giving the student's and teacher's
    log-probs of a chunk; the gradient of each chunk is computed with its forward (see the module docstring).
    The teacher gets no gradient."""

    @staticmethod
    def forward(ctx, s: Tensor, weights: Tensor, fn: Divergence, pair: Pair,  # type: ignore[override]
                chunk: int) -> Tensor:
        total = torch.zeros((), dtype=torch.float32, device=s.device)
        grad = torch.zeros_like(s) if ctx.needs_input_grad[0] else None  # (N, V), the logits' dtype
        chunk = max(1, min(chunk, CHUNK_BYTES // (4 * s.shape[-1])))
        for lo in range(0, s.shape[0], chunk):
            rows = slice(lo, lo + chunk)
            w = weights[rows]
            if not bool((w != 0).any()):
                continue  # padding only: no loss, zero gradient
            with torch.enable_grad():
                s_c = s[rows].detach().float().requires_grad_(grad is not None)  # (n, V) fp32
                loss = (fn(*pair(s_c, rows)) * w).sum()
                if grad is not None:
                    grad[rows] = torch.autograd.grad(loss, s_c)[0].to(grad.dtype)
            total += loss.detach()
        ctx.save_for_backward(grad if grad is not None else torch.empty(0))
        return total

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return (grad * g if ctx.needs_input_grad[0] else None), None, None, None, None


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
                     chunk: int = 256) -> Tensor:
    """Mean over counted tokens of divergence ``name`` between teacher and student: logits (..., V) (e.g.
    (B, S, V) or (B, C)), ``mask`` (...) of tokens that count (bool or 0/1; default all) -> scalar fp32.
    ``chunk``: tokens per chunk of fp32 work (memory: about 8 x chunk x V x 4 bytes at once)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ")
    s, weights = _flat(student_logits, mask, T, chunk)
    t = teacher_logits.reshape(s.shape).detach()  # (N, V)

    def pair(s_c: Tensor, rows: slice) -> tuple[Tensor, Tensor]:
        return F.log_softmax(s_c / T, dim=-1), F.log_softmax(t[rows].float() / T, dim=-1)
    return _Chunked.apply(s, weights, divergence(name, beta, skew), pair, int(chunk))


def token_divergence_topk(student_logits: Tensor, values: Tensor, indices: Tensor, lse: Tensor, *,
                          name: str = "fkl", mask: Tensor | None = None, T: float = 1.0, beta: float = 0.5,
                          skew: float = 0.1, chunk: int = 256) -> Tensor:
    """``token_divergence`` against a sparse teacher: its top-k logits ``values`` (..., k) at vocabulary ids
    ``indices`` (..., k) and the log-sum-exp of all its logits at T, ``lse`` (...). Both distributions are
    taken over the k stored tokens plus one bucket for the rest (the teacher's bucket holds 1 - its top-k mass,
    the student's the log-sum-exp of its other log-probs), on which the divergence is exact; with k = V it is
    ``token_divergence``."""
    s, weights = _flat(student_logits, mask, T, chunk)
    k = values.shape[-1]
    vals, idx, lse_t = values.reshape(-1, k), indices.reshape(-1, k).long(), lse.reshape(-1)  # (N, k) (N,)

    def pair(s_c: Tensor, rows: slice) -> tuple[Tensor, Tensor]:
        log_t_top = vals[rows].float() / T - lse_t[rows, None].float()  # (n, k)
        t_rest = (1.0 - log_t_top.exp().sum(dim=-1, keepdim=True)).clamp(min=_TINY)  # (n, 1)
        return _Buckets.apply(s_c, idx[rows], T), torch.cat([log_t_top, t_rest.log()], dim=1)
    return _Chunked.apply(s, weights, divergence(name, beta, skew), pair, int(chunk))


_TINY = torch.finfo(torch.float32).tiny  # a bucket emptied by rounding: finite logs, no 0 * inf


class _Buckets(torch.autograd.Function):
    """(n, V) logits, (n, k) token ids -> (n, k + 1) log-probs at T of those tokens and of the rest (one bucket).

    Its backward is written out, so a chunk costs two passes over (n, V) each way instead of autograd's chain of
    log-softmax, scatter and log-sum-exp: with q = softmax(s / T), buckets Q_c and g_c = dL / dlog Q_c,
    dL / ds_v = q_v (g_c(v) / Q_c(v) - sum_c g_c) / T."""

    @staticmethod
    def forward(ctx, s: Tensor, idx: Tensor, T: float) -> Tensor:  # type: ignore[override]
        lse = torch.logsumexp(s / T if T != 1.0 else s, dim=-1, keepdim=True)  # (n, 1)
        log_top = s.gather(1, idx) / T - lse  # (n, k)
        rest = (1.0 - log_top.exp().sum(dim=-1, keepdim=True)).clamp(min=_TINY)  # (n, 1)
        out = torch.cat([log_top, rest.log()], dim=1)  # (n, k + 1)
        ctx.save_for_backward(s, idx, lse, out)
        ctx.T = T
        return out

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, None, None]:  # type: ignore[override]
        s, idx, lse, out = ctx.saved_tensors
        T = ctx.T
        total = g.sum(dim=-1, keepdim=True)  # (n, 1)
        h = g / out.exp()  # (n, k + 1): g_c / Q_c
        grad = (s / T if T != 1.0 else s).sub(lse).exp_().mul_((h[:, -1:] - total) / T)  # (n, V): all in the rest
        top = out[:, :-1].exp()  # (n, k)
        return grad.scatter_(1, idx, top * (h[:, :-1] - total) / T), None, None


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
        opts = dict(name=self.divergence, mask=mask, T=self.T, beta=self.beta, skew=self.skew, chunk=self.chunk)
        if t.topk is not None and not t.topk.dense:  # a sparse teacher cache: exact on top-k plus the tail
            top = t.topk
            div = token_divergence_topk(s.logits, top.values, top.indices, top.lse[float(self.T)],
                                                      **opts)
        else:
            div = token_divergence(s.logits, t.logits, **opts)
        terms = {self.divergence: div}
        if self.alpha:
            terms["ce"] = self.alpha * (
                F.cross_entropy(s.logits.flatten(0, -2).float(), target.flatten(), ignore_index=IGNORE)
                if s.logits.ndim > 2 else labelled_cross_entropy(s.logits, target, batch.labelled_count))
        return LossOutput(sum(terms.values()), terms)

    def accepts_topk(self) -> bool:
        """Exact on cached top-k teacher logits plus their tail bucket (``token_divergence_topk``)."""
        return True

    def cache_temperatures(self) -> tuple[float, ...]:
        return (float(self.T),)
