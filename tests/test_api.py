"""The Python door: ``distill.fit`` on user modules and Datasets, the same Plan as a recipe, streamed data,
dict inputs, and one-line errors for what users get wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import distill
from distill.errors import DistillError
from distill.io import load_weights, save_weights
from distill.registry import Registry
from helpers import cli, write_recipe
from user_parts import DigitsItems, NotLogits, PairItems, TinyNet, digits_arrays, trained_teacher, user_digits_splits

QUIET = {"latency": False, "log": lambda _: None}
TRAINING = {"epochs": 2, "optimizer": {"name": "adam", "lr": 0.003, "weight_decay": 0.0}}


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_weights(path, trained_teacher().state_dict())
    return path


def _teacher(path: Path) -> torch.nn.Module:
    from user_parts import TeacherNet

    t = TeacherNet()
    t.load_state_dict(load_weights(path))
    return t


def _student(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)  # what a recipe does before building a model
    return TinyNet()


def _same(a: torch.nn.Module | dict, b: torch.nn.Module | dict) -> bool:
    sa = a if isinstance(a, dict) else a.state_dict()
    sb = b if isinstance(b, dict) else b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _fit(tmp: Path, teacher_file: Path, train, val=None, test=None, **kw) -> distill.FitResult:
    return distill.fit(teacher=_teacher(teacher_file), student=_student(), train=train, val=val, test=test,
                       methods=[distill.methods.KD(T=4, alpha=0.5, beta=0.5)], training=TRAINING,
                       batch_size=64, labels_per_class=10, output_dir=tmp, **QUIET, **kw)


def _recipe_run(tmp: Path, capsys, teacher_file: Path, student: dict, dataset: str) -> None:
    """The recipe door on the same data as ``_fit`` (the digits items registered as ``dataset``), into ``tmp``."""
    registry: Registry = distill.DATASETS
    distill.register_dataset(dataset)(user_digits_splits)
    try:
        raw = {"name": "r", "output_dir": str(tmp / "recipe"), "eval": {"latency": False},
               "data": {"name": dataset, "labels_per_class": 10, "batch_size": 64},
               "teacher": {"name": "external", "target": "user_parts:TeacherNet", "weights": str(teacher_file)},
               "student": student, "method": {"name": "kd", "T": 4, "alpha": 0.5, "beta": 0.5}, "train": TRAINING}
        code, _, err = cli(capsys, "run", str(write_recipe(tmp, raw)))
    finally:
        registry._unregister(dataset)
    assert code == 0, err


def test_fit_on_user_modules_and_dataset_equals_the_recipe_run(tmp_path: Path, capsys, teacher_file: Path) -> None:
    py = _fit(tmp_path / "py", teacher_file, DigitsItems("train"), DigitsItems("val"), DigitsItems("test"))
    assert py.recipe is None  # modules and Datasets have no names
    assert isinstance(py.student, TinyNet) and set(py.metrics) == {"teacher", "scratch", "student"}
    _recipe_run(tmp_path, capsys, teacher_file, {"name": "external", "target": "user_parts:TinyNet"}, "user_digits_api")
    for role in ("student", "scratch"):
        assert _same(load_weights(tmp_path / "recipe" / role / "model.safetensors"),
                     load_weights(tmp_path / "py" / role / "model.safetensors")), role
    assert _same(py.student, load_weights(tmp_path / "py" / "student" / "model.safetensors"))


def test_streamed_dataset_and_the_same_data_in_memory_give_identical_weights(tmp_path: Path,
                                                                              teacher_file: Path) -> None:
    x, y = digits_arrays()
    streamed = _fit(tmp_path / "s", teacher_file, DigitsItems("train"), DigitsItems("val"), DigitsItems("test"),
                    workers=2)
    memory = _fit(tmp_path / "m", teacher_file, (x[:1200], y[:1200]), (x[1200:1500], y[1200:1500]),
                  (x[1500:], y[1500:]))
    assert _same(streamed.student, memory.student)
    assert streamed.metrics["student"]["top1"] == memory.metrics["student"]["top1"]


def test_fit_with_names_is_a_recipe_and_replays_from_the_cli(tmp_path: Path, capsys) -> None:
    out = tmp_path / "named"
    r = distill.fit(teacher={"name": "mlp", "hidden": [64], "train": {"epochs": 2}}, student={"name": "mlp",
                    "hidden": [16]}, train="digits", methods=["kd"], epochs=1, output_dir=out, **QUIET)
    assert r.recipe is not None and (out / "recipe.yaml").read_text() == r.recipe
    assert "name: digits" in r.recipe and "name: kd" in r.recipe
    code, _, err = cli(capsys, "run", str(out / "recipe.yaml"), f"output_dir={tmp_path / 'replay'}")
    assert code == 0, err
    assert _same(load_weights(out / "student" / "model.safetensors"),
                 load_weights(tmp_path / "replay" / "student" / "model.safetensors"))


def test_dict_inputs_teacher_reads_a_student_reads_b(tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = TinyNet(hidden=64)
    x, y = digits_arrays()
    opt = torch.optim.Adam(teacher.parameters(), lr=1e-2)
    for _ in range(100):  # the teacher learns field 'a' (the image as it is)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(teacher(x[:1200]), y[:1200]).backward()
        opt.step()
    seen: dict[str, torch.Tensor] = {}
    teacher.register_forward_pre_hook(lambda m, args: seen.__setitem__("teacher", args[0]))
    student = _student()
    student.register_forward_pre_hook(lambda m, args: seen.__setitem__("student", args[0]))
    r = distill.fit(teacher=teacher, student=student, train=PairItems("train"), val=PairItems("val"),
                    test=PairItems("test"), teacher_inputs="a", student_inputs="b", methods=["kd"],
                    training=TRAINING, epochs=10, batch_size=64, output_dir=tmp_path, compare=False, **QUIET)
    a_test = x[1500:]
    assert r.metrics["teacher"]["top1"] == pytest.approx(
        float((teacher(a_test).argmax(1) == y[1500:]).float().mean()))  # evaluated on field a
    b = seen["student"]
    assert torch.equal(b[:1], (a_test[:1].view(1, 8, 8).flip(-1).reshape(1, 64) + 1.0)) or b.min() >= 1.0
    assert seen["teacher"].max() <= 1.0  # the teacher never saw field b (offset by +1)
    assert r.metrics["student"]["top1"] > 0.5


def test_teacher_gets_no_gradient_and_stays_in_eval(tmp_path: Path, teacher_file: Path) -> None:
    teacher = _teacher(teacher_file)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    modes: list[bool] = []
    teacher.register_forward_hook(lambda m, i, o: modes.append(m.training))
    x, y = digits_arrays()
    distill.fit(teacher=teacher, student=_student(), train=(x[:1200], y[:1200]), test=(x[1500:], y[1500:]),
                methods=["kd"], training=TRAINING, output_dir=tmp_path, cache="off", **QUIET)
    assert modes and not any(modes)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert _same(teacher.state_dict(), before)


# ------------------------------------------------------------------------------------------------ bad input


class Triples(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> tuple:
        return torch.zeros(64), 1, "extra"


def test_items_that_are_neither_pairs_nor_dicts(tmp_path: Path) -> None:
    with pytest.raises(DistillError, match=r"item 0 is a tuple of 3: expected \(input, target\) or a dict"):
        distill.fit(teacher=TinyNet(), student=TinyNet(), train=Triples(), output_dir=tmp_path, **QUIET)


def test_a_shuffling_dataloader_is_refused_with_the_reason(tmp_path: Path) -> None:
    loader = DataLoader(DigitsItems("train"), batch_size=32, shuffle=True)
    with pytest.raises(DistillError, match="shuffling DataLoader cannot be resumed exactly.*shuffle=False"):
        distill.fit(teacher=TinyNet(), student=TinyNet(), train=loader, output_dir=tmp_path, **QUIET)


def test_a_non_shuffling_dataloader_is_accepted(tmp_path: Path, teacher_file: Path) -> None:
    loader = DataLoader(DigitsItems("train"), batch_size=32, shuffle=False)
    r = distill.fit(teacher=_teacher(teacher_file), student=_student(), train=loader, epochs=1, output_dir=tmp_path,
                    **QUIET)
    assert r.metrics["student"]["top1"] > 0.1


def test_input_keys_the_data_does_not_have(tmp_path: Path) -> None:
    with pytest.raises(DistillError, match=r"student reads input key\(s\) \['c'\] that the data does not have"):
        distill.fit(teacher=TinyNet(), student=TinyNet(), train=PairItems(), teacher_inputs="a", student_inputs="c",
                    output_dir=tmp_path, **QUIET)
    with pytest.raises(DistillError, match="inputs are one tensor, not a dict"):
        distill.fit(teacher=TinyNet(), student=TinyNet(), train=DigitsItems(), student_inputs="a",
                    output_dir=tmp_path, **QUIET)


def test_a_user_module_whose_output_is_not_logits(tmp_path: Path) -> None:
    with pytest.raises(DistillError, match=r"student \(NotLogits\): model returned dict, expected a logits tensor"):
        distill.fit(teacher=TinyNet(), student=NotLogits(), train=DigitsItems(), output_dir=tmp_path, **QUIET)
    assert not (tmp_path / "student").exists()  # found before training


def test_cli_bad_dataset_items_one_line(tmp_path: Path, capsys) -> None:
    distill.register_dataset("triples_api")(lambda: {"train": Triples()})
    try:
        raw = {"name": "r", "output_dir": str(tmp_path / "o"), "data": {"name": "triples_api"},
               "student": {"name": "mlp"}, "method": {"name": "ce"}}
        code, out, err = cli(capsys, "run", str(write_recipe(tmp_path, raw)))
    finally:
        distill.DATASETS._unregister("triples_api")
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "tuple of 3" in err


def test_export_a_run_with_dict_inputs_and_refuse_a_python_run(tmp_path: Path, capsys) -> None:
    distill.register_dataset("pairs_api")(lambda: {k: PairItems(k) for k in ("train", "val", "test")})
    try:
        tiny = {"name": "external", "target": "user_parts:TinyNet"}
        raw = {"name": "p", "output_dir": str(tmp_path / "run"), "eval": {"latency": False},
               "data": {"name": "pairs_api", "batch_size": 64},
               "teacher": {**tiny, "inputs": "a", "train": TRAINING}, "student": {**tiny, "inputs": "b"},
               "method": {"name": "kd"}, "train": TRAINING}
        code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, raw)))
        assert code == 0, err
        code, out, err = cli(capsys, "export", str(tmp_path / "run"), "--format", "torchscript")
    finally:
        distill.DATASETS._unregister("pairs_api")
    assert code == 0, err
    assert "top-1 agreement 100.00%" in out
    exported = torch.jit.load(str(tmp_path / "run" / "export" / "student.torchscript.pt"))
    b = torch.stack([PairItems("test")[i]["b"] for i in range(4)])
    student = TinyNet()
    student.load_state_dict(load_weights(tmp_path / "run" / "student" / "model.safetensors"))
    assert torch.allclose(exported(b), student(b), atol=1e-6)  # the file takes field 'b', as the student read it

    x, y = digits_arrays()
    distill.fit(student=TinyNet(), train=(x[:300], y[:300]), methods=["ce"], epochs=1, compare=False,
                output_dir=tmp_path / "py", **QUIET)
    code, _, err = cli(capsys, "export", str(tmp_path / "py"), "--format", "onnx")
    assert code == 2 and err.startswith("error: ") and "trained by distill.fit from Python objects" in err


def test_cli_bad_keys_and_a_model_without_logits_one_line(tmp_path: Path, capsys) -> None:
    distill.register_dataset("pairs_cli")(lambda: {"train": PairItems("train")})
    try:
        tiny = {"name": "external", "target": "user_parts:TinyNet"}
        base = {"name": "p", "output_dir": str(tmp_path / "o"), "data": {"name": "pairs_cli"},
                "method": {"name": "ce"}}
        code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, {**base, "student": {**tiny, "inputs": "c"}})))
        assert code == 2 and err.count("\n") == 1 and "reads input key 'c' but dataset 'pairs_cli' has keys" in err
        code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, {**base, "student": {"name": "mlp"}})))
        assert code == 2 and "model 'mlp' reads one tensor but dataset 'pairs_cli' has dict inputs" in err
        broken = {"name": "external", "target": "user_parts:NotLogits", "inputs": "a"}
        code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, {**base, "student": broken})))
        assert code == 2 and err.count("\n") == 1 and "returned dict, expected a logits tensor" in err
    finally:
        distill.DATASETS._unregister("pairs_cli")
    assert not (tmp_path / "o" / "student").exists()


def test_feature_methods_tap_models_that_read_dict_inputs(tmp_path: Path) -> None:
    teacher = trained_teacher()  # reads 'a' (the image as it is)
    r = distill.fit(teacher=teacher, student=_student(), train=PairItems("train"), test=PairItems("test"),
                    teacher_inputs="a", student_inputs="b", methods=["ce", {"name": "fitnet", "student_layers":
                    ["body"], "teacher_layers": ["body"], "beta": 1.0}], epochs=1, output_dir=tmp_path, **QUIET)
    assert {"ce", "fitnet"} <= set(r.history[-1])  # both terms logged: the taps saw both models


def test_fit_resume_skips_finished_roles(tmp_path: Path, teacher_file: Path) -> None:
    x, y = digits_arrays()
    args = {"train": (x[:1200], y[:1200]), "test": (x[1500:], y[1500:])}
    first = _fit(tmp_path, teacher_file, **args)
    lines: list[str] = []
    again = distill.fit(teacher=_teacher(teacher_file), student=_student(), methods=[distill.methods.KD(T=4,
                        alpha=0.5, beta=0.5)], training=TRAINING, batch_size=64, labels_per_class=10,
                        output_dir=tmp_path, resume=True, latency=False, log=lines.append, **args)
    assert "student: already complete in" in "\n".join(lines)
    assert _same(first.student, again.student)
    with pytest.raises(DistillError, match="different recipe"):  # another student init is another run
        (tmp_path / "student" / "model.json").unlink()
        distill.fit(teacher=_teacher(teacher_file), student=_student(seed=1), methods=["kd"], training=TRAINING,
                    batch_size=64, labels_per_class=10, output_dir=tmp_path, resume=True, **QUIET, **args)


def test_fit_refuses_a_negative_weight_before_training(tmp_path: Path) -> None:
    x, y = digits_arrays()
    with pytest.raises(DistillError, match=r"methods\.0\.alpha: a negative loss weight \(-1\.0\)"):
        distill.fit(student=_student(), train=(x[:300], y[:300]), methods=[{"name": "ce", "alpha": -1}],
                    epochs=1, output_dir=tmp_path, **QUIET)
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_fit_refuses_an_output_dir_that_is_a_file(tmp_path: Path) -> None:
    x, y = digits_arrays()
    target = tmp_path / "taken"
    target.write_text("a file")
    with pytest.raises(DistillError, match="exists and is a file, not a folder"):
        distill.fit(student=_student(), train=(x[:300], y[:300]), methods=["ce"], epochs=1, output_dir=target,
                    **QUIET)


def test_fit_turns_a_file_system_refusal_into_one_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk that fills mid-run (here: when the report is written) is a DistillError naming the file, with the
    OSError kept as its cause; the Python door's boundary, like the CLI's."""
    import errno

    import distill.api

    def disk_full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "report.md"))

    monkeypatch.setattr(distill.api, "execute", disk_full)
    x, y = digits_arrays()
    with pytest.raises(DistillError, match=r"report\.md: No space left on device") as e:
        distill.fit(student=_student(), train=(x[:300], y[:300]), methods=["ce"], epochs=1, output_dir=tmp_path,
                    **QUIET)
    assert isinstance(e.value.__cause__, OSError)


