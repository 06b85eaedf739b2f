"""When a run uses the teacher cache, and obtaining it (open, or build) for a plan.

``cache.mode``:
- ``auto`` (default): use the cache when every teacher-using method needs only teacher logits (and, with
  k < C, accepts top-k logits); build it when missing. A stale cache at the run's default location
  (``<output_dir>/cache``) is rebuilt with a note naming what changed; at a ``cache.path`` you chose it is refused.
- ``required``: as auto, but anything that prevents using the cache is an error, and so is a stale cache.
- ``off``: always run the live teacher.
A corrupt or truncated cache is always refused.

Under torchrun rank 0 alone opens and validates or builds the cache; every other rank waits for it, then opens
that cache read-only (memory-mapped) and never builds one.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from distill.cache.build import build_cache, cache_fingerprint, dataset_hash, hash_tensors, open_cache
from distill.cache.store import TeacherCache, read_manifest
from distill.engine.dist import everywhere, local_device, on_main
from distill.errors import DistillError, StaleCacheError
from distill.methods.base import MethodSet
from distill.plan import Plan

Log = Callable[[str], None]


def cache_path(plan: Plan) -> Path:
    """Where the plan's cache lives: ``cache.path``, else ``<output_dir>/cache``."""
    return Path(plan.cache.path) if plan.cache.path else plan.out / "cache"


def effective_k(plan: Plan, num_classes: int) -> int:
    """``cache.k`` as a number of classes (``all`` -> C; never more than C)."""
    k = plan.cache.k
    return num_classes if k == "all" else min(int(k), num_classes)


def _augmenting(plan: Plan) -> bool:
    """True when the training augmentation changes the inputs (not absent, not the identity)."""
    return plan.augment is not None and not plan.augment.identity


def cache_views(plan: Plan) -> int:
    """Views stored per sample: 1 without augmentation, else ``cache.views`` (required then)."""
    if not _augmenting(plan):
        return 1
    if plan.cache.views is None:
        raise DistillError("cache.views: set how many augmented views per sample the cache stores "
                           "(the data has random augmentation, data.augment)")
    return plan.cache.views


def why_not_cached(plan: Plan, methods: MethodSet, num_classes: int) -> str | None:
    """None when the run can train from the cache, else the reason it cannot (one phrase)."""
    if plan.cache.mode == "off":
        return "cache.mode is off"
    if plan.teacher is None or not methods.needs_teacher:
        return "no method needs the teacher"
    if names := methods.live_teacher_methods():
        return f"{', '.join(names)} need(s) the live teacher's features"
    k = effective_k(plan, num_classes)
    if dense_only := methods.without_topk(num_classes, k):
        return f"{', '.join(dense_only)} need(s) every teacher logit but cache.k={k} < {num_classes} classes"
    if _augmenting(plan) and plan.cache.views is None:
        return "data.augment is on but cache.views (augmented views stored per sample) is not set"
    if plan.cache.select == "sample":
        sample_temperature(methods)  # one clear error before any teacher runs
    return None


def sample_temperature(methods: MethodSet) -> float:
    """The temperature of a sampled cache's draws (``cache.select: sample``): the one the methods ask for (1 by
    default); every teacher-using method must take sampled targets and they must agree on T."""
    if names := methods.without_sampled():
        raise DistillError(f"cache.select=sample gives unbiased targets only to a loss linear in the teacher's "
                           f"probabilities (token_kd with divergence fkl); {', '.join(names)} cannot train on "
                           "them: use cache.select=top")
    temps = {float(t) for m in methods.methods if m.needs.teacher for t in m.cache_temperatures()} or {1.0}
    if len(temps) > 1:
        raise DistillError(f"cache.select=sample draws at one temperature, but the methods use T = "
                           f"{', '.join(f'{t:g}' for t in sorted(temps))}")
    return temps.pop()


