"""The README's Python API snippets, run exactly as they stand (not paraphrased), in order, in one namespace."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from distill.cli import main
from distill.io import load_weights

README = Path(__file__).parents[1] / "README.md"


def python_api_snippets() -> list[str]:
    text = README.read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return [b for b in blocks if "class DistillTrainer" not in b]  # the Trainer example: tests/test_trainer.py


def test_readme_python_api_snippets_run(tmp_path: Path, monkeypatch) -> None:
    snippets = python_api_snippets()
    assert len(snippets) == 3, "three-line fit, own modules + Dataset, drop-in loop"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    first = None
    for code in snippets:
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
        first = first or namespace["result"]
    assert first.recipe is not None and Path("runs/python-digits/recipe.yaml").is_file()
    assert first.metrics["student"]["top1"] > first.metrics["scratch"]["top1"]  # KD helps with 10 labels/class
    code = main(["run", str(README.parent / "recipes" / "digits-kd.yaml"), "output_dir=recipe-run",
                 "eval.latency=false"])
    assert code == 0
    for role in ("teacher", "scratch", "student"):  # the snippet is the digits recipe, from Python
        a = load_weights(f"recipe-run/{role}/model.safetensors")
        b = load_weights(f"runs/python-digits/{role}/model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), role
    mine = namespace["result"]
    assert mine.recipe is None and Path("runs/my-kd/report.md").is_file()
    assert mine.metrics["teacher"]["top1"] > 0.9
    assert mine.metrics["student"]["top1"] > mine.metrics["scratch"]["top1"]
    saved = torch.load("student.pt", weights_only=True)
    assert set(saved) == {"0.weight", "0.bias", "2.weight", "2.bias"}  # the bare student, no wrapper prefix
    x, y = namespace["test"].x, namespace["test"].y
    with torch.no_grad():
        acc = (namespace["dm"].student(x).argmax(1) == y).float().mean().item()
    assert acc > 0.85
    assert os.path.isdir("runs/my-teacher")
