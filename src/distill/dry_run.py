"""The dry run: a whole Plan rehearsed on a few samples before anything trains.

Errors that only show when a role starts (a tap path that does not exist, a feature-shape mismatch a connector
cannot bridge, a student option its constructor or forward refuses, a strategy part that does not fit) would
otherwise surface after the teacher and the scratch baseline have spent their training time. The dry run runs
the plan's own strategy, unchanged, on a miniature copy of the plan: 16 samples per split, one epoch of one step
per role, outputs in a temporary folder that is removed afterwards. Every role the real run trains is built,
its taps and connectors set up, stepped once (forward, loss, backward, optimizer) and evaluated, and the report
is written, by the same code. The global random states are restored afterwards, so the real run is bit for bit
what it would have been without it.
"""

from __future__ import annotations

import copy
import random
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from distill.data import DataSplits, StreamDataset
from distill.data.base import UNLABELLED
from distill.engine.dist import on_main

if TYPE_CHECKING:
    from distill.plan import Plan
    from distill.strategies import Strategy

SAMPLES = 16  # per split: more than one batch-norm batch needs, few enough to cost well under a second
FOLDER = "dry_run.tmp"  # under the output folder; a kill leaves it to ``remove_stale_temps``


def dry_run(plan: Plan, strategy: Strategy) -> list[tuple[str, str]]:
    """Rehearse ``strategy`` on a miniature of ``plan`` (see the module docstring); raises what the real run
    would raise when a role starts. Returns the (role, fingerprint) of every role the run trains."""
    rehearsal = strategy.dry_copy()
    tiny = replace(miniature(plan), strategy=rehearsal)
    fresh = not plan.out.exists()
    try:
        with _random_states_kept():
            rehearsal.run(tiny, resume=False, log=_silent)
    finally:
        on_main(partial(_clean, tiny.out, plan.out if fresh else None))
    return list(tiny.dry_run or [])


def _clean(folder: Path, created: Path | None) -> None:
    """Remove the dry run's folder, and the output folder it created when that is left empty (a refusal leaves
    the disk as it found it)."""
    shutil.rmtree(folder, ignore_errors=True)
    if created is not None and created.is_dir() and not any(created.iterdir()):
        created.rmdir()


def miniature(plan: Plan) -> Plan:
    """A copy of ``plan`` that trains on ``SAMPLES`` samples per split into ``<output_dir>/dry_run.tmp``: models,
    methods and strategy state deep-copied (the real ones keep their initial weights), pretrained teachers shared
    (they are only read), the cache kept in the temporary folder, no latency timing."""
    small = tiny_splits(plan.data)
    memo: dict[int, Any] = {id(plan.data): small}
    for part in plan.teacher_parts().values():
        if part.train is None:  # loaded: frozen throughout, so the dry run may share it
            memo[id(part.model)] = part.model
    copied = copy.deepcopy(replace(plan, recipe=None, strategy=None), memo)
    return replace(copied, out=plan.out / FOLDER, cache=plan.cache.model_copy(update={"path": None}),
                   latency=False, recipe=plan.recipe, dry_run=[])


def tiny_splits(data: DataSplits, n: int = SAMPLES) -> DataSplits:
    """The first ``n`` samples of each split; the training split keeps labelled samples (when it has any) so the
    scratch baseline has some, and streamed splits are read in this process (no loader workers to start)."""
    y = data.train.y
    if y.ndim == 2:  # token targets: every block counts
        return replace(data, train=_head(data.train, n), val=_head(data.val, n), test=_head(data.test, n))
    labelled = (y != UNLABELLED).nonzero().squeeze(1)[: n // 2]  # (<= n/2,)
    rest = (y == UNLABELLED).nonzero().squeeze(1)[: n - len(labelled)]  # (<= n - labelled,)
    keep = torch.cat([labelled, rest]).sort().values  # (K,) positions, in order
    return replace(data, train=_local(data.train.subset(keep)), val=_head(data.val, n), test=_head(data.test, n),
                   full_y=None if data.full_y is None else data.full_y[keep])


def _head(split: Any, n: int) -> Any:
    return _local(split.subset(torch.arange(min(n, len(split)))))


def _local(split: Any) -> Any:
    if isinstance(split, StreamDataset):
        split.workers = 0
    return split


def _silent(_: str) -> None:
    """The dry run's log: its progress lines would read as the real run's."""


@contextmanager
def _random_states_kept() -> Iterator[None]:
    """Python's, NumPy's and torch's (CPU and CUDA) global random states as they were before."""
    py, npy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)
