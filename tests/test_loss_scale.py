"""Loss-scale safety (``distill.engine.scale``): gradient norms per loss term measured before training, the warning
when a distillation term dwarfs the cross-entropy, ``weight: auto``, and that the check leaves training untouched."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.api import _method_set, _methods
from distill.data.base import ArrayDataset
from distill.data.loader import BatchLoader
from distill.engine.loop import FitJob, _setup_methods, _Step, fit
from distill.engine.scale import check_loss_scale, measure
from distill.errors import DistillError
from distill.methods import CE, CRD, KD, FitNet, MethodSet
from distill.models import MODELS
from distill.models.teacher import FrozenTeacher
from distill.recipe import LossScaleSpec, TrainSpec, recipe_from_dict
from helpers import digits_recipe

TAPS = {"student_layers": ["fc:input"], "teacher_layers": ["fc:input"]}


def _data(n: int = 64) -> ArrayDataset:
    gen = torch.Generator().manual_seed(0)
    return ArrayDataset(torch.randn(n, 1, 8, 8, generator=gen), torch.randint(0, 4, (n,), generator=gen))


def _cnn(seed: int, width: int) -> nn.Module:
    torch.manual_seed(seed)
    return MODELS.get("cnn")(num_classes=4, input_shape=(1, 8, 8), channels=[width], hidden=2 * width)


def _job(tmp: Path, methods: list[nn.Module], weights: list[float | str] | None = None, *, epochs: int = 1,
         scale: LossScaleSpec | None = None, **kw: object) -> tuple[FitJob, list[str]]:
    """A tiny distillation job on random 8x8 images: a wider CNN teaches a narrow one."""
    lines: list[str] = []
    train = TrainSpec(epochs=epochs, optimizer={"name": "sgd", "lr": 0.05}, loss_scale=scale)
    job = FitJob(model=_cnn(0, 4), methods=MethodSet(methods, weights), loader=BatchLoader(_data(), 16, shuffle=True),
                 train=train, out_dir=tmp, seed=0, fingerprint="fp", teacher=FrozenTeacher(_cnn(1, 8)), num_classes=4,
                 log=lines.append, **kw)
    return job, lines


def _prepared(job: FitJob) -> _Step:
    """What ``fit`` does before the check: connectors built, the step's forward ready."""
    _setup_methods(job)
    job.methods.to(job.device)
    return _Step(job)


def _direct_norms(job: FitJob, batches: int) -> dict[str, float]:
    """ce and fitnet gradient norms by hand: plain forward passes and torch.autograd on copies."""
    model, hint = copy.deepcopy(job.model).train(), copy.deepcopy(job.methods.methods[1])
    feats: dict[str, torch.Tensor] = {}
    model.fc.register_forward_hook(lambda _m, args, _o: feats.__setitem__("s", args[0]))
    job.teacher.wrapped.fc.register_forward_hook(lambda _m, args, _o: feats.__setitem__("t", args[0]))
    params = list(model.parameters())
    job.loader.set_epoch(0)
    sums = {"ce": 0.0, "fitnet": 0.0}
    for batch, _ in zip(job.loader, range(batches)):
        ce = F.cross_entropy(model(batch.input), batch.target)
        job.teacher(batch.input)
        terms = {"ce": ce, "fitnet": hint.beta * F.mse_loss(hint.connectors[0](feats["s"]), feats["t"])}
        for name, term in terms.items():
            grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
            sums[name] += float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None)))
    return {k: v / batches for k, v in sums.items()}


def test_measured_norms_equal_a_direct_autograd_computation(tmp_path: Path) -> None:
    job, _ = _job(tmp_path, [CE(), FitNet(**TAPS, beta=100.0)])
    step = _prepared(job)
    job.loader.set_epoch(5)
    scale = measure(job, step, 3)
    assert job.loader.epoch == 5  # measured on epoch 0's first batches, the loader left where it was
    assert scale is not None and scale.batches == 3 and scale.owners == {"ce": 0, "fitnet": 1}
    direct = _direct_norms(job, 3)
    assert scale.terms["ce"] == pytest.approx(direct["ce"], rel=1e-5)
    assert scale.terms["fitnet"] == pytest.approx(direct["fitnet"], rel=1e-5)
    assert scale.ce == pytest.approx(direct["ce"], rel=1e-5)


