"""``distill export``: every format with parity, files that reload on their own, int8 within its bound and
smaller, export.json and the report's deployment table, and bad inputs as one ``error:`` line (exit 2)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from distill.build import build_arch, load_data
from distill.cli import main
from distill.deploy import load_exported
from distill.export import FORMATS, FP32_MIN_AGREEMENT, INT8_MIN_AGREEMENT, PARITY_SAMPLES
from distill.models import build_model
from distill.recipe import recipe_from_dict
from helpers import cli, digits_recipe, write_recipe

FILES = {("safetensors", False): "student.safetensors", ("torchscript", False): "student.torchscript.pt",
         ("onnx", False): "student.onnx", ("safetensors", True): "student.int8.safetensors",
         ("torchscript", True): "student.int8.torchscript.pt", ("onnx", True): "student.int8.onnx"}


def _main(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished digits run (seconds) whose student has a 64x128 Linear: big enough for int8 to shrink it."""
    tmp = tmp_path_factory.mktemp("export")
    raw = digits_recipe(tmp, compare=False, student={"name": "mlp", "hidden": [128]},
                        train={"epochs": 6, "optimizer": {"name": "adam", "lr": 0.003}})
    assert _main("run", str(write_recipe(tmp, raw)))[0] == 0
    return tmp / "out"


@pytest.fixture(scope="module")
def exported(run_dir: Path) -> dict[tuple[str, bool], str]:
    """Every format, fp32 and int8, exported once through the CLI; maps (format, int8) to its stdout."""
    results = {}
    for fmt, int8 in FILES:
        code, out = _main("export", str(run_dir), "--format", fmt, *(["--int8"] if int8 else []))
        assert code == 0, out
        results[(fmt, int8)] = out
    return results


