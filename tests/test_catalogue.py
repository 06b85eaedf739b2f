"""The bad-input catalogue: one or more cases per class of failure (the output side of the file system, the user's
own code, corrupt or hostile files, inputs that used to be accepted silently, errors that used to come late, side
effects of a refusal) and per CLI command. Every case asserts exit code 2, exactly one `error:` line, no
traceback, and that nothing on disk changed: not the output folder, not the inputs, and nothing new (README,
"Failures"; the counts are in docs/BENCHMARKS.md, "Reliability")."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

import distill
from helpers import cli, digits_recipe, write_recipe

Argv = list[str]


def snapshot(root: Path) -> list[tuple[str, int]]:
    """Every file and folder under ``root``: files with their modification time, folders by name."""
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns if p.is_file() else 0) for p in root.rglob("*"))


def one_line(code: int, err: str, needle: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert needle.lower() in err.lower(), err


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished digits run (teacher trained here, scratch, KD student, teacher cache), with its recipe."""
    root = tmp_path_factory.mktemp("finished")
    write_recipe(root, digits_recipe(root))
    assert distill.cli.main(["run", str(root / "recipe.yaml")]) == 0
    return root


def after(_: object, argv: Argv) -> Argv:
    """``argv``, once the setup expression before it has run."""
    return argv


def recipe(tmp: Path, **changes: Any) -> Argv:
    return ["run", str(write_recipe(tmp, digits_recipe(tmp, **changes)))]


def raw_recipe(tmp: Path, text: str | bytes) -> Argv:
    path = tmp / "recipe.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return ["run", str(path)]


def npz(tmp: Path, x: np.ndarray, y: np.ndarray) -> Argv:
    np.savez(tmp / "data.npz", x=x, y=y)
    return recipe(tmp, data={"name": "arrays", "path": str(tmp / "data.npz")}, teacher=None,
                  method={"name": "ce"})


def digits_xy(n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((n, 64), dtype=np.float32), np.arange(n) % 10


def teacher_file(tmp: Path, content: bytes) -> Argv:
    (tmp / "teacher.pth").write_bytes(content)
    return recipe(tmp, teacher={"name": "mlp", "hidden": [64], "weights": str(tmp / "teacher.pth")})


def fitnet(tmp: Path, student_layer: str, teacher_layer: str) -> Argv:
    return recipe(tmp, method={"name": "fitnet", "student_layers": [student_layer],
                               "teacher_layers": [teacher_layer]},
                  teacher={"name": "external", "target": "user_parts:WideUserCNN", "train": {"epochs": 1}},
                  student={"name": "external", "target": "user_parts:UserCNN"})


def copy_run(tmp: Path, finished: Path) -> Path:
    """The finished run, copied under ``tmp`` with a recipe pointing at the copy."""
    out = tmp / "out"
    shutil.copytree(finished / "out", out)
    write_recipe(tmp, digits_recipe(tmp))
    return out


def resume_with_corrupt(rel: str, content: bytes) -> Callable[[Path, Path], Argv]:
    def build(tmp: Path, finished: Path) -> Argv:
        (copy_run(tmp, finished) / rel).write_bytes(content)
        return ["run", str(tmp / "recipe.yaml"), "--resume"]
    return build


def manifest(edit: Callable[[dict], Any]) -> Callable[[Path, Path], Argv]:
    def build(tmp: Path, finished: Path) -> Argv:
        path = copy_run(tmp, finished) / "cache" / "manifest.json"
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))
        return ["cache", "verify", str(path.parent)]
    return build


def image_folder(tmp: Path, size: tuple[int, int]) -> Argv:
    from PIL import Image

    for c in ("a", "b"):
        (tmp / "imgs" / c).mkdir(parents=True)
        for i in range(6):
            Image.new("L", (8, 8)).save(tmp / "imgs" / c / f"{i}.png")
    Image.new("1", size).save(tmp / "imgs" / "a" / "huge.png")  # 1 bit per pixel: a small file, a huge image
    return recipe(tmp, data={"name": "folder", "root": str(tmp / "imgs"), "size": 8, "channels": 1},
                  teacher=None, method={"name": "ce"}, student={"name": "mlp", "hidden": [8]})


def registered(name: str, make: Callable[[], Any]) -> Callable[[Path, Path], Argv]:
    def build(tmp: Path, finished: Path) -> Argv:
        if name not in distill.DATASETS.names():
            distill.register_dataset(name)(make)
        return recipe(tmp, data={"name": name, "batch_size": 64, "workers": 1}, teacher=None,
                      method={"name": "ce"})
    return build


def flaky(in_worker: bool) -> Callable[[], dict]:
    from user_parts import FlakyItems

    return lambda: {s: FlakyItems(s, bad=3 if not in_worker else 70, in_worker=in_worker)
                    for s in ("train", "val", "test")}


def cases(kind: str, items: list[tuple[str, Callable[[Path, Path], Argv], str]]) -> list[tuple]:
    """The catalogue's cases of one class of failure."""
    return [(kind, *item) for item in items]


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
DUPLICATE = yaml.safe_dump(digits_recipe(Path("/tmp/x"))) + "train: {epochs: 1}\n"
PICKLE = (b"\x80\x04\x95\x1c\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94\x93\x94"
          b"\x8c\x04true\x94\x85\x94R\x94.")  # os.system("true") on unpickling

