"""The measured evaluation batch size (``distill.batching``): a candidate, chosen once per model; the logits at
the candidate sizes agree to float rounding and give the same predictions (bit-identical on some CPUs, not on
all: on the CI machine the MLP at batch 32 differed in the last bit, so only metrics use the measured size)."""

from __future__ import annotations

import pytest
import torch

from distill import batching
from distill.evaluate import predict
from distill.models import build_model

MODELS = [("mlp", (784,), {"hidden": [64]}), ("cnn", (1, 28, 28), {"channels": [8, 16], "hidden": 32}),
          ("resnet8", (1, 40), {}), ("lenet5", (1, 28, 28), {})]


@pytest.mark.parametrize(("name", "shape", "kwargs"), MODELS, ids=[m[0] for m in MODELS])
def test_logits_agree_at_every_candidate_batch_size(name: str, shape: tuple, kwargs: dict) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, input_shape=shape, **kwargs)
    x = torch.randn(1100, *shape)
    ref = predict(model, x, batch_size=1000)
    for b in batching.CANDIDATES:
        out = predict(model, x, batch_size=b)
        assert torch.allclose(out, ref, rtol=0, atol=1e-5), (name, b)
        assert torch.equal(out.argmax(1), ref.argmax(1)), (name, b)


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


@pytest.mark.parametrize(("channels", "side"), [(32, 28), (8, 28), (64, 32), (1, 8)])
def test_the_cache_batch_is_the_largest_power_of_two_whose_largest_layer_output_fits(channels: int, side: int) -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, channels, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(channels * side * side, 10))
    peak = channels * side * side * 4  # bytes of one sample's conv (= ReLU) output, the largest layer output
    fits = batching.CACHE_ACTIVATION_BYTES // peak
    want = min(batching.CANDIDATES[-1], max(batching.CANDIDATES[0], 2 ** (fits.bit_length() - 1)))
    got = batching.cache_batch_size(model, torch.randn(3, 1, side, side))
    assert got == want
    assert got * peak <= batching.CACHE_ACTIVATION_BYTES or got == batching.CANDIDATES[0]
    assert got * 2 * peak > batching.CACHE_ACTIVATION_BYTES or got == batching.CANDIDATES[-1]


def test_the_cache_batch_depends_on_the_model_and_shape_only_and_leaves_no_hooks() -> None:
    model = build_model("cnn", num_classes=10, input_shape=(1, 28, 28), channels=[8, 16], hidden=32)
    sizes = {batching.cache_batch_size(model, torch.randn(n, 1, 28, 28)) for n in (1, 5, 64)}
    assert len(sizes) == 1
    assert all(not m._forward_hooks for m in model.modules())
