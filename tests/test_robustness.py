"""Adversarial robustness (``eval.robustness``): FGSM and PGD on tiny models, the teacher's frozen wrapper, the
recipe key, the refusal of dict inputs and the report's table after a tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import distill
from distill.data import ArrayDataset, DataSplits
from distill.data.base import normalize
from distill.errors import DistillError
from distill.evaluate import predict, topk_accuracy
from distill.models import FrozenTeacher
from distill.plan import recipe_identity
from distill.recipe import RobustnessSpec, recipe_from_dict
from distill.report import write_report
from distill.robustness import forward_of, pgd, robustness_metrics
from distill.run import Trained
from distill.strategies.ensemble import EnsembleModel
from helpers import cli, digits_recipe, write_recipe
from user_parts import PairItems, TinyNet, digits_arrays

MEAN, STD = (0.3,), (0.4,)  # not the identity: eps must be converted to normalised units


def _splits(x_raw: torch.Tensor, y: torch.Tensor, mean: tuple = MEAN, std: tuple = STD) -> DataSplits:
    """Every split the same normalised data (raw inputs ``x_raw`` in [0, 1])."""
    ds = ArrayDataset(normalize(x_raw, mean, std), y)
    return DataSplits(ds, ds, ds, num_classes=int(y.max()) + 1, input_shape=tuple(x_raw.shape[1:]), mean=mean,
                      std=std, name="synthetic")


@pytest.fixture(scope="module")
def linear() -> tuple[nn.Module, DataSplits]:
    """A linear model trained on 600 normalised digits (every split is those 600: it fits them all)."""
    torch.manual_seed(0)
    x, y = digits_arrays()
    data = _splits(x[:600], y[:600])
    model = nn.Linear(64, 10)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(data.train.x), y[:600]).backward()
        opt.step()
    return model, data


def _spec(**changes: object) -> RobustnessSpec:
    return RobustnessSpec.model_validate({"eps": 0.0, "steps": 5, **changes})


def test_fgsm_at_eps_zero_is_clean_accuracy_exactly(linear: tuple[nn.Module, DataSplits]) -> None:
    model, data = linear
    m = robustness_metrics(_spec(eps=0.0), data, {"student": Trained(model)}, batch_size=64, seed=0)["student"]
    clean = topk_accuracy(predict(model, data.test.x), data.test.y)
    assert m["fgsm_top1"] == m["robust_clean_top1"] == m["pgd_top1"] == pytest.approx(clean, abs=0)
    assert m["robust_eps"] == 0.0 and m["robust_samples"] == 600 and m["robust_range"] == [0.0, 1.0]


def test_attacks_at_a_moderate_eps_lower_the_accuracy(linear: tuple[nn.Module, DataSplits]) -> None:
    model, data = linear
    m = robustness_metrics(_spec(eps=0.1), data, {"student": Trained(model)}, batch_size=64, seed=0)["student"]
    assert m["robust_clean_top1"] > 0.9
    assert m["fgsm_top1"] < m["robust_clean_top1"] - 0.3
    assert m["pgd_top1"] <= m["fgsm_top1"] + 0.02  # several steps do at least about as well as one
    few = robustness_metrics(_spec(eps=0.1, samples=100), data, {"s": Trained(model)}, batch_size=64, seed=0)["s"]
    assert few["robust_samples"] == 100 and few["fgsm_top1"] < few["robust_clean_top1"]


def test_a_saturated_softmax_masks_the_gradient_and_the_report_shows_it(linear: tuple) -> None:
    model, data = linear
    loud = nn.Linear(64, 10)
    loud.load_state_dict({k: v * 1000 for k, v in model.state_dict().items()})  # same predictions, logits x1000
    spec, trained = _spec(eps=0.1), {"plain": Trained(model), "loud": Trained(loud)}
    m = robustness_metrics(spec, data, trained, batch_size=64, seed=0)
    assert m["plain"]["zero_grad_share"] == 0 and m["loud"]["zero_grad_share"] > 0.5
    assert m["loud"]["robust_clean_top1"] == m["plain"]["robust_clean_top1"]
    assert m["loud"]["fgsm_top1"] > m["plain"]["fgsm_top1"] + 0.3  # looks robust: nothing rescales its logits


def test_pgd_stays_in_the_eps_ball_and_the_range_per_channel() -> None:
    torch.manual_seed(0)
    mean, std = (0.5, 0.2, 0.1), (0.25, 0.5, 0.1)
    raw = torch.rand(32, 3, 4, 4)  # (B, C, H, W) in [0, 1]
    x = normalize(raw, mean, std)
    y = torch.randint(0, 5, (32,))
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5))
    s, m = torch.tensor(std).view(1, 3, 1, 1), torch.tensor(mean).view(1, 3, 1, 1)
    eps, lo, hi = 0.05, torch.tensor(0.1), torch.tensor(0.9)  # a range narrower than the data: clamps happen
    runs = [pgd(forward_of(model), x, y, eps / s, (lo - m) / s, (hi - m) / s, steps=4, step_size=0.02 / s,
                generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])  # the random start comes from the seed
    adv = runs[0] * s + m  # back to raw units
    tol = 1e-5
    assert ((adv - raw).abs() <= eps + tol).all()
    outside = (raw < lo) | (raw > hi)  # clean pixels outside the range never move further out
    inside = ~outside
    assert ((adv >= lo - tol) & (adv <= hi + tol))[inside].all()
    assert (adv[outside] - raw[outside]).abs().max() <= eps + tol
    assert ((adv - raw).abs().amax(dim=(0, 2, 3)) > 0.8 * eps).all()  # it moved, in every channel


def test_the_teacher_is_attacked_through_its_wrapper_and_gets_no_gradient(linear: tuple) -> None:
    model, data = linear
    teacher = nn.Sequential(nn.Linear(64, 10))
    with torch.no_grad():
        teacher[0].weight.copy_(model.weight / 2)  # expects inputs scaled by 2 (its own normalisation below)
        teacher[0].bias.copy_(model.bias)
    frozen = FrozenTeacher(teacher, student_norm=(MEAN, STD), teacher_norm=((MEAN[0],), (STD[0] / 2,)))
    student = TinyNet()
    student.train()
    trained = {"teacher": Trained(teacher, frozen=frozen), "student": Trained(student)}
    m = robustness_metrics(_spec(eps=0.1), data, trained, batch_size=128, seed=0)
    assert m["teacher"]["robust_clean_top1"] > 0.9 and m["teacher"]["fgsm_top1"] < 0.6  # gradients reached x
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is None and p.requires_grad for p in student.parameters())  # only x had a gradient
    assert student.training and not teacher.training  # modes as they were


def test_an_ensemble_of_teachers_is_attacked_through_its_members(linear: tuple) -> None:
    model, data = linear
    members = {k: FrozenTeacher(nn.Sequential(nn.Linear(64, 10)), student_norm=(MEAN, STD)) for k in "ab"}
    for frozen in members.values():
        frozen.wrapped.load_state_dict({"0.weight": model.weight, "0.bias": model.bias})
    ensemble = EnsembleModel(members, "mean", None, "logits", 1.0)
    m = robustness_metrics(_spec(eps=0.1), data, {"teacher": Trained(ensemble, frozen=ensemble)}, batch_size=128,
                           seed=0)["teacher"]
    assert m["robust_clean_top1"] > 0.9 and m["fgsm_top1"] < 0.6


def test_recipe_key_unknown_keys_shorthand_and_fingerprint(tmp_path: Path) -> None:
    raw = digits_recipe(tmp_path)
    plain = recipe_from_dict(raw)
    assert "robustness" not in plain.model_dump(mode="json")["eval"]  # existing recipes dump as before
    on = recipe_from_dict({**raw, "eval": {"latency": False, "robustness": True}})
    assert on.eval.robustness == RobustnessSpec()
    assert recipe_identity(on) == recipe_identity(plain)  # evaluation only: fingerprints unchanged
    with pytest.raises(DistillError, match=r"unknown key 'eval\.robustness\.epsilon'; did you mean 'eps'"):
        recipe_from_dict({**raw, "eval": {"robustness": {"epsilon": 0.1}}})
    with pytest.raises(DistillError, match=r"eval\.robustness\.range: .*lo < hi"):
        recipe_from_dict({**raw, "eval": {"robustness": {"range": [1, 0]}}})


def test_dict_inputs_are_refused_in_one_line_before_training(tmp_path: Path) -> None:
    with pytest.raises(DistillError) as e:
        distill.fit(teacher=TinyNet(hidden=32), student=TinyNet(), train=PairItems("train"), val=PairItems("val"),
                    test=PairItems("test"), teacher_inputs="a", student_inputs="b", output_dir=tmp_path / "out",
                    robustness={"eps": 0.1}, latency=False, log=lambda _: None)
    assert "eval.robustness" in str(e.value) and "dict" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out" / "student").exists()
    with pytest.raises(DistillError, match=r"eval\.robustness\.stepz"):
        distill.fit(teacher=TinyNet(), student=TinyNet(), train=PairItems("train"), robustness={"stepz": 1},
                    output_dir=tmp_path / "o")


def test_report_table_only_with_robustness_metrics(tmp_path: Path) -> None:
    base = {"top1": 0.9, "top1_last": 0.9, "params": 10}
    robust = {"robust_clean_top1": 0.9, "fgsm_top1": 0.25, "pgd_top1": 0.125, "robust_eps": 0.3, "pgd_steps": 7,
              "pgd_step_size": 0.1, "robust_range": [0.0, 1.0], "robust_samples": 64, "zero_grad_share": 0.5}
    md = write_report(tmp_path / "a", models={"student": base}, histories={}, recipe={}, seed=0, figures=False)
    assert "Robustness" not in md.read_text()
    md = write_report(tmp_path / "b", models={"student": {**base, **robust}}, histories={}, recipe={}, seed=0,
                      figures=False)
    assert "| model | clean top-1 | FGSM eps=0.3 | PGD-7 eps=0.3 | zero gradient |" in md.read_text()
    assert "| student | 90.00% | 25.00% | 12.50% | 50.00% |" in md.read_text()


def test_a_tiny_run_reports_robustness_for_every_role(tmp_path: Path, capsys) -> None:
    raw = digits_recipe(tmp_path, eval={"latency": False, "robustness": {"eps": 0.1, "steps": 3, "samples": 64}})
    code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, raw)))
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    for role in ("teacher", "scratch", "student"):
        m = report["models"][role]
        assert 0 <= m["pgd_top1"] <= m["robust_clean_top1"] and 0 <= m["fgsm_top1"] <= 1, role
        assert m["robust_eps"] == 0.1 and m["pgd_steps"] == 3 and m["robust_samples"] == 64
    assert report["models"]["teacher"]["fgsm_top1"] < report["models"]["teacher"]["robust_clean_top1"]
    md = (tmp_path / "out" / "report.md").read_text()
    table = md.split("## Robustness", 1)[1]
    assert "| model | clean top-1 | FGSM eps=0.1 | PGD-3 eps=0.1 | zero gradient |" in table
    assert all(f"| {role} |" in table for role in ("teacher", "scratch", "student"))
