"""Kim et al. 2018, "Paraphrasing Complex Network: Network Compression via Factor Transfer" (NeurIPS).

A paraphraser, a small convolutional autoencoder on the teacher feature, compresses it to "factors" with
``rate*C_t`` channels (rate 0.5); it is trained first, alone, to reconstruct the teacher feature with the mean
absolute error (the authors' ``train_Paraphraser.py``: ``nn.L1Loss``; RepDistiller's init stage uses MSE, whose
gradient grows with the teacher feature's scale and made this stage diverge at lr 0.05 on MNIST-1D and MNIST pairs,
docs/BENCHMARKS.md issue 13), then frozen. A translator (the same encoder shape with BatchNorm) maps the student
feature to factors of that shape and trains with the student. The loss is the L1 distance between the L2-normalised
flattened factors, ``mean |F_s / ||F_s|| - F_t / ||F_t|| |``, summed over layer pairs and weighted by ``beta`` 500,
the authors' value for this formula (github.com/Jangho-Kim/Factor-Transfer-pytorch ``train_student.py``: ``--beta``
default 500 on line 35, ``nn.L1Loss`` of ``utils.FT`` = ``F.normalize(x.view(B, -1))`` on lines 108 and 177).
RepDistiller's ``-b 200`` (``scripts/run_cifar_distill.sh``) was tuned for its own ``FactorTransfer`` loss
(``distiller_zoo/FT.py``), which compares ``normalize(F.pow(2).mean(1))``, a channel-pooled squared map of the
factors, a different formula. Convs are 3x3 with LeakyReLU(0.1) (Linear layers for vector features); the
paraphraser's last decoder layer is linear so features of either sign can be reconstructed. The paraphrasers'
parameters are trainable after ``setup`` and during :meth:`FT.pretrain_loss`; the first main-stage ``forward`` turns
their ``requires_grad`` off (they then get no gradient and no optimiser update).

``pretrain_epochs`` (default 30, RepDistiller's init stage) asks the engine to optimise
:meth:`FT.pretrain_loss` (the reconstruction) alone for that many epochs before the main stage; with 0 the
paraphraser stays at its random initialisation, a random projection of the teacher feature.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.connectors import (
    check_pretrain_epochs,
    check_setup,
    feature_needs,
    layer_pairs,
    paired_features,
    probed_shapes,
    spatial_adapter,
)
from distill.errors import DistillError
from distill.methods.base import METHODS, Method
from distill.types import Batch, LossOutput, ModelOutput, SetupContext, StepContext


def factor_loss(student_factor: Tensor, teacher_factor: Tensor) -> Tensor:
    """(B, K, *S) factors -> scalar: mean absolute difference of the per-sample L2-normalised flattened
    factors, in fp32."""
    f_s = F.normalize(student_factor.float().flatten(1), dim=1)  # (B, K * N)
    f_t = F.normalize(teacher_factor.float().flatten(1), dim=1)  # (B, K * N)
    return (f_s - f_t).abs().mean()


def _stack(rank: int, widths: Sequence[int], *, bn: bool, last_act: bool = True) -> nn.Sequential:
    """widths[0] -> ... -> widths[-1]: 3x3 conv (or Linear for rank 0) [+ BN] + LeakyReLU(0.1) per step."""
    layers: list[nn.Module] = []
    steps = list(zip(widths[:-1], widths[1:]))
    for i, (c_in, c_out) in enumerate(steps):
        if rank == 0:
            layers.append(nn.Linear(c_in, c_out))
        else:
            layers.append((nn.Conv1d if rank == 1 else nn.Conv2d)(c_in, c_out, kernel_size=3, padding=1))
        if i < len(steps) - 1 or last_act:
            if bn:
                layers.append(nn.BatchNorm2d(c_out) if rank == 2 else nn.BatchNorm1d(c_out))
            layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """Autoencoder on a teacher feature (B, Ct, *S): ``encode`` gives the factor (B, K, *S)."""

    def __init__(self, teacher_shape: Sequence[int], factors: int) -> None:
        super().__init__()
        rank, c = len(teacher_shape) - 2, teacher_shape[1]
        self.encoder = _stack(rank, [c, c, factors, factors], bn=False)
        self.decoder = _stack(rank, [factors, factors, c, c], bn=False, last_act=False)

    def encode(self, x: Tensor) -> Tensor:
        """(B, Ct, *S) -> factor (B, K, *S)."""
        return self.encoder(x)

    def forward(self, x: Tensor) -> Tensor:
        """(B, Ct, *S) -> reconstruction (B, Ct, *S)."""
        return self.decoder(self.encoder(x))


class Translator(nn.Module):
    """Maps a student feature (B, Cs, *Ss) to factors (B, K, *St) at the teacher's positions."""

    def __init__(self, student_shape: Sequence[int], teacher_shape: Sequence[int], factors: int) -> None:
        super().__init__()
        c = student_shape[1]
        self.adapt = spatial_adapter(student_shape, teacher_shape)
        self.encoder = _stack(len(teacher_shape) - 2, [c, c, factors, factors], bn=True)

    def forward(self, x: Tensor) -> Tensor:
        """(B, Cs, *Ss) -> factor (B, K, *St)."""
        return self.encoder(self.adapt(x))


