"""Small end-to-end runs on real data: digits (seconds) and a slice of real MNIST with the real teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import cli, digits_recipe, killed_then_resumed, write_recipe

REPO = Path(__file__).parents[1]
DEMO = REPO / "recipes" / "mnist-transfer-kd.yaml"
METRICS = {"top1_last", "top1_best", "agreement", "ece", "params", "size_bytes", "latency_ms_b1", "latency_ms_b256"}


def test_digits_end_to_end_outputs(tmp_path: Path, capsys) -> None:
    recipe = write_recipe(tmp_path, digits_recipe(tmp_path, eval={"latency": True}))
    code, out, err = cli(capsys, "run", str(recipe))
    assert code == 0, err
    root = tmp_path / "out"
    assert f"report written to {(root / 'report.md').resolve()}" in out
    report = json.loads((root / "report.json").read_text())
    assert list(report["models"]) == ["teacher", "scratch", "student"]
    for role, metrics in report["models"].items():
        assert METRICS <= set(metrics), (role, METRICS - set(metrics))
        assert 0.0 <= metrics["top1_last"] <= 1.0 and 0.0 <= metrics["top1_best"] <= 1.0
        assert metrics["latency_ms_b1"] > 0 and metrics["size_bytes"] > 0
        for name in ("model.safetensors", "log.csv", "checkpoint/meta.json"):
            assert (root / role / name).is_file(), (role, name)
    assert report["models"]["teacher"]["top1_last"] > 0.85  # a real MLP teacher trained here
    assert report["models"]["teacher"]["params"] > 3 * report["models"]["student"]["params"]
    assert report["recipe"]["data"]["name"] == "digits" and report["seed"] == 0 and "torch" in report["versions"]
    log = (root / "student" / "log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,") and len(log) == 1 + 2
    for name in ("report.md", "curves.png", "accuracy_vs_params.png"):
        assert (root / name).stat().st_size > 0


def _mnist_kd(tmp: Path, name: str = "r.yaml", **changes: object) -> Path:
    """The demo recipe on a 5,000-image slice with 10 labels per class: seconds per epoch."""
    import yaml

    raw = yaml.safe_load(DEMO.read_text())
    raw.update(output_dir=str(tmp / "out"), eval={"latency": False})
    raw["data"].update(limit_train=5000, labels_per_class=10)
    raw["train"]["epochs"] = 3
    raw.update(changes)
    tmp.mkdir(parents=True, exist_ok=True)
    return write_recipe(tmp, raw, name)


@pytest.mark.slow
def test_kd_from_real_teacher_beats_scratch_on_real_mnist(tmp_path: Path, capsys) -> None:
    code, _, err = cli(capsys, "run", str(_mnist_kd(tmp_path)))
    assert code == 0, err
    models = json.loads((tmp_path / "out" / "report.json").read_text())["models"]
    assert models["teacher"]["top1_last"] >= 0.98
    # 100 labels: scratch reaches ~0.74, KD on the 4,900 unlabelled images ~0.90
    assert models["student"]["top1_last"] > models["scratch"]["top1_last"] + 0.05
    assert models["student"]["agreement"] > models["scratch"]["agreement"]


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_weights(tmp_path: Path) -> None:
    full = _mnist_kd(tmp_path / "a", compare=False, output_dir=str(tmp_path / "a" / "out"))
    killed = _mnist_kd(tmp_path / "b", compare=False, output_dir=str(tmp_path / "b" / "out"))
    # with the teacher cache an epoch of this slice takes well under a second: the kill comes right after the
    # student's first checkpoint, or the run would finish first
    killed_then_resumed(full, killed, tmp_path / "a" / "out", tmp_path / "b" / "out")


def test_resume_refuses_a_changed_recipe_and_skips_finished_roles(tmp_path: Path, capsys) -> None:
    recipe = write_recipe(tmp_path, digits_recipe(tmp_path, compare=False))
    assert cli(capsys, "run", str(recipe))[0] == 0
    before = (tmp_path / "out" / "student" / "model.safetensors").read_bytes()
    code, out, _ = cli(capsys, "run", str(recipe), "--resume")
    assert code == 0 and "student: already complete" in out
    assert (tmp_path / "out" / "student" / "model.safetensors").read_bytes() == before
    (tmp_path / "out" / "student" / "model.json").unlink()  # as if killed before the end
    code, _, err = cli(capsys, "run", str(recipe), "--resume", "method.T=2")
    assert code == 2 and "different recipe" in err


def test_teacher_and_eval_commands(tmp_path: Path, capsys) -> None:
    recipe = write_recipe(tmp_path, digits_recipe(tmp_path))
    code, out, err = cli(capsys, "teacher", str(recipe))
    assert code == 0, err
    weights = tmp_path / "out" / "teacher" / "model.safetensors"
    assert str(weights.resolve()) in out
    code, out, err = cli(capsys, "eval", str(recipe), "--checkpoint", str(weights), "--role", "teacher")
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["top1"] > 0.85 and metrics["role"] == "teacher"
    code, _, err = cli(capsys, "eval", str(recipe), "--checkpoint", str(weights))  # teacher weights, student arch
    assert code == 2 and "does not match the model" in err
