"""The batch size of evaluation forwards (per-epoch accuracy, the report), chosen by a short measurement.

No single batch size is fastest for every model. Measured on this project's 2-core CPU (samples per second, eval
mode, no grad; `python benchmarks/inference_batch.py`, table in docs/BENCHMARKS.md): the pretrained ccexam MNIST
CNN runs 1.2-1.6x faster at 64-128 than at 1000 and resnet8x4 1.8-2.2x faster at 32, while an MLP and the 1-D
resnet32 are fastest at 256-1000 (resnet32 3x faster than at 32). So the first forward over a large enough split
times one batch at each of ``CANDIDATES`` on its first samples and keeps the fastest for that model, input shape
and device for the rest of the process.

Logits agree across the candidate sizes to float rounding for the zoo models tested (``tests/test_batching.py``;
bit-identical on this project's CPU, but on the CI machine an MLP at batch 32 differs in the last bit, and at
batch 7 it does here too), and a timing can differ between two runs. So the
measured size is used only where logits feed metrics. The teacher cache, whose content shapes training, takes its
batch from a rule instead (``cache_batch_size``, or ``data.eval_batch_size``), a function of the model and the
input shape alone, so a rerun or a resumed run gets the same cache: the largest power of two at which the
model's largest layer output stays within ``CACHE_ACTIVATION_BYTES`` on a CPU (ccexam 64 at 100 KB per sample,
cnn [8, 16] 256 at 25 KB, resnet8x4 32 at 262 KB, the MLP and resnet32 1024 at under 3 KB; the fastest size
of each in that table, within the run-to-run noise of this machine), and ``CANDIDATES[-1]`` on a GPU, where
larger batches only fill it better.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

CANDIDATES = (32, 128, 512, 1024)
CACHE_ACTIVATION_BYTES = 8 * 2**20  # one batch's largest layer output, kept within a typical L2/L3 share
DEFAULT = 256  # below PROBE_MIN samples: the measurement would cost more than it could save
PROBE_MIN = 8 * sum(CANDIDATES)  # the probe reads ~1/8 of such a split once, and saves up to half of every pass
_CHOSEN: dict[tuple[Any, ...], int] = {}


def inference_batch_size(model: nn.Module, data: Any, inputs: Any = None) -> int:
    """The batch size at which ``model`` runs inference on ``data`` (a tensor, a dict of tensors or a split)
    fastest: measured once per model, input shape and device (see the module docstring); ``DEFAULT`` for a
    split too small to be worth measuring."""
    n = _rows(data)
    if n < PROBE_MIN:
        return max(1, min(n, DEFAULT))
    first = _take(data, 1)
    device = _device(model)
    key = (id(model), _shape(first), str(device), inputs if isinstance(inputs, str) else repr(inputs))
    if key not in _CHOSEN:
        _CHOSEN[key] = _measure(model, data, inputs, device)
    return _CHOSEN[key]


def cache_batch_size(model: nn.Module, x: Any) -> int:
    """The teacher cache's batch size for ``model`` (called as ``model(x)``, as the cache calls the teacher) on
    inputs like ``x`` (a batch of at least one sample, on the model's device): a deterministic rule, see the
    module docstring."""
    if _device(model).type != "cpu":
        return CANDIDATES[-1]
    peak = [1]

    def record(_m: nn.Module, _i: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            peak[0] = max(peak[0], out[:1].numel() * out.element_size())  # bytes of one sample's output

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(record) for m in leaves]
    try:
        with torch.inference_mode():
            model(_take(x, 1))
    finally:
        for h in handles:
            h.remove()
    fits = CACHE_ACTIVATION_BYTES // peak[0]
    return int(min(CANDIDATES[-1], max(CANDIDATES[0], 2 ** max(0, int(fits).bit_length() - 1))))


def _measure(model: nn.Module, data: Any, inputs: Any, device: torch.device) -> int:
    from distill.evaluate import _eval_mode, _to
    from distill.models.teacher import feed

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    speed: dict[int, float] = {}
    with _eval_mode(model), torch.inference_mode():
        feed(model, _to(_take(data, CANDIDATES[0]), device), inputs)  # warm-up: first-call allocations
        for b in CANDIDATES:
            x = _to(_take(data, b), device)
            sync()
            t0 = time.perf_counter()
            feed(model, x, inputs)
            sync()
            speed[b] = b / max(time.perf_counter() - t0, 1e-9)
    return max(speed, key=speed.__getitem__)


def _rows(data: Any) -> int:
    if isinstance(data, dict):
        return len(next(iter(data.values())))
    return len(data)


def _take(data: Any, n: int) -> Any:
    """The first ``n`` inputs of ``data``, batched."""
    if isinstance(data, torch.Tensor):
        return data[:n]
    if isinstance(data, dict):
        return {k: v[:n] for k, v in data.items()}
    from distill.data.stream import head

    return head(data, n)


def _shape(x: Any) -> Any:
    return tuple((k, tuple(v.shape[1:])) for k, v in sorted(x.items())) if isinstance(x, dict) else tuple(x.shape[1:])


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
