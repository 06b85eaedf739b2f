"""``distill export RUN_DIR --format safetensors|torchscript|onnx [--int8]``: the trained student of a finished
run as a deployable file under ``RUN_DIR/export/``, checked against the PyTorch student before it is kept.

Parity: the exported file is loaded back on its own (a rebuilt model for safetensors, ``torch.jit.load`` for
TorchScript, onnxruntime for ONNX) and run on held-out inputs (the first 1,000 samples of the recipe's test
split); its logits are compared with the fp32 PyTorch student's. A file whose top-1 agreement is below the
bound is never renamed into place: the command fails with one ``error:`` line and leaves nothing behind.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distill.build import check_classes, load_data, run_teacher
from distill.data import DataSplits, head
from distill.deploy import (
    Logits,
    deployment_table,
    int8_state,
    load_as,
    measure,
    quantize_linear,
    quiet,
    require_onnx,
    sha256_file,
)
from distill.errors import DistillError
from distill.evaluate import predict, topk_accuracy
from distill.io import atomic_path, load_into, load_weights, write_json
from distill.pruned import rebuild_student
from distill.recipe import Recipe, recipe_from_dict
from distill.report import write_deployment

FORMATS = ("safetensors", "torchscript", "onnx")
SUFFIX = {"safetensors": ".safetensors", "torchscript": ".torchscript.pt", "onnx": ".onnx"}
PARITY_SAMPLES = 1000
# fp32: the exported graph computes the same function up to float reordering (max |logit diff| ~1e-6), so
# only a sample whose top-2 logits tie within that noise may flip: 99.9% still allows for one such tie.
FP32_MIN_AGREEMENT = 0.999
# int8: dynamic quantisation rounds each Linear's weights to 256 levels per tensor and its input activations to
# 8 bits per batch. That moves logits by a small fraction of their range (MNIST 784-32-10 student, logits in
# +-85: median |diff| 0.2, max 1.3; digits: max 0.02-0.2), so only samples whose top-2 logit margin is that
# small can flip: 0.1-0.3% of test samples in our runs (99.7-99.9% agreement). Below 99% the quantised model is
# broken (e.g. int8 overflow) or the student too fragile to quantise, and the export stops.
INT8_MIN_AGREEMENT = 0.99


@dataclass
class RunContext:
    """A finished run, read back: its recipe and data, the fp32 student and its logits on the parity inputs."""

    run_dir: Path
    recipe: Recipe
    data: DataSplits
    student: nn.Module
    student_file: Path
    x: Tensor  # (N, *input_shape) held-out parity inputs, normalised like the student's training inputs
    y: Tensor  # (N,)
    ref: Tensor  # (N, C) fp32 student logits on x

    @property
    def export_dir(self) -> Path:
        """``RUN_DIR/export``."""
        return self.run_dir / "export"


def load_run(run_dir: str | Path) -> RunContext:
    """Rebuild the student of a finished run from its report.json recipe and ``student/model.safetensors``."""
    run_dir, recipe, data, student, weights = read_run(run_dir)
    x, y = _parity_inputs(data, recipe.student.inputs), data.test.y[:PARITY_SAMPLES]
    return RunContext(run_dir, recipe, data, student, weights, x, y, predict(student, x))


def read_run(run_dir: str | Path) -> tuple[Path, Recipe, DataSplits, nn.Module, Path]:
    """(run folder, recipe, data, student in eval mode with its trained weights, weights file) of a finished run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DistillError(f"run directory not found: {run_dir}")
    report_path = run_dir / "report.json"
    if not report_path.is_file():
        raise DistillError(f"{run_dir} has no report.json: not a finished distill run")
    try:
        report = json.loads(report_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DistillError(f"{report_path}: not valid JSON ({e})") from None
    if not isinstance(report, dict) or not isinstance(report.get("recipe"), dict):
        raise DistillError(f"{report_path} holds no 'recipe': not a distill report")
    # the distilled student's folder: "student", or the row the report names so (born_again: the last generation)
    role = (report.get("summary_roles") or {}).get("student", "student")
    if not isinstance(role, str) or not role.replace("_", "").isalnum():
        raise DistillError(f"{report_path}: summary_roles.student {role!r} is not a role name")
    weights = run_dir / role / "model.safetensors"
    if not weights.is_file():
        raise DistillError(f"{run_dir} has no student weights ({weights.relative_to(run_dir)}): not a finished run")
    if set(report["recipe"]) == {"python"}:
        raise DistillError(f"{run_dir} was trained by distill.fit from Python objects, which export cannot rebuild: "
                           "export result.student yourself, or name every part so fit writes recipe.yaml")
    recipe = recipe_from_dict(report["recipe"], source=f"{report_path} recipe")
    data = load_data(recipe)
    student = rebuild_student(recipe, data, run_dir)  # a pruned student: its teacher pruned again
    load_into(student, load_weights(weights), f"student weights {weights}")
    check_classes(data, {"student": recipe.student.inputs}, student=student)
    return run_dir, recipe, data, student.eval(), weights


def _parity_inputs(data: DataSplits, keys: Any) -> Tensor:
    """The first test inputs, as the one tensor the exported student takes (one key of a dict input)."""
    x = head(data.test, PARITY_SAMPLES)
    if not isinstance(x, dict):
        return x
    if not isinstance(keys, str):
        raise DistillError(f"export: the student reads {keys!r} of a dict input; exported files take one tensor, so "
                           "export supports a student reading one key (student.inputs: <key>)")
    return x[keys]


def export_student(run_dir: str | Path, fmt: str, *, int8: bool = False) -> dict[str, Any]:
    """Export, check parity, record ``export/export.json`` and refresh the report's deployment table.

    Returns the export entry (format, int8, file, bytes, max_abs_diff, agreement, n, latency, ...).
    """
    if fmt == "transformers":
        from distill.export_lm import export_transformers

        if int8:
            raise DistillError("export --int8 applies to safetensors, torchscript and onnx, not a transformers folder")
        return export_transformers(run_dir)
    if fmt not in FORMATS:
        raise DistillError(f"unknown export format {fmt!r} (choose from {', '.join(FORMATS)}, transformers)")
    if fmt == "onnx":
        require_onnx()  # before the slow part, so a missing extra fails at once
    ctx = load_run(run_dir)
    target = ctx.export_dir / ("student" + (".int8" if int8 else "") + SUFFIX[fmt])
    made_dir = not ctx.export_dir.exists()
    try:
        entry = _export_checked(ctx, fmt, int8, target)
    except BaseException:
        if made_dir and ctx.export_dir.is_dir() and not any(ctx.export_dir.iterdir()):
            ctx.export_dir.rmdir()  # a failed first export leaves no trace at all
        raise
    update_deployment(ctx, _record(ctx, entry))
    return entry


def _export_checked(ctx: RunContext, fmt: str, int8: bool, target: Path) -> dict[str, Any]:
    """Write ``target`` (and its spec .json for safetensors) to temp files, reload, check; rename only if good."""
    with ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(target))
        spec: dict[str, Any] | None = None
        with _one_line(f"{fmt} export"):
            if fmt == "safetensors":
                spec = _write_safetensors(ctx, tmp, int8)
                write_json(stack.enter_context(atomic_path(target.with_suffix(".json"))), spec)
            elif fmt == "torchscript":
                _write_torchscript(ctx, tmp, int8)
            else:
                _write_onnx(ctx, tmp, int8)
        what = f"{fmt}{' int8' if int8 else ''} export"
        with _one_line(f"reloading the {what}"):
            module = load_as(fmt, tmp, spec)
            logits = predict(module, ctx.x)
        result = parity(ctx.ref, logits, INT8_MIN_AGREEMENT if int8 else FP32_MIN_AGREEMENT, what)
        timing = measure(module, ctx.x, ctx.y)
        return {"format": fmt, "int8": int8, "file": target.name, "bytes": tmp.stat().st_size, **result,
                "top1": topk_accuracy(logits, ctx.y),
                "latency": {"b1": timing["latency_ms_b1"], "b256": timing["latency_ms_b256"]},
                "threads": torch.get_num_threads(), "student_sha256": sha256_file(ctx.student_file),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def parity(ref: Tensor, logits: Tensor, min_agreement: float, what: str) -> dict[str, Any]:
    """Max |logit difference| and top-1 agreement of ``logits`` with ``ref``; DistillError below the bound."""
    if logits.shape != ref.shape:
        raise DistillError(f"{what}: output shape {tuple(logits.shape)} differs from the student's {tuple(ref.shape)}")
    diff = (logits - ref).abs().max().item()
    agree = (logits.argmax(1) == ref.argmax(1)).float().mean().item()
    if not torch.isfinite(logits).all() or agree < min_agreement:
        # Say how many predictions are near-ties that a change of this size can flip: many near-ties point at
        # an unsure student (train longer, or export fp32), few at a broken export.
        top2 = ref.topk(2, dim=1).values if ref.shape[1] > 1 else ref.repeat(1, 2)
        near = ((top2[:, 0] - top2[:, 1]) < 2 * diff).float().mean().item()
        raise DistillError(f"{what} failed its parity check: top-1 agreement {agree:.2%} with the PyTorch student "
                           f"on {len(ref)} test samples (needs >= {min_agreement:.1%}), max |logit diff| {diff:.3g} "
                           f"({near:.1%} of the student's predictions are closer calls than that); nothing written")
    return {"max_abs_diff": diff, "agreement": agree, "n": len(ref), "min_agreement": min_agreement}


@contextmanager
def _one_line(what: str) -> Iterator[None]:
    """Exporters and tracers raise many exception types with multi-line text: make them one DistillError line."""
    try:
        yield
    except DistillError:
        raise
    except Exception as e:  # any failure inside torch/onnx is reported as one line, not a traceback
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DistillError(f"{what} of the student failed: {type(e).__name__}: {first}") from None


def _model_spec(ctx: RunContext) -> dict[str, Any]:
    """What ``deploy.load_student_safetensors`` needs to rebuild the student, plus its input preprocessing."""
    data = ctx.data
    if ctx.recipe.student.from_teacher:
        raise DistillError("safetensors export rebuilds the student from its model name, and a student pruned from "
                           "the teacher (from_teacher) has no name of its own: export torchscript or onnx, which "
                           "carry the architecture")
    return {"model": {"name": ctx.recipe.student.name, **ctx.recipe.student.kwargs},
            "num_classes": data.num_classes, "input_shape": list(data.input_shape),
            "input_normalization": {"mean": list(data.mean), "std": list(data.std)},
            "dataset": data.name, "class_names": list(data.class_names) if data.class_names else None,
            "quantized": []}


def _write_safetensors(ctx: RunContext, tmp: Path, int8: bool) -> dict[str, Any]:
    from safetensors.torch import save_file

    spec = _model_spec(ctx)
    state = ctx.student.state_dict()
    if int8:
        qmodel, names = quantize_linear(ctx.student)
        state, spec["quantized"] = int8_state(ctx.student, qmodel, names), names
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp))
    return spec


