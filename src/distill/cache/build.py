"""Building and opening the teacher-output cache, and the fingerprint that keeps it honest.

The fingerprint names everything the stored logits depend on: the teacher's weights (sha256 over its state
dict), its architecture and input normalisation, the training inputs (sha256 of the normalised tensor), the
augmentation spec and seed, the number of views, k, dtype and the temperatures (and, for sampled targets, the
sampling temperature and seed). Opening a cache whose
fingerprint differs from the run's is refused with the differing keys named: a stale cache is never used.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from distill.cache.store import TeacherCache, describe_difference, read_manifest, shard_name, verify_files, write_cache
from distill.errors import DistillError, StaleCacheError

MAX_SHARD_ROWS = 1 << 20


def hash_tensors(tensors: dict[str, Tensor]) -> str:
    """sha256 over named tensors (name, dtype, shape and bytes, in name order)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # reshape(-1) first: view(uint8) refuses 0-dim tensors (BatchNorm's num_batches_tracked); going through
        # uint8 instead of .numpy() also covers dtypes numpy lacks (bfloat16, float8)
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


STREAM_PROBES = 64


def dataset_hash(data: Any) -> str:
    """sha256 identifying a training split's inputs. In memory: every byte. Streamed (data larger than memory):
    the source's type, its length, the targets and the inputs of 64 evenly spaced items, so that checking a
    cache does not read the whole dataset; a dataset whose files change in place unseen by those probes needs
    its cache rebuilt by hand (``distill cache build``)."""
    from distill.data.stream import StreamDataset

    if isinstance(data, Tensor):
        return hash_tensors({"x": data})
    if not isinstance(data, StreamDataset):
        x = data.x
        return hash_tensors({f"x.{k}": v for k, v in x.items()} if isinstance(x, dict) else {"x": x})
    n = len(data)
    probes = torch.linspace(0, n - 1, min(n, STREAM_PROBES)).round().long().unique()
    x = data.take(probes)
    h = hashlib.sha256(f"{type(data.source).__module__}.{type(data.source).__qualname__}|{n}|".encode())
    h.update(hash_tensors({"rows": data.rows, "y": data.y}).encode())
    h.update(hash_tensors({f"x.{k}": v for k, v in x.items()} if isinstance(x, dict) else {"x": x}).encode())
    return h.hexdigest()


def cache_fingerprint(*, teacher: nn.Module, teacher_spec: dict[str, Any], inputs: Any,
                      augment: dict[str, Any] | None, views: int, k: int, dtype: str,
                      temperatures: list[float], sample_T: float | None = None) -> dict[str, Any]:
    """Everything the cached values depend on, as a flat JSON-able dict (compared key by key). ``sample_T``:
    store k draws from the teacher's distribution at that temperature instead of its top k
    (``distill.cache.sample``); the keys it adds are absent from a top-k cache's fingerprint."""
    from distill.cache.sample import SEED

    state = {k_: v for k_, v in teacher.state_dict().items()}
    sampled = {"select": "sample", "sample_T": float(sample_T), "sample_seed": SEED} if sample_T else {}
    return {**sampled,
        "teacher_weights": hash_tensors(state),
        "teacher_spec": teacher_spec,
        "dataset": dataset_hash(inputs),
        "num_samples": len(inputs),
        "transforms": augment,
        "views": views,
        "k": k,
        "dtype": dtype,
        "temperatures": sorted(float(t) for t in temperatures),
    }


