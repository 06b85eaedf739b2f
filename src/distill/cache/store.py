"""On-disk format of the teacher-output cache: memory-mapped ``.npy`` shards plus a JSON manifest.

Layout of a cache directory::

    manifest.json                  fingerprint, shape of the data, and per file its byte size and sha256
    v0000-s0000.values.npy         (rows, k) fp16/fp32 top-k teacher logits (T=1), largest first
    v0000-s0000.indices.npy        (rows, k) int16/int32 class indices
    v0000-s0000.lse.npy            (rows, n_T) fp32 logsumexp(logits / T) for each temperature in the manifest

A language model's cache has a row per token: (rows, S, k), (rows, S, k) and (rows, S, n_T) for blocks of S.

One shard holds rows ``start:stop`` of the training set for one augmentation view. Everything is written into
``<path>.tmp`` and swapped in by renames, so a killed build never leaves a cache that looks complete. Shards
are plain ``.npy`` arrays read with ``allow_pickle=False``: opening a cache never unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from distill.errors import DistillError
from distill.io import atomic_path, read_json, write_json
from distill.types import ModelOutput, TopKLogits

FORMAT = 1
FIELDS = ("values", "indices", "lse")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def shard_name(view: int, shard: int, field: str) -> str:
    return f"v{view:04d}-s{shard:04d}.{field}.npy"


def write_cache(path: Path, shards: list[dict[str, Any]], arrays: dict[str, np.ndarray],
                manifest: dict[str, Any]) -> None:
    """Write ``arrays`` (file name -> array) and the manifest into ``path``, replacing it atomically.

    ``shards`` lists ``{view, start, stop}`` per shard; sizes and checksums are added here.
    """
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = {}
    for name, arr in arrays.items():
        with atomic_path(tmp / name) as part, open(part, "wb") as f:
            np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
        files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)}
    write_json(tmp / "manifest.json", {**manifest, "format": FORMAT, "shards": shards, "files": files})
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the cache at ``path``; a missing, unreadable or hand-edited one is a DistillError."""
    mf = path / "manifest.json"
    if not mf.is_file():
        raise DistillError(f"teacher cache {path}: no manifest.json (not a cache, or its build never finished)")
    manifest = read_json(mf, "the teacher cache's manifest", f"delete {path} to rebuild the cache")
    if manifest.get("format") != FORMAT:
        raise DistillError(f"teacher cache {path}: unknown format {manifest.get('format')!r} (expected {FORMAT})")
    _check_structure(path, manifest)
    return manifest


def _check_structure(path: Path, manifest: dict[str, Any]) -> None:
    """Every key the reader uses is there with its type, and every shard file is listed with a size and a checksum:
    a manifest edited by hand (an emptied ``files`` map) must not let ``cache verify`` pass unchecked shards."""
    def bad(what: str) -> DistillError:
        return DistillError(f"teacher cache {path}: manifest.json {what}; delete {path} to rebuild the cache")

    for key, kind in (("num_classes", int), ("k", int), ("views", int), ("temperatures", list), ("shards", list),
                      ("files", dict)):
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            raise bad(f"has no valid {key!r} ({kind.__name__} expected)")
    files = manifest["files"]
    for s in manifest["shards"]:
        if not (isinstance(s, dict) and all(isinstance(s.get(k), int) for k in ("view", "shard", "start", "stop"))):
            raise bad(f"has a malformed shard entry {str(s)[:60]}")
        for f in FIELDS:
            info = files.get(shard_name(s["view"], s["shard"], f))
            if not (isinstance(info, dict) and isinstance(info.get("bytes"), int)
                    and isinstance(info.get("sha256"), str)):
                raise bad(f"does not list the size and sha256 of {shard_name(s['view'], s['shard'], f)}")


def verify_files(path: Path, manifest: dict[str, Any]) -> None:
    """Check every shard's presence, size and sha256 against the manifest (truncation, corruption)."""
    for name, info in manifest["files"].items():
        f = path / name
        if not f.is_file():
            raise DistillError(f"teacher cache {path}: shard {name} is missing")
        size = f.stat().st_size
        if size != info["bytes"]:
            raise DistillError(f"teacher cache {path}: shard {name} is truncated or altered "
                               f"({size} bytes, manifest says {info['bytes']})")
        if sha256_file(f) != info["sha256"]:
            raise DistillError(f"teacher cache {path}: shard {name} is corrupt (sha256 does not match the manifest)")


