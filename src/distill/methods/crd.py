"""Tian, Krishnan & Isola, ICLR 2020, "Contrastive Representation Distillation" (CRD).

Student and teacher embeddings (linear heads to ``feat_dim`` + L2 norm) are contrasted against momentum
memory banks of every training sample's embedding. For a sample ``i`` the positive is the other network's
bank entry ``i``; ``nce_k`` negatives are bank entries of other samples. Each score
``exp(<v, m_j> / T) / Z`` is treated as an unnormalised density and fed to the NCE binary classifier against
the uniform noise distribution ``P_n = 1/N``::

    h(v, m) = s / (s + K/N)
    L = -1/B sum_i [ log h(v_i, m_pos) + sum_{j=1..K} log(1 - h(v_i, m_j)) ]

with ``Z = N * mean(exp(<v, m> / T))`` fixed on the first batch (as in the paper's code). The loss is
applied twice: the student embedding against the teacher bank (trains the student and its head) and the
teacher embedding against the student bank (trains only the teacher-side head; teacher features are
detached). After the forward each bank row of the batch moves towards the new embedding with momentum
``nce_m`` and is renormalised to unit length.

Under torchrun (data-parallel) the global batch is what counts, as in one process: every rank draws the
negatives of the whole global batch from its RNG (identical on every rank) and keeps its own rows, ``Z`` is
estimated from the whole first global batch, and the embeddings and indices of every rank are all-gathered
before the momentum update, so the banks stay identical on every rank and match a single process's (up to
float summation order).

Negatives are drawn uniformly with replacement over the dataset, excluding the positive index. The
reference code ("exact" mode) draws them from samples of *other classes* instead, and its "relax" mode
also swaps the positive for a random same-class sample; both need a label for every sample, which a
transfer set does not have, so only this label-free variant is implemented.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.connectors import auto_needs, is_auto, require_resolved
from distill.engine import dist
from distill.errors import DistillError
from distill.methods.base import METHODS, Method
from distill.types import Batch, LossOutput, ModelOutput, Needs, SetupContext, StepContext


def sample_contrast_indices(pos: Tensor, num_samples: int, k: int) -> Tensor:
    """(B,) positive indices -> (B, 1 + k) indices: column 0 the positive, then ``k`` indices drawn
    uniformly with replacement from ``[0, num_samples)`` without the row's positive.

    Drawing from ``num_samples - 1`` values and shifting those ``>= pos`` up by one skips the positive
    without rejection sampling. Uses the global torch RNG, so ``torch.manual_seed`` makes it reproducible.
    """
    neg = torch.randint(0, num_samples - 1, (pos.shape[0], k), device=pos.device)  # (B, k)
    neg = neg + (neg >= pos[:, None]).long()  # (B, k), never equal to pos
    return torch.cat([pos[:, None], neg], dim=1)  # (B, 1 + k)


def nce_loss(logits: Tensor, num_samples: int) -> Tensor:
    """NCE loss of CRD from (B, 1 + K) log-scores ``<v, m> / T - log Z`` (column 0 the positive) -> scalar.

    ``h = s / (s + K/N)`` is a sigmoid of ``log s - log(K/N)``, so ``log h = -softplus(log(K/N) - log s)``
    and ``log(1 - h) = -softplus(log s - log(K/N))``: the same loss as the paper's ratio form, without the
    ``eps`` it needs against ``log 0``. Summed over the 1 + K scores, averaged over the batch.
    """
    k = logits.shape[1] - 1
    log_noise = math.log(k / num_samples)  # log(K * P_n)
    logits = logits.float()
    pos = F.softplus(log_noise - logits[:, 0])  # (B,)  -log h(positive)
    neg = F.softplus(logits[:, 1:] - log_noise)  # (B, K)  -log(1 - h(negative))
    return (pos.sum() + neg.sum()) / logits.shape[0]


@torch.no_grad()
def momentum_update(memory: Tensor, index: Tensor, value: Tensor, momentum: float) -> None:
    """In place: ``memory[index] <- normalize(momentum * memory[index] + (1 - momentum) * value)``.

    memory: (N, D); index: (B,); value: (B, D). Rows stay on the unit sphere, like the embeddings.
    """
    rows = memory.index_select(0, index) * momentum + value.detach().float() * (1.0 - momentum)  # (B, D)
    memory.index_copy_(0, index, F.normalize(rows, dim=1))


def contrast_logits(anchor: Tensor, memory: Tensor, index: Tensor, T: float) -> Tensor:
    """(B, D) anchors against their (B, 1 + K) bank rows ``memory[index]`` -> (B, 1 + K) ``<v, m> / T``."""
    # Score against the whole bank, then pick the sampled columns: one (B, D) x (D, N) matmul is far cheaper
    # than gathering a (B, 1 + K, D) copy of the bank (K is typically a large fraction of N).
    # fp32 even under autocast: exp(1 / 0.07) * N overflows fp16 when Z is formed.
    with torch.autocast(anchor.device.type, enabled=False):
        # the clone: autograd keeps the bank for the anchor's gradient, and the bank is updated in place later
        scores = anchor.float() @ memory.float().clone().t()  # (B, N)
        return scores.gather(1, index) / T  # (B, 1 + K)


class Embed(nn.Module):
    """Flatten, project linearly to ``dim`` and L2-normalise: (B, ...) -> (B, dim)."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)  # (B, dim)


