"""Strategies (who teaches whom): each one's own mechanics on tiny data, resume after kill -9, the single-teacher
default unchanged, and one-line errors for bad strategy input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import distill
from distill.errors import DistillError
from distill.io import load_weights
from distill.methods import MethodSet
from distill.methods.kd import KD
from distill.plan import recipe_identity
from distill.recipe import recipe_from_dict
from distill.strategies import STRATEGIES
from distill.strategies.ensemble import WEIGHTINGS, ensemble_logits, teacher_weights
from distill.strategies.mutual import Cohort, PeerMethods
from distill.types import Batch, StepContext
from helpers import cli, digits_recipe, killed_then_resumed, tiny_lm_parts, write_recipe

TEACHER = {"name": "mlp", "hidden": [64], "train": {"epochs": 3, "optimizer": {"name": "adam", "lr": 0.003}}}


def _recipe(tmp: Path, **changes: object) -> dict:
    raw = digits_recipe(tmp, **changes)
    return {k: v for k, v in raw.items() if v is not None}


def _mutual(tmp: Path, **changes: object) -> dict:
    return _recipe(tmp, **{"teacher": None, "strategy": "mutual", **changes})


def _multi(tmp: Path, **changes: object) -> dict:
    teachers = {"a": TEACHER, "b": {**TEACHER, "hidden": [32, 32]}}
    return _recipe(tmp, **{"teacher": None, "teachers": teachers, "strategy": {"name": "multi_teacher"}, **changes})


def _step() -> StepContext:
    return StepContext(epoch=0, step=0, epochs=1, steps_per_epoch=1)


# --- mutual learning -------------------------------------------------------------------------------------------

def test_mutual_students_learn_only_through_their_own_loss_terms() -> None:
    torch.manual_seed(0)
    a, b = nn.Linear(6, 4), nn.Linear(6, 4)
    cohort = Cohort({"a": a, "b": b}, {})
    methods = PeerMethods(MethodSet([KD(T=1.0, alpha=1.0, beta=1.0)]), ["a", "b"])
    x, y = torch.randn(8, 6), torch.tensor([0, 1, 2, 3, -1, -1, 0, 1])
    out = methods(distill.types.ModelOutput(cohort(x)), None, Batch(x, y, torch.arange(8)), _step())
    # a's terms reach a's weights only: b's prediction is a detached target for a (and vice versa)
    a_loss = out.terms["a.ce"] + out.terms["a.kd"]
    grads = torch.autograd.grad(a_loss, list(b.parameters()), allow_unused=True, retain_graph=True)
    assert all(g is None or not g.any() for g in grads)
    assert all(g is not None and g.abs().sum() > 0
               for g in torch.autograd.grad(a_loss, list(a.parameters()), retain_graph=True))
    # the loss is DML's: CE_k + KL(p_j || p_k) for each student
    la, lb = a(x), b(x)
    kl = lambda s, t: nn.functional.kl_div(s.log_softmax(1), t.softmax(1), reduction="batchmean")  # noqa: E731
    ce = lambda s: nn.functional.cross_entropy(s, y, ignore_index=-1)  # noqa: E731
    assert torch.allclose(out.loss, ce(la) + kl(la, lb) + ce(lb) + kl(lb, la), atol=1e-5)
    # one step moves every student
    before = [p.detach().clone() for p in cohort.parameters()]
    opt = torch.optim.SGD(cohort.parameters(), lr=0.1)
    out.loss.backward()
    opt.step()
    assert all(not torch.equal(p0, p1) for p0, p1 in zip(before, cohort.parameters()))


def test_mutual_run_trains_and_reports_every_student(tmp_path: Path, capsys) -> None:
    recipe = write_recipe(tmp_path, _mutual(tmp_path, method={"name": "kd", "T": 1, "alpha": 1.0, "beta": 1.0}))
    code, out, err = cli(capsys, "run", str(recipe))
    assert code == 0, err
    models = json.loads((tmp_path / "out" / "report.json").read_text())["models"]
    assert list(models) == ["scratch", "scratch_student2", "student", "student2"]
    plan = distill.plan_from_recipe(distill.load_recipe(recipe))
    inits = {"student": plan.student, "student2": plan.fresh_student(1)}
    for name, init in inits.items():  # every student moved from its own (distinct) initial weights
        final = load_weights(tmp_path / "out" / name / "model.safetensors")
        assert any(not torch.equal(final[k], v) for k, v in init.state_dict().items())
    assert not torch.equal(inits["student"].state_dict()["fc.weight"], inits["student2"].state_dict()["fc.weight"])
    history = json.loads((tmp_path / "out" / "mutual" / "model.json").read_text())["history"]
    assert {"student.ce", "student.kd", "student2.ce", "student2.kd", "student/val_top1"} <= set(history[0])


def _twin_recipes(tmp_path: Path, **changes: object) -> tuple[Path, Path]:
    """Two copies of one 12-epoch recipe, in ``a/`` and ``b/`` (outputs in ``a/out``, ``b/out``)."""
    paths = []
    for sub in ("a", "b"):
        d = tmp_path / sub
        d.mkdir()
        train = {"epochs": 12, "optimizer": {"name": "adam", "lr": 0.003}}
        paths.append(write_recipe(d, _recipe(d, output_dir=str(d / "out"), train=train, **changes)))
    return paths[0], paths[1]


@pytest.fixture
def role_data(monkeypatch) -> dict[str, tuple[int, int | None]]:
    """Role -> (length of the dataset it trained on, epoch_size), recorded from ``distill.run.train_role``."""
    run_module = sys.modules["distill.run"]
    seen: dict[str, tuple[int, int | None]] = {}
    real = run_module.train_role

    def spy(role, plan, model, methods, train, ds, **kw):  # noqa: ANN001, ANN003, ANN202
        seen[role] = (len(ds), kw.get("epoch_size"))
        return real(role, plan, model, methods, train, ds, **kw)

    monkeypatch.setattr(run_module, "train_role", spy)
    return seen


@pytest.mark.parametrize("unlabelled", [True, False])
def test_mutual_trains_on_the_transfer_set_or_on_the_labels_alone(tmp_path: Path, role_data: dict,
                                                                   unlabelled: bool) -> None:
    seen = role_data
    raw = _mutual(tmp_path, train={"epochs": 1, "optimizer": {"name": "adam", "lr": 0.003}},
                  strategy={"name": "mutual", "unlabelled": unlabelled})
    plan = distill.plan_from_recipe(recipe_from_dict(raw))
    distill.execute(plan, log=lambda _: None)
    n, labelled = len(plan.data.train), len(plan.data.labelled_train())
    assert seen["scratch"] == (labelled, n)
    # the paper's supervised setting sees exactly the scratch students' batches; the transfer setting every sample
    assert seen["mutual"] == ((n, None) if unlabelled else (labelled, n))


@pytest.mark.slow
def test_mutual_kill_then_resume_is_bit_identical(tmp_path: Path) -> None:
    full, killed = _twin_recipes(tmp_path, teacher=None, strategy="mutual", compare=False)
    killed_then_resumed(full, killed, tmp_path / "a" / "out", tmp_path / "b" / "out", role="mutual",
                        weights=("student/model.safetensors", "student2/model.safetensors"))


# --- born-again ------------------------------------------------------------------------------------------------

def test_born_again_generation_learns_from_the_previous_generations_final_weights(tmp_path: Path, monkeypatch,
                                                                                    capsys) -> None:
    import sys

    run_module = sys.modules["distill.run"]
    seen: dict[str, dict[str, torch.Tensor]] = {}
    real = run_module.train_student

    def spy(plan, teacher, **kw):  # noqa: ANN001, ANN003, ANN202
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
        seen[kw["role"]] = {k: v.clone() for k, v in teacher.model.state_dict().items()}
        return real(plan, teacher, **kw)

    monkeypatch.setattr(run_module, "train_student", spy)
    raw = _recipe(tmp_path, teacher=None, strategy={"name": "born_again", "generations": 2})
    outcome = distill.execute(distill.plan_from_recipe(recipe_from_dict(raw)), log=lambda _: None)
    assert list(outcome.trained) == ["gen0", "gen1", "gen2"]
    out = tmp_path / "out"
    for role, prev in (("gen1", out / "scratch"), ("gen2", out / "gen1")):
        saved = load_weights(prev / "model.safetensors")
        assert saved.keys() == seen[role].keys() and all(torch.equal(saved[k], seen[role][k]) for k in saved)
    report = json.loads((out / "report.json").read_text())
    assert list(report["models"]) == ["gen0", "gen1", "gen2"]
    gain = report["models"]["gen2"]["top1_last"] - report["models"]["gen0"]["top1_last"]
    assert report["summary"]["gain_over_scratch"] == pytest.approx(gain)  # the summary compares gen2 with gen0
    assert "(gen2 vs gen0)" in (out / "report.md").read_text()
    code, stdout, err = cli(capsys, "export", str(out), "--format", "safetensors")  # exports the last generation
    assert code == 0, err
    exported = load_weights(out / "export" / "student.safetensors")
    assert all(torch.equal(exported[k], v) for k, v in load_weights(out / "gen2" / "model.safetensors").items())


@pytest.mark.slow
def test_born_again_kill_inside_generation_2_then_resume_is_bit_identical(tmp_path: Path) -> None:
    full, killed = _twin_recipes(tmp_path, teacher=None, strategy={"name": "born_again", "generations": 2})
    stdout = killed_then_resumed(full, killed, tmp_path / "a" / "out", tmp_path / "b" / "out",
                                 role="gen2", weights=("gen1/model.safetensors", "gen2/model.safetensors"))
    assert "scratch: already complete" in stdout and "gen1: already complete" in stdout


# --- multi-teacher ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", WEIGHTINGS)
def test_teacher_weights_sum_to_one_per_sample(how: str) -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 16, 5) * 3
    target = torch.randint(0, 5, (16,))
    target[::3] = -1
    fixed = torch.tensor([1.0, 2.0, 5.0]) if how == "fixed" else None
    for y in (target, None):
        w = teacher_weights(logits, y, how, fixed)
        assert w.shape == (3, 16) and (w >= 0).all()
        assert torch.allclose(w.sum(0), torch.ones(16))


def test_confidence_and_entropy_weights_favour_the_better_teacher() -> None:
    y = torch.tensor([0, 1])
    good = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])  # right and sure
    bad = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # wrong and unsure
    logits = torch.stack([good, bad])
    for how in ("confidence", "entropy"):
        w = teacher_weights(logits, y, how)
        assert (w[0] > w[1]).all(), how
    ce = -torch.log_softmax(logits, -1).gather(-1, y[None, :, None].expand(2, 2, 1)).squeeze(-1)
    assert torch.allclose(teacher_weights(logits, y, "confidence"), 1 - torch.softmax(ce, 0))  # CA-MKD, N=2
    assert torch.allclose(teacher_weights(logits, y, "fixed", torch.tensor([3.0, 1.0]))[:, 0], torch.tensor([.75, .25]))


def test_probability_ensemble_is_the_weighted_mixture_at_every_temperature() -> None:
    torch.manual_seed(1)
    logits, w = torch.randn(2, 4, 6), torch.softmax(torch.randn(2, 4), 0)
    for T in (1.0, 4.0):
        mix = (w[..., None] * torch.softmax(logits / T, -1)).sum(0)
        assert torch.allclose(torch.softmax(ensemble_logits(logits, w, "probs", T) / T, -1), mix, atol=1e-6)
    assert torch.allclose(ensemble_logits(logits, w, "logits", 1.0), (w[..., None] * logits).sum(0))


def test_multi_teacher_run_caches_each_teacher_and_never_trains_them(tmp_path: Path) -> None:
    methods = [{"name": "kd"}, {"name": "kd", "teacher": "a", "weight": 0.5},
               {"name": "fitnet", "teacher": "b", "student_layers": ["layers.0"], "teacher_layers": ["layers.1"],
                "pretrain_epochs": 0}]
    raw = _multi(tmp_path, method=None, methods=methods, strategy={"name": "multi_teacher", "weighting": "entropy"})
    logs: list[str] = []
    outcome = distill.execute(distill.plan_from_recipe(recipe_from_dict(raw)), log=logs.append)
    out = tmp_path / "out"
    assert list(outcome.trained) == ["teacher", "teacher:a", "teacher:b", "scratch", "student"]
    # a's logits come from its own cache; b runs live (fitnet taps its features)
    manifest = json.loads((out / "teachers" / "a" / "cache" / "manifest.json").read_text())
    assert manifest["fingerprint"]["teacher_spec"]["hidden"] == [64]
    assert not (out / "teachers" / "b" / "cache").exists()
    assert any("[b] cache: live teacher" in m for m in logs)
    for name in ("a", "b"):
        model = outcome.trained[f"teacher:{name}"].model
        saved = load_weights(out / "teachers" / name / "model.safetensors")
        assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())  # unchanged by the student
        assert all(p.grad is None and not p.requires_grad for p in model.parameters())
        assert not outcome.trained[f"teacher:{name}"].frozen.training
    terms = json.loads((out / "student" / "model.json").read_text())["history"][0]
    assert {"kd", "kd[a]", "fitnet[b]"} <= set(terms)
    models = json.loads((out / "report.json").read_text())["models"]
    assert models["teacher"]["params"] == models["teacher:a"]["params"] + models["teacher:b"]["params"]


# --- the default, the Python door and bad input ------------------------------------------------------------------

def test_single_teacher_recipe_is_unchanged_by_the_strategy_field(tmp_path: Path) -> None:
    plain = _recipe(tmp_path / "a", compare=False, output_dir=str(tmp_path / "a"))
    explicit = {**_recipe(tmp_path / "b", compare=False, output_dir=str(tmp_path / "b")), "strategy": "offline"}
    identities = [recipe_identity(recipe_from_dict(r)) for r in (plain, explicit)]
    assert identities[0] == {**identities[1], "output_dir": identities[0].get("output_dir")} or \
        identities[0] == identities[1]
    assert not {"strategy", "teachers", "peers"} & set(identities[0])  # resume fingerprints of older runs hold
    assert all("teacher" not in m for m in identities[0]["methods"])
    for r in (plain, explicit):
        distill.execute(distill.plan_from_recipe(recipe_from_dict(r)), log=lambda _: None)
    a, b = (load_weights(tmp_path / d / "student" / "model.safetensors") for d in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fit_runs_a_strategy_from_python(tmp_path: Path) -> None:
    from user_parts import TinyNet, digits_arrays

    x, y = digits_arrays()
    res = distill.fit(student=TinyNet(), peers={"other": TinyNet(hidden=8)}, train=(x[:400], y[:400]),
                      val=(x[400:500], y[400:500]), test=(x[500:700], y[500:700]), strategy="mutual",
                      methods=[{"name": "kd", "T": 1.0, "alpha": 1.0, "beta": 1.0}], epochs=1,
                      output_dir=tmp_path / "py", latency=False, log=lambda _: None)
    assert {"student", "other", "scratch", "scratch_other"} == set(res.models)
    with pytest.raises(DistillError, match="at least two teachers"):
        distill.fit(teachers={"a": TinyNet()}, student=TinyNet(), train=(x[:100], y[:100]), strategy="multi_teacher")


@pytest.mark.parametrize(("changes", "message"), [
    ({"teacher": None, "strategy": {"name": "mutual", "copies": 1}}, "needs at least two students"),
    ({"strategy": "mutal"}, "unknown strategy 'mutal'; did you mean 'mutual'"),
    ({"teacher": None, "teachers": {"a": TEACHER}, "strategy": "multi_teacher"}, "at least two teachers"),
    ({"strategy": "mutual"}, "no teacher: remove 'teacher'"),
    ({"teacher": None, "strategy": "born_again", "method": {"name": "ce"}}, "needs a method that reads the teacher"),
    ({"teacher": None, "teachers": {"a": TEACHER, "b": TEACHER}, "strategy": "multi_teacher",
      "method": {"name": "kd", "teacher": "c"}}, "no teacher named 'c'"),
    ({"teacher": None, "teachers": {"a": TEACHER, "b": TEACHER}, "strategy": {"name": "multi_teacher",
      "weighting": "fixed", "weights": [1.0]}}, "1 numbers for 2 teachers"),
    ({"teachers": {"a": TEACHER, "b": TEACHER}}, "needs strategy: multi_teacher"),
    ({"strategy": {"name": "born_again", "generation": 2}}, "strategy.generation: unknown key"),
    ({"strategy": "cross_modal"}, "set teacher.inputs to the field(s)"),
    ({"strategy": "cross_modal", "teacher": {**TEACHER, "inputs": "image"},
      "student": {"name": "mlp", "inputs": ["image"]}}, "teacher and student both read ['image']"),
    ({"strategy": "cross_task"}, "compares the teacher's class outputs with the student's"),
    ({"strategy": "cross_task", "method": {"name": "rkd", "student_layers": ["fc:input"],
                                           "teacher_layers": ["fc:input"]}}, "teacher must come trained"),
    ({"data": {"name": "digits", "classes": [1, 1]}}, "data.classes: [1, 1] must be distinct class indices"),
    ({"teacher": {**TEACHER, "resize": [28, 28]}}, "teacher.resize applies to a pretrained teacher"),
    ({"teacher": None, "strategy": "mutual", "method": {"name": "rkd", "student_layers": ["fc:input"],
                                                         "teacher_layers": ["fc:input"]}},
     "taps features; strategy mutual takes logit methods"),
])
def test_bad_strategy_input_is_one_line_and_exit_2(tmp_path: Path, capsys, changes: dict, message: str) -> None:
    recipe = write_recipe(tmp_path, _recipe(tmp_path, **changes))
    code, _, err = cli(capsys, "run", str(recipe))
    assert code == 2 and message in err, err
    assert err.count("\n") == 1 and err.startswith("error:")
    assert not (tmp_path / "out").exists()


def test_teachers_with_different_class_counts_are_refused_before_training(tmp_path: Path, capsys) -> None:
    raw = _multi(tmp_path)
    # teacher b is trained on digits but predicts only 5 classes: an external model with its own head
    raw["teachers"]["b"] = {"name": "external", "target": "user_parts:TinyNet", "kwargs": {"classes": 5},
                            "train": TEACHER["train"]}
    code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, raw)))
    assert code == 2 and err.count("\n") == 1, err
    assert "teachers disagree on the number of classes" in err or "outputs 5 classes" in err
    assert not (tmp_path / "out" / "student").exists()


def test_readme_strategies_snippets_run(tmp_path: Path, monkeypatch) -> None:
    import re

    import yaml

    text = (Path(__file__).parents[1] / "README.md").read_text()
    section = text.split("### Strategies", 1)[1].split("\n### ", 1)[0]
    block, data_free, cross_task = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
    raw = {**_recipe(tmp_path, teacher=None, method=None), **yaml.safe_load(block)}
    recipe = recipe_from_dict(raw)  # the YAML example is a valid recipe fragment
    assert recipe.strategy.kwargs == {"weighting": "confidence"} and recipe.methods[1].teacher == "cnn"
    teacher = {"name": "mlp", "weights": str(tmp_path / "t.safetensors")}
    recipe = recipe_from_dict({**_recipe(tmp_path, teacher=teacher), **yaml.safe_load(data_free)})
    strategy = STRATEGIES.get("data_free")(**recipe.strategy.kwargs)
    assert strategy.student_steps == 5 and strategy._losses.bn == 1.0 and strategy._gen.width == 32
    raw = {**_recipe(tmp_path, data={"name": "digits", "classes": [5, 6, 7, 8, 9], "labels_per_class": 5}),
           **yaml.safe_load(cross_task)}
    strategy = STRATEGIES.get("cross_task")(**recipe_from_dict(raw).strategy.kwargs)
    assert strategy.adapt == "finetune" and strategy.student_init == "source" and strategy.teacher_row
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert list(namespace["result"].metrics) == ["gen0", "gen1", "gen2"]


def test_teacher_command_trains_every_named_teacher(tmp_path: Path, capsys) -> None:
    recipe = write_recipe(tmp_path, _multi(tmp_path))
    code, out, err = cli(capsys, "teacher", str(recipe))
    assert code == 0, err
    for name in ("a", "b"):
        assert str((tmp_path / "out" / "teachers" / name / "model.safetensors").resolve()) in out
    assert not (tmp_path / "out" / "student").exists()
    code, _, err = cli(capsys, "cache", "build", str(recipe))
    assert code == 2 and "one cache per teacher" in err


# every registered strategy, end to end through the CLI with its default arguments (a new strategy must add its
# recipe here: the test over STRATEGIES.names() fails until it does)
E2E = {
    "offline": ({}, ["teacher", "scratch", "student"]),
    "multi_teacher": ({"teacher": None, "teachers": {"a": TEACHER, "b": {**TEACHER, "hidden": [32]}}},
                      ["teacher", "teacher:a", "teacher:b", "scratch", "student"]),
    "mutual": ({"teacher": None}, ["scratch", "scratch_student2", "student", "student2"]),
    "born_again": ({"teacher": None}, ["gen0", "gen1", "gen2", "gen3"]),
    "cross_modal": ({"data": {"name": "mnist-modal", "sensors": ["lowres"], "limit_train": 300,
                              "labels_per_class": 5, "batch_size": 64},
                     "teacher": {**TEACHER, "inputs": "image"},
                     "student": {"name": "mlp", "hidden": [16], "inputs": "lowres"}},
                    ["teacher", "scratch", "student"]),
    "cross_task": ({"data": {"name": "digits", "classes": [5, 6, 7, 8, 9], "labels_per_class": 5, "batch_size": 64},
                    "teacher": {"name": "mlp", "hidden": [32], "classes": 5, "weights": "TEACHER_OF_0_TO_4"},
                    "method": None, "methods": [{"name": "ce"}, {"name": "rkd", "student_layers": ["fc:input"],
                                                                  "teacher_layers": ["fc:input"]}]},
                   ["scratch", "student"]),
    "data_free": ({"teacher": {"name": "mlp", "hidden": [64], "weights": "TEACHER_OF_0_TO_9"}},
                  ["teacher", "scratch", "student"]),
    "gkd": ({}, ["teacher", "scratch", "student"]),  # with a tiny language model (tiny_lm_parts)
}


def _teacher_of_another_task(tmp_path: Path, classes: list[int] | None = None, hidden: int = 32) -> str:
    """Weights of a digits teacher trained on digits 0-4 (the source task of the cross_task run), or on
    ``classes``."""
    data = {"name": "digits", "classes": classes or [0, 1, 2, 3, 4], "batch_size": 64}
    raw = _recipe(tmp_path / "source", data=data, teacher={**TEACHER, "hidden": [hidden]},
                  output_dir=str(tmp_path / "source"))
    plan = distill.plan_from_recipe(recipe_from_dict(raw))
    return str(sys.modules["distill.run"].obtain_teacher(plan, resume=False, log=lambda _: None).weights)


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_strategy_runs_end_to_end_with_its_defaults(tmp_path: Path, capsys, name: str) -> None:
    assert name in E2E, f"strategy {name!r} has no end-to-end recipe in this test"
    changes, rows = E2E[name]
    if name == "cross_task":
        changes = {**changes, "teacher": {**changes["teacher"], "weights": _teacher_of_another_task(tmp_path)}}
    if name == "data_free":
        weights = _teacher_of_another_task(tmp_path, list(range(10)), hidden=64)
        changes = {**changes, "teacher": {**changes["teacher"], "weights": weights}}
    if name == "gkd":  # on-policy distillation generates text: a tiny language model on a tiny corpus
        pytest.importorskip("transformers", reason="the lm extra (transformers) is not installed")
        changes = {**changes, **tiny_lm_parts(tmp_path)}
    raw = _recipe(tmp_path, **{**changes, "strategy": name, "train": {"epochs": 1, "optimizer": {"name": "adam"}}})
    code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, raw)))
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert list(report["models"]) == rows
    assert all(0.0 <= m["top1"] <= 1.0 for m in report["models"].values())


def test_cross_modal_roles_read_only_their_own_fields(tmp_path: Path) -> None:
    data = {"name": "mnist-modal", "sensors": ["rows", "lowres"], "limit_train": 300, "labels_per_class": 5,
            "batch_size": 64}
    raw = _recipe(tmp_path, data=data, strategy="cross_modal", cache="off",
                  teacher={**TEACHER, "inputs": "image"}, student={"name": "mlp", "hidden": [16], "inputs": "lowres"})
    plan = distill.plan_from_recipe(recipe_from_dict(raw))
    seen: dict[str, set] = {"teacher": set(), "student": set()}
    for role, model in (("teacher", plan.teacher.model), ("student", plan.student)):
        model.register_forward_pre_hook(lambda _, args, role=role: seen[role].add(tuple(args[0].shape[1:])))
    outcome = distill.execute(plan, log=lambda _: None)
    assert seen == {"teacher": {(1, 28, 28)}, "student": {(1, 7, 7)}}  # the live teacher ran every step
    assert outcome.metrics["student"]["top1"] > 0.1


def test_label_free_run_learns_from_the_teacher_alone(tmp_path: Path) -> None:
    raw = _recipe(tmp_path, data={"name": "digits", "labels_per_class": 0, "batch_size": 64},
                  train={"epochs": 4, "optimizer": {"name": "adam", "lr": 0.003}})
    plan = distill.plan_from_recipe(recipe_from_dict(raw))
    assert bool((plan.data.train.y == -1).all())  # not one training label reaches the student
    init = {k: v.clone() for k, v in plan.student.state_dict().items()}
    outcome = distill.execute(plan, log=lambda _: None)
    scratch = outcome.trained["scratch"].model.state_dict()
    assert all(torch.equal(init[k], v) for k, v in scratch.items())  # no labels: scratch is the initial student
    m = outcome.metrics
    assert m["student"]["top1"] > 0.6 > m["scratch"]["top1"]
    assert any("no labels (labels_per_class: 0)" in n for n in json.loads((tmp_path / "out" / "report.json")
                                                                           .read_text())["notes"])


def test_a_teacher_of_another_domain_gets_its_inputs_resized() -> None:
    from distill.models import FrozenTeacher

    seen = []
    net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    net.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    teacher = FrozenTeacher(net, resize=(28, 28))
    x = torch.rand(3, 1, 8, 8)
    assert teacher(x).shape == (3, 10)
    expected = nn.functional.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    assert torch.equal(seen[0], expected)
    with pytest.raises(DistillError, match="does not fit"):
        teacher(torch.rand(3, 8))


def test_overrides_extend_the_strategy_and_cache_shorthands(tmp_path: Path) -> None:
    from distill.recipe import load_recipe

    path = write_recipe(tmp_path, _recipe(tmp_path, teacher=None, strategy="mutual", cache="off"))
    recipe = load_recipe(path, ["strategy.copies=3", "cache.k=5"])
    assert recipe.strategy.name == "mutual" and recipe.strategy.kwargs == {"copies": 3}
    assert recipe.cache.mode == "off" and recipe.cache.k == 5


@pytest.mark.parametrize("unlabelled", [True, False])
def test_cross_task_trains_on_the_transfer_set_or_on_the_labels_alone(tmp_path: Path, role_data: dict,
                                                                       unlabelled: bool) -> None:
    changes, _ = E2E["cross_task"]
    teacher = {**changes["teacher"], "weights": _teacher_of_another_task(tmp_path)}
    role_data.clear()  # the source teacher's own training is not part of this run
    seen = role_data
    raw = _recipe(tmp_path, **{**changes, "teacher": teacher, "train": {"epochs": 1, "optimizer": {"name": "adam"}},
                               "strategy": {"name": "cross_task", "unlabelled": unlabelled}})
    plan = distill.plan_from_recipe(recipe_from_dict(raw))
    distill.execute(plan, log=lambda _: None)
    n, labelled = len(plan.data.train), len(plan.data.labelled_train())
    assert seen["student"] == ((n, None) if unlabelled else (labelled, n)) and seen["scratch"] == (labelled, n)


def test_bench_compares_strategies_with_a_row_per_trained_model(tmp_path: Path, capsys) -> None:
    recipe = write_recipe(tmp_path, _recipe(tmp_path, train={"epochs": 1, "optimizer": {"name": "adam"}}))
    code, _, err = cli(capsys, "bench", str(recipe), "--strategies", "offline,mutual,born_again:generations=1",
                       "--seeds", "1")
    assert code == 0, err
    rows = {r["method"]: r for r in json.loads((tmp_path / "out" / "bench" / "bench.json").read_text())["rows"]}
    assert set(rows) == {"teacher", "scratch", "offline", "mutual", "mutual:student2",
                         "born_again:generations=1:gen0", "born_again:generations=1:gen1"}
    # gen0 is the scratch student trained again in its own run: the same number
    assert rows["born_again:generations=1:gen0"]["top1_last"] == rows["scratch"]["top1_last"]
    md = (tmp_path / "out" / "bench" / "bench.md").read_text()
    assert "--strategies offline,mutual,born_again:generations=1" in md


def test_cross_task_finetune_baseline_starts_from_the_teachers_weights_with_a_new_head(tmp_path: Path) -> None:
    from distill.strategies.finetune import with_new_head

    data = {"name": "digits", "classes": [5, 6, 7, 8, 9], "labels_per_class": 5, "batch_size": 64}
    teacher = {"name": "mlp", "hidden": [32], "classes": 5, "weights": _teacher_of_another_task(tmp_path)}
    raw = _recipe(tmp_path, data=data, teacher=teacher, strategy={"name": "cross_task", "finetune": True},
                  method=None, methods=[{"name": "ce"}, {"name": "rkd", "student_layers": ["fc:input"],
                                                         "teacher_layers": ["fc:input"]}])
    plan = distill.plan_from_recipe(recipe_from_dict(raw))
    tuned = with_new_head(plan.teacher, plan.data, seed=0).model
    body = {k: v for k, v in plan.teacher.model.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(tuned.state_dict()[k], v) for k, v in body.items())
    assert all(p.requires_grad for p in tuned.parameters()) and tuned.fc.out_features == 5
    outcome = distill.execute(plan, log=lambda _: None)
    assert list(outcome.metrics) == ["scratch", "finetuned", "student"]
    assert outcome.metrics["finetuned"]["params"] == sum(p.numel() for p in tuned.parameters())
    assert outcome.metrics["finetuned"]["top1"] > outcome.metrics["scratch"]["top1"]


def test_bench_of_cross_task_has_no_teacher_row_even_with_as_many_classes(tmp_path: Path, capsys) -> None:
    data = {"name": "digits", "classes": [5, 6, 7, 8, 9], "labels_per_class": 5, "batch_size": 64}
    teacher = {"name": "mlp", "hidden": [32], "classes": 5, "weights": _teacher_of_another_task(tmp_path)}
    raw = _recipe(tmp_path, data=data, teacher=teacher, strategy="cross_task", method=None,
                  methods=[{"name": "ce"}, {"name": "rkd", "student_layers": ["fc:input"],
                                            "teacher_layers": ["fc:input"]}],
                  train={"epochs": 1, "optimizer": {"name": "adam"}})
    code, _, err = cli(capsys, "bench", str(write_recipe(tmp_path, raw)), "--strategies", "cross_task:finetune=true",
                       "--seeds", "1")
    assert code == 0, err
    rows = {r["method"] for r in json.loads((tmp_path / "out" / "bench" / "bench.json").read_text())["rows"]}
    assert rows == {"scratch", "cross_task:finetune=true", "cross_task:finetune=true:finetuned"}
