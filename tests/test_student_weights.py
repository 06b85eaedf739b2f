"""``student.weights``: a student that starts from a file (a fine-tuned student to distil further, e.g. with GKD)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from distill.build import build_arch, load_data
from distill.plan import plan_from_recipe
from distill.recipe import recipe_from_dict
from helpers import cli, digits_recipe, write_recipe


def _weights(tmp_path: Path, hidden: list[int]) -> Path:
    """A student of ``hidden`` with weights no seed would draw, saved as safetensors."""
    recipe = recipe_from_dict(digits_recipe(tmp_path, student={"name": "mlp", "hidden": hidden}))
    model = build_arch(recipe.student, load_data(recipe), 123)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    path = tmp_path / f"student-{hidden[0]}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_every_student_of_the_plan_starts_from_the_file(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    path = _weights(tmp_path, [16])
    raw = digits_recipe(tmp_path, student={"name": "mlp", "hidden": [16], "weights": str(path)})
    plan = plan_from_recipe(recipe_from_dict(raw))
    saved = load_file(str(path))
    for model in (plan.student, plan.fresh_student(7)):  # the distilled student and the scratch baseline
        state = model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in saved.items())
    without = plan_from_recipe(recipe_from_dict(digits_recipe(tmp_path / "b"))).student.state_dict()
    assert not all(torch.equal(without[k], v) for k, v in saved.items())  # and not without it


def test_a_run_from_a_student_file_trains_from_it(tmp_path: Path, capsys) -> None:
    path = _weights(tmp_path, [16])
    raw = digits_recipe(tmp_path, student={"name": "mlp", "hidden": [16], "weights": str(path)}, compare=False)
    code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, raw)))
    assert code == 0, err
    from safetensors.torch import load_file

    trained = load_file(str(tmp_path / "out" / "student" / "model.safetensors"))
    start = load_file(str(path))
    # trained from the file: close to it after 2 short epochs, far from a fresh draw
    fresh = build_arch(recipe_from_dict(raw).student, load_data(recipe_from_dict(raw)), 0).state_dict()
    key = next(k for k in start if k.endswith("weight"))
    assert (trained[key] - start[key]).abs().mean() < (trained[key] - fresh[key]).abs().mean()


@pytest.mark.parametrize("student, message", [
    ({"name": "mlp", "hidden": [32]}, "student.weights"),  # another architecture: names the mismatch
    ({"name": "mlp", "from_teacher": "prune", "target_params": 500}, "starting weights from the teacher"),
])
def test_bad_student_weights_are_one_line(tmp_path: Path, capsys, student: dict, message: str) -> None:
    raw = digits_recipe(tmp_path, student={**student, "weights": str(_weights(tmp_path, [16]))})
    code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, raw)))
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_a_missing_student_file_is_one_line(tmp_path: Path, capsys) -> None:
    raw = digits_recipe(tmp_path, student={"name": "mlp", "hidden": [16], "weights": str(tmp_path / "no.safetensors")})
    code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, raw)))
    assert code == 2 and "no.safetensors" in err and err.count("\n") == 1, err