def describe_difference(stored: dict[str, Any], expected: dict[str, Any]) -> str:
    """'teacher_weights (cache 1a2b3c4d..., now 5e6f7a8b...); k (cache 5, now 10)' for the keys that differ."""
    def short(v: Any) -> str:
        text = json.dumps(v, sort_keys=True) if not isinstance(v, str) else v
        return text[:12] + "..." if len(text) > 15 else text

    keys = sorted(set(stored) | set(expected))
    diffs = [f"{k} (cache {short(stored.get(k))}, now {short(expected.get(k))})"
             for k in keys if stored.get(k) != expected.get(k)]
    return "; ".join(diffs)


@dataclass
class _Shard:
    view: int
    start: int
    stop: int
    arrays: dict[str, np.ndarray]  # memory-mapped, read-only


class TeacherCache:
    """A verified cache, opened read-only: ``lookup(index, view)`` gives the teacher's outputs for a batch."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path, self.manifest = path, manifest
        self.num_classes = int(manifest["num_classes"])
        self.k = int(manifest["k"])
        self.views = int(manifest["views"])
        self.temperatures = [float(t) for t in manifest["temperatures"]]
        self.sampled = manifest.get("select") == "sample"  # k draws per row, not the top k
        self.shards = [_Shard(s["view"], s["start"], s["stop"],
                              {f: np.load(path / shard_name(s["view"], s["shard"], f), mmap_mode="r",
                                          allow_pickle=False) for f in FIELDS})
                       for s in manifest["shards"]]

    def lookup(self, index: Tensor, view: int) -> ModelOutput:
        """Teacher outputs for dataset rows ``index`` (B,) in augmentation view ``view % views``."""
        v = view % self.views
        idx = index.cpu().numpy()
        out = {f: np.empty((len(idx), *self.shards[0].arrays[f].shape[1:]), self.shards[0].arrays[f].dtype)
               for f in FIELDS}
        for sh in self.shards:
            if sh.view != v:
                continue
            hit = (idx >= sh.start) & (idx < sh.stop)
            if hit.any():
                for f in FIELDS:
                    out[f][hit] = sh.arrays[f][idx[hit] - sh.start]
        values = torch.from_numpy(out["values"]).float().to(index.device)  # (B, k) or (B, S, k)
        indices = torch.from_numpy(out["indices"]).long().to(index.device)  # (B, k) or (B, S, k)
        lse_all = torch.from_numpy(out["lse"]).to(index.device)  # (B, n_T) or (B, S, n_T)
        lse = {t: lse_all[..., i] for i, t in enumerate(self.temperatures)}
        topk = TopKLogits(values, indices, lse, self.num_classes, self.sampled)
        if values.ndim > 2 and not topk.dense:
            # per token, dense logits would be B x S x V floats rebuilt every step: the token methods that take
            # a top-k cache read `topk`, and `logits` is an empty (B, S, 0) placeholder
            return ModelOutput(values.new_empty((*values.shape[:-1], 0)), topk=topk)
        return ModelOutput(densify(topk), topk=topk)


def densify(topk: TopKLogits) -> Tensor:
    """(B, C) logits from a top-k record ((B, S, V) per token): exact when k == C; otherwise the classes outside
    the top k share the remaining probability mass (at T=1) evenly, which keeps softmax(logits) summing to the
    right mass. Sampled targets give logits whose softmax is their empirical distribution."""
    k, c = topk.values.shape[-1], topk.num_classes
    if topk.sampled:
        from distill.cache.sample import PAD

        return topk.values.new_full((*topk.values.shape[:-1], c), PAD).scatter_(-1, topk.indices, topk.values)
    if k == c:
        return torch.empty_like(topk.values).scatter_(-1, topk.indices, topk.values)
    lse = topk.lse[1.0][..., None]  # (B, 1)
    top_mass = torch.exp(topk.values - lse).sum(dim=-1, keepdim=True).clamp(max=1.0)  # (B, 1)
    tail = torch.log((1.0 - top_mass).clamp(min=1e-12) / (c - k)) + lse  # (B, 1) logit per missing class
    tail = torch.minimum(tail, topk.values[..., -1:])  # never above the smallest stored logit
    return tail.expand(*topk.values.shape[:-1], c).clone().scatter_(-1, topk.indices, topk.values)
