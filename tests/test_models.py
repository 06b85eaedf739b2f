"""Model zoo, build_model option checking, external models and the frozen teacher."""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from distill.errors import DistillError
from distill.io import load_into, load_weights
from distill.models import MODELS, FrozenTeacher, build_model
from distill.models.base import SHAPE_FREE

ZOO = [n for n in MODELS.names() if n not in SHAPE_FREE]  # external and hf: tests of their own
# Standard-size models run at CIFAR size; the big x4/deep VGG variants share their code with a tested
# model, so they run at 8x8 to keep the file fast on a loaded CPU.
FULL_SIZE = {"cnn", "mlp", "resnet8x4", "vgg8", "vgg11", "vgg13"} | {
    n for n in ZOO if n.startswith(("wrn", "resnet")) and not n.endswith("x4")
}
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small CPU batches: with a busy second core, OpenMP threads wait on each other (~100x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def param_count(name: str, **kw: object) -> int:
    model = build_model(name, num_classes=10, input_shape=(3, 32, 32), **kw)
    return sum(p.numel() for p in model.parameters())


def forward_backward(model: nn.Module, shape: tuple[int, ...], num_classes: int) -> None:
    """One train-mode step on a batch of 2: logits (2, C) and a gradient on every parameter."""
    model.train()
    logits = model(torch.randn(2, *shape))
    assert logits.shape == (2, num_classes)
    nn.functional.cross_entropy(logits, torch.tensor([0, num_classes - 1])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient reached {name}"
        assert p.grad.abs().sum() > 0, f"zero gradient at {name}"


@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_model_builds_runs_and_backprops(name: str) -> None:
    torch.manual_seed(0)
    shape = (3, 32, 32) if name in FULL_SIZE else (3, 8, 8)
    forward_backward(build_model(name, num_classes=7, input_shape=shape), shape, 7)


@pytest.mark.parametrize("name", ["cnn", "mlp", "resnet8", "wrn_16_1", "vgg8"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8)])
def test_small_grayscale_images(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    forward_backward(build_model(name, num_classes=10, input_shape=shape), shape, 10)


@pytest.mark.parametrize("name", ["cnn", "mlp", "resnet8"])
def test_one_dimensional_sequences(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, input_shape=(1, 40))
    forward_backward(model, (1, 40), 10)
    if name != "mlp":
        assert any(isinstance(m, nn.Conv1d) for m in model.modules())


def test_flat_features_need_mlp() -> None:
    forward_backward(build_model("mlp", num_classes=3, input_shape=(20,)), (20,), 3)
    with pytest.raises(DistillError, match=r"'resnet20' needs .*input_shape \(20,\).*'mlp'"):
        build_model("resnet20", num_classes=3, input_shape=(20,))


def test_module_paths_are_readable() -> None:
    paths = dict(build_model("resnet8", num_classes=10, input_shape=(3, 32, 32)).named_modules())
    assert isinstance(paths["layer1.0.conv1"], nn.Conv2d)
    assert isinstance(paths["layer3.0.shortcut.0"], nn.Conv2d)
    assert isinstance(paths["fc"], nn.Linear)
    mlp = build_model("mlp", num_classes=10, input_shape=(1, 8, 8), hidden=[32, 16])
    mlp_paths = dict(mlp.named_modules())
    assert [mlp_paths[p].out_features for p in ("layers.0", "layers.1", "fc")] == [32, 16, 10]
    cnn_paths = dict(build_model("cnn", num_classes=10, input_shape=(1, 8, 8)).named_modules())
    assert isinstance(cnn_paths["features.1.conv"], nn.Conv2d) and "fc" in cnn_paths


def test_parameter_counts_grow_with_width_and_depth() -> None:
    assert param_count("resnet8x4") > param_count("resnet8")
    assert param_count("resnet110") > param_count("resnet56") > param_count("resnet20")
    assert param_count("wrn_40_2") > param_count("wrn_16_2") > param_count("wrn_16_1")
    assert param_count("wrn", depth=16, width=2) == param_count("wrn_16_2")
    assert param_count("vgg13") > param_count("vgg8")
    assert param_count("mlp", hidden=[512]) > param_count("mlp", hidden=[8])


def test_options_are_used() -> None:
    model = build_model("cnn", num_classes=4, input_shape=(1, 40), channels=[8, 8, 8], hidden=0)
    assert len(model.features) == 3 and model.head is None
    wide = build_model("wrn", num_classes=4, input_shape=(3, 32, 32), depth=10, width=3)
    assert wide.fc.in_features == 64 * 3


def test_unknown_option_names_it_and_the_allowed_ones() -> None:
    message = r"'mlp': unknown option 'hiden'; did you mean 'hidden'.*allowed: hidden, dropout"
    with pytest.raises(DistillError, match=message):
        build_model("mlp", num_classes=10, input_shape=(1, 28, 28), hiden=[10])
    with pytest.raises(DistillError, match=r"unknown option 'width'.*allowed: none"):
        build_model("resnet8", num_classes=10, input_shape=(3, 32, 32), width=2)


def test_bad_option_values() -> None:
    with pytest.raises(DistillError, match="'depth' must be 6n\\+4"):
        build_model("wrn", num_classes=10, input_shape=(3, 32, 32), depth=15)
    with pytest.raises(DistillError, match="'hidden' must be a list of positive integers"):
        build_model("mlp", num_classes=10, input_shape=(3, 32, 32), hidden=[0])
    with pytest.raises(DistillError, match="dropout"):
        build_model("mlp", num_classes=10, input_shape=(3, 32, 32), dropout=1.5)
    with pytest.raises(DistillError, match="num_classes"):
        build_model("mlp", num_classes=0, input_shape=(3, 32, 32))
    with pytest.raises(DistillError, match="input_shape"):
        build_model("mlp", num_classes=10, input_shape=(3, 0))


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(DistillError, match=r"unknown model 'resnet33'; did you mean 'resnet32'"):
        build_model("resnet33", num_classes=10, input_shape=(3, 32, 32))


# --- external models -------------------------------------------------------------------------------

def ccexam_weights() -> Path:
    return Path(importlib.util.find_spec("ccexam").submodule_search_locations[0]) / "weights" / "mnist.pth"


def mnist_test_images(n: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` MNIST test images (n, 1, 28, 28), normalised as the ccexam teacher expects."""
    root = Path(importlib.util.find_spec("mnist").submodule_search_locations[0])
    with gzip.open(root / "data" / "mnist.pkl.gz") as f:
        _, _, (images, labels) = pickle.load(f, encoding="latin1")
    x = torch.from_numpy(images[:n]) * 256 / 255  # stored as k/256; the teacher was trained on k/255
    return ((x - MNIST_MEAN) / MNIST_STD).reshape(n, 1, 28, 28), torch.from_numpy(labels[:n])


def pretrained_mnist_teacher() -> nn.Module:
    model = build_model("external", num_classes=10, input_shape=(1, 28, 28),
                        target="ccexam.models:MNISTNet", kwargs={"input_size": 28})
    load_into(model, load_weights(ccexam_weights()), "ccexam mnist.pth")
    return model


def test_external_pretrained_teacher_predicts_mnist() -> None:
    model = pretrained_mnist_teacher().eval()
    x, y = mnist_test_images()
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy >= 0.97


@pytest.mark.parametrize(("target", "message"), [
    ("ccexam.models:NoSuchNet", r"'ccexam.models:NoSuchNet'.*no attribute 'NoSuchNet'"),
    ("ccexam.models:MNISTNe", r"did you mean 'MNISTNet'"),
    ("no_such_package.models:Net", r"cannot import 'no_such_package.models'"),
    ("ccexam.models.MNISTNet", r"must look like 'package.module:Class'"),
    ("ccexam.models:__all__", r"is a list, not a class or function"),
])
def test_external_bad_target(target: str, message: str) -> None:
    with pytest.raises(DistillError, match=message):
        build_model("external", num_classes=10, input_shape=(1, 28, 28), target=target)


def test_external_bad_kwargs_and_missing_target() -> None:
    with pytest.raises(DistillError, match=r"'ccexam.models:MNISTNet': constructor rejected kwargs.*size"):
        build_model("external", num_classes=10, input_shape=(1, 28, 28),
                    target="ccexam.models:MNISTNet", kwargs={"size": 28})
    with pytest.raises(DistillError, match=r"'external' needs option 'target'"):
        build_model("external", num_classes=10, input_shape=(1, 28, 28))


def test_external_factory_function_and_non_module() -> None:
    model = build_model("external", num_classes=3, input_shape=(4,), target="torch.nn:Linear",
                        kwargs={"in_features": 4, "out_features": 3})
    assert isinstance(model, nn.Linear)
    with pytest.raises(DistillError, match="not a torch.nn.Module"):
        build_model("external", num_classes=3, input_shape=(4,), target="collections:OrderedDict")


# --- frozen teacher --------------------------------------------------------------------------------

def test_frozen_teacher_stays_in_eval_and_gets_no_grads() -> None:
    torch.manual_seed(0)
    teacher = FrozenTeacher(build_model("resnet8", num_classes=5, input_shape=(3, 16, 16)))
    student = build_model("cnn", num_classes=5, input_shape=(3, 16, 16))
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.model.modules())
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}  # BN running stats included
    x = torch.randn(4, 3, 16, 16)
    t_logits = teacher(x)
    assert not t_logits.requires_grad
    loss = nn.functional.kl_div(student(x).log_softmax(1), t_logits.softmax(1), reduction="batchmean")
    loss.backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.model.state_dict().items())


def test_frozen_teacher_reasserts_eval_if_inner_model_was_switched() -> None:
    teacher = FrozenTeacher(nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.9)))
    teacher.model.train()
    x = torch.randn(8, 3)
    assert torch.equal(teacher(x), teacher(x))  # dropout off, so deterministic
    assert not teacher.model.training


def test_frozen_teacher_renormalises_inputs() -> None:
    teacher_norm = ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    student_norm = ((0.1307,), (0.3081,))
    torch.manual_seed(0)
    raw_model = build_model("resnet8", num_classes=10, input_shape=(3, 8, 8)).eval()
    x = torch.rand(4, 3, 8, 8)  # raw images in [0, 1]
    mean_t, std_t = (torch.tensor(v).view(1, 3, 1, 1) for v in teacher_norm)
    with torch.no_grad():
        expected = raw_model((x - mean_t) / std_t)
    frozen = FrozenTeacher(raw_model, student_norm=student_norm, teacher_norm=teacher_norm)
    got = frozen((x - student_norm[0][0]) / student_norm[1][0])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # No student_norm means the student sees raw inputs.
    torch.testing.assert_close(FrozenTeacher(raw_model, teacher_norm=teacher_norm)(x), expected,
                               rtol=1e-4, atol=1e-4)


def test_frozen_teacher_same_or_no_norm_is_identity() -> None:
    model = nn.Linear(4, 2)
    x = torch.randn(3, 4)
    for kwargs in ({}, {"student_norm": ((0.5,), (0.2,)), "teacher_norm": ((0.5,), (0.2,))}):
        frozen = FrozenTeacher(model, **kwargs)
        assert frozen.in_scale is None and torch.equal(frozen(x), model(x).detach())


def test_frozen_teacher_bad_norms() -> None:
    with pytest.raises(DistillError, match="student_norm has 3 channels but teacher_norm has 2"):
        FrozenTeacher(nn.Identity(), student_norm=((0, 0, 0), (1, 1, 1)), teacher_norm=((0, 0), (1, 1)))
    with pytest.raises(DistillError, match="std must be positive"):
        FrozenTeacher(nn.Identity(), teacher_norm=((0.0,), (0.0,)))
    frozen = FrozenTeacher(nn.Identity(), teacher_norm=((0.1, 0.2, 0.3), (1.0, 1.0, 1.0)))
    with pytest.raises(DistillError, match="3 channels but the batch has shape \\(2, 1, 4, 4\\)"):
        frozen(torch.zeros(2, 1, 4, 4))


def test_an_external_model_file_in_the_current_directory_is_found(tmp_path, monkeypatch) -> None:
    import sys

    from distill.models.external import resolve

    (tmp_path / "my_models_cwd.py").write_text("import torch\nclass Net(torch.nn.Linear):\n"
                                              "    def __init__(self):\n        super().__init__(3, 2)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert resolve("my_models_cwd:Net")().out_features == 2
    assert str(tmp_path) in sys.path
    with pytest.raises(DistillError, match="cannot import 'no_such_module_xyz'"):
        resolve("no_such_module_xyz:Net")


class _ViewNet(nn.Module):
    """Research-code style: ``.view`` of a conv output, which channels-last memory refuses."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).view(x.shape[0], -1))


def test_a_frozen_cnn_teacher_runs_channels_last_and_a_view_model_stays_contiguous() -> None:
    import copy

    from distill.models.teacher import FrozenTeacher

    torch.manual_seed(0)
    x = torch.randn(16, 1, 28, 28)
    cnn = build_model("cnn", num_classes=10, input_shape=(1, 28, 28), channels=[8, 16], hidden=32).eval()
    ref = copy.deepcopy(cnn)(x)
    frozen = FrozenTeacher(cnn)
    assert torch.allclose(frozen(x), ref, atol=1e-5) and frozen.channels_last
    assert cnn.features[0].conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(frozen(x), frozen(x))  # one layout from then on: the same logits every time
    view = FrozenTeacher(_ViewNet().eval())
    y = torch.randn(5, 1, 8, 8)
    assert torch.allclose(view(y), view.model(y)) and view.channels_last is False
    mlp = FrozenTeacher(build_model("mlp", num_classes=10, input_shape=(784,), hidden=[16]))
    mlp(torch.randn(3, 784))
    assert mlp.channels_last is False


def test_evaluation_runs_a_cnn_channels_last_and_gives_it_back_untouched() -> None:
    from distill.evaluate import predict

    torch.manual_seed(0)
    x = torch.randn(40, 1, 28, 28)
    cnn = build_model("cnn", num_classes=10, input_shape=(1, 28, 28), channels=[8, 16], hidden=32)
    cnn(x[:4]).sum().backward()  # a gradient, as mid-training
    before = [(p, p.data, p.grad) for p in cnn.parameters()]
    seen: list[bool] = []
    conv = cnn.features[1].conv  # 8 -> 16 channels: the two layouts differ (with one channel they coincide)
    hook = conv.register_forward_pre_hook(
        lambda m, args: seen.append(m.weight.is_contiguous(memory_format=torch.channels_last) and
                                    not m.weight.is_contiguous()))
    logits = predict(cnn, x, batch_size=16)
    hook.remove()
    assert seen and all(seen)  # every batch ran channels-last
    # the very tensors it had: same memory, same strides (a layout change would have copied them)
    assert all(p.data_ptr() == d.data_ptr() and p.stride() == d.stride() and p.grad.data_ptr() == g.data_ptr()
               and p.grad.stride() == g.stride() for p, d, g in before)
    with torch.no_grad():
        assert torch.allclose(logits, cnn.eval()(x), atol=1e-5)
    view = _ViewNet()
    assert torch.allclose(predict(view, torch.ones(3, 1, 8, 8)), view.eval()(torch.ones(3, 1, 8, 8)))
