"""Exported students as runnable modules, dynamic int8 quantisation, and the run report's deployment table.

Every loader returns an ``nn.Module`` mapping a float32 batch to logits, so ``distill.evaluate.predict`` and
``latency_ms`` measure an exported file exactly as they measure the PyTorch student.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distill.errors import DistillError
from distill.evaluate import latency_ms, predict, topk_accuracy
from distill.io import first_line, load_into, read_json
from distill.models.teacher import as_logits

ONNX_MODULES = ("onnx", "onnxruntime", "onnxscript")


@contextmanager
def quiet() -> Iterator[None]:
    """Silence deprecation chatter and exporter log lines, so the CLI prints only its own lines.

    ``torch.ao.quantization`` and ``torch.jit`` warn that they are deprecated (both still work in 2.13),
    the ONNX exporter logs skipped torchvision ops, onnxruntime's quantizer suggests optional pre-processing.
    """
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def require_onnx() -> None:
    """Raise a one-line DistillError when the ``onnx`` extra is not installed."""
    import importlib.util

    missing = [m for m in ONNX_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise DistillError(f"ONNX export needs {', '.join(missing)}: pip install 'distill[onnx]'")


class Logits(nn.Module):
    """The logits of a model whose forward may return a tuple or a ``.logits`` output (traced/exported)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        """(B, *input_shape) -> (B, num_classes)."""
        return as_logits(self.model(x))


