"""Metrics on hand-made logits with known answers; predict / latency / model_metrics on tiny models."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distill.evaluate import (
    agreement,
    count_params,
    expected_calibration_error,
    latency_ms,
    model_metrics,
    predict,
    topk_accuracy,
)


def test_topk_accuracy_known_answers() -> None:
    logits = torch.tensor([[0.9, 0.5, 0.1, 0.0],    # label 0: top-1 hit
                           [0.9, 0.5, 0.1, 0.0],    # label 1: second -> top-2 hit only
                           [0.9, 0.5, 0.1, 0.0],    # label 3: last -> hit only at k=4
                           [0.0, 0.1, 0.2, 0.7]])   # label 3: top-1 hit
    y = torch.tensor([0, 1, 3, 3])
    assert topk_accuracy(logits, y, 1) == pytest.approx(0.5)
    assert topk_accuracy(logits, y, 2) == pytest.approx(0.75)
    assert topk_accuracy(logits, y, 3) == pytest.approx(0.75)
    assert topk_accuracy(logits, y, 4) == pytest.approx(1.0)
    assert topk_accuracy(logits, y, 10) == pytest.approx(1.0)  # k clipped to the class count


def test_topk_monotone_in_k_on_random_logits() -> None:
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(500, 10, generator=g), torch.randint(0, 10, (500,), generator=g)
    accs = [topk_accuracy(logits, y, k) for k in (1, 5, 10)]
    assert accs[0] <= accs[1] <= accs[2] == 1.0
    assert 0.0 <= accs[0] <= 1.0


def test_agreement_known_answer() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[5.0, 0.0], [3.0, 1.0], [2.0, 0.0], [0.0, 9.0]])  # differs on row 1 only
    assert agreement(a, b) == pytest.approx(0.75)
    assert agreement(a, a) == 1.0
    with pytest.raises(ValueError):
        agreement(a, b[:3])


def test_ece_zero_when_calibrated() -> None:
    # Every sample has confidence 0.75 (logit gap ln 3 over two classes) and 3 of 4 are right.
    logits = torch.tensor([[math.log(3.0), 0.0]] * 4)
    y = torch.tensor([0, 0, 0, 1])
    assert expected_calibration_error(logits, y, bins=10) == pytest.approx(0.0, abs=1e-6)


def test_ece_overconfident_matches_hand_computation() -> None:
    # Two classes, 2 bins: (0, 0.5] and (0.5, 1]. Confidences: 0.9, 0.9, 0.6, 0.6, 0.6.
    confs = [0.9, 0.9, 0.6, 0.6, 0.6]
    logits = torch.tensor([[math.log(c / (1 - c)), 0.0] for c in confs])  # softmax top prob = c
    y = torch.tensor([0, 1, 0, 1, 1])  # right on samples 0 and 2 only
    # All five fall into bin 2: acc = 2/5 = 0.4, mean conf = (0.9 * 2 + 0.6 * 3) / 5 = 0.72.
    expected = 5 / 5 * abs(0.4 - 0.72)
    assert expected_calibration_error(logits, y, bins=2) == pytest.approx(expected, abs=1e-5)
    # With 4 bins (.., (0.5, 0.75], (0.75, 1]) the groups separate:
    # bin (0.75, 1]: 2 samples, acc 1/2, conf 0.9; bin (0.5, 0.75]: 3 samples, acc 1/3, conf 0.6.
    expected4 = 2 / 5 * abs(0.5 - 0.9) + 3 / 5 * abs(1 / 3 - 0.6)
    assert expected_calibration_error(logits, y, bins=4) == pytest.approx(expected4, abs=1e-5)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 10))


def test_predict_matches_model_and_restores_mode() -> None:
    model = _net()
    x = torch.randn(37, 8)
    model.train()
    model[1].eval()  # a deliberately frozen submodule must stay frozen
    logits = predict(model, x, batch_size=5)
    assert model.training and not model[1].training and model[3].training
    model.eval()
    with torch.no_grad():
        ref = model(x)
    assert logits.shape == (37, 10) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5)
    assert not model.training  # eval stays eval
    predict(model, x)
    assert not model.training


def test_predict_uses_logits_attribute() -> None:
    class Out:
        def __init__(self, logits: torch.Tensor) -> None:
            self.logits = logits

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> Out:
            return Out(self.fc(x))

    model, x = Wrapped(), torch.randn(6, 4)
    torch.testing.assert_close(predict(model, x, batch_size=4), model.fc(x).detach())


def test_count_params_and_latency() -> None:
    model = nn.Linear(8, 10)
    assert count_params(model) == 8 * 10 + 10
    model.train()
    ms = latency_ms(model, torch.randn(1, 8), 4, repeats=5, warmup=1)
    assert ms > 0 and model.training
    # A zero budget still keeps at least 3 timings and returns a positive median.
    assert latency_ms(model, torch.randn(1, 8), 1, repeats=50, warmup=0, budget_s=0.0) > 0


def test_model_metrics_best_epoch_chosen_on_val_not_test(tmp_path) -> None:
    model = _net()
    x, y = torch.randn(64, 8), torch.randint(0, 10, (64,))
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"\0" * 1234)
    history = [
        {"epoch": 1, "val_top1": 0.50, "test_top1": 0.48, "loss": 2.0},
        {"epoch": 2, "val_top1": 0.70, "test_top1": 0.60, "loss": 1.5},  # best val (first of the tie)
        {"epoch": 3, "val_top1": 0.65, "test_top1": 0.75, "loss": 1.2},  # best test: must NOT be chosen
        {"epoch": 4, "val_top1": 0.70, "test_top1": 0.66, "loss": 1.1},  # ties val: earliest wins
        {"epoch": 5, "val_top1": 0.60, "test_top1": 0.62, "loss": 1.0},
    ]
    teacher_logits = torch.randn(64, 10)
    m = model_metrics(model, x, y, num_classes=10, teacher_logits=teacher_logits, weights_path=weights,
                      history=history)
    logits = predict(model, x)
    assert m["top1"] == pytest.approx(topk_accuracy(logits, y))
    assert m["top1_last"] == 0.62
    assert m["top1_best"] == 0.60 and m["best_epoch"] == 2
    assert m["top5"] == pytest.approx(topk_accuracy(logits, y, 5)) and m["top5"] >= m["top1"]
    assert m["agreement"] == pytest.approx(agreement(logits, teacher_logits))
    assert 0.0 <= m["ece"] <= 1.0
    assert m["params"] == count_params(model)
    assert m["size_bytes"] == 1234
    assert m["latency_ms_b1"] > 0 and m["latency_ms_b256"] > 0


def test_model_metrics_without_history_or_extras() -> None:
    model = nn.Linear(8, 3)
    x, y = torch.randn(20, 8), torch.randint(0, 3, (20,))
    m = model_metrics(model, x, y, num_classes=3, latency=False)
    assert m["top1_last"] == m["top1_best"] == m["top1"]
    assert m["best_epoch"] is None and m["top5"] is None and m["agreement"] is None
    assert m["size_bytes"] is None and m["latency_ms_b1"] is None and m["latency_ms_b256"] is None
