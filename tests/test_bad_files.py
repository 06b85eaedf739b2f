"""Corrupt files the project reads back (a run's own records on --resume, weights a user points to) give one
`error:` line naming the file and what to do, exit code 2, never a traceback, and change nothing on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import cli, digits_recipe, write_recipe


def _one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize(("text", "needle"), [
    ('{"fingerprint": "ab', "JSONDecodeError"),  # truncated by a crash outside our atomic writes
    ("", "JSONDecodeError"),
    ("[1, 2]", "should be a JSON object, got list"),
    (b"\xff\xfe\x00", "UnicodeDecodeError"),
])
def test_a_corrupt_role_record_on_resume_is_one_line(tmp_path: Path, capsys, text: str | bytes, needle: str) -> None:
    recipe = write_recipe(tmp_path, digits_recipe(tmp_path, compare=False))
    assert cli(capsys, "run", str(recipe))[0] == 0
    record = tmp_path / "out" / "student" / "model.json"
    if isinstance(text, bytes):
        record.write_bytes(text)
    else:
        record.write_text(text)
    before = sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    code, _, err = cli(capsys, "run", str(recipe), "--resume")
    _one_line(code, err, str(record), needle, "delete")
    assert sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before


def test_an_empty_weights_file_is_one_line(tmp_path: Path, capsys) -> None:
    """A 0-byte .pth used to crash inside the error handler itself (an empty EOFError message)."""
    empty = tmp_path / "teacher.pth"
    empty.write_bytes(b"")
    raw = digits_recipe(tmp_path)
    raw["teacher"] = {"name": "mlp", "hidden": [64], "weights": str(empty)}
    code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, raw)))
    _one_line(code, err, f"{empty}: not a readable torch file (EOFError)")
    assert not (tmp_path / "out").exists()
