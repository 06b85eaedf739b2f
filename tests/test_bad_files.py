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


def _files(root: Path) -> list[tuple[Path, int]]:
    """Every file under ``root`` with its modification time (folders' times move with any listing probe)."""
    return sorted((p.relative_to(root), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file())


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
    before = _files(tmp_path)
    code, _, err = cli(capsys, "run", str(recipe), "--resume")
    _one_line(code, err, str(record), needle, "delete")
    assert _files(tmp_path) == before


def test_an_empty_weights_file_is_one_line(tmp_path: Path, capsys) -> None:
    """A 0-byte .pth used to crash inside the error handler itself (an empty EOFError message)."""
    empty = tmp_path / "teacher.pth"
    empty.write_bytes(b"")
    raw = digits_recipe(tmp_path)
    raw["teacher"] = {"name": "mlp", "hidden": [64], "weights": str(empty)}
    code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, raw)))
    _one_line(code, err, f"{empty}: not a readable torch file (EOFError)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["file", "under a file", "unwritable", "long name", "full disk"])
def test_an_output_dir_that_cannot_hold_the_run_is_refused_first(tmp_path: Path, capsys,
                                                                 monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    out, needle = {
        "file": (afile, "exists and is a file, not a folder"),
        "under a file": (afile / "run", "which is a file, not a folder"),
        "unwritable": (Path("/proc/distill-run"), "cannot write in /proc"),
        "long name": (tmp_path / ("x" * 300), "is 300 bytes; file systems allow 255"),
        "full disk": (tmp_path / "run", "MiB free on the disk of"),
    }[case]
    if case == "full disk":
        import shutil

        import distill.io

        monkeypatch.setattr(distill.io.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 0, 1 << 20))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    raw = digits_recipe(tmp_path, output_dir=str(out))
    code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, raw, name="r.yaml")))
    _one_line(code, err, "output_dir", needle)
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.name != "r.yaml")
    assert after == before  # nothing trained, nothing written, no probe folder left


def test_an_external_model_whose_constructor_raises_is_one_line(tmp_path: Path, capsys) -> None:
    raw = digits_recipe(tmp_path)
    raw["student"] = {"name": "external", "target": "user_parts:NeedsCheckpointFile"}
    code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, raw)))
    _one_line(code, err, "external model 'user_parts:NeedsCheckpointFile': its constructor raised "
                         "FileNotFoundError: pretrained/backbone.pth")


def test_resume_removes_what_a_kill_left_half_written_and_nothing_else(tmp_path: Path, capsys) -> None:
    recipe = write_recipe(tmp_path, digits_recipe(tmp_path, compare=False))
    assert cli(capsys, "run", str(recipe))[0] == 0
    out, student = tmp_path / "out", tmp_path / "out" / "student"
    weights = (student / "model.safetensors").read_bytes()
    # what kill -9 leaves mid-write: atomic_path's temporary files (0 bytes when killed early) and staging folders
    stale = [student / ".model.json.k2x9q_1a.tmp", out / ".report.md.0abc12de.tmp", student / "checkpoint.tmp"]
    for p in stale[:2]:
        p.write_bytes(b"")
    stale[2].mkdir()
    (stale[2] / "meta.json").write_text("{")
    kept = [student / "notes.tmp", out / ".keep.tmp", student / "checkpoint.tmpx"]  # not names the project writes
    for p in kept:
        p.write_text("user file")
    code, _, err = cli(capsys, "run", str(recipe), "--resume")
    assert code == 0, err
    assert not any(p.exists() for p in stale), [p for p in stale if p.exists()]
    assert all(p.exists() for p in kept)
    assert (student / "model.safetensors").read_bytes() == weights  # finished roles are not retrained
