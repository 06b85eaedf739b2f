"""Feature taps by module path, and the shape probe."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from distill.errors import DistillError
from distill.io import load_into, load_weights
from distill.models import FrozenTeacher, build_model
from distill.taps import FeatureTaps, format_probe, probe


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small CPU batches: with a busy second core, OpenMP threads wait on each other (~100x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def mnist_net() -> nn.Module:
    model = build_model("external", num_classes=10, input_shape=(1, 28, 28),
                        target="ccexam.models:MNISTNet", kwargs={"input_size": 28})
    root = Path(importlib.util.find_spec("ccexam").submodule_search_locations[0])
    load_into(model, load_weights(root / "weights" / "mnist.pth"), "mnist.pth")
    return model


def test_taps_capture_outputs_and_inputs_like_a_manual_forward() -> None:
    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=10, input_shape=(3, 16, 16)).eval()
    x = torch.randn(2, 3, 16, 16)
    with FeatureTaps(model, ["layer1", "layer2.0.bn2", "fc:input"]) as taps:
        logits = model(x)
    with torch.no_grad():  # the same values, computed by hand from the modules
        stem = torch.relu(model.bn1(model.conv1(x)))
        layer1 = model.layer1(stem)
        block = model.layer2[0]
        bn2 = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(layer1)))))
        pooled = model.avgpool(model.layer3(model.layer2(layer1))).flatten(1)
    torch.testing.assert_close(taps.feats["layer1"], layer1)
    torch.testing.assert_close(taps.feats["layer2.0.bn2"], bn2)  # pre-residual, untouched by later ops
    torch.testing.assert_close(taps.feats["fc:input"], pooled)
    torch.testing.assert_close(model.fc(taps.feats["fc:input"]), logits)
    assert list(taps.feats) == ["layer1", "layer2.0.bn2", "fc:input"]


def test_tapped_features_keep_their_graph() -> None:
    model = build_model("mlp", num_classes=3, input_shape=(5,), hidden=[4])
    with FeatureTaps(model, ["layers.0"]) as taps:
        model(torch.randn(2, 5))
    taps.feats["layers.0"].pow(2).sum().backward()
    assert model.layers[0].weight.grad is not None and model.fc.weight.grad is None


def test_clear_and_latest_forward() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    with FeatureTaps(model, ["0"]) as taps:
        model(torch.ones(1, 3))
        first = taps.feats["0"]
        model(torch.zeros(1, 3))
        torch.testing.assert_close(taps.feats["0"], model[0].bias.detach().view(1, 4))
        assert not torch.equal(first, taps.feats["0"])
        taps.clear()
        assert taps.feats == {}


def test_hooks_removed_after_block_and_after_exception() -> None:
    model = build_model("cnn", num_classes=10, input_shape=(1, 8, 8))
    with FeatureTaps(model, ["features.0", "fc:input"]):
        assert hook_count(model) == 2
    assert hook_count(model) == 0
    with pytest.raises(RuntimeError, match="boom"), FeatureTaps(model, ["features.1.conv"]):
        assert hook_count(model) == 1
        raise RuntimeError("boom")
    assert hook_count(model) == 0


def test_unknown_path_suggests_close_ones() -> None:
    model = build_model("resnet8", num_classes=10, input_shape=(3, 32, 32))
    message = r"no module 'layer1.0.conv3'.*did you mean 'layer1.0.conv2', 'layer1.0.conv1'"
    with pytest.raises(DistillError, match=message):
        FeatureTaps(model, ["layer1.0.conv3"])
    with pytest.raises(DistillError, match=r"no module 'zzz'.*top-level modules: conv1, bn1, layer1"):
        FeatureTaps(model, ["zzz:input"])
    assert hook_count(model) == 0  # validation happens before any hook is attached


def test_taps_on_a_frozen_teacher() -> None:
    teacher = FrozenTeacher(mnist_net())
    x = torch.randn(2, 1, 28, 28)
    with FeatureTaps(teacher.model, ["features.5", "classifier.2"]) as taps:
        logits = teacher(x)
    assert taps.feats["features.5"].shape == (2, 64, 7, 7)
    torch.testing.assert_close(taps.feats["classifier.2"], logits)


def test_probe_lists_mnistnet_modules_in_execution_order() -> None:
    model = mnist_net().train()
    shapes = probe(model, torch.zeros(2, 1, 28, 28))
    assert list(shapes) == ["features", *(f"features.{i}" for i in range(6)),
                            "classifier", *(f"classifier.{i}" for i in range(3))]
    assert shapes["features.0"] == (2, 32, 28, 28)
    assert shapes["features.5"] == (2, 64, 7, 7)
    assert shapes["classifier.0"] == (2, 128)
    assert shapes["classifier.2"] == (2, 10)
    assert all(m.training for m in model.modules())  # training mode restored
    assert hook_count(model) == 0


def test_probe_restores_mixed_modes_and_runs_in_eval() -> None:
    model = build_model("resnet8", num_classes=10, input_shape=(3, 16, 16)).train()
    model.layer1.eval()  # e.g. a frozen stage
    running = model.bn1.running_mean.clone()
    shapes = probe(model, torch.randn(2, 3, 16, 16))
    assert torch.equal(model.bn1.running_mean, running)  # eval mode: BN statistics untouched
    assert model.training and model.layer2.training and not model.layer1[0].bn1.training
    assert shapes["layer3"] == (2, 64, 4, 4) and shapes["fc"] == (2, 10)
    assert "layers" not in probe(build_model("mlp", num_classes=2, input_shape=(3,)), torch.zeros(2, 3))


def test_format_probe_table() -> None:
    model = mnist_net()
    table = format_probe(probe(model, torch.zeros(2, 1, 28, 28)), model)
    lines = table.splitlines()
    assert lines[0].split() == ["path", "output", "module", "params"]
    row = next(line for line in lines if line.startswith("features.0 "))
    assert "(2, 32, 28, 28)" in row and "Conv2d" in row and row.endswith("320")  # 32*1*9 + 32
    assert len({line.index("(") for line in lines[1:]}) == 1  # shape column aligned
    assert format_probe({"fc": (2, 10)}).splitlines()[1].split() == ["fc", "(2,", "10)"]