def test_a_term_1000x_the_cross_entropy_warns_and_a_balanced_one_does_not(tmp_path: Path) -> None:
    job, _ = _job(tmp_path, [CE(), FitNet(**TAPS, beta=1.0)])
    scale = measure(job, _prepared(job), 2)
    ratio = scale.terms["fitnet"] / scale.ce
    for factor, warned in ((1.0, False), (1000.0, True)):
        job, lines = _job(tmp_path / str(factor), [CE(), FitNet(**TAPS, beta=1.0)], [1.0, factor / ratio])
        check_loss_scale(job, _prepared(job), resumed=False)
        warnings = [line for line in lines if line.startswith("warning:")]
        assert bool(warnings) == warned, lines
        record = json.loads((tmp_path / str(factor) / "loss_scale.json").read_text())
        assert record["ratios"]["fitnet"] == pytest.approx(factor, rel=1e-4)
        assert record["warnings"] == warnings
    assert warnings == [f"warning: fitnet gradient is 1000x the cross-entropy's (fitnet beta 1, weight "
                        f"{1000.0 / ratio:g}); the student may collapse: lower its weight or set weight: auto"]


def test_a_blend_of_labels_and_teacher_is_not_flagged_but_a_term_beside_it_is(tmp_path: Path) -> None:
    """kd's own alpha/beta set the label/teacher balance (its soft term dominates by design): no warning for it,
    while a hint weighted 1e6 beside it still is flagged against kd's cross-entropy."""
    job, lines = _job(tmp_path, [KD(T=4.0, alpha=1e-6, beta=1.0), FitNet(**TAPS, beta=1e6)])
    check_loss_scale(job, _prepared(job), resumed=False)
    record = json.loads((tmp_path / "loss_scale.json").read_text())
    assert record["ratios"]["kd"] > 10  # kd's soft term measured far above its own tiny cross-entropy ...
    warned = [line for line in lines if line.startswith("warning:")]
    assert len(warned) == 1 and warned[0].startswith("warning: fitnet gradient")  # ... and not warned about


def test_without_cross_entropy_a_term_is_compared_with_the_largest_other(tmp_path: Path) -> None:
    job, lines = _job(tmp_path, [FitNet(**TAPS, beta=1.0), FitNet(**TAPS, beta=1.0)], [1.0, 1e5])
    check_loss_scale(job, _prepared(job), resumed=False)
    norms = json.loads((tmp_path / "loss_scale.json").read_text())["norms"]
    ratio = norms["fitnet.fitnet"] / norms["fitnet"]  # two hints (own connectors), the second weighted 1e5
    assert ratio > 1000
    assert [line for line in lines if line.startswith("warning:")] == [
        f"warning: fitnet.fitnet gradient is {ratio:.0f}x fitnet's (the largest other term) (fitnet beta 1, weight "
        "100000); it drowns the other terms: lower its weight"]


def test_weight_auto_sets_the_ratio_to_the_target_deterministically(tmp_path: Path) -> None:
    chosen = []
    for run in ("a", "b"):
        job, lines = _job(tmp_path / run, [CE(), FitNet(**TAPS)], [1.0, "auto"], scale=LossScaleSpec(target=0.5))
        step = _prepared(job)
        check_loss_scale(job, step, resumed=False)
        chosen.append(job.methods.weights[1])
    assert chosen[0] == chosen[1] and chosen[0] < 0.1  # beta 100 hint, scaled down to half the ce's pull
    assert any(f"weight: auto: fitnet weight {chosen[0]:.4g}" in line for line in lines)
    record = json.loads((tmp_path / "b" / "loss_scale.json").read_text())
    assert record["auto"]["1"]["weight"] == chosen[0] and record["ratios"]["fitnet"] == pytest.approx(0.5)
    job.methods.auto = []  # measure again at the chosen weight
    again = measure(job, step, 2)
    assert again.terms["fitnet"] / again.ce == pytest.approx(0.5, rel=1e-4)


