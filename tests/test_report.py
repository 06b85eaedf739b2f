"""write_report: files, JSON contents, summary arithmetic, markdown table and PNG validity."""

from __future__ import annotations

import json
import subprocess

import pytest

from distill.report import collect_versions, git_sha, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metrics(top1: float, last: float, best: float, epoch: int | None, params: int, b1: float,
             b256: float, agree: float | None) -> dict:
    return {"top1": top1, "top1_last": last, "top1_best": best, "best_epoch": epoch, "top5": 0.99,
            "agreement": agree, "ece": 0.0312, "params": params, "size_bytes": params * 4,
            "latency_ms_b1": b1, "latency_ms_b256": b256}


MODELS = {
    "teacher": _metrics(0.9512, 0.9512, 0.9512, None, 2_000_000, 4.0, 90.0, None),
    "scratch": _metrics(0.8800, 0.8800, 0.8900, 7, 100_000, 1.0, 10.0, 0.85),
    "student": _metrics(0.9134, 0.9134, 0.9200, 9, 100_000, 0.5, 9.0, 0.93),
}
HISTORIES = {
    role: [{"epoch": e, "val_top1": 0.5 + 0.04 * e + off, "test_top1": 0.5 + 0.04 * e, "loss": 2.0 / e}
           for e in range(1, 11)]
    for role, off in (("scratch", 0.0), ("student", 0.01))
}
RECIPE = {"method": "kd", "temperature": 4.0, "epochs": 10}


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    # One report shared by the read-only tests below: rendering the PNGs is the slow part.
    out = tmp_path_factory.mktemp("report") / "out"
    md = write_report(out, models=MODELS, histories=HISTORIES, recipe=RECIPE, seed=7,
                      notes=["tiny run", "CPU only"])
    return md


def test_files_written_and_nothing_else(report_dir) -> None:
    out = report_dir.parent
    assert report_dir.name == "report.md"
    assert sorted(p.name for p in out.iterdir()) == [
        "accuracy_vs_params.png", "curves.png", "report.json", "report.md"]  # no temp files left


def test_report_json_contents_and_summary(report_dir) -> None:
    data = json.loads((report_dir.parent / "report.json").read_text())
    assert list(data["models"]) == ["teacher", "scratch", "student"]  # insertion order kept
    assert data["models"]["student"]["top1_last"] == 0.9134
    assert data["recipe"] == RECIPE and data["seed"] == 7 and data["title"] == "distill report"
    assert data["histories"]["student"][0]["epoch"] == 1
    assert set(data["versions"]) == {"python", "torch", "numpy", "distill"}
    assert data["notes"] == ["tiny run", "CPU only"] and "created" in data and "git_sha" in data
    s = data["summary"]
    assert s["gain_over_scratch"] == pytest.approx(0.9134 - 0.8800)
    assert s["gain_over_scratch_best"] == pytest.approx(0.9200 - 0.8900)
    assert s["compression"] == pytest.approx(20.0)
    assert s["speedup_b1"] == pytest.approx(8.0)
    assert s["speedup_b256"] == pytest.approx(10.0)
    assert s["teacher_gap"] == pytest.approx(0.9512 - 0.9134)


def test_report_md_table_and_summary(report_dir) -> None:
    md = report_dir.read_text()
    assert md.startswith("# distill report")
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert {"teacher", "scratch", "student"} <= set(rows)
    assert "91.34%" in rows["student"] and "92.00% (ep 9)" in rows["student"]
    assert "93.00%" in rows["student"] and "2,000,000" in rows["teacher"]
    assert "95.12%" in rows["teacher"] and "7.63 MB" in rows["teacher"]  # 8,000,000 bytes
    assert "390.6 KB" in rows["scratch"]
    assert "—" in rows["teacher"]  # teacher has no agreement with itself here
    assert "+3.34 points" in md and "20.0x" in md and "8.0x" in md
    assert "- tiny run" in md and "- CPU only" in md
    assert "(curves.png)" in md and "(accuracy_vs_params.png)" in md
    assert "seed 7" in md


def test_pngs_are_valid(report_dir) -> None:
    for name in ("curves.png", "accuracy_vs_params.png"):
        data = (report_dir.parent / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000


def test_partial_roles_missing_metrics_and_nan(tmp_path) -> None:
    student = dict(MODELS["student"], latency_ms_b1=None, latency_ms_b256=None, ece=float("nan"))
    md = write_report(tmp_path, models={"student": student, "other": {"params": 10}}, histories={},
                      recipe={}, seed=0, title="partial")
    data = json.loads((tmp_path / "report.json").read_text())  # strict JSON: NaN stored as null
    assert data["summary"] == {} and data["models"]["student"]["ece"] is None
    text = md.read_text()
    assert text.startswith("# partial") and "| other |" in text and "No teacher" in text
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG_MAGIC


def test_versions_and_git_sha(tmp_path) -> None:
    v = collect_versions()
    assert v["python"].count(".") == 2 and v["torch"] != "unknown"
    assert git_sha(tmp_path) is None  # not a repository
    assert git_sha(tmp_path / "missing") is None
    try:
        subprocess.run(["git", "init", "-q", str(tmp_path)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git not available")
    assert git_sha(tmp_path) is None  # repository without commits