def fingerprint_for(plan: Plan, teacher: nn.Module, methods: MethodSet | None = None) -> dict[str, Any]:
    """The cache fingerprint this plan's run expects (the weights' content is hashed, not where they came from)."""
    methods = plan.methods if methods is None else methods
    spec = plan.teacher.spec if plan.teacher else {}
    aug = plan.augment.spec() if plan.augment is not None else None
    return cache_fingerprint(teacher=teacher, teacher_spec=spec, inputs=plan.data.train, augment=aug,
                             views=cache_views(plan), k=effective_k(plan, plan.data.num_classes),
                             dtype=plan.cache.dtype, temperatures=methods.cache_temperatures(),
                             sample_T=sample_temperature(methods) if plan.cache.select == "sample" else None)


def prepare_cache(plan: Plan, teacher: nn.Module | None, *, log: Log = print) -> TeacherCache | None:
    """The opened cache this run trains from, or None for a live teacher (with a log line saying why)."""
    reason = why_not_cached(plan, plan.methods, plan.data.num_classes)
    if reason is not None:
        if plan.cache.mode == "required":
            raise DistillError(f"cache.mode is required but the teacher cache cannot be used: {reason}")
        if plan.cache.mode == "auto" and plan.methods.needs_teacher:
            log(f"cache: live teacher ({reason})")
        return None
    assert teacher is not None
    return obtain_cache(plan, teacher, log=log)


def obtain_cache(plan: Plan, teacher: nn.Module, *, rebuild: bool = False, log: Log = print) -> TeacherCache:
    """Open the plan's cache if it is current, else build it (see the module doc for stale caches)."""
    path = cache_path(plan)
    fp = fingerprint_for(plan, teacher)
    main = on_main(partial(_open_or_build, plan, teacher, path, fp, rebuild=rebuild, log=log))
    # on_main returned once rank 0 is done: the other ranks open what it validated or built, read-only
    return everywhere(lambda: main if main is not None else open_cache(path, fp))


def _open_or_build(plan: Plan, teacher: nn.Module, path: Path, fp: dict[str, Any], *, rebuild: bool,
                   log: Log) -> TeacherCache:
    # a build of this cache killed after an earlier build had finished leaves its staging folder behind
    shutil.rmtree(path.with_name(path.name + ".tmp"), ignore_errors=True)
    if not rebuild and (path / "manifest.json").is_file():
        try:
            cache = open_cache(path, fp)
            log(f"cache: using {path} (k={cache.k}, {cache.views} view(s))")
            return cache
        except StaleCacheError as e:
            if plan.cache.path is not None or plan.cache.mode != "auto":
                raise  # a cache the user placed or requires is never replaced behind their back
            log(f"cache: rebuilding {path}, it is stale: {e.diff}")
    device = local_device(plan.device)
    return build_cache(path, teacher=teacher.to(device), inputs=plan.data.train, fingerprint=fp,
                       augment=plan.augment if _augmenting(plan) else None, batch_size=plan.eval_batch_size,
                       device=device, log=log, evaluate={"test": plan.data.test})


def cached_eval_logits(plan: Plan, teacher: nn.Module, split: str) -> Tensor | None:
    """The teacher's logits (N, C) on evaluation split ``split`` from the plan's cache, when there is one built
    by this teacher (weights and preprocessing) over these very inputs; None otherwise (compute them)."""
    path = cache_path(plan)
    if plan.teacher is None or not (path / "manifest.json").is_file():
        return None
    try:
        manifest = read_manifest(path)
    except DistillError:
        return None  # a damaged cache is reported where training reads it, not by the report
    entry, fp = (manifest.get("eval") or {}).get(split), manifest.get("fingerprint") or {}
    data = getattr(plan.data, split)
    same_teacher = fp.get("teacher_spec") == plan.teacher.spec and \
        fp.get("teacher_weights") == hash_tensors(teacher.state_dict())
    if not isinstance(entry, dict) or not same_teacher or entry.get("dataset") != dataset_hash(data):
        return None
    logits = torch.from_numpy(np.load(path / f"eval-{split}.npy", allow_pickle=False))  # (N, C) fp32
    return logits if logits.ndim == 2 and len(logits) == len(data) else None