@torch.inference_mode()
def _teacher_rows(teacher: nn.Module, x: Any, k: int, temps: list[float],
                  sample: tuple[Tensor, float] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Teacher on a (B, ...) batch -> top-k values (B, k), indices (B, k), lse (B, n_T), all fp32/long; a language
    model's (B, S, V) logits give (B, S, k), (B, S, k) and (B, S, n_T). ``sample`` = (the batch's uniforms
    (B, [S,] k), T): k draws at T instead, as log-weights and ids (``distill.cache.sample.draw``)."""
    from distill.cache.sample import draw

    logits = teacher(x).float()  # (B, C) or (B, S, V)
    values, indices = logits.topk(k, dim=-1) if sample is None else draw(logits, *sample)  # largest first
    lse = torch.stack([torch.logsumexp(logits / t, dim=-1) for t in temps], dim=-1)  # (B, n_T) or (B, S, n_T)
    return values, indices, lse


def build_cache(path: Path, *, teacher: nn.Module, inputs: Any, fingerprint: dict[str, Any],
                augment: Any = None, batch_size: int | None = None, device: str = "cpu",
                log: Any = print, evaluate: dict[str, Any] | None = None) -> TeacherCache:
    """Run ``teacher`` once over ``inputs`` (a (N, ...) tensor, or a split) for every view, store top-k logits,
    open the result. ``evaluate``: evaluation splits by name whose dense logits are stored too
    (``eval-<name>.npy``, read back by ``distill.cache.plan.cached_eval_logits``), so the report's teacher row
    never runs the teacher again.

    ``augment(x, index, view)`` (a ``distill.data.augment.Augment``) makes view ``v``'s inputs; without it
    there is one view. The teacher should already be in eval mode (a FrozenTeacher is).
    """
    from distill.data import ArrayDataset, batches, head
    from distill.types import Batch

    fp = fingerprint
    if isinstance(inputs, Tensor):
        inputs = ArrayDataset(inputs, torch.zeros(len(inputs), dtype=torch.int64))
    n, views, k, temps = len(inputs), int(fp["views"]), int(fp["k"]), list(fp["temperatures"])
    val_dtype = np.float16 if fp["dtype"] == "fp16" else np.float32
    on = lambda x: Batch(x, torch.zeros(0), torch.zeros(0)).to(device).input  # noqa: E731  (tensor or dict)
    classes, tail = _output_shape(teacher, on(head(inputs, 1)))  # tail: () per sample, (S,) per token
    if k > classes:
        raise DistillError(f"cache.k={k} exceeds the teacher's {classes} classes")
    idx_dtype = np.int16 if classes <= np.iinfo(np.int16).max else np.int32
    t0 = time.perf_counter()
    u = _uniforms(fp, views, n, tail, k)  # (views, n, *tail, k) or None
    if batch_size is None:  # a rule, not a timing: the same inputs always give the same cache (distill.batching)
        from distill.batching import cache_batch_size

        batch_size = cache_batch_size(teacher, on(head(inputs, 1)))
    arrays: dict[str, np.ndarray] = {}
    shards = []
    for v in range(views):
        for s, start in enumerate(range(0, n, MAX_SHARD_ROWS)):
            stop = min(n, start + MAX_SHARD_ROWS)
            rows_of = (stop - start, *tail)
            out = {"values": np.empty((*rows_of, k), val_dtype), "indices": np.empty((*rows_of, k), idx_dtype),
                   "lse": np.empty((*rows_of, len(temps)), np.float32)}
            for index, x in batches(inputs, batch_size, start, stop):  # index (B,)
                if augment is not None:
                    x = augment(x, index, v)
                draws = None if u is None else (u[v, index], fp["sample_T"])  # (B, [S,] k) uniforms, T
                rows = _teacher_rows(teacher, on(x), k, temps, draws)
                _check_storable(rows[0], val_dtype, int(index[0]))
                b = int(index[0])
                for f, t in zip(("values", "indices", "lse"), rows):
                    out[f][b - start: b - start + len(index)] = t.cpu().numpy()
            arrays.update({shard_name(v, s, f): a for f, a in out.items()})
            shards.append({"view": v, "shard": s, "start": start, "stop": stop})
    # dense evaluation logits of a language model would be N x S x V: its report scores the teacher itself
    evaluated = _eval_logits(teacher, evaluate or {}, batch_size, on, arrays) if not tail else {}
    seconds = time.perf_counter() - t0
    manifest = {"fingerprint": fp, "num_classes": classes, "k": k, "views": views, "temperatures": temps,
                **({"select": "sample"} if u is not None else {}),
                "build_seconds": round(seconds, 3), "batch_size": batch_size,
                "bytes_per_sample_view": _row_bytes(k, val_dtype, idx_dtype, len(temps)) * int(np.prod(tail)),
                **({"tokens_per_sample": int(np.prod(tail))} if tail else {}),
                **({"eval": evaluated} if evaluated else {})}
    write_cache(path, shards, arrays, manifest)
    what = f"{k} sampled at T={fp['sample_T']:g}" if u is not None else f"k={k}"
    log(f"cache: built {path} ({n} samples x {views} view(s), {what}, {fp['dtype']}) in {seconds:.1f}s")
    return open_cache(path, fp)


def _uniforms(fp: dict[str, Any], views: int, n: int, tail: tuple[int, ...], k: int) -> Tensor | None:
    """The fixed uniforms of a sampled cache's draws (``distill.cache.sample``); None for top-k."""
    from distill.cache.sample import uniforms

    return uniforms(views, n, tail, k) if fp.get("select") == "sample" else None


