"""``strategy: gkd``: on-policy distillation of language models (Agarwal et al. 2024, "On-Policy Distillation of
Language Models: Learning from Self-Generated Mistakes"; TRL's ``GKDTrainer``), and sequence-level KD (Kim & Rush
2016).

Each training batch is, with probability ``lmbda``, replaced by the student's own continuations: the first
``prompt`` tokens of every block are kept and the student samples the rest (``temperature``, no top-k / top-p),
with its KV cache; only the generated tokens count, and the teacher scores them live (a teacher cache holds the
dataset's blocks, not these). The other batches are the dataset's (from the cache when there is one). With
``seq_kd: true`` those other batches are the teacher's continuations of the same prompts instead (sequence-level
KD: the student learns on teacher-generated text, labels included). On-policy batches carry no labels
(``Batch.labelled_count`` 0): a label term (``token_kd``'s ``alpha``, a ``ce`` entry) is zero on them, since their
targets are the student's own samples; the divergence counts every generated token. The method is the recipe's
(``token_kd``: ``divergence: jsd`` with ``beta`` is GKD's generalized JSD). Which batches are on-policy, and every
sample drawn, are functions of the run's seed and the step, so a killed run resumes bit-identically.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from distill.errors import DistillError
from distill.strategies.base import STRATEGIES
from distill.strategies.offline import Offline
from distill.types import Batch, StepContext

if TYPE_CHECKING:
    from distill.plan import Plan
    from distill.recipe import Recipe

IGNORE = -100


@STRATEGIES.register("gkd")
class GKD(Offline):
    """Offline distillation whose student also learns on its own samples (``lmbda``), or on the teacher's
    (``seq_kd``)."""

    def __init__(self, lmbda: float = 0.5, seq_kd: bool = False, prompt: int | None = None,
                 temperature: float = 0.9) -> None:
        if not 0.0 <= lmbda <= 1.0:
            raise DistillError(f"strategy gkd: lmbda is the fraction of on-policy batches, in [0, 1]; got {lmbda!r}")
        if temperature <= 0:
            raise DistillError(f"strategy gkd: temperature must be positive, got {temperature!r}")
        if prompt is not None and (isinstance(prompt, bool) or not isinstance(prompt, int) or prompt < 1):
            raise DistillError(f"strategy gkd: prompt is a number of tokens >= 1, got {prompt!r}")
        self.lmbda, self.seq_kd, self.prompt, self.temperature = lmbda, seq_kd, prompt, temperature

    def check(self, recipe: Recipe) -> None:
        super().check(recipe)
        if recipe.teacher is None:
            raise DistillError("strategy gkd needs a teacher (it scores the student's samples)")

    def rewrite(self, plan: Plan, teacher: nn.Module | None) -> OnPolicy:
        if not plan.data.tokens:
            raise DistillError(f"strategy gkd generates text: dataset '{plan.data.name}' is not a language-model "
                               "corpus (name: corpus)")
        seq = int(plan.data.train.y.shape[1])
        prompt = self.prompt if self.prompt is not None else seq // 2
        if prompt >= seq:
            raise DistillError(f"strategy gkd: prompt ({prompt} tokens) must be shorter than data.seq_len ({seq})")
        return OnPolicy(self.lmbda, self.seq_kd, prompt, self.temperature, plan.seed, teacher)


class OnPolicy:
    """The batch rewrite of ``strategy: gkd`` (``FitJob.rewrite``): see the module docstring."""

    def __init__(self, lmbda: float, seq_kd: bool, prompt: int, temperature: float, seed: int,
                 teacher: nn.Module | None) -> None:
        self.lmbda, self.seq_kd, self.prompt, self.temperature, self.seed = lmbda, seq_kd, prompt, temperature, seed
        self.teacher = teacher

    def __call__(self, model: nn.Module, batch: Batch, ctx: StepContext) -> Batch:
        """The batch to train on at this step: the dataset's, the student's continuations or the teacher's."""
        on_policy = random.Random(f"gkd:{self.seed}:{ctx.stage}:{ctx.step}").random() < self.lmbda
        if not on_policy and not self.seq_kd:
            return batch
        ids_key = next(k for k in batch.input if k.endswith("input_ids"))  # type: ignore[union-attr]
        mask = next((v for k, v in batch.input.items() if k.endswith("attention_mask")), None)  # type: ignore[union-attr]
        if mask is not None and not bool(mask.all()):
            return batch  # a padded block (a split's last): no full prompt to continue
        source = model if on_policy else getattr(self.teacher, "model", self.teacher)
        full = self._generate(source, batch.input[ids_key], ctx)  # type: ignore[index]  # (B, S + 1)
        target = full[:, 1:].clone()
        target[:, : self.prompt - 1] = IGNORE  # the prompt is given, not learnt: only generated tokens count
        inputs = {k: (full[:, :-1] if k == ids_key else torch.ones_like(v) if k.endswith("attention_mask") else v)
                  for k, v in batch.input.items()}  # type: ignore[union-attr]
        # the student's own samples are what the divergence is measured on, never labels to learn (a label term
        # would teach the student its own output); the teacher's continuations are sequence-level KD's labels
        labelled = 0.0 if on_policy else None
        return Batch(inputs, target, batch.index, {**batch.extras, "live_teacher": True}, batch.view, labelled)

    @torch.no_grad()
    def _generate(self, model: nn.Module, ids: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """(B, S) blocks -> (B, S + 1): their first ``prompt`` tokens and S + 1 - prompt sampled after them."""
        lm: Any = getattr(model, "lm", None)
        if lm is None or not hasattr(lm, "generate"):
            raise DistillError(f"strategy gkd: {type(model).__name__} cannot generate (use causal_lm models)")
        new = ids.shape[1] + 1 - self.prompt
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with torch.random.fork_rng(devices=[ids.device] if ids.is_cuda else []):
                torch.manual_seed(random.Random(f"gkd-sample:{self.seed}:{ctx.stage}:{ctx.step}").getrandbits(62))
                out = lm.generate(ids[:, : self.prompt], attention_mask=torch.ones_like(ids[:, : self.prompt]),
                                  do_sample=True, temperature=self.temperature, top_k=0, top_p=1.0,
                                  max_new_tokens=new, min_new_tokens=new, pad_token_id=0)
        finally:
            for m, mode in modes:
                m.training = mode
        return out[:, : ids.shape[1] + 1]
