"""``distill export RUN_DIR --format transformers``: a language-model student as a Hugging Face folder.

The folder (``RUN_DIR/export/transformers/``: ``config.json``, ``model.safetensors``, generation config and the
run's tokenizer) is what ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` load. It
is written to a temporary folder, loaded back that way and compared with the PyTorch student on held-out blocks
(next-token arg-max agreement at least 99.9%, the fp32 bound of every export); only then is it renamed into place.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from distill.errors import DistillError
from distill.export import FP32_MIN_AGREEMENT
from distill.io import first_line

PARITY_BLOCKS = 8


def export_transformers(run_dir: str | Path) -> dict[str, Any]:
    """Write, reload, check and place the student's transformers folder; returns the export entry."""
    from distill.export import read_run

    run_dir, recipe, data, student, _ = read_run(run_dir)
    lm = getattr(student, "lm", None)
    if not data.tokens or lm is None or not hasattr(lm, "save_pretrained"):
        raise DistillError(f"export --format transformers: the student of {run_dir} is not a causal_lm "
                           "language model (use safetensors, torchscript or onnx)")
    target = run_dir / "export" / "transformers"
    tmp = target.with_name("transformers.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        lm.save_pretrained(str(tmp))
        tokenizer = recipe.data.kwargs.get("tokenizer")
        if isinstance(tokenizer, str):
            from distill.data.text import load_tokenizer

            load_tokenizer(tokenizer).save_pretrained(str(tmp))
        entry = _parity(student, tmp, data)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(f.stat().st_size for f in target.iterdir() if f.is_file())
    return {"format": "transformers", "file": target.name, "bytes": size, **entry}


@torch.inference_mode()
def _parity(student: torch.nn.Module, folder: Path, data: Any) -> dict[str, Any]:
    """Logits of the reloaded folder against the student's on the first test blocks; DistillError below 99.9%."""
    from distill.models.causal_lm import token_fields
    from distill.models.hf import _transformers

    try:
        reloaded = _transformers().AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    except (OSError, ValueError) as e:
        raise DistillError(f"transformers export: the written folder does not load: {first_line(e)}") from None
    rows = torch.arange(min(PARITY_BLOCKS, len(data.test)))
    ids, mask = token_fields(data.test.take(rows))
    ref = student(input_ids=ids, attention_mask=mask)  # (B, S, V)
    got = reloaded(input_ids=ids, attention_mask=mask).logits
    counted = data.test.y[rows] != -100
    agree = float((ref.argmax(-1) == got.argmax(-1))[counted].float().mean())
    diff = float((ref - got).abs().max())
    if agree < FP32_MIN_AGREEMENT:
        raise DistillError(f"transformers export failed its parity check: next-token agreement {agree:.2%} with the "
                           f"PyTorch student (needs >= {FP32_MIN_AGREEMENT:.1%}), max |logit diff| {diff:.3g}; "
                           "nothing written")
    return {"agreement": agree, "max_abs_diff": diff, "n": int(counted.sum())}