@torch.inference_mode()
def _eval_logits(teacher: nn.Module, splits: dict[str, Any], batch_size: int, on: Any,
                 arrays: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Dense fp32 logits (N, C) of each evaluation split into ``arrays``; their manifest entries (rows, inputs)."""
    from distill.data import batches

    entries = {}
    for name, split in splits.items():
        logits = [teacher(on(x)).float().cpu() for _, x in batches(split, batch_size)]  # (B, C) each
        arrays[f"eval-{name}.npy"] = torch.cat(logits).numpy()
        entries[name] = {"rows": len(split), "dataset": dataset_hash(split)}
    return entries


def _check_storable(values: Tensor, dtype: Any, first_row: int) -> None:
    """Refuse logits the cache cannot hold: non-finite ones, or beyond fp16's range when storing fp16 (they
    would become inf and every KD loss NaN). A teacher with such logits has usually diverged, or its
    BatchNorm running statistics were barely updated (a few training steps) and explode in eval mode."""
    peak = float(values.abs().max()) if values.numel() else 0.0
    if not torch.isfinite(values).all():
        raise DistillError(f"teacher cache: the teacher's logits are not finite (NaN or Inf) in the batch starting "
                           f"at sample {first_row}: check the teacher (diverged training, or BatchNorm statistics "
                           "from too few steps)")
    limit = float(np.finfo(dtype).max)
    if peak > limit:
        raise DistillError(f"teacher cache: the teacher's logits reach {peak:.3g}, beyond {np.dtype(dtype).name}'s "
                           f"range ({limit:.0f}): set cache.dtype: fp32, or check the teacher (logits that large "
                           "usually mean diverged training or BatchNorm statistics from too few steps)")


def _output_shape(teacher: nn.Module, x: Any) -> tuple[int, tuple[int, ...]]:
    """(C, the per-sample positions between batch and classes: () for (B, C) logits, (S,) for (B, S, V))."""
    with torch.no_grad():
        shape = tuple(teacher(x).shape)
    return int(shape[-1]), shape[1:-1]


def _row_bytes(k: int, val_dtype: Any, idx_dtype: Any, n_temps: int) -> int:
    return k * (np.dtype(val_dtype).itemsize + np.dtype(idx_dtype).itemsize) + 4 * n_temps


def fingerprint_matches(stored: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Equal on every key, except that a cache storing more temperatures than a run needs still serves it."""
    def rest(fp: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in fp.items() if k != "temperatures"}

    return rest(stored) == rest(wanted) and set(wanted.get("temperatures", [])) <= set(stored.get("temperatures", []))


def open_cache(path: Path, fingerprint: dict[str, Any] | None = None) -> TeacherCache:
    """Open a cache after checking every shard (size and sha256) and, when given, the fingerprint."""
    manifest = read_manifest(path)
    stored = manifest.get("fingerprint") or {}
    if fingerprint is not None and not fingerprint_matches(stored, fingerprint):
        diff = describe_difference(stored, fingerprint)
        raise StaleCacheError(f"teacher cache {path} is stale: {diff}. Rebuild it with `distill cache build`", diff)
    verify_files(path, manifest)
    return TeacherCache(path, manifest)


def summary(cache: TeacherCache) -> str:
    """One line about a verified cache, for `distill cache verify`."""
    m = cache.manifest
    fp = m["fingerprint"]
    total = sum(info["bytes"] for info in m["files"].values())
    tokens = m.get("tokens_per_sample")
    per = f" of {tokens} tokens ({m['bytes_per_sample_view'] // tokens} bytes per token)" if tokens else ""
    return (f"teacher cache {cache.path}: OK - {fp['num_samples']} samples{per} x {cache.views} view(s), "
            f"{cache.num_classes} classes, k={cache.k}{' sampled' if cache.sampled else ''} ({fp['dtype']}), "
            f"temperatures "
            f"{', '.join(f'{t:g}' for t in cache.temperatures)}; {m['bytes_per_sample_view']} bytes per sample "
            f"per view, {total / 1e6:.2f} MB on disk, built in {m['build_seconds']:.1f}s; teacher "
            f"{fp['teacher_weights'][:12]}, data {fp['dataset'][:12]}, transforms {json.dumps(fp['transforms'])}")
