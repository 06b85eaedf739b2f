"""Lee, Kim & Song, ECCV 2018, "Self-supervised Knowledge Distillation Using Singular Value Decomposition" (KD-SVD).

Like FSP, the knowledge is how information flows between layers, but each feature map is first compressed by
a truncated SVD. For a layer's map reshaped to X (B, HW, C) (a (B, D) vector is one row, HW = 1):

1. V = top right singular vectors of X (C, k) per sample: k for the teacher, k + 3 candidates for the student.
   A singular vector's sign is the solver's arbitrary choice; here each is flipped so that its entry of
   largest absolute value is positive (``canonical_signs``), so the loss does not depend on it.
2. The student's order may differ: for each teacher vector pick the student candidate with the largest
   |cosine| and flip it to a positive cosine.
3. Scale both by the teacher's top-k singular values, L2-normalised over k.
4. Between consecutive tapped layers l-1, l, a radial-basis "correlation" of every channel pair, per vector:
   R[c, c', n] = exp(-(V_l[c, n] - V_{l-1}[c', n])^2 / 8)            (C_l, C_{l-1}, k)
5. loss = beta * sum over consecutive pairs of ||R_s - R_t||^2, summed over entries, averaged over the batch.

Defaults follow the authors' code and its PyTorch ports (RepDistiller, mdistiller): k=1, beta=1, the
network's stage outputs as sensing points (``layer1..3`` of the zoo's CIFAR ResNets; ``block1..3`` on WRNs).

Departures from the reference, stated plainly:
- The sign convention of step 1 is ours. The reference (RepDistiller ``distiller_zoo/KDSVD.py`` lines 23-25
  and 69-75, a port of the authors' TensorFlow code) aligns the student to the teacher but keeps the teacher's
  solver-chosen signs; R depends on the relative sign of consecutive layers' vectors, so its loss changes
  when the solver flips a teacher vector.
- The singular vectors come from a symmetric eigen-decomposition of the smaller Gram matrix (X^T X, or X X^T
  then V = normalise(X^T U)), with a hand-written backward that keeps only the top-k eigenvector terms and
  drops near-degenerate eigenvalue pairs. Full-SVD autograd divides by every singular-value gap and returns
  NaN on repeated (e.g. dead-channel zero) values; the reference code zeroes NaNs after the fact instead.
- The reference needs equal student/teacher channel counts at every tap. Here ``setup`` adds a bias-free
  linear channel map on the student side where they differ (``connector=True``), FitNets-style.
- It is trained jointly with the task loss (a recipe adds ce/kd), as the authors' released code does ("multi-task
  learning") and the PyTorch ports do; there is no separate initialisation stage.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.connectors import layer_lists
from distill.errors import DistillError
from distill.methods.base import METHODS, Method
from distill.methods.rkd import paired_features, relation_needs
from distill.types import Batch, LossOutput, ModelOutput, SetupContext, StepContext

CANDIDATES = 3  # extra student singular vectors to align from, as in the authors' code


class _TopEigh(torch.autograd.Function):
    """Top-k eigenpairs of symmetric (B, N, N) matrices, descending, with a backward that only uses the
    top-k eigenvectors' first-order perturbation terms and skips (near-)degenerate gaps."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, gram: Tensor, k: int) -> tuple[Tensor, Tensor]:
        lam, vec = robust_eigh(gram)  # (B, N) ascending, (B, N, N)
        lam_k, vec_k = lam[:, -k:].flip(-1), vec[:, :, -k:].flip(-1)  # (B, k), (B, N, k)
        ctx.save_for_backward(lam, vec, lam_k, vec_k)
        return lam_k, vec_k

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, g_lam: Tensor, g_vec: Tensor) -> tuple[Tensor, None]:
        lam, vec, lam_k, vec_k = ctx.saved_tensors
        grad = vec_k @ (g_lam[:, :, None] * vec_k.transpose(1, 2))  # (B, N, N): sum_n g_n v_n v_n^T
        # dv_n = sum_{j != n} v_j (v_j^T dG v_n) / (lam_n - lam_j): project, divide where the gap is usable.
        proj = vec.transpose(1, 2) @ g_vec  # (B, N, k): v_j^T g_n
        gap = lam_k[:, None, :] - lam[:, :, None]  # (B, N, k): lam_n - lam_j
        tol = 1e-5 * lam.abs().amax(dim=1)[:, None, None] + 1e-12  # (B, 1, 1)
        usable = gap.abs() > tol  # False for j = n itself and for degenerate pairs
        coef = torch.where(usable, proj / torch.where(usable, gap, torch.ones_like(gap)), torch.zeros_like(gap))
        grad = grad + vec @ coef @ vec_k.transpose(1, 2)  # (B, N, N)
        return (grad + grad.transpose(1, 2)) / 2, None


