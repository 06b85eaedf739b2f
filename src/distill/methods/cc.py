"""Peng et al., ICCV 2019, "Correlation Congruence for Knowledge Distillation" (CC).

Besides instance-level KD, the student matches the teacher's correlation between samples. With L2-normalised
embeddings the Gaussian RBF kernel becomes a function of the cosine, expanded to order P::

    k(x, y) = exp(-gamma ||x - y||^2) = exp(-2 gamma) exp(2 gamma <x, y>)
            ~ sum_{p=0}^{P} exp(-2 gamma) (2 gamma)^p / p! * <x, y>^p
    C = [k(f_i, f_j)]_{ij}  (B, B),   L_CC = 1 / B^2 * ||C_t - C_s||_F^2,   loss = beta * L_CC

Defaults: P=2, gamma=0.4 (the paper's), beta=5, calibrated to the reference code's term. That reference
(RepDistiller ``distiller_zoo/CC.py`` ``Correlation``, "the authors nicely shared the code", lines 14-17) is a
different formula, ``delta = |e_s - e_t|; loss = mean_i sum_d delta[i, d] * delta[i + 1, d]``, on 128-d linear
heads over both networks' penultimate features, weighted ``-b 0.02`` (``scripts/run_cifar_distill.sh``).
Measured on L2-normalised 128-d embeddings, B = 64, e_s = normalise(e_t + sigma * noise / sqrt(128)), the beta
that gives ``||d(beta * L_CC) / d e_s||`` the reference term's gradient norm at 0.02 is 4.1 (sigma 0.1), 4.2
(0.3), 4.7 (1), 5.6 (3), 6.4 (independent e_s); beta = 5 is within 1.3x of all (pinned by
``tests/test_method_reference_defaults.py``). At the former beta = 0.02 the term's gradient was ~1/250 of the
reference's. Not calibrated: RepDistiller's heads (``LinearEmbed``) are not L2-normalised, so its gradient also
grows with the embeddings' norm, which this kernel ignores. torchdistill's ``CCKDLoss`` (the same kernel on
unnormalised 128-d heads, but ``||C_s - C_t||_F / B^2``, not squared) at its weight 0.003
(``configs/sample/ilsvrc2012/cckd/resnet18_from_resnet50.yaml``) corresponds to beta ~ 0.0006-0.005 by the
same measurement, far below RepDistiller's. The paper's class-aware batch samplers are not part of this
method. Instance-level KD comes from the recipe: ``methods: [{name: kd}, {name: cc}]``.

When student and teacher embedding widths differ, ``setup`` builds a linear connector on the student side
(``connector=True``, as the brief and RepDistiller's embedding heads do). The correlation matrices are B x B,
so ``connector=False`` also works with different widths and uses the raw student embedding.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from distill.connectors import layer_lists
from distill.errors import DistillError
from distill.methods.base import METHODS, Method
from distill.methods.rkd import paired_features, relation_needs
from distill.types import Batch, LossOutput, ModelOutput, SetupContext, StepContext


def taylor_rbf_kernel(f: Tensor, gamma: float, order: int) -> Tensor:
    """(B, D) embeddings -> (B, B) order-``order`` Taylor expansion of the RBF kernel of their unit vectors."""
    x = F.normalize(f, p=2, dim=1)  # (B, D)
    cos = x @ x.t()  # (B, B)
    out = cos.new_zeros(cos.shape)
    for p in range(order + 1):
        out = out + (2.0 * gamma) ** p / math.factorial(p) * cos**p
    return math.exp(-2.0 * gamma) * out


def cc_loss(f_s: Tensor, f_t: Tensor, gamma: float = 0.4, order: int = 2) -> Tensor:
    """Mean squared difference of the correlation matrices: (B, Ds), (B, Dt) -> scalar."""
    diff = taylor_rbf_kernel(f_t, gamma, order) - taylor_rbf_kernel(f_s, gamma, order)  # (B, B)
    return (diff * diff).mean()


@METHODS.register("cc")
class CC(Method):
    """Correlation congruence (Peng et al., ICCV 2019); returns only ``cc`` = beta * sum of layer losses.

    ``beta`` = 5 matches the gradient of RepDistiller's CC term at its weight 0.02 (module docstring).

    Features are flattened to (B, -1): tap embeddings (default ``auto``: the penultimate vector, ``fc:input`` of
    a zoo model), not large feature maps, when a connector is built.
    """

    auto_layers = "embedding"

    def __init__(self, beta: float = 5.0, gamma: float = 0.4, order: int = 2, connector: bool = True,
                 student_layers: list[str] | str = "auto", teacher_layers: list[str] | str = "auto") -> None:
        super().__init__()
        if gamma <= 0 or order < 0:
            raise DistillError("cc: need gamma > 0 and order >= 0")
        self.beta, self.gamma, self.order, self.use_connector = beta, gamma, order, connector
        self.needs = relation_needs("cc", student_layers, teacher_layers)
        self.s_layers, self.t_layers = layer_lists("cc", student_layers, teacher_layers)
        self.connectors = nn.ModuleList()  # one per layer pair (Identity where widths match); built by setup()

    def setup(self, ctx: SetupContext) -> None:
        """Build a student-side ``Linear(D_s, D_t)`` per layer pair whose flattened widths differ."""
        mods: list[nn.Module] = []
        for ps, pt in zip(self.s_layers, self.t_layers, strict=True):
            d_s, d_t = _width(ctx.student_shapes, ps, "student"), _width(ctx.teacher_shapes, pt, "teacher")
            mods.append(nn.Linear(d_s, d_t) if self.use_connector and d_s != d_t else nn.Identity())
        self.connectors = nn.ModuleList(mods)

    def forward(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        pairs = [(fs.flatten(1), ft.flatten(1))
                 for fs, ft in paired_features("cc", s, t, self.s_layers, self.t_layers)]  # (B, Ds), (B, Dt)
        if not self.connectors:
            if self.use_connector and any(fs.shape[1] != ft.shape[1] for fs, ft in pairs):
                raise DistillError("cc: setup() must run before the first forward (it builds the connector)")
            connectors: list[nn.Module] = [nn.Identity()] * len(pairs)
        else:
            connectors = list(self.connectors)
        term = self.beta * sum(cc_loss(conn(fs), ft, self.gamma, self.order)
                               for conn, (fs, ft) in zip(connectors, pairs, strict=True))
        return LossOutput(term, {"cc": term})


def _width(shapes: dict[str, tuple[int, ...]], layer: str, role: str) -> int:
    """Flattened per-sample width of a probed tap."""
    if layer not in shapes:
        raise DistillError(f"cc: no probed shape for {role} layer {layer!r} (probed: {sorted(shapes)})")
    return math.prod(shapes[layer][1:])
