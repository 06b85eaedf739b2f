"""A plain multi-layer perceptron over the flattened input."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from distill.models.base import MODELS, check_dropout, positive_ints


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU -> Dropout] per hidden width -> ``fc``.

    The hidden Linear layers are ``layers.0``, ``layers.1``, ... (tapping one gives its pre-activation);
    ReLU and dropout are functional so no module is shared between calls.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: list[int], dropout: float = 0.0) -> None:
        super().__init__()
        widths = [in_features, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.dropout = dropout
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """(B, *input_shape) -> logits (B, num_classes)."""
        x = x.flatten(1)  # (B, D)
        for layer in self.layers:
            x = F.dropout(F.relu(layer(x)), self.dropout, self.training)  # (B, H_i)
        return self.fc(x)


@MODELS.register("mlp")
def mlp(
    *, num_classes: int, input_shape: tuple[int, ...], hidden: Sequence[int] = (256, 256),
    dropout: float = 0.0,
) -> nn.Module:
    """MLP on any input shape: one hidden layer per ``hidden`` width; ``dropout`` applies after each ReLU."""
    widths = positive_ints("mlp", "hidden", hidden)
    return MLP(math.prod(input_shape), num_classes, widths, check_dropout("mlp", dropout))