def test_a_student_with_weights_starts_from_them_through_either_door(tmp_path: Path, capsys,
                                                                    teacher_file: Path) -> None:
    start = tmp_path / "start.safetensors"
    save_weights(start, _student(5).state_dict())  # weights that no seed-0 build draws
    student = {"name": "external", "target": "user_parts:TinyNet", "weights": str(start)}
    py = distill.fit(teacher=_teacher(teacher_file), student=student, train=DigitsItems("train"),
                     val=DigitsItems("val"), test=DigitsItems("test"),
                     methods=[distill.methods.KD(T=4, alpha=0.5, beta=0.5)], training=TRAINING, batch_size=64,
                     labels_per_class=10, output_dir=tmp_path / "py", **QUIET)
    _recipe_run(tmp_path, capsys, teacher_file, student, "user_digits_api_w")
    _fit(tmp_path / "plain", teacher_file, DigitsItems("train"), DigitsItems("val"), DigitsItems("test"))
    for role in ("student", "scratch"):  # both doors start both students from the file: the same training
        from_file = load_weights(tmp_path / "py" / role / "model.safetensors")
        assert _same(load_weights(tmp_path / "recipe" / role / "model.safetensors"), from_file), role
        assert not _same(load_weights(tmp_path / "plain" / role / "model.safetensors"), from_file), role
    assert py.recipe is None
