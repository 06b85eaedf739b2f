"""Embedding probes: the k-NN and linear probes on fixed embeddings, and their place in the report."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from distill.probe import knn_top1, linear_probe_top1
from helpers import cli, digits_recipe, write_recipe


def test_knn_and_linear_probe_on_hand_made_embeddings() -> None:
    torch.manual_seed(0)
    centres = torch.eye(3) * 5  # three well separated classes
    y = torch.arange(3).repeat_interleave(20)
    train = centres[y] + 0.1 * torch.randn(60, 3)
    y_test = torch.tensor([0, 1, 2, 2])
    test = centres[y_test] + 0.1 * torch.randn(4, 3)
    assert knn_top1(train, y, test, y_test, k=5) == 1.0
    assert linear_probe_top1(train, y, test, y_test) == 1.0
    # k-NN votes among the k nearest: a test point amid class 1 is class 1 whatever its label says
    assert knn_top1(train, y, centres[1:2], torch.tensor([0]), k=5) == 0.0


def test_report_probes_every_model_without_using_labels_to_train(tmp_path: Path, capsys) -> None:
    raw = digits_recipe(tmp_path, data={"name": "digits", "labels_per_class": 0, "batch_size": 64},
                        eval={"latency": False, "embeddings": {"teacher": "fc:input", "student": "fc:input"}},
                        method=None, methods=[{"name": "rkd", "student_layers": ["fc:input"],
                                               "teacher_layers": ["fc:input"]}])
    code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, {k: v for k, v in raw.items() if v is not None})))
    assert code == 0, err
    models = json.loads((tmp_path / "out" / "report.json").read_text())["models"]
    for role in ("teacher", "scratch", "student"):
        assert 0.0 <= models[role]["knn_top1"] <= 1.0 and 0.0 <= models[role]["probe_top1"] <= 1.0
    assert models["teacher"]["knn_top1"] > 0.8  # a trained teacher's features separate the digits
    assert "## Embedding probes" in (tmp_path / "out" / "report.md").read_text()
