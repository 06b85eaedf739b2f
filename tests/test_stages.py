"""``layers: auto``: stages found on every zoo family and on an external CNN, paired by relative depth, and every
feature method training with it; the reference layer defaults each method takes from it."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import distill
from distill.engine.loop import setup_methods
from distill.errors import DistillError
from distill.methods import METHODS
from distill.methods.at import at_loss
from distill.methods.base import MethodSet
from distill.methods.ce import CE
from distill.models import FrozenTeacher, build_model
from distill.stages import KINDS, auto_pairs, find_layout, pair_by_depth
from distill.taps import FeatureTaps
from helpers import cli
from user_parts import UserCNN, WideUserCNN, digits_arrays

IMAGE = (3, 32, 32)


def _layout(name: str, shape: tuple[int, ...] = IMAGE, **kw):
    model = build_model(name, num_classes=10, input_shape=shape, **kw)
    return model, find_layout(model, torch.zeros(2, *shape))


@pytest.mark.parametrize(("name", "stages"), [
    ("resnet8", ["layer1", "layer2", "layer3"]),
    ("resnet20", ["layer1", "layer2", "layer3"]),
    ("resnet8x4", ["layer1", "layer2", "layer3"]),  # its leaf stem (conv1/bn1, 32 channels) is no stage
    ("wrn_16_2", ["block1", "block2", "block3"]),  # the pre-activation BN of block1.0 does not split a stage
    ("vgg8", ["block0", "block1", "block2", "block3", "block4"]),  # pools between blocks are no stages
    ("cnn", ["features.0.relu", "features.1.relu"]),  # conv-BN-ReLU units, before their max-pool
])
def test_zoo_stages(name: str, stages: list[str]) -> None:
    _, layout = _layout(name)
    assert [s.path for s in layout.stages] == stages
    assert layout.embedding == "fc:input"
    sizes = [s.shape[2] * s.shape[3] for s in layout.stages]
    assert sizes == sorted(sizes, reverse=True)  # resolution never grows with depth


def test_sequences_and_vectors() -> None:
    _, seq = _layout("resnet8", (1, 40))
    assert [(s.path, s.shape[1:]) for s in seq.stages] == [("layer1", (16, 40)), ("layer2", (32, 20)),
                                                           ("layer3", (64, 10))]
    _, mlp = _layout("mlp", (1, 40))
    assert [s.path for s in mlp.stages] == ["layers.0", "layers.1"] and mlp.embedding == "fc:input"


def test_preactivation_taps_read_the_value_before_the_stage_relu() -> None:
    model, layout = _layout("resnet8")
    pre = [s.preact for s in layout.stages]
    assert pre == ["layer1.0.relu:input", "layer2.0.relu:input", "layer3.0.relu:input"]
    model.eval()
    with FeatureTaps(model, ["layer2", pre[1]]) as taps, torch.no_grad():
        model(torch.randn(4, *IMAGE))
    assert (taps.feats[pre[1]] < 0).any()  # a pre-activation: negatives survive
    assert torch.equal(F.relu(taps.feats[pre[1]]), taps.feats["layer2"])
    _, wrn = _layout("wrn_16_2")  # a pre-activation network: the block output already is one
    assert all(s.preact == s.path for s in wrn.stages)


def test_external_cnn_named_its_own_way() -> None:
    layout = find_layout(UserCNN(), torch.zeros(2, 64))
    assert [(s.path, s.preact) for s in layout.stages] == [("stem", "stem.2:input"), ("down1", "down1.2:input"),
                                                          ("down2", "down2.2:input")]
    assert layout.embedding == "classifier:input" and layout.embedding_shape == (2, 32)


def test_pairing_by_relative_depth() -> None:
    assert pair_by_depth(3, 3) == [(0, 0), (1, 1), (2, 2)]
    assert pair_by_depth(3, 5) == [(0, 1), (1, 2), (2, 4)]
    assert pair_by_depth(5, 3) == [(1, 0), (2, 1), (4, 2)]
    assert pair_by_depth(1, 4) == [(0, 3)]
    for n, m in itertools.product(range(1, 7), repeat=2):
        pairs = pair_by_depth(n, m)
        assert len(pairs) == min(n, m) and pairs[-1] == (n - 1, m - 1)  # the last stage meets the last
        assert all(a < b for a, b in zip(pairs, pairs[1:]))  # strictly deeper on both sides, no stage twice


ZOO = ["resnet8", "resnet32x4", "wrn_16_2", "vgg8", "cnn", "lenet5", "mlp"]  # every vision family of the zoo


@pytest.mark.parametrize(("teacher", "student"), list(itertools.permutations(ZOO, 2)))
def test_every_zoo_pair_gets_sensible_pairs(teacher: str, student: str) -> None:
    _, t = _layout(teacher)
    _, s = _layout(student)
    for kind in KINDS:
        s_paths, t_paths = auto_pairs(kind, s, t, "test")
        assert len(s_paths) == len(t_paths) >= 1
    s_paths, t_paths = auto_pairs("stages", s, t, "test")
    assert len(s_paths) == min(len(s.stages), len(t.stages))
    assert (s_paths[-1], t_paths[-1]) == (s.stages[-1].path, t.stages[-1].path)
    t_depth = [[x.path for x in t.stages].index(p) for p in t_paths]
    assert t_depth == sorted(t_depth)
    assert auto_pairs("embedding", s, t, "test") == (["fc:input"], ["fc:input"])


AUTO_METHODS = sorted(n for n in METHODS.names() if METHODS.get(n).auto_layers is not None)


def test_every_feature_method_defaults_to_auto() -> None:
    assert set(AUTO_METHODS) >= {"at", "nst", "vid", "fitnet", "ab", "ofd", "fsp", "ft", "sp", "reviewkd", "rkd",
                                 "pkt", "cc", "crd", "hkd", "irg", "kdsvd"}
    for name in AUTO_METHODS:
        m = METHODS.get(name)()
        assert m.spec()["student_layers"] == "auto" and m.spec()["teacher_layers"] == "auto"


@pytest.mark.parametrize("name", AUTO_METHODS)
def test_every_feature_method_trains_with_auto_layers_on_an_external_pair(name: str, tmp_path) -> None:
    """Teacher and student are external CNNs named their own way; no layer path is given."""
    x, y = digits_arrays()
    torch.manual_seed(0)
    student = UserCNN()
    before = [p.detach().clone() for p in student.parameters()]
    method = {"name": name, "pretrain_epochs": 1} if name in ("ab", "fsp", "ft") else name
    res = distill.fit(teacher=WideUserCNN(), student=student, train=(x[:256], y[:256]), val=(x[256:320], y[256:320]),
                      test=(x[320:400], y[320:400]), methods=["ce", method], epochs=1, batch_size=64, compare=False,
                      latency=False, cache="off", output_dir=tmp_path, log=lambda _: None)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in res.history)
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))


def _resolved(name: str, teacher: str = "resnet20", student: str = "resnet8", **kwargs):
    t = build_model(teacher, num_classes=10, input_shape=IMAGE)
    s = build_model(student, num_classes=10, input_shape=IMAGE)
    m = METHODS.get(name)(**kwargs)
    setup_methods(MethodSet([CE(), m]), s, FrozenTeacher(t), torch.randn(4, *IMAGE), num_samples=64, num_classes=10)
    return m


@pytest.mark.parametrize(("name", "student", "teacher"), [
    ("at", ["layer1", "layer2", "layer3"], ["layer1", "layer2", "layer3"]),  # RepDistiller feat[1:-1]
    ("nst", ["layer1", "layer2", "layer3"], ["layer1", "layer2", "layer3"]),
    ("vid", ["layer1", "layer2", "layer3"], ["layer1", "layer2", "layer3"]),
    ("fitnet", ["layer2"], ["layer2"]),  # RepDistiller hint_layer 2
    ("sp", ["layer3"], ["layer3"]),  # RepDistiller feat[-2]: the last map before pooling
    ("ab", ["layer1.0.relu:input", "layer2.0.relu:input", "layer3.0.relu:input"],
     ["layer1.2.relu:input", "layer2.2.relu:input", "layer3.2.relu:input"]),  # pre-ReLU, both sides
    ("ofd", ["layer1.0.relu:input", "layer2.0.relu:input", "layer3.0.relu:input"],
     ["layer1.2.relu:input", "layer2.2.relu:input", "layer3.2.relu:input"]),  # mdistiller preact_feats[1:]
    ("reviewkd", ["layer1", "layer2", "layer3", "fc:input"],
     ["layer1.2.relu:input", "layer2.2.relu:input", "layer3.2.relu:input", "fc:input"]),  # mdistiller
    ("rkd", ["fc:input"], ["fc:input"]),
])
def test_reference_layers_by_default(name: str, student: list[str], teacher: list[str]) -> None:
    m = _resolved(name)
    pairs = getattr(m, "pairs", None) or list(zip(m.s_layers, m.t_layers))
    assert [p[0] for p in pairs] == student and [p[1] for p in pairs] == teacher
    assert m.spec()["student_layers"] == "auto"  # the recipe entry keeps 'auto'


def test_initialisation_stage_methods_and_weights() -> None:
    for name in ("ab", "fsp"):
        m = METHODS.get(name)()
        assert (m.pretrain_epochs, m.main) == (30, False)  # RepDistiller init_epochs, then ce (+ kd) alone
    assert METHODS.get("reviewkd")().beta == 5.0
    with pytest.raises(DistillError, match="never applies"):
        METHODS.get("ab")(pretrain_epochs=0)
    with pytest.raises(DistillError, match="both are 'auto'"):
        METHODS.get("at")(student_layers="auto", teacher_layers=["layer1"])


def test_at_pools_the_larger_map_down_as_the_reference() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)

    def ref(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # RepDistiller AT.at_loss
        if a.shape[2] > b.shape[2]:
            a = F.adaptive_avg_pool2d(a, b.shape[2:])
        elif a.shape[2] < b.shape[2]:
            b = F.adaptive_avg_pool2d(b, a.shape[2:])

        def at(f: torch.Tensor) -> torch.Tensor:
            return F.normalize(f.pow(2).mean(1).view(f.size(0), -1))
        return (at(a) - at(b)).pow(2).mean()

    assert torch.allclose(at_loss(s, t), ref(s, t)) and torch.allclose(at_loss(t, s), ref(t, s))


def test_auto_with_a_student_that_has_no_map_names_the_problem() -> None:
    with pytest.raises(DistillError, match="at: layers: auto found no stage in the student"):
        t = build_model("resnet8", num_classes=10, input_shape=(1, 40))
        s = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(40, 10))
        setup_methods(MethodSet([METHODS.get("at")()]), s, FrozenTeacher(t), torch.randn(2, 1, 40),
                      num_samples=8, num_classes=10)


def test_inspect_pairs_prints_both_layouts_and_the_pairs_with_shapes(capsys) -> None:
    code, out, err = cli(capsys, "inspect", "--pairs", "user_parts:WideUserCNN", "user_parts:UserCNN",
                         "--input-shape", "64")
    assert code == 0, err
    assert "stage 2: down1 (B, 64, 4, 4)  (pre-activation: down1.2:input)" in out  # the teacher's
    assert "middle: down1 (B, 16, 4, 4) <- down1 (B, 64, 4, 4)" in out
    assert "embedding: classifier:input (B, 32) <- classifier:input (B, 128)" in out
    code, _, err = cli(capsys, "inspect", "--pairs", "resnet8")
    assert code == 2 and err.startswith("error: inspect --pairs TEACHER STUDENT") and err.count("\n") == 1


@pytest.mark.parametrize("name", AUTO_METHODS)
def test_unresolved_auto_layers_and_a_bare_string_are_one_clear_error(name: str) -> None:
    from distill.types import Batch, ModelOutput, SetupContext, StepContext

    m = METHODS.get(name)(**({"main": True} if name in ("ab", "fsp") else {}))
    out = ModelOutput(torch.randn(4, 10), {})
    with pytest.raises(DistillError, match="still 'auto'"):
        m.setup(SetupContext({}, {}, 10, 10))
        m(out, out, Batch(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), torch.arange(4)),
          StepContext(epoch=0, step=0, epochs=1, steps_per_epoch=1))
    with pytest.raises(DistillError, match="student_layers"):
        METHODS.get(name)(student_layers="layer3", teacher_layers="layer3")  # a path, not a list of paths


def test_nst_and_vid_pool_the_larger_map_down_as_the_reference() -> None:
    from distill.methods.nst import nst_loss
    from distill.types import Batch, ModelOutput, SetupContext, StepContext

    torch.manual_seed(0)
    small, large = torch.randn(2, 4, 4, 4), torch.randn(2, 6, 8, 8)
    pooled = F.adaptive_avg_pool2d(large, (4, 4))
    assert torch.allclose(nst_loss(small, large), nst_loss(small, pooled))  # teacher larger: it is pooled
    assert torch.allclose(nst_loss(large, small), nst_loss(pooled, small))  # student larger: it is pooled
    vid = METHODS.get("vid")(student_layers=["s"], teacher_layers=["t"])
    vid.setup(SetupContext({"s": (2, 4, 4, 4)}, {"t": (2, 6, 8, 8)}, 8, 10))
    mean, var = vid.regressors[0](small)  # the regressor works at the smaller (student's) size
    assert mean.shape == (2, 6, 16)
    batch = Batch(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long), torch.arange(2))
    ctx = StepContext(epoch=0, step=0, epochs=1, steps_per_epoch=1)
    out = vid(ModelOutput(torch.zeros(2, 10), {"s": small}), ModelOutput(torch.zeros(2, 10), {"t": large}), batch, ctx)
    target = pooled.flatten(2)  # (B, C, 16): the teacher pooled to 4x4, as RepDistiller's VIDLoss
    expect = 0.5 * ((mean - target).pow(2) / var.view(1, -1, 1) + var.log().view(1, -1, 1)).mean()
    assert torch.allclose(out.loss, expect)