def _write_torchscript(ctx: RunContext, tmp: Path, int8: bool) -> None:
    model = quantize_linear(ctx.student)[0] if int8 else ctx.student
    # trace, not script: it takes any student (external models with Python control flow included); the batch
    # size is not baked in, which the parity run (batch 1000) and latency runs (1 and 256) exercise.
    with quiet(), torch.no_grad():
        traced = torch.jit.trace(Logits(model).eval(), ctx.x[:2])
        torch.jit.save(traced, str(tmp))


def _write_onnx(ctx: RunContext, tmp: Path, int8: bool) -> None:
    if not int8:
        _onnx_export(Logits(ctx.student).eval(), ctx.x[:2], tmp)
        return
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as d:
        fp32 = Path(d) / "student.onnx"
        _onnx_export(Logits(ctx.student).eval(), ctx.x[:2], fp32)
        # Linear layers only (MatMul/Gemm), like the PyTorch --int8, so both int8 rows quantise the same layers.
        # uint8 weights (U8U8): with int8 weights, x86 CPUs without VNNI saturate 16-bit sums (onnxruntime's docs
        # say so; we measured max |logit diff| 8.1 instead of 0.8 on the MNIST MLP student), and U8U8 was faster.
        with quiet():
            quantize_dynamic(fp32, tmp, weight_type=QuantType.QUInt8, op_types_to_quantize=["MatMul", "Gemm"])