@METHODS.register("crd")
class CRD(Method):
    """Contrastive Representation Distillation (Tian et al., ICLR 2020); returns only ``beta * L_crd``.

    Defaults are the paper's (``feat_dim=128``, ``nce_t=0.07``, ``nce_m=0.5``, ``beta=0.8``) except
    ``nce_k``: 4096 negatives instead of the paper's 16384, a quarter of the per-step cost; it is clamped
    to ``num_samples - 1``. Combine with ``ce`` (the paper's CRD row) or ``kd`` (CRD+KD).
    One tap per network, by default (``auto``) the penultimate embedding (``fc:input`` of a zoo model;
    ``distill.stages``); 4-D maps are flattened.
    The memory banks (``num_samples x feat_dim`` each) and the normalisation constants ``Z`` are
    buffers, so they are checkpointed; ``batch.index`` must index the training set seen by ``setup``.
    """

    auto_layers = "embedding"

    def __init__(self, student_layers: list[str] | str = "auto", teacher_layers: list[str] | str = "auto",
                 feat_dim: int = 128, nce_k: int = 4096, nce_t: float = 0.07, nce_m: float = 0.5,
                 beta: float = 0.8) -> None:
        super().__init__()
        auto = is_auto("crd", student_layers, teacher_layers)
        if not auto and (len(student_layers) != 1 or len(teacher_layers) != 1):
            raise DistillError(f"crd: student_layers and teacher_layers take one layer each, got "
                               f"{student_layers!r} and {teacher_layers!r}")
        if feat_dim < 1 or nce_k < 1 or nce_t <= 0 or not 0.0 <= nce_m < 1.0:
            raise DistillError("crd: need feat_dim >= 1, nce_k >= 1, nce_t > 0 and 0 <= nce_m < 1")
        student_layers, teacher_layers = (['auto'], ['auto']) if auto else (student_layers, teacher_layers)
        self.s_layer, self.t_layer = student_layers[0], teacher_layers[0]
        self.feat_dim, self.nce_k, self.nce_t, self.nce_m, self.beta = feat_dim, nce_k, nce_t, nce_m, beta
        self.needs = auto_needs() if auto else Needs(teacher=True, student_taps=(self.s_layer,),
                                                     teacher_taps=(self.t_layer,), live_teacher=True)
        self.embed_s: Embed | None = None
        self.embed_t: Embed | None = None
        # Placeholders so the state-dict keys exist before setup(); setup() gives them their real size.
        self.register_buffer("memory_s", torch.zeros(0, feat_dim))
        self.register_buffer("memory_t", torch.zeros(0, feat_dim))
        self.register_buffer("nce_z", torch.zeros(2))  # [Z_student, Z_teacher]; 0 = not estimated yet
        self._index_checked = False
        self._z_checked = False  # Z estimated (or restored) in this process: no more estimates to gather

    def setup(self, ctx: SetupContext) -> None:
        """Build the embedding heads from the probed tap shapes and the two memory banks."""
        require_resolved("crd", [] if self.s_layer == "auto" else [self.s_layer])
        s_dim = _flat_dim(ctx.student_shapes, self.s_layer, "student")
        t_dim = _flat_dim(ctx.teacher_shapes, self.t_layer, "teacher")
        if ctx.num_samples < 2:
            raise DistillError(f"crd: needs at least 2 training samples for negatives, got {ctx.num_samples}")
        self.embed_s, self.embed_t = Embed(s_dim, self.feat_dim), Embed(t_dim, self.feat_dim)
        # The reference initialisation: uniform in +-1/sqrt(D/3) (unit variance per row, not yet normalised).
        std = 1.0 / math.sqrt(self.feat_dim / 3)
        self.memory_s = torch.rand(ctx.num_samples, self.feat_dim) * 2 * std - std  # (N, D)
        self.memory_t = torch.rand(ctx.num_samples, self.feat_dim) * 2 * std - std  # (N, D)
        self.nce_z = torch.zeros(2)
        self._index_checked = False
        self._z_checked = False

    def forward(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        assert t is not None, "crd needs teacher outputs"
        if self.embed_s is None or self.embed_t is None:
            raise DistillError("crd: setup() must run before the first forward (it builds the memory banks)")
        n = self.memory_s.shape[0]
        index = batch.index.to(self.memory_s.device).long()  # (B,)
        self._check_index(index, n)
        v_s = self.embed_s(_feat(s, self.s_layer, "student"))  # (B, D)
        v_t = self.embed_t(_feat(t, self.t_layer, "teacher").detach())  # (B, D)
        # Data-parallel: draw for the global batch (G rows, the same draws on every rank) and keep our rows.
        sizes = dist.gather_sizes(index.shape[0], index.device)  # per rank (an epoch's last batch may be uneven)
        index_all = dist.gather_cat(index, sizes)  # (G,) the global batch, rank chunks in rank order
        lo = sum(sizes[:dist.rank()])
        idx = sample_contrast_indices(index_all, n, min(self.nce_k, n - 1))[lo:lo + index.shape[0]]  # (B, 1 + K)
        logit_s = contrast_logits(v_s, self.memory_t, idx, self.nce_t)  # student anchor, teacher bank
        logit_t = contrast_logits(v_t, self.memory_s, idx, self.nce_t)  # teacher anchor, student bank
        log_z = self._log_z(torch.stack([logit_s.detach(), logit_t.detach()]), n)  # (2,)
        loss = nce_loss(logit_s - log_z[0], n) + nce_loss(logit_t - log_z[1], n)
        if self.training:  # banks move after scoring: this batch saw the previous epoch's entries
            # every rank applies the whole global batch's update, so the banks stay identical across ranks
            v_all = dist.gather_cat(torch.cat([v_s.float(), v_t.float()], dim=1), sizes)  # (G, 2D)
            momentum_update(self.memory_s, index_all, v_all[:, :self.feat_dim], self.nce_m)
            momentum_update(self.memory_t, index_all, v_all[:, self.feat_dim:], self.nce_m)
        crd = self.beta * loss
        return LossOutput(crd, {"crd": crd})

    def _log_z(self, logits: Tensor, n: int) -> Tensor:
        """log Z per direction; Z = N * mean(exp(logits)) from the first batch, then kept (no host sync).

        logits: (2, B, 1 + K) detached. Data-parallel: the estimate is that of the whole global batch (the
        ranks' log-sum-exps are gathered once per process), so every rank holds the same Z.
        """
        if not self._z_checked:
            lse = dist.gather_cat(torch.logsumexp(logits.flatten(1), dim=1)[None])  # (world, 2)
            count = int(dist.sum_across_ranks(torch.tensor(logits[0].numel(), device=logits.device)))  # scores
            estimate = (torch.logsumexp(lse, dim=0) - math.log(count) + math.log(n)).exp()  # (2,)
            self.nce_z.copy_(torch.where(self.nce_z > 0, self.nce_z, estimate))  # a restored Z is kept
            self._z_checked = True
        return self.nce_z.log()

    def _check_index(self, index: Tensor, n: int) -> None:
        """Once per setup: dataset indices must fall inside the memory banks (one host sync)."""
        if self._index_checked:
            return
        lo, hi = int(index.min()), int(index.max())
        if lo < 0 or hi >= n:
            raise DistillError(f"crd: batch.index spans [{lo}, {hi}] but the memory banks hold {n} samples "
                               "(setup's num_samples); the indices must be positions in the training set")
        self._index_checked = True


def _flat_dim(shapes: dict[str, tuple[int, ...]], layer: str, role: str) -> int:
    if layer not in shapes:
        raise DistillError(f"crd: no probed shape for {role} layer {layer!r} (probed: {sorted(shapes)})")
    return math.prod(shapes[layer][1:])


def _feat(out: ModelOutput, layer: str, role: str) -> Tensor:
    if layer not in out.feats:
        raise DistillError(f"crd: the {role} output has no feature {layer!r} (got {sorted(out.feats)})")
    return out.feats[layer]
