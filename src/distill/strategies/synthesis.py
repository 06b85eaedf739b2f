"""What a data-free step computes: the generator's losses against the frozen teacher (pure functions over
tensors), the gradient reversal that makes the student's loss the generator's adversarial term, and
``Synthesis``, the generator and student trained as one module in the engine's one loop.

Generator losses (each weighted by the recipe; a weight of 0 switches a term off):

- DAFL (Chen et al. 2019): ``one_hot`` = CE(t, argmax t), ``activation`` = -mean |f_t| of the teacher's
  penultimate features, ``entropy`` = sum_c p_c log10 p_c of the batch-mean teacher prediction p (its minimum,
  a uniform class histogram; DAFL uses log10 and weights it 5 on MNIST).
- DeepInversion (Yin et al. 2020): ``bn`` = sum over the teacher's BatchNorm layers of
  ||mu_batch - mu_running||_2 + ||var_batch - var_running||_2 of each layer's input, the first layer's term
  times ``bn_first`` (10 in the reference code); ``smoothness``: its total-variation prior on the batch.
- DFAD / ZSKT (Fang et al. 2019, Micaelli & Storkey 2019): ``adversarial`` = the student's own distillation
  loss, maximised by the generator (disagreement between student and teacher) while the student minimises it.
  One backward pass serves both: the generated batch reaches the student, and the teacher logits reach the
  student's loss, through a gradient reversal that scales the generator's gradient by ``-adversarial``. At
  ``adversarial: 0`` the student trains on the generated batch as if detached (DAFL). With ``student_steps: k``
  only one step in k updates the generator (DFAD trains the student 5 times per generator step).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from distill.methods import MethodSet
from distill.models import FrozenTeacher
from distill.taps import FeatureTaps
from distill.types import Batch, LossOutput, ModelOutput, SetupContext, StepContext


def one_hot_loss(t_logits: Tensor) -> Tensor:
    """DAFL's one-hot term: cross-entropy of the teacher's logits (B, C) against their own argmax."""
    return nn.functional.cross_entropy(t_logits, t_logits.argmax(dim=1))


def activation_loss(feats: Tensor) -> Tensor:
    """DAFL's activation term: minus the mean absolute value of the teacher's features (B, ...)."""
    return -feats.abs().mean()


def entropy_loss(t_logits: Tensor) -> Tensor:
    """DAFL's information-entropy term: sum_c p_c log10 p_c of the batch-mean prediction p (C,), i.e. minus the
    entropy (base 10) of the class histogram; minimising it balances the classes of the generated batch."""
    p = t_logits.softmax(dim=1).mean(dim=0)  # (C,)
    return (p * torch.log10(p.clamp_min(1e-12))).sum()


def bn_matching(x: Tensor, running_mean: Tensor, running_var: Tensor) -> Tensor:
    """DeepInversion's term for one BatchNorm layer: ||mean - running_mean||_2 + ||var - running_var||_2 of
    its input ``x`` (B, C, ...), statistics per channel over every other dimension (biased variance)."""
    flat = x.transpose(0, 1).reshape(x.shape[1], -1)  # (C, B * ...)
    return torch.norm(flat.mean(dim=1) - running_mean, 2) + torch.norm(flat.var(dim=1, unbiased=False) - running_var, 2)


def smoothness_loss(x: Tensor) -> Tensor:
    """DeepInversion's total-variation prior on a generated batch (B, C, *spatial): the squared differences of
    neighbouring values along each spatial axis, averaged per element (the reference sums norms over the batch,
    which ties its weight to the batch size). Flat (B, L) inputs have no neighbours: 0."""
    return sum((x.diff(dim=d) ** 2).mean() for d in range(2, x.ndim)) if x.ndim > 2 else x.new_zeros(())


def bn_layers(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of ``model`` that track running statistics (what DeepInversion matches)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats
            and m.running_mean is not None]


class BNStats:
    """Forward hooks (as a context manager) collecting ``bn_matching`` of each BatchNorm layer's input."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = bn_layers(model)
        self.terms: list[Tensor] = []
        self._handles: list[Any] = []

    def __enter__(self) -> BNStats:
        self._handles = [m.register_forward_hook(self._hook) for m in self.layers]
        return self

    def _hook(self, module: nn.Module, inputs: tuple[Tensor, ...], _: Tensor) -> None:
        self.terms.append(bn_matching(inputs[0], module.running_mean, module.running_var))

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.scale * grad, None


def reverse(x: Tensor, scale: float) -> Tensor:
    """Identity forward; backward multiplies the gradient by ``-scale`` (0: the input is as if detached)."""
    return _Reverse.apply(x, scale)


