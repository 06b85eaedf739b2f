"""Model zoo, external models and the frozen teacher wrapper.

Importing this package registers every zoo model in ``MODELS``; nothing optional (torchvision, timm,
transformers) is imported here: ``external`` imports its target only when built.
"""

from distill.models import causal_lm, cnn, external, hf, lenet, mlp, resnet, text, vgg, wrn  # noqa: F401  (registers the models)
from distill.models.base import MODELS, build_model
from distill.models.teacher import FrozenTeacher, Keys, as_logits, feed, select

__all__ = ["MODELS", "FrozenTeacher", "Keys", "as_logits", "build_model", "feed", "select"]