@METHODS.register("ft")
class FT(Method):
    """Factor transfer: ``beta * sum_pairs factor_loss(translator(student), paraphraser.encode(teacher))``.

    The default, ``auto``, taps the last stage's map (the paper's position; RepDistiller's ``feat[-2]``:
    ``layer3`` of a CIFAR ResNet; ``distill.stages``); vector taps such as ``fc:input`` work too.
    """

    auto_layers = "last"

    def __init__(self, student_layers: list[str] | str = "auto", teacher_layers: list[str] | str = "auto",
                 beta: float = 500.0, rate: float = 0.5, pretrain_epochs: int = 30) -> None:
        super().__init__()
        if not 0 < rate <= 1:
            raise DistillError(f"ft: rate (factor channels / teacher channels) must be in (0, 1], got {rate}")
        self.pairs = layer_pairs("ft", student_layers, teacher_layers)
        self.needs = feature_needs(self.pairs)
        self.beta, self.rate = beta, rate
        self.pretrain_epochs = check_pretrain_epochs("ft", pretrain_epochs)
        self.paraphrasers = nn.ModuleList()
        self.translators = nn.ModuleList()

    def setup(self, ctx: SetupContext) -> None:
        """A paraphraser (teacher side) and a translator (student side) per pair."""
        shapes = probed_shapes("ft", ctx, self.pairs)
        factors = [max(1, round(t[1] * self.rate)) for _, t in shapes]
        self.paraphrasers = nn.ModuleList(Paraphraser(t, k) for (_, t), k in zip(shapes, factors))
        self.translators = nn.ModuleList(Translator(s, t, k) for (s, t), k in zip(shapes, factors))

    def forward(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        check_setup("ft", self.translators, self.pairs)
        # The paraphrasers are frozen once the main stage runs: no gradient, not in the trainable set.
        self.paraphrasers.requires_grad_(False)
        terms = []
        for para, trans, (fs, ft) in zip(self.paraphrasers, self.translators, paired_features("ft", s, t, self.pairs)):
            with torch.no_grad():
                factor_t = para.encode(ft)
            terms.append(factor_loss(trans(fs), factor_t))
        loss = self.beta * torch.stack(terms).sum()
        return LossOutput(loss, {"ft": loss})

    def pretrain_loss(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        """Stage 1: the paraphrasers' reconstruction error (mean absolute, as the authors') of the teacher
        features, unweighted."""
        check_setup("ft", self.paraphrasers, self.pairs)
        self.paraphrasers.requires_grad_(True)
        feats = paired_features("ft", s, t, self.pairs)
        loss = torch.stack([F.l1_loss(para(ft).float(), ft.float())
                            for para, (_, ft) in zip(self.paraphrasers, feats)]).sum()
        return LossOutput(loss, {"ft_pretrain": loss})