# (class, case id, argv builder (tmp, finished run) -> argv, text the error line must contain)
CASES: list[tuple[str, str, Callable[[Path, Path], Argv], str]] = []
CASES += cases('output side of the file system', [
    ("output-is-a-file", lambda t, f: after((t / "o").write_text(""), recipe(t, output_dir=str(t / "o"))), "is a file"),
    ("output-under-a-file", lambda t, f: after((t / "o").write_text(""), recipe(t, output_dir=str(t / "o" / "x"))),
     "which is a file"),
    ("output-unwritable", lambda t, f: recipe(t, output_dir="/proc/distill-x"), "cannot write"),
    ("output-name-too-long", lambda t, f: recipe(t, output_dir=str(t / ("x" * 300))), "255"),
])
CASES += cases("the user's own code", [
    ("user-constructor-raises", lambda t, f: recipe(t, student={"name": "external",
                                                                "target": "user_parts:NeedsCheckpointFile"}),
     "NeedsCheckpointFile"),
    ("user-forward-raises-in-train-mode", lambda t, f: recipe(t, student={"name": "external",
                                                                          "target": "user_parts:TrainModeBug"}),
     "train-mode branch"),
    ("user-dataset-item-raises", registered("flaky_items", flaky(False)), "corrupt record 3"),
    ("device-this-machine-lacks", lambda t, f: recipe(t, device="cuda"), "cuda"),
])
CASES += cases('corrupt or hostile files', [
    ("teacher-weights-empty", lambda t, f: teacher_file(t, b""), "teacher.pth"),
    ("teacher-weights-pickle-payload", lambda t, f: teacher_file(t, PICKLE), "teacher.pth"),
    ("teacher-weights-not-safetensors", lambda t, f: after((t / "w.safetensors").write_bytes(b"\x10" * 64), recipe(
        t, teacher={"name": "mlp", "hidden": [64], "weights": str(t / "w.safetensors")})), "w.safetensors"),
    ("resume-truncated-role-record", resume_with_corrupt("student/model.json", b'{"finger'), "model.json"),
    ("resume-truncated-checkpoint-meta", resume_with_corrupt("student/checkpoint/meta.json", b"{"), "meta.json"),
    ("cache-manifest-a-list", manifest(lambda m: [1, 2]), "manifest"),
    ("cache-manifest-without-files", manifest(lambda m: {k: v for k, v in m.items() if k != "files"}), "files"),
    ("cache-manifest-empty-files", manifest(lambda m: {**m, "files": {}}), "sha256"),
    ("recipe-not-utf8", lambda t, f: raw_recipe(t, b"name: \xff\xfe\n"), "UTF-8"),
    ("recipe-alias-bomb", lambda t, f: raw_recipe(t, ALIAS_BOMB), "alias"),
    ("image-decompression-bomb", lambda t, f: image_folder(t, (20000, 20000)), "huge.png"),
])
CASES += cases('accepted silently before', [
    ("recipe-duplicate-key", lambda t, f: raw_recipe(t, DUPLICATE.replace("/tmp/x", str(t))), "train"),
    ("method-negative-weight", lambda t, f: recipe(t, method={"name": "kd", "weight": -1}), "weight"),
    ("kd-negative-alpha", lambda t, f: recipe(t, method={"name": "kd", "alpha": -1}), "alpha"),
    ("kd-temperature-nan", lambda t, f: raw_recipe(t, yaml.safe_dump(digits_recipe(t)).replace("T: 4", "T: .nan")),
     "nan"),
    ("data-one-class", lambda t, f: npz(t, digits_xy()[0], np.zeros(200, dtype=np.int64)), "two classes"),
    ("data-huge-label-id", lambda t, f: npz(t, digits_xy()[0], np.r_[np.arange(199) % 10, 2**40]), "classes"),
    ("data-non-finite-input", lambda t, f: npz(t, np.where(np.eye(200, 64) > 0, np.nan, digits_xy()[0]),
                                              digits_xy()[1]), "NaN"),
    ("data-sparse-labels", lambda t, f: npz(t, digits_xy()[0], (np.arange(200) % 2) * 7), "never appear"),
    ("data-complex-input", lambda t, f: npz(t, digits_xy()[0].astype(np.complex64), digits_xy()[1]), "complex"),
])
CASES += cases('found late before', [
    ("student-option-unknown", lambda t, f: recipe(t, student={"name": "mlp", "hidden": [16], "widht": 2}), "widht"),
    ("tap-path-missing", lambda t, f: fitnet(t, "nothere", "down1"), "nothere"),
    ("tap-shapes-no-connector", lambda t, f: fitnet(t, "classifier", "down1"), "connector"),
])
CASES += cases('side effects of a refusal', [
    ("resume-changed-recipe", lambda t, f: after(copy_run(t, f), recipe(t, train={"epochs": 3}) + ["--resume"]),
     "different recipe"),
    ("cache-verify-untrained-teacher", lambda t, f: ["cache", "verify", str(copy_run(t, f) / "cache"),
                                                     "--recipe", recipe(t, output_dir=str(t / "new"))[1]],
     "train it first"),
])
CASES += cases('every other command', [
    ("teacher-without-teacher", lambda t, f: ["teacher", recipe(t, teacher=None, method={"name": "ce"})[1]],
     "teacher"),
    ("eval-missing-checkpoint", lambda t, f: ["eval", recipe(t)[1], "--checkpoint", str(t / "none.safetensors")],
     "none.safetensors"),
    ("eval-checkpoint-pickle", lambda t, f: after((t / "p.pt").write_bytes(PICKLE), ["eval", recipe(t)[1],
                                                                                "--checkpoint", str(t / "p.pt")]),
     "p.pt"),
    ("inspect-unknown-model", lambda t, f: ["inspect", "resnet9000"], "resnet9000"),
    ("inspect-bad-input-shape", lambda t, f: ["inspect", "mlp", "--input-shape", "0,x"], "input-shape"),
    ("bench-unknown-method", lambda t, f: ["bench", recipe(t)[1], "--methods", "kd,nosuch"], "nosuch"),
    ("bench-method-args-not-a-mapping", lambda t, f: after((t / "a.yaml").write_text("- 1\n"), [
        "bench", recipe(t)[1], "--methods", "kd", "--method-args", str(t / "a.yaml")]), "a.yaml"),
    ("cache-build-without-teacher", lambda t, f: ["cache", "build", recipe(t, teacher=None,
                                                                          method={"name": "ce"})[1]], "teacher"),
    ("cache-verify-no-folder", lambda t, f: ["cache", "verify", str(t / "nothing")], "no such directory"),
    ("export-not-a-run", lambda t, f: ["export", str(t), "--format", "safetensors"], "report"),
])


