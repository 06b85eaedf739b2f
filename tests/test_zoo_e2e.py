"""Every zoo model as teacher and as student through `distill run`, with the settings users get by default:
teacher trained here, teacher-output cache on auto, scratch comparison on, report written.

Found the hard way: a BatchNorm teacher's 0-dim ``num_batches_tracked`` buffer crashed the cache fingerprint,
so KD from every ResNet/WRN/VGG teacher failed by default while every test used MLP teachers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from distill.cache.build import hash_tensors
from distill.io import save_weights
from distill.models import MODELS, build_model
from distill.models.base import SHAPE_FREE
from helpers import cli, write_recipe

ZOO = [n for n in MODELS.names() if n not in SHAPE_FREE]  # external and hf: tests of their own
SMALL = {"name": "mlp", "hidden": [16]}


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 / 20 / 20 digits as 1x8x8 images: enough for one epoch of every role."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    path = tmp_path_factory.mktemp("zoo") / "tiny.npz"
    np.savez(path, x=x[:48], y=y[:48], x_val=x[48:68], y_val=y[48:68], x_test=x[68:88], y_test=y[68:88])
    return path


def _pretrained(tmp: Path, name: str, npz: Path) -> str:
    """Weights for a zoo teacher whose BatchNorm statistics come from the data: a random but sane pretrained
    teacher. (Training one here for a few steps is not enough: resnet110 after 6 steps gives eval-mode logits
    of 1e6, which the cache refuses with one line. ``test_teacher_trained_here`` covers that path.)"""
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, input_shape=(1, 8, 8))
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average: one pass gives the batch statistics exactly
    x = torch.from_numpy(np.load(npz)["x"])
    with torch.no_grad():
        model.train()(x)
    path = tmp / f"{name}.safetensors"
    save_weights(path, model.state_dict())
    return str(path)


def _run(tmp: Path, capsys, npz: Path, teacher: dict, student: dict) -> dict:
    raw = {"name": "zoo", "output_dir": str(tmp / "out"),
           "data": {"name": "arrays", "path": str(npz), "num_classes": 10, "batch_size": 16},
           "teacher": teacher, "student": student,
           "method": {"name": "kd"}, "train": {"epochs": 1}, "eval": {"latency": False}}
    code, out, err = cli(capsys, "run", str(write_recipe(tmp, raw)))
    assert code == 0, err
    assert "report written to" in out
    report = json.loads((tmp / "out" / "report.json").read_text())
    assert list(report["models"]) == ["teacher", "scratch", "student"]
    assert (tmp / "out" / "cache" / "manifest.json").is_file(), "kd needs only logits: the cache is the default"
    return report


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_as_teacher(name: str, tmp_path: Path, capsys, tiny_npz: Path) -> None:
    _run(tmp_path, capsys, tiny_npz, {"name": name, "weights": _pretrained(tmp_path, name, tiny_npz)}, SMALL)


def test_batchnorm_teacher_trained_here(tmp_path: Path, capsys, tiny_npz: Path) -> None:
    report = _run(tmp_path, capsys, tiny_npz, {"name": "resnet8", "train": {"epochs": 4}}, SMALL)
    assert report["models"]["teacher"]["params"] == 77754


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_as_student(name: str, tmp_path: Path, capsys, tiny_npz: Path) -> None:
    report = _run(tmp_path, capsys, tiny_npz, {"name": "mlp", "hidden": [32], "train": {"epochs": 1}},
                  {"name": name})
    assert report["models"]["student"]["params"] == report["models"]["scratch"]["params"]


def test_external_model_both_roles(tmp_path: Path, capsys, tiny_npz: Path) -> None:
    # an external model is any importable nn.Module; this one is built by helpers for 1x8x8 inputs
    ext = {"name": "external", "target": "helpers:tiny_convnet"}
    _run(tmp_path, capsys, tiny_npz, {**ext, "train": {"epochs": 2}}, ext)


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int8,
          torch.uint8, torch.bool, torch.complex64, torch.float8_e4m3fn]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fingerprint_hashes_every_dtype_and_0dim(dtype: torch.dtype) -> None:
    scalar, matrix = torch.ones((), dtype=dtype), torch.ones(3, 2, dtype=dtype)
    h0, h1 = hash_tensors({"a": scalar}), hash_tensors({"a": matrix})
    assert h0 != h1  # shape is part of the identity
    assert hash_tensors({"a": torch.zeros((), dtype=dtype)}) != h0  # and so are the bytes
    assert hash_tensors({"a": matrix.t().contiguous().t()}) == h1  # layout is not
    assert hash_tensors({"a": scalar.clone()}) == h0


def test_fingerprint_of_a_batchnorm_state_dict_changes_with_its_counter() -> None:
    bn = torch.nn.BatchNorm1d(3)
    before = hash_tensors(bn.state_dict())
    bn(torch.randn(4, 3))
    assert hash_tensors(bn.state_dict()) != before


@pytest.mark.parametrize("scale, phrase", [(1e6, "beyond float16's range"), (float("inf"), "not finite")])
def test_cache_refuses_logits_it_cannot_store(tmp_path: Path, scale: float, phrase: str) -> None:
    from distill.cache.build import build_cache, cache_fingerprint
    from distill.errors import DistillError

    teacher = torch.nn.Linear(4, 3)
    with torch.no_grad():
        teacher.weight.fill_(scale)
    x = torch.ones(5, 4)
    fp = cache_fingerprint(teacher=teacher, teacher_spec={}, inputs=x, augment=None, views=1, k=3, dtype="fp16",
                           temperatures=[1.0])
    with pytest.raises(DistillError, match=phrase):
        build_cache(tmp_path / "c", teacher=teacher, inputs=x, fingerprint=fp, log=lambda _: None)
    assert not (tmp_path / "c").exists()  # nothing half-written