def _onnx_export(model: nn.Module, example: Tensor, path: Path) -> None:
    # Exporter: in torch 2.13 both work offline and gave identical logits on our models; the torch.export-based
    # one (dynamo=True, needs onnxscript) is the default since 2.9 while the TorchScript-based one (dynamo=False)
    # warns that it will be removed, so we use the supported one. external_data=False: its default writes the
    # weights to a side file that the atomic rename of the .onnx would not carry.
    with quiet(), torch.no_grad():
        torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["logits"],
                          dynamo=True, external_data=False, dynamic_shapes=({0: torch.export.Dim("batch")},),
                          verbose=False)


def _record(ctx: RunContext, entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Add ``entry`` to export.json (replacing the entry of the same file); returns every entry."""
    path = ctx.export_dir / "export.json"
    entries: list[dict[str, Any]] = []
    if path.is_file():
        try:
            entries = list(json.loads(path.read_text())["exports"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DistillError(f"{path}: unreadable ({type(e).__name__}); delete it and export again") from None
    entries = [e for e in entries if e.get("file") != entry["file"]] + [entry]
    write_json(path, {"student": str(ctx.student_file.relative_to(ctx.run_dir)), "exports": entries})
    return entries


def update_deployment(ctx: RunContext, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Measure teacher and student (size, test top-1, CPU latency at batch 1 and 256), add one row per current
    export, and write the table into the run's report.json (``deployment``) and report.md ("Deployment")."""
    notes: list[str] = []
    base = []
    teacher = _teacher(ctx, notes)
    if teacher is not None:
        base.append(_base_row("teacher", *teacher, ctx, ref=None))
    rel = str(ctx.student_file.relative_to(ctx.run_dir))
    base.append(_base_row("student", ctx.student, ctx.student_file, rel, ctx, ref=ctx.ref))
    sha = sha256_file(ctx.student_file)
    current = [e for e in entries if e.get("student_sha256") == sha]
    notes += [f"export/{e['file']} was exported from an earlier student/model.safetensors: left out, export again"
              for e in entries if e not in current and (ctx.export_dir / e["file"]).is_file()]
    table = deployment_table(base, current, ctx.export_dir, n=len(ctx.x))
    table["notes"] = notes
    write_deployment(ctx.run_dir, table)
    return table


def _base_row(name: str, model: nn.Module, file: Path, shown: str, ctx: RunContext, *,
              ref: Tensor | None) -> dict[str, Any]:
    return {"model": name, "format": "pytorch", "int8": False, "file": shown, "size_bytes": file.stat().st_size,
            **measure(model, ctx.x, ctx.y, ref=ref)}


def _teacher(ctx: RunContext, notes: list[str]) -> tuple[nn.Module, Path, str] | None:
    """The run's teacher (trained or adapted here, or its recipe ``weights``), its file and how to show it; None
    with a note when it cannot be loaded."""
    spec = ctx.recipe.teacher
    if spec is None:
        return None
    if spec.inputs != ctx.recipe.student.inputs:
        notes.append(f"teacher left out: it reads input {spec.inputs!r}, the exported student "
                     f"{ctx.recipe.student.inputs!r}")
        return None
    try:
        return run_teacher(ctx.recipe, ctx.data, ctx.run_dir)
    except DistillError as e:
        notes.append(f"teacher left out: {e}")
        return None