@pytest.mark.parametrize(("kind", "case", "build", "needle"), CASES, ids=[c[1] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(tmp_path: Path, capsys, record_property, finished: Path,
                                                   kind: str, case: str, build: Callable[[Path, Path], Argv],
                                                   needle: str) -> None:
    argv = build(tmp_path, finished)
    record_property("class", kind)  # benchmarks/reliability.py counts cases per class and per command
    record_property("command", " ".join(argv[:2] if argv[0] == "cache" else argv[:1]))
    capsys.readouterr()
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, *argv)
    one_line(code, err, needle)
    assert snapshot(tmp_path) == before, f"{case}: the refusal changed files on disk"


def test_a_dataset_failing_in_a_loader_worker_is_one_line(tmp_path: Path, capsys, finished: Path) -> None:
    """Item 70 fails only inside a DataLoader worker: past the samples a dry run reads, so training has started
    when it surfaces; still one line naming the dataset code, and no temporary file left behind."""
    code, _, err = cli(capsys, *registered("flaky_worker", flaky(True))(tmp_path, finished))
    one_line(code, err, "corrupt record 70")
    assert "DataLoader worker" in err and "__getitem__" in err
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_a_full_disk_is_refused_before_training(tmp_path: Path, capsys, monkeypatch) -> None:
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=10 << 20))
    argv = recipe(tmp_path)
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, *argv)
    one_line(code, err, "10 MiB free")
    assert snapshot(tmp_path) == before


def test_python_doors_raise_the_same_one_line_errors(tmp_path: Path) -> None:
    """``distill.fit`` turns the user's failing code into a DistillError naming it, the original as cause."""
    from user_parts import TeacherNet, TrainModeBug, digits_arrays

    x, y = digits_arrays()
    with pytest.raises(distill.DistillError, match="TrainModeBug.forward .* raised ValueError") as err:
        distill.fit(teacher=TeacherNet(), student=TrainModeBug(), train=(x[:600], y[:600]),
                    val=(x[600:800], y[600:800]), test=(x[800:1000], y[800:1000]), methods=["kd"], epochs=1,
                    output_dir=tmp_path / "py")
    assert isinstance(err.value.__cause__, ValueError)
    assert not (tmp_path / "py").exists() or not any((tmp_path / "py").iterdir())


def test_a_bug_of_ours_is_not_disguised(tmp_path: Path, capsys, monkeypatch) -> None:
    """An exception raised by distill's own code (no user code below it) stays a bug report with a traceback."""
    import distill.report as report

    monkeypatch.setattr(report, "summarize", dict.__getitem__)  # raises KeyError from C: no user frame below
    code, _, err = cli(capsys, *recipe(tmp_path))
    assert code == 1 and "internal error, a bug in distill" in err and "Traceback" in err


def test_safetensors_weights_written_by_us_still_load(tmp_path: Path) -> None:
    """The catalogue's refusals are not over-eager: a valid safetensors teacher file loads."""
    from distill.build import load_model_weights
    from distill.models import build_model

    model = build_model("mlp", num_classes=10, input_shape=(64,), hidden=[8])
    save_file({k: v.clone() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    load_model_weights(model, str(tmp_path / "w.safetensors"), "teacher")
    assert all(torch.isfinite(p).all() for p in model.parameters())