@dataclass(frozen=True)
class GeneratorLosses:
    """The weights of the generator's terms (see the module docstring)."""

    one_hot: float = 1.0
    activation: float = 0.1
    entropy: float = 5.0
    bn: float = 0.0
    bn_first: float = 10.0
    smoothness: float = 0.0
    adversarial: float = 0.0


class Synthesis(nn.Module):
    """The generator and the student as one trainable module: ``forward(z)`` generates a batch from latent codes
    z (B, latent), lets the frozen teacher see it (with autograd in the input), and returns the student's logits
    on it (B, C). The teacher's logits and the generator's weighted terms wait in ``last`` for the loss
    (``DataFreeMethods``), which the engine calls right after this forward."""

    def __init__(self, generator: nn.Module, student: nn.Module, teacher: FrozenTeacher, losses: GeneratorLosses,
                 feature_path: str | None, student_steps: int = 1) -> None:
        super().__init__()
        self.generator, self.student = generator, student
        self.frozen = (teacher,)  # a tuple: not a submodule, so not trained, checkpointed or moved with this one
        self.losses, self.feature_path, self.student_steps = losses, feature_path, student_steps
        self.last: tuple[Tensor, dict[str, Tensor]] | None = None
        # training forwards so far: which of them update the generator (a buffer, so a resumed run continues)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    @property
    def leaves_parameters_unused(self) -> bool:
        """True when some steps leave the generator without gradient (DDP must then look for unused ones)."""
        return self.student_steps > 1

    @property
    def teacher(self) -> FrozenTeacher:
        return self.frozen[0]

    def generate(self, z: Tensor) -> Tensor:
        """Latent codes (B, latent) -> a batch (B, *input_shape) normalised as the student's data is."""
        return self.teacher.from_teacher(self.generator(z))

    def forward(self, z: Tensor) -> Tensor:
        # one step in ``student_steps`` updates the generator (DFAD's schedule); the others run the generator and
        # the teacher without autograd (its terms are then logged, not learned from) and train the student alone
        gen_step = int(self.calls) % self.student_steps == 0
        if self.training:
            self.calls += 1
        with torch.set_grad_enabled(gen_step and torch.is_grad_enabled()):
            x = self.generate(z)
            t_logits, terms = self.teach(x)
        adv = self.losses.adversarial if gen_step else 0.0
        self.last = (reverse(t_logits, adv), terms)
        return self.student(reverse(x, adv))

    def teach(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The teacher's logits (B, C) on ``x`` and the generator's weighted terms (the terms at weight 0 are
        not computed)."""
        w, model = self.losses, self.teacher.model
        paths = [self.feature_path] if w.activation and self.feature_path else []
        with FeatureTaps(model, paths) as taps, BNStats(model if w.bn else nn.Identity()) as bn:
            t_logits = self.teacher.through(x)
        terms: dict[str, Tensor] = {}
        if w.one_hot:
            terms["generator.one_hot"] = w.one_hot * one_hot_loss(t_logits)
        if w.activation and self.feature_path:
            terms["generator.activation"] = w.activation * activation_loss(taps.feats[self.feature_path])
        if w.entropy:
            terms["generator.entropy"] = w.entropy * entropy_loss(t_logits)
        if w.smoothness:
            terms["generator.smoothness"] = w.smoothness * smoothness_loss(x)
        if w.bn:
            scale = torch.tensor([w.bn_first] + [1.0] * (len(bn.terms) - 1), device=t_logits.device)
            terms["generator.bn"] = w.bn * (torch.stack(bn.terms) * scale).sum()
        return t_logits, terms


class DataFreeMethods(MethodSet):
    """The recipe's methods on (student, teacher) logits of the generated batch, plus the generator's terms that
    ``Synthesis`` computed in the same forward; terms are named ``student.<term>`` and ``generator.<term>``."""

    def __init__(self, methods: MethodSet, synthesis: Synthesis) -> None:
        super().__init__([])
        self.student_methods = methods
        self.synthesis = (synthesis,)  # not a submodule: the engine trains and saves it as the model

    @property
    def needs_teacher(self) -> bool:  # the teacher runs inside Synthesis, on the generated batch
        return False

    def forward(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        last = self.synthesis[0].last
        assert last is not None, "Synthesis.forward runs before the loss"
        t_logits, gen_terms = last
        out = self.student_methods(s, ModelOutput(t_logits), batch, ctx)
        terms = {f"student.{k}": v for k, v in out.terms.items()} | gen_terms
        return LossOutput(out.loss + sum(gen_terms.values(), torch.zeros((), device=out.loss.device)), terms)

    def setup(self, ctx: SetupContext) -> None:
        self.student_methods.setup(ctx)
