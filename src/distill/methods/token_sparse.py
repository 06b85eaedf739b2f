"""Token-level divergences against a sparse teacher: the top-k logits the teacher cache stores, plus one bucket
for the rest of the vocabulary (``distill.methods.token_kd`` has the divergences and the chunked pass). Sampled
targets (``distill.cache.sample``) take the same path: their k slots' log-weights are the teacher's stored
log-probabilities and its rest bucket is empty, so forward KL over the buckets is -sum_i w_i log q_i plus a
constant, the full-vocabulary cross-entropy against the sampled targets (Random Sampling KD).

Both distributions are coarsened to the teacher's k stored tokens plus the rest: the teacher's bucket holds 1 - its
top-k mass (from the stored log-sum-exp), the student's the mass of its other tokens. The divergence over these
k + 1 buckets is exact, and small: autograd takes its gradient on the (n, k + 1) bucket log-probs only. The
gradient over the vocabulary is then written out, in place, in one pass over each chunk: with q = softmax(s / T),
bucket masses Q_c and g_c = dL / dlog Q_c, dL / ds_v = q_v (g_c(v) / Q_c(v) - sum_c g_c) / T. The cross-entropy
term (``ce``) adds a_i (softmax(s)_v - [v = target]), which at T = 1 shares the same exponentials. So a chunk costs
a log-sum-exp and one written pass over (n, V), where autograd's chain of log-softmax, scatter, log-sum-exp and
cross-entropy costs about four times as many.
"""

from __future__ import annotations

import torch
from torch import Tensor

from distill.methods.token_kd import IGNORE, Divergence, Step, _flat, chunked, divergence

_TINY = torch.finfo(torch.float32).tiny  # a bucket emptied by rounding: finite logs, no 0 * inf


def token_divergence_topk(student_logits: Tensor, values: Tensor, indices: Tensor, lse: Tensor, *,
                          name: str = "fkl", mask: Tensor | None = None, T: float = 1.0, beta: float = 0.5,
                          skew: float = 0.1, chunk: int = 256, ce: tuple[Tensor, float] | None = None,
                          sampled: bool = False) -> Tensor:
    """``token_divergence`` against a sparse teacher: its top-k logits ``values`` (..., k) at vocabulary ids
    ``indices`` (..., k) and the log-sum-exp of all its logits at T, ``lse`` (...). The divergence is exact on the
    k stored tokens plus one bucket for the rest (module docstring); with k = V it is ``token_divergence``.
    ``sampled``: ``values`` are the log-weights of sampled targets at T (``lse`` unused; module docstring).
    ``ce`` = (targets (...), alpha): (2,) [divergence, cross-entropy of the raw logits], as there."""
    s, weights = _flat(student_logits, mask, T, chunk)
    k = values.shape[-1]
    vals, idx, lse_t = values.reshape(-1, k), indices.reshape(-1, k).long(), lse.reshape(-1)  # (N, k) (N,)
    target = ce[0].reshape(-1).to(s.device) if ce is not None else None  # (N,)
    step = _sparse_step(divergence(name, beta, skew), vals, idx, None if sampled else lse_t, T, target)
    return chunked(s, weights, step, chunk, ce)


def _buckets(log_top: Tensor) -> Tensor:
    """(n, k) log-probs of the stored tokens -> (n, k + 1) with the rest's bucket last."""
    rest = (1.0 - log_top.exp().sum(dim=-1, keepdim=True)).clamp(min=_TINY)  # (n, 1)
    return torch.cat([log_top, rest.log()], dim=1)


def _sparse_step(fn: Divergence, vals: Tensor, idx: Tensor, lse_t: Tensor | None, T: float,
                 target: Tensor | None) -> Step:
    """The chunk step of ``token_divergence_topk`` (a ``token_kd.Step``): the divergence over the buckets, the
    optional cross-entropy against ``target`` (N,), and their gradient written out (module docstring).
    ``lse_t`` None: ``vals`` are already the teacher's log-probabilities (sampled targets)."""
    def step(s_c: Tensor, rows: slice, w: Tensor, coef: tuple[float, float], out: Tensor | None):
        i = idx[rows]  # (n, k)
        x = s_c / T if T != 1.0 else s_c  # (n, V)
        lse = torch.logsumexp(x, dim=-1, keepdim=True)  # (n, 1)
        log_top = x.gather(1, i) - lse  # (n, k)
        v = vals[rows].float()  # (n, k)
        # sampled weights are renormalised: stored in fp16 they sum to 1 only to ~1e-3
        teacher = _buckets(v.log_softmax(-1) if lse_t is None else v / T - lse_t[rows, None].float())  # (n, k + 1)
        with torch.enable_grad():
            b = _buckets(log_top).requires_grad_(out is not None and coef[0] != 0.0)  # (n, k + 1)
            div = (fn(b, teacher) * w).sum()
            g = torch.autograd.grad(coef[0] * div, b)[0] if b.requires_grad else None  # (n, k + 1)
        ext, a = div.new_zeros(()), None
        if target is not None:
            tgt = target[rows, None]  # (n, 1)
            valid = (tgt != IGNORE).float()
            safe = tgt.clamp(min=0)
            lse1 = lse if T == 1.0 else torch.logsumexp(s_c, dim=-1, keepdim=True)  # (n, 1), raw logits
            ext = ((lse1 - s_c.gather(1, safe)) * valid)[:, 0].mul(w).sum()
            a = coef[1] * w[:, None] * valid  # (n, 1): each row's cross-entropy gradient weight
            if out is not None:
                _gradient(out, x, lse, i, b.detach(), g, T, (a, safe, s_c, lse1))
        elif out is not None:
            _gradient(out, x, lse, i, b.detach(), g, T, None)
        return div.detach(), ext
    return step


def _gradient(out: Tensor, x: Tensor, lse: Tensor, i: Tensor, b: Tensor, g: Tensor | None, T: float,
              ce: tuple[Tensor, Tensor, Tensor, Tensor] | None) -> None:
    """Fill ``out`` (n, V) with the gradient wrt the raw logits: buckets ``b`` (n, k + 1) with upstream ``g`` (None:
    no divergence gradient), student logits at T ``x`` (n, V) and their log-sum-exp ``lse`` (n, 1), stored ids
    ``i`` (n, k); ``ce`` = (row weights a (n, 1), targets (n, 1), raw logits (n, V), their lse (n, 1))."""
    if g is None:
        rest, top = torch.zeros_like(lse), torch.zeros_like(b[:, :-1])  # (n, 1) (n, k)
    else:
        total = g.sum(dim=-1, keepdim=True)  # (n, 1)
        h = g / b.exp()  # (n, k + 1): g_c / Q_c
        rest, top = (h[:, -1:] - total) / T, (h[:, :-1] - total) / T
    shared = ce is not None and T == 1.0  # the cross-entropy's softmax is q itself
    if shared:
        rest, top = rest + ce[0], top + ce[0]
    torch.sub(x, lse, out=out).exp_().mul_(rest)  # q_v * coefficient of the rest's bucket (or + a)
    out.scatter_(1, i, b[:, :-1].exp() * top)  # the stored tokens' own coefficients
    if ce is None:
        return
    a, safe, s_raw, lse1 = ce
    if not shared:
        out.add_(torch.sub(s_raw, lse1).exp_().mul_(a))  # a * softmax(s), raw logits
    out.scatter_add_(1, safe, -a)  # a * (softmax(s) - one-hot(target))