def robust_eigh(gram: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.linalg.eigh`` of symmetric (B, N, N) matrices that does not stop training when the fp32 solver
    fails on ill-conditioned Gram matrices with repeated (near-)zero eigenvalues, met on MNIST-1D: it raises
    (no convergence), or returns NaN without raising (a rank-6 Gram of a (20, 32) map with dead rows, whose
    tiny eigenvalues are subnormal floats). Either way it retries in fp64, then with a jitter of 1e-6 of the
    mean diagonal. Non-finite input gives NaN, which the engine reports as a non-finite loss."""
    if not torch.isfinite(gram).all():
        return torch.full_like(gram[..., 0], float("nan")), torch.full_like(gram, float("nan"))
    got = _eigh_or_none(gram)  # the common case, unchanged (runs stay bit-identical)
    if got is not None:
        return got
    g = gram.double()
    got = _eigh_or_none(g)
    if got is None:
        eye = torch.eye(g.shape[-1], dtype=g.dtype, device=g.device)
        jitter = 1e-6 * g.diagonal(dim1=-2, dim2=-1).mean(-1).abs().clamp_min(1e-12)  # (B,)
        got = torch.linalg.eigh(g + jitter[:, None, None] * eye)
    lam, vec = got
    return lam.to(gram.dtype), vec.to(gram.dtype)


def _eigh_or_none(gram: Tensor) -> tuple[Tensor, Tensor] | None:
    """``torch.linalg.eigh``, or None when the solver raises or returns a non-finite value."""
    try:
        lam, vec = torch.linalg.eigh(gram)
    except torch.linalg.LinAlgError:
        return None
    if not (torch.isfinite(lam).all() and torch.isfinite(vec).all()):
        return None
    return lam, vec


def as_matrix(f: Tensor) -> Tensor:
    """(B, C, *S) maps -> (B, prod(S), C), channels last; (B, D) vectors -> (B, 1, D)."""
    if f.dim() == 2:
        return f[:, None, :]
    return f.flatten(2).transpose(1, 2)


def top_right_singular(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """x (B, M, C) -> (V (B, C, k') unit right singular vectors, squared singular values (B, k')), descending,
    k' = min(k, M, C), signs canonical (``canonical_signs``). Eigen-decomposes the smaller of X^T X and
    X X^T, in fp32 even under autocast."""
    b, m, c = x.shape
    k = min(k, m, c)
    with torch.autocast(x.device.type, enabled=False):
        x = x.float()
        if m < c:
            lam, u = _TopEigh.apply(x @ x.transpose(1, 2), k)  # (B, k), (B, M, k)
            v = F.normalize(x.transpose(1, 2) @ u, p=2, dim=1)  # (B, C, k): X^T u_n = s_n v_n
        else:
            lam, v = _TopEigh.apply(x.transpose(1, 2) @ x, k)  # (B, k), (B, C, k)
    return canonical_signs(v), lam


def canonical_signs(v: Tensor) -> Tensor:
    """(B, C, k) -> (B, C, k): each vector flipped so that its entry of largest |value| is positive.

    Removes the solver's arbitrary sign; the choice carries no gradient (a zero vector is left as is).
    """
    idx = v.detach().abs().argmax(dim=1, keepdim=True)  # (B, 1, k)
    sign = v.detach().gather(1, idx).sign()  # (B, 1, k)
    return v * torch.where(sign == 0, torch.ones_like(sign), sign)


def align_signs(v_s: Tensor, v_t: Tensor) -> Tensor:
    """For each teacher vector pick the student candidate of largest |cosine|, sign-flipped to agree.

    v_s: (B, C, ks) candidates; v_t: (B, C, kt) -> (B, C, kt). The choice carries no gradient.
    """
    cos = v_s.detach().transpose(1, 2) @ v_t  # (B, ks, kt)
    idx = cos.abs().argmax(dim=1)  # (B, kt)
    sign = cos.gather(1, idx[:, None, :]).sign()  # (B, 1, kt)
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    picked = v_s.gather(2, idx[:, None, :].expand(-1, v_s.shape[1], -1))  # (B, C, kt)
    return picked * sign


def compress(x_s: Tensor, x_t: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Student (B, Ms, C), teacher (B, Mt, C) matrices -> aligned, singular-value-scaled (B, C, k') each."""
    with torch.no_grad():
        v_t, lam_t = top_right_singular(x_t, k)  # (B, C, kt), (B, kt)
        weight = F.normalize(lam_t.clamp(min=0).sqrt(), p=2, dim=1)[:, None, :]  # (B, 1, kt)
    v_s, _ = top_right_singular(x_s, k + CANDIDATES)  # (B, C, ks)
    return align_signs(v_s, v_t) * weight, v_t * weight


def rbf_correlation(v: Tensor, v_prev: Tensor) -> Tensor:
    """(B, C, k), (B, C', k) -> (B, C, C', k): exp(-(v[c, n] - v_prev[c', n])^2 / 8)."""
    return torch.exp(-(v[:, :, None, :] - v_prev[:, None, :, :]).pow(2) / 8.0)


def kdsvd_loss(student: list[Tensor], teacher: list[Tensor], k: int = 1) -> Tensor:
    """Student / teacher (B, M, C) matrices per tapped layer (channels equal pairwise) -> scalar.

    Sum over consecutive layer pairs of the squared RBF-correlation differences, averaged over the batch.
    """
    comp = [compress(xs, xt, k) for xs, xt in zip(student, teacher, strict=True)]
    total = student[0].new_zeros(())
    for (s_prev, t_prev), (s_cur, t_cur) in zip(comp[:-1], comp[1:]):
        n = min(s_prev.shape[2], s_cur.shape[2])  # a rank-limited layer may have fewer than k vectors
        diff = rbf_correlation(s_cur[..., :n], s_prev[..., :n]) - rbf_correlation(t_cur[..., :n], t_prev[..., :n])
        total = total + diff.pow(2).sum() / student[0].shape[0]
    return total


@METHODS.register("kdsvd")
class KDSVD(Method):
    """KD-SVD (Lee et al., ECCV 2018); returns only ``kdsvd`` = beta * loss over >= 2 ordered taps.

    ``student_layers`` / ``teacher_layers`` are paired sensing points ordered shallow to deep, each a
    (B, C, *S) map or a (B, D) vector; the default, ``auto``, is every stage's output (RepDistiller's
    ``feat[1:-1]``: ``layer1..3`` of a CIFAR ResNet; ``distill.stages``). Cost: one batched eigen-decomposition
    of a min(HW, C)-sized Gram per tap and sample.
    """

    auto_layers = "stages"

    def __init__(self, beta: float = 1.0, k: int = 1, connector: bool = True,
                 student_layers: list[str] | str = "auto", teacher_layers: list[str] | str = "auto") -> None:
        super().__init__()
        if k < 1:
            raise DistillError("kdsvd: k must be >= 1")
        self.beta, self.k, self.use_connector = beta, k, connector
        self.needs = relation_needs("kdsvd", student_layers, teacher_layers, min_layers=2)
        self.s_layers, self.t_layers = layer_lists("kdsvd", student_layers, teacher_layers)
        self.connectors = nn.ModuleList()  # per tap: Linear(C_s, C_t) or Identity; built by setup()

    def setup(self, ctx: SetupContext) -> None:
        """Build a bias-free student-side channel map per tap whose channel counts differ."""
        mods: list[nn.Module] = []
        for ps, pt in zip(self.s_layers, self.t_layers, strict=True):
            c_s, c_t = _channels(ctx.student_shapes, ps, "student"), _channels(ctx.teacher_shapes, pt, "teacher")
            if c_s != c_t and not self.use_connector:
                raise DistillError(f"kdsvd: student layer {ps!r} has {c_s} channels, teacher layer {pt!r} {c_t}; "
                                   "set connector: true or tap layers of equal width")
            mods.append(nn.Linear(c_s, c_t, bias=False) if c_s != c_t else nn.Identity())
        self.connectors = nn.ModuleList(mods)

    def forward(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        pairs = [(as_matrix(fs), as_matrix(ft))
                 for fs, ft in paired_features("kdsvd", s, t, self.s_layers, self.t_layers)]  # (B, M, C) each
        if self.connectors:
            pairs = [(conn(xs), xt) for conn, (xs, xt) in zip(self.connectors, pairs, strict=True)]
        for (xs, xt), ps in zip(pairs, self.s_layers, strict=True):
            if xs.shape[2] != xt.shape[2]:
                raise DistillError(f"kdsvd: student layer {ps!r} has {xs.shape[2]} channels, the teacher's "
                                   f"{xt.shape[2]}; setup() must run first to build the connector")
        term = self.beta * kdsvd_loss([xs for xs, _ in pairs], [xt for _, xt in pairs], self.k)
        return LossOutput(term, {"kdsvd": term})


def _channels(shapes: dict[str, tuple[int, ...]], layer: str, role: str) -> int:
    """Channel count of a probed tap: dim 1 of a (B, C, *S) map or (B, D) vector."""
    if layer not in shapes:
        raise DistillError(f"kdsvd: no probed shape for {role} layer {layer!r} (probed: {sorted(shapes)})")
    if len(shapes[layer]) < 2:
        raise DistillError(f"kdsvd: {role} layer {layer!r} has shape {shapes[layer]}; need (B, C, ...)")
    return shapes[layer][1]
