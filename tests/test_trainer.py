"""``DistillationModel`` inside a ``transformers.Trainer`` subclass: the README's example, run on a config-built
BERT teacher and student, trains the student towards the teacher and never touches the teacher."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
pytest.importorskip("accelerate", reason="the hf extra (accelerate, which Trainer needs) is not installed")
from distill.models import build_model  # noqa: E402
from test_hf import SMALL, TINY, _tokens  # noqa: E402


def _readme_example() -> str:
    text = (Path(__file__).parents[1] / "README.md").read_text()
    section = text.split("**Inside a Hugging Face `Trainer`.**", 1)[1]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)[:1]
    return code


class _Rows(torch.utils.data.Dataset):
    """Token dicts with a ``labels`` field, as a tokenised Hugging Face dataset yields them."""

    def __init__(self, x: dict[str, torch.Tensor], y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {**{k: v[i] for k, v in self.x.items()}, "labels": self.y[i]}


def test_the_readme_trainer_example_distils_and_leaves_the_teacher_alone(tmp_path: Path) -> None:
    x, y = _tokens(512)
    torch.manual_seed(0)
    teacher = build_model("hf", num_classes=2, input_shape=(1,), config=TINY)
    opt = torch.optim.Adam(teacher.parameters(), 3e-3)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(teacher(**x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    torch.manual_seed(1)
    student = build_model("hf", num_classes=2, input_shape=(1,), config=SMALL)
    with torch.no_grad():
        start = float((student.eval()(**x).argmax(1) == y).float().mean())
    scope = {"teacher": teacher, "student": student, "train_dataset": _Rows(x, y),
             "example": {k: v[:2] for k, v in x.items()}, "output_dir": str(tmp_path / "trainer")}
    exec(compile(_readme_example(), "README.md", "exec"), scope)  # the README's code, as written
    with torch.no_grad():
        after = float((student.eval()(**x).argmax(1) == y).float().mean())
    assert after > max(start, 0.85), (start, after)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
