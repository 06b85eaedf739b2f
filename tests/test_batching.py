"""The measured evaluation batch size (``distill.batching``): a candidate, chosen once per model; the logits at
the candidate sizes are bit-identical on the CPU for the zoo models tested."""

from __future__ import annotations

import pytest
import torch

from distill import batching
from distill.evaluate import predict
from distill.models import build_model

MODELS = [("mlp", (784,), {"hidden": [64]}), ("cnn", (1, 28, 28), {"channels": [8, 16], "hidden": 32}),
          ("resnet8", (1, 40), {}), ("lenet5", (1, 28, 28), {})]


@pytest.mark.parametrize(("name", "shape", "kwargs"), MODELS, ids=[m[0] for m in MODELS])
def test_logits_are_bit_identical_at_every_candidate_batch_size(name: str, shape: tuple, kwargs: dict) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, input_shape=shape, **kwargs)
    x = torch.randn(1100, *shape)
    ref = predict(model, x, batch_size=1000)
    for b in batching.CANDIDATES:
        assert torch.equal(predict(model, x, batch_size=b), ref), (name, b)


def test_the_fastest_candidate_is_measured_once_per_model(monkeypatch) -> None:
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=10, input_shape=(64,), hidden=[32])
    x = torch.randn(batching.PROBE_MIN, 64)
    calls: list[int] = []
    measure = batching._measure
    monkeypatch.setattr(batching, "_measure", lambda *a: calls.append(1) or measure(*a))
    chosen = batching.inference_batch_size(model, x)
    assert chosen in batching.CANDIDATES and calls == [1]
    assert batching.inference_batch_size(model, x) == chosen and calls == [1]  # remembered
    assert batching.inference_batch_size(model, x[:100]) == 100  # small: no measurement, at most DEFAULT
    assert batching.inference_batch_size(model, x[: batching.PROBE_MIN - 1]) == batching.DEFAULT
    assert torch.allclose(predict(model, x), predict(model, x, batch_size=7), atol=1e-6)  # not always bitwise
