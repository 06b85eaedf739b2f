"""GGUF files (llama.cpp's format) as transformers models and tokenizers, converted once and kept.

``transformers`` reads a GGUF file's tokenizer and dequantises its weights to fp32 (it needs the ``gguf`` and
``accelerate`` packages: the ``lm`` extra). That costs ~20 s for a 135M-parameter model on a CPU, so the first
load saves the result as an ordinary transformers folder (safetensors) under ``$DISTILL_CACHE`` (default
``~/.cache/distill``) ``/gguf/<file name>-<content hash>/``, written to a temporary folder and renamed, so a
killed conversion leaves nothing half-written; later loads read that folder. Dequantised weights are real but
approximate the original model (a Q4_1 file keeps ~4.5 bits per weight).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from distill.errors import DistillError
from distill.io import cache_root, first_line


def gguf_file(spec: str) -> Path | None:
    """The GGUF file ``spec`` names (a path or ``pkg:<package>/<file>`` ending in ``.gguf``), None when ``spec``
    names something else; a ``.gguf`` path that is not a file is a DistillError."""
    if not spec.endswith(".gguf"):
        return None
    from distill.build import resolve_path

    file = resolve_path(spec)
    if not file.is_file():
        raise DistillError(f"no GGUF file at {spec}")
    return file


def converted(file: Path, what: str) -> Path:
    """The transformers folder holding the ``what`` (``model`` or ``tokenizer``) of GGUF ``file``, converting it
    on first use."""
    digest = hashlib.sha256()
    with file.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    folder = cache_root() / "gguf" / f"{file.stem}-{digest.hexdigest()[:16]}" / what
    if (folder / "done").is_file():
        return folder
    tmp = folder.with_name(f"{what}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        (_save_model if what == "model" else _save_tokenizer)(file, tmp)
        (tmp / "done").write_text(str(file) + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _transformers() -> Any:
    from distill.models.hf import _transformers as t

    return t()


def _save_tokenizer(file: Path, out: Path) -> None:
    try:
        tok = _transformers().AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    except (ImportError, OSError, ValueError, KeyError) as e:
        raise DistillError(f"cannot read the tokenizer of {file}: {first_line(e)} "
                           "(pip install 'distill[lm]')") from None
    tok.save_pretrained(str(out))


def _save_model(file: Path, out: Path) -> None:
    import torch

    t = _transformers()
    try:
        model = t.AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, dtype=torch.float32)
    except (ImportError, OSError, ValueError, KeyError, RuntimeError) as e:
        raise DistillError(f"cannot read the model in {file}: {first_line(e)} (pip install 'distill[lm]')") from None
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are plain fp32 now; save_pretrained refuses GGUF models
    plain = t.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(str(out))