@pytest.fixture(scope="module")
def reference(run_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out inputs and the fp32 student's logits, derived here independently of distill.export."""
    recipe = recipe_from_dict(json.loads((run_dir / "report.json").read_text())["recipe"])
    data = load_data(recipe)
    student = build_arch(recipe.student, data, recipe.seed)
    student.load_state_dict(load_file(str(run_dir / "student" / "model.safetensors")))
    x = data.test.x[:PARITY_SAMPLES]
    with torch.no_grad():
        return x, student.eval()(x)


def _reload_logits(path: Path, x: torch.Tensor) -> torch.Tensor:
    """Run an exported file with its own runtime only (no distill loader for fp32 files)."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    if path.suffix == ".pt":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated but works in 2.13
            return torch.jit.load(str(path))(x)
    spec = json.loads(path.with_suffix(".json").read_text())
    if spec["quantized"]:
        model = load_exported(path)  # int8 safetensors: rebuilt through quantize_dynamic by distill.deploy
    else:
        kwargs = dict(spec["model"])
        model = build_model(kwargs.pop("name"), num_classes=spec["num_classes"],
                            input_shape=tuple(spec["input_shape"]), **kwargs)
        model.load_state_dict(load_file(str(path)))
    with torch.no_grad():
        return model.eval()(x)


def _entries(run_dir: Path) -> dict[str, dict]:
    return {e["file"]: e for e in json.loads((run_dir / "export" / "export.json").read_text())["exports"]}


@pytest.mark.parametrize("fmt", FORMATS)
def test_fp32_export_parity_and_independent_reload(run_dir, exported, reference, fmt: str) -> None:
    file = run_dir / "export" / FILES[(fmt, False)]
    out = exported[(fmt, False)]
    assert out.count("\n") == 1 and f"exported {file}" in out and "agreement 100.00%" in out
    entry = _entries(run_dir)[file.name]
    assert entry["format"] == fmt and entry["int8"] is False and entry["bytes"] == file.stat().st_size
    assert entry["agreement"] >= FP32_MIN_AGREEMENT and entry["max_abs_diff"] < 1e-4 and entry["n"] == 359
    assert entry["latency"]["b1"] > 0 and entry["latency"]["b256"] > 0
    x, ref = reference
    logits = _reload_logits(file, x)
    assert logits.shape == ref.shape
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)
    assert torch.equal(logits.argmax(1), ref.argmax(1))
    if fmt == "onnx":  # the batch axis is dynamic: batch 1 and batch 7 run too
        assert _reload_logits(file, x[:1]).shape == (1, 10) and _reload_logits(file, x[:7]).shape == (7, 10)


@pytest.mark.parametrize("fmt", FORMATS)
def test_int8_export_within_bound_and_smaller(run_dir, exported, reference, fmt: str) -> None:
    file, fp32_file = run_dir / "export" / FILES[(fmt, True)], run_dir / "export" / FILES[(fmt, False)]
    entry = _entries(run_dir)[file.name]
    assert entry["int8"] is True and entry["min_agreement"] == INT8_MIN_AGREEMENT
    x, ref = reference
    logits = _reload_logits(file, x)
    agreement = (logits.argmax(1) == ref.argmax(1)).float().mean().item()
    assert agreement >= INT8_MIN_AGREEMENT and agreement == pytest.approx(entry["agreement"])
    assert 0 < (logits - ref).abs().max().item() < 0.5  # really quantised, and still close
    assert file.stat().st_size < 0.75 * fp32_file.stat().st_size, (file.stat().st_size, fp32_file.stat().st_size)


def test_export_json_and_deployment_table(run_dir, exported) -> None:
    entries = _entries(run_dir)
    assert set(entries) == set(FILES.values())
    for e in entries.values():
        assert {"format", "int8", "file", "bytes", "max_abs_diff", "agreement", "n", "latency"} <= set(e)
    assert not [p for p in (run_dir / "export").iterdir() if p.name.startswith(".")]  # no temp files left
    report = json.loads((run_dir / "report.json").read_text())
    rows = {r["model"]: r for r in report["deployment"]["rows"]}
    assert list(rows)[:2] == ["teacher", "student"] and len(rows) == 2 + len(FILES)
    for r in rows.values():
        assert r["size_bytes"] > 0 and r["latency_ms_b1"] > 0 and r["latency_ms_b256"] > 0
    assert rows["student onnx int8"]["size_bytes"] < rows["student onnx"]["size_bytes"]
    assert report["models"]["student"]["params"] > 0  # the rest of the report is kept
    md = (run_dir / "report.md").read_text()
    assert "## Deployment" in md and "| student torchscript int8 | torchscript int8 |" in md
    assert "| role | params |" in md and md.index("## Deployment") < md.index("## Plots")


def _copy_run(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("export", "checkpoint", "*.png"))
    return dest


def _one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def test_unknown_format_and_missing_run_dir(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(tmp_path), "--format", "tflite"])
    _one_line(exit_info.value.code, capsys.readouterr().err, "invalid choice", "tflite")
    _one_line(*cli(capsys, "export", str(tmp_path / "none"), "--format", "onnx")[::2], "run directory not found")
    _one_line(*cli(capsys, "export", str(tmp_path), "--format", "onnx")[::2], "no report.json")


def test_missing_student_weights_and_bad_report(run_dir: Path, tmp_path: Path, capsys) -> None:
    run = _copy_run(run_dir, tmp_path / "run")
    (run / "student" / "model.safetensors").unlink()
    _one_line(*cli(capsys, "export", str(run), "--format", "torchscript")[::2], "no student weights")
    (run / "report.json").write_text("{not json")
    _one_line(*cli(capsys, "export", str(run), "--format", "torchscript")[::2], "report.json", "not valid JSON")


def test_wrong_architecture_weights(run_dir: Path, tmp_path: Path, capsys) -> None:
    run = _copy_run(run_dir, tmp_path / "run")
    other = build_model("mlp", num_classes=10, input_shape=(1, 8, 8), hidden=[32, 32])
    save_file(other.state_dict(), str(run / "student" / "model.safetensors"))
    _one_line(*cli(capsys, "export", str(run), "--format", "safetensors")[::2], "does not match the model",
              "layers.1.weight")
    assert not (run / "export").exists()


def test_failed_parity_leaves_nothing(run_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    run = _copy_run(run_dir, tmp_path / "run")
    report_before = (run / "report.json").read_bytes()
    monkeypatch.setattr("distill.export.FP32_MIN_AGREEMENT", 1.5)  # no export can pass: the failure path
    for fmt in ("safetensors", "torchscript"):
        _one_line(*cli(capsys, "export", str(run), "--format", fmt)[::2], "parity check", "nothing written")
    assert not (run / "export").exists() and (run / "report.json").read_bytes() == report_before


def test_missing_onnx_extra_is_one_line(run_dir: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr("distill.deploy.ONNX_MODULES", ("onnx", "no_such_module_xyz"))
    _one_line(*cli(capsys, "export", str(run_dir), "--format", "onnx")[::2], "no_such_module_xyz",
              "pip install 'distill[onnx]'")