class OnnxModule(nn.Module):
    """An ONNX file run by onnxruntime on CPU, behind the ``nn.Module`` call interface."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        # Same thread count as torch, so latencies of the ONNX and PyTorch rows are comparable.
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for unreadable models
            raise DistillError(f"{path}: onnxruntime cannot load it ({first_line(e)})") from None
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: Tensor) -> Tensor:
        """(B, *input_shape) float32 -> (B, num_classes) float32."""
        out = self.session.run(None, {self.input_name: x.detach().cpu().float().contiguous().numpy()})[0]
        return torch.from_numpy(out)


def quantize_linear(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """Dynamic int8 copy of ``model`` (every ``nn.Linear``) and the module paths that were quantised.

    ``torch.ao.quantization.quantize_dynamic`` is deprecated in favour of torchao but still present and
    working in torch 2.13; torchao is not a dependency and its tensor-subclass models cannot be traced to
    TorchScript, so the built-in one is used. Weights: qint8 per tensor; activations: quantised per batch.
    """
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import quantize_dynamic

    fp32 = _copy_eval(model)
    with quiet():
        qmodel = quantize_dynamic(fp32, {nn.Linear}, dtype=torch.qint8)
    names = [n for n, m in qmodel.named_modules() if isinstance(m, DynamicLinear)]
    if not names:
        raise DistillError("--int8: the student has no nn.Linear layer to quantise")
    return qmodel.eval(), names


def _copy_eval(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).eval()


def int8_state(model: nn.Module, qmodel: nn.Module, names: list[str]) -> dict[str, Tensor]:
    """Safetensors-storable state of a dynamic-int8 model: each quantised Linear's weight as int8 plus
    ``weight_scale`` / ``weight_zero_point``; every other tensor (biases included) float32 as in ``model``."""
    state = dict(model.state_dict())
    for name in names:
        qweight = qmodel.get_submodule(name).weight()
        state[f"{name}.weight"] = qweight.int_repr()
        state[f"{name}.weight_scale"] = torch.tensor([qweight.q_scale()], dtype=torch.float64)
        state[f"{name}.weight_zero_point"] = torch.tensor([qweight.q_zero_point()], dtype=torch.int64)
    return state


def load_student_safetensors(weights: str | os.PathLike, spec: dict[str, Any]) -> nn.Module:
    """Rebuild an exported student from ``student[.int8].safetensors`` and its ``student[.int8].json`` spec."""
    from distill.models import build_model

    model_spec = dict(spec["model"])
    model = build_model(model_spec.pop("name"), num_classes=int(spec["num_classes"]),
                        input_shape=tuple(spec["input_shape"]), **model_spec)
    state = _read_safetensors(weights)
    names = list(spec.get("quantized") or [])
    qweights = {}
    for name in names:  # float copies first, so the strict load checks every key and shape
        w, scale, zp = (state.pop(f"{name}.{k}", None) for k in ("weight", "weight_scale", "weight_zero_point"))
        if w is None or scale is None or zp is None:
            raise DistillError(f"{weights}: int8 weight of {name!r} is incomplete")
        qweights[name] = (w, float(scale.reshape(-1)[0]), int(zp.reshape(-1)[0]))
        state[f"{name}.weight"] = (w.float() - zp.float()) * qweights[name][1]
    load_into(model, state, str(weights))
    if not names:
        return model.eval()
    qmodel, got = quantize_linear(model)
    if sorted(got) != sorted(names):
        raise DistillError(f"{weights}: quantised layers {names} do not match the model's Linear layers {got}")
    with quiet():
        for name, (w, scale, zp) in qweights.items():
            layer = qmodel.get_submodule(name)
            # (q - zp) * s re-quantises to exactly q: the stored int8 values are used as they are
            exact = torch.quantize_per_tensor((w.float() - zp) * scale, scale, zp, torch.qint8)
            layer.set_weight_bias(exact, layer.bias())
    return qmodel


def _read_safetensors(path: str | os.PathLike) -> dict[str, Tensor]:
    """``io.load_weights`` picks the reader by file suffix; export checks read temp files, so read safetensors
    explicitly (never a pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise DistillError(f"{path}: not a valid safetensors file ({e})") from None


def load_as(fmt: str, path: str | os.PathLike, spec: dict[str, Any] | None = None) -> nn.Module:
    """The file at ``path`` (any name: temp files included) as a module, read as ``fmt``; safetensors needs the
    ``spec`` written next to it."""
    if fmt == "onnx":
        require_onnx()
        return OnnxModule(path)
    if fmt == "torchscript":
        try:
            with quiet():
                return torch.jit.load(str(path), map_location="cpu").eval()
        except RuntimeError as e:
            raise DistillError(f"{path}: not a TorchScript file ({first_line(e)})") from None
    if fmt == "safetensors" and spec is not None:
        return load_student_safetensors(path, spec)
    raise DistillError(f"{path}: cannot load format {fmt!r}" + (" without its model spec" if spec is None else ""))


def load_exported(path: str | os.PathLike) -> nn.Module:
    """An exported student file as a module: ``.onnx`` (onnxruntime), ``.pt`` (TorchScript), ``.safetensors``
    (rebuilt with the spec in the ``.json`` next to it)."""
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"exported file not found: {path}")
    fmt = {".onnx": "onnx", ".pt": "torchscript", ".safetensors": "safetensors"}.get(path.suffix)
    if fmt is None:
        raise DistillError(f"{path}: unknown export format (expected .onnx, .pt or .safetensors)")
    spec = None
    if fmt == "safetensors":
        spec_path = path.with_suffix(".json")
        if not spec_path.is_file():
            raise DistillError(f"{path}: its model spec {spec_path.name} is missing")
        spec = read_json(spec_path, "the model spec", "export the student again")
    return load_as(fmt, path, spec)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (ties an export to the student weights it came from)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def measure(model: nn.Module, x: Tensor, y: Tensor, *, ref: Tensor | None = None) -> dict[str, float | None]:
    """Test top-1 on (x, y), top-1 agreement with ``ref`` logits, and median CPU latency at batch 1 and 256."""
    logits = predict(model, x)
    with quiet():
        lat = {f"latency_ms_b{b}": latency_ms(model, x[:1], b) for b in (1, 256)}
    agree = None if ref is None else (logits.argmax(1) == ref.argmax(1)).float().mean().item()
    return {"top1": topk_accuracy(logits, y), "agreement": agree, **lat}


def deployment_table(base: list[dict[str, Any]], exports: list[dict[str, Any]], export_dir: Path,
                     *, n: int) -> dict[str, Any]:
    """The ``deployment`` section of report.json: ``base`` rows (teacher, student: already measured) then one
    row per export entry whose file is still on disk (sizes re-read; latency as measured at export time)."""
    rows = list(base)
    for e in exports:
        file = export_dir / e["file"]
        if not file.is_file():
            continue
        label = f"student {e['format']}" + (" int8" if e["int8"] else "")
        rows.append({"model": label, "format": e["format"], "int8": e["int8"], "file": f"export/{e['file']}",
                     "size_bytes": file.stat().st_size, "top1": e.get("top1"), "agreement": e["agreement"],
                     "latency_ms_b1": e["latency"]["b1"], "latency_ms_b256": e["latency"]["b256"]})
    return {"threads": torch.get_num_threads(), "n": n, "rows": rows}