def test_the_check_leaves_training_bit_identical(tmp_path: Path) -> None:
    """BatchNorm statistics, CRD's memory banks and its Z estimate, RNG and data order are untouched."""
    runs = {}
    for check in (True, False):
        methods = [KD(T=4.0, alpha=0.5, beta=0.5), FitNet(**TAPS, beta=100.0), CRD(**TAPS, feat_dim=8, nce_k=16)]
        job, lines = _job(tmp_path / str(check), methods, epochs=2, scale=LossScaleSpec(check=check))
        fit(job)
        assert any("loss scale" in line for line in lines) == check
        runs[check] = ({**job.model.state_dict(), **job.methods.state_dict()}, [h["loss"] for h in job.history])
    (on, loss_on), (off, loss_off) = runs[True], runs[False]
    assert loss_on == loss_off and on.keys() == off.keys() and all(torch.equal(on[k], off[k]) for k in on)


def test_resume_keeps_the_auto_weight(tmp_path: Path) -> None:
    def stop_at_epoch_2(_model: nn.Module, calls: list[int] = []) -> dict:  # noqa: B006 - a call counter
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return {}

    full, _ = _job(tmp_path / "full", [CE(), FitNet(**TAPS)], [1.0, "auto"], epochs=3)
    fit(full)
    killed, _ = _job(tmp_path / "killed", [CE(), FitNet(**TAPS)], [1.0, "auto"], epochs=3, evaluate=stop_at_epoch_2)
    with pytest.raises(RuntimeError, match="killed"):
        fit(killed)
    resumed, lines = _job(tmp_path / "killed", [CE(), FitNet(**TAPS)], [1.0, "auto"], epochs=3, resume=True)
    torch.manual_seed(123)  # other connector weights before the checkpoint loads: a new measurement would differ
    fit(resumed)
    assert resumed.methods.weights[1] == full.methods.weights[1] != 1.0
    assert any("as measured when the run started" in line for line in lines)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_weight_auto_is_refused_where_it_cannot_work(tmp_path: Path) -> None:
    job, _ = _job(tmp_path, [FitNet(**TAPS)], ["auto"])
    with pytest.raises(DistillError, match=r"methods\.0 \(fitnet\): weight: auto needs a cross-entropy"):
        check_loss_scale(job, _prepared(job), resumed=False)
    job, _ = _job(tmp_path, [KD(), FitNet(**TAPS)], ["auto", 1.0])
    with pytest.raises(DistillError, match=r"methods\.0 \(kd\): .* its own terms include it \(ce\)"):
        check_loss_scale(job, _prepared(job), resumed=False)


@pytest.mark.parametrize(("change", "message"), [
    ({"train": {"loss_scale": {"max_ratio": -1}}}, "train.loss_scale.max_ratio: input should be greater than 0"),
    ({"train": {"loss_scale": {"max_ratoi": 5}}}, "unknown key 'train.loss_scale.max_ratoi'; did you mean 'max_ratio'"),
    ({"train": {"loss_scale": {"batches": 0}}}, "train.loss_scale.batches"),
    ({"method": {"name": "fitnet", "weight": "big"}}, "methods.0.weight: value error, must be a number or 'auto'"),
])
def test_bad_options_name_the_key(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(DistillError, match=message.replace(".", r"\.").replace("(", r"\(")):
        recipe_from_dict(digits_recipe(tmp_path, **change))


def test_recipes_and_python_both_accept_weight_auto(tmp_path: Path) -> None:
    from distill.build import build_methods

    raw = digits_recipe(tmp_path, train={"epochs": 1, "loss_scale": {"target": 0.5}})
    raw.pop("method")
    raw["methods"] = [{"name": "ce"}, {"name": "fitnet", "weight": "auto"}]
    recipe = recipe_from_dict(raw)
    assert build_methods(recipe).auto == [1] and recipe.train.loss_scale.target == 0.5
    assert _method_set(_methods(["ce", {"name": "fitnet", "weight": "auto"}])).auto == [1]
    assert "loss_scale" not in TrainSpec().model_dump()  # unset: recipes and fingerprints stay as they were


def test_bench_method_args_take_weight_auto_and_refuse_other_strings(tmp_path: Path) -> None:
    from distill.bench import load_method_args

    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("fitnet: {weight: auto}\n")
    bad.write_text("fitnet: {weight: big}\n")
    assert load_method_args(str(good)) == {"fitnet": {"weight": "auto"}}
    with pytest.raises(DistillError, match="fitnet.weight: expected a number or 'auto'"):
        load_method_args(str(bad))
