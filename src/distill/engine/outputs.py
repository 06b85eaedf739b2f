"""Model outputs as the losses see them: logits plus tapped features, in fp32."""

from __future__ import annotations

import torch
from torch import nn

from distill.models import Keys, as_logits, feed
from distill.taps import FeatureTaps
from distill.types import Batch, ModelOutput


def as_fp32(out: ModelOutput | None) -> ModelOutput | None:
    """Outputs in fp32 for the losses (autocast may have produced bf16/fp16)."""
    if out is None or (out.logits.dtype == torch.float32 and not out.by_teacher):
        return out
    feats = {k: v.float() if v.is_floating_point() else v for k, v in out.feats.items()}
    return ModelOutput(out.logits.float(), feats, out.topk, {k: as_fp32(v) for k, v in out.by_teacher.items()})


def model_output(model: nn.Module | None, batch: Batch, taps: FeatureTaps | None, inputs: Keys = None) -> ModelOutput:
    """Run ``model`` on the fields of ``batch.input`` it reads; logits plus the features ``taps`` captured."""
    assert model is not None, "the methods need a teacher but none was given"
    logits = as_logits(feed(model, batch.input, inputs, "student"))
    if taps is None:
        return ModelOutput(logits)
    feats = dict(taps.feats)
    taps.clear()
    return ModelOutput(logits, feats)
