"""Data-parallel training under ``torchrun``: the process group's life, rank queries, and the few collectives.

torchrun is the launcher: it starts one process per device and sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``
and the rendezvous address. ``distributed()`` turns that into a process group for one command (gloo on CPU,
nccl with ``device: cuda``, each process then on ``cuda:LOCAL_RANK``). Without torchrun, or with a world of
one, no group is made and every helper here is the identity of a single process: a plain run is unchanged.

What is global and what is per rank:
- ``data.batch_size`` is the global batch: rank r trains on the r-th contiguous chunk of each global batch
  (``BatchLoader(rank=, world=)``); DDP averages the gradients, so equal chunks and mean-reduced losses give
  the gradients of one process on the whole batch (up to float summation order).
- per rank: BatchNorm statistics (no SyncBatchNorm) and the batch a relation method (rkd, sp, cc, pkt, kdsvd)
  relates; CRD gathers features and indices so its memory banks stay identical on every rank.
- every rank seeds its RNG with the recipe seed and consumes it identically, so rank 0's checkpointed RNG state
  is every rank's, and dropout masks repeat across ranks at the same position within a chunk.
- files: only rank 0 writes (``on_main``); other ranks wait for it where they later read what it wrote.
  Output (and cache) paths must be on a filesystem every node sees.

A rank must never wait in a collective another rank skips: the helpers that run code on some ranks
(``on_main``, ``everywhere``) are themselves collectives that every rank calls, and they turn a failure on
one rank into an error on all of them instead of a hang.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from distill.errors import DistillError
from distill.types import LossOutput

T = TypeVar("T")

# Ranks wait on rank 0 while it builds a teacher cache or writes a report: minutes, not the seconds a
# gradient all-reduce takes. Those waits go through a gloo group of their own with a long timeout, so the
# nccl watchdog of the training group never fires on them.
WAIT_TIMEOUT = timedelta(hours=4)
_control: Any = None  # the gloo group for waits and error exchange, while a group made here is alive
_DDP_ARGS = inspect.signature(DistributedDataParallel.__init__).parameters


def launched_world() -> int:
    """WORLD_SIZE as torchrun set it (1 without torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise DistillError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def is_distributed() -> bool:
    """True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0, the only rank that writes files and logs."""
    return rank() == 0


def main_log(log: Callable[[str], None]) -> Callable[[str], None]:
    """``log`` on rank 0; a no-op elsewhere (every rank would print the same lines)."""
    return log if is_main() else _quiet


def _quiet(_: str) -> None:
    pass


def check_device(device: str) -> None:
    """One DistillError, before anything loads or trains, for a device string torch cannot parse or a device this
    machine does not have (``cuda`` without CUDA would otherwise fail deep inside the first ``.to``)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DistillError(f"device: {device!r} is not a device torch knows; use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cpu":
        return
    backend = torch.backends.mps if dev.type == "mps" else getattr(torch, dev.type, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise DistillError(f"device: {device!r}, but {dev.type.upper()} is not available on this machine "
                           "(use device: cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DistillError(f"device: {device!r}, but this machine has {torch.cuda.device_count()} CUDA device(s)")


def local_device(device: str) -> str:
    """The device this rank trains on: ``cuda`` becomes ``cuda:LOCAL_RANK`` inside a process group."""
    if device == "cuda" and is_distributed():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', torch.cuda.current_device()))}"
    return device


@contextmanager
def distributed(device: str) -> Iterator[str]:
    """Join torchrun's process group for the duration of a command; yields the rank's device.

    Without torchrun (WORLD_SIZE unset or 1) nothing happens and ``device`` is yielded as is. A group that the
    caller already made is used and left alone; one made here is destroyed on exit, error or not.
    """
    global _control
    world = launched_world()
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        if not is_distributed() or _control is not None:  # one process, or inside a group made here
            yield local_device(device)
            return
        _control = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)  # in the caller's group
        try:
            yield local_device(device)
        finally:
            _control = None
        return
    if not dist.is_available():
        raise DistillError(f"WORLD_SIZE={world} but this torch build has no torch.distributed")
    backend, dev = _backend(device)
    dist.init_process_group(backend, device_id=torch.device(dev) if backend == "nccl" else None)
    try:
        _control = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
        yield dev
    finally:
        _control = None
        dist.destroy_process_group()


def _backend(device: str) -> tuple[str, str]:
    """(backend, this rank's device) for the recipe's ``device``."""
    if device == "cpu":
        return "gloo", "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise DistillError("device: cuda, but CUDA is not available on this node")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise DistillError(f"LOCAL_RANK={local} but this node has {torch.cuda.device_count()} CUDA device(s): "
                               "use --nproc_per_node <= the number of GPUs")
        torch.cuda.set_device(local)
        return "nccl", f"cuda:{local}"
    raise DistillError(f"device: {device!r} under torchrun: use 'cpu' (gloo) or 'cuda' (nccl; each process "
                       "then uses cuda:LOCAL_RANK, so do not name a device index)")


def require_group() -> None:
    """Refuse to train when torchrun started several processes but nothing joined them into a group:
    each would train alone and all would write the same files."""
    if launched_world() > 1 and not is_distributed():
        raise DistillError(f"started by torchrun (WORLD_SIZE={launched_world()}) but this command does not run "
                           "distributed; run it as a single process (torchrun supports `distill run` and "
                           "`distill teacher`)")


def check_global_batch(batch_size: int, key: str = "data.batch_size") -> None:
    """The global batch must split into equal per-rank chunks (equal chunks keep DDP's mean exact)."""
    w = world_size()
    if batch_size % w:
        raise DistillError(f"{key}={batch_size} is the global batch and must be divisible by the {w} processes "
                           f"(each takes batch_size / {w} samples per step)")


def wrap(module: nn.Module, *, find_unused: bool, broadcast_buffers: bool = True) -> nn.Module:
    """``module`` in DistributedDataParallel inside a process group, when it has trainable parameters.

    ``find_unused``: some parameters get no gradient in some steps (a pre-training stage that stops at a tap,
    a frozen paraphraser); DDP then has to look for them instead of waiting for their gradients.
    """
    if not is_distributed() or not any(p.requires_grad for p in module.parameters()):
        return module
    # newer torch renamed the flag (and warns about the old name); both still sync buffers once, at wrapping
    flag = "forward_sync_buffers" if "forward_sync_buffers" in _DDP_ARGS else "broadcast_buffers"
    # device_ids=None: batches are already on the rank's device; DDP must not move (or copy) them
    return DistributedDataParallel(module, find_unused_parameters=find_unused, **{flag: broadcast_buffers})


def weight_by_share(out: LossOutput, share: float) -> LossOutput:
    """A rank's mean loss (and terms) times its share of the global batch (``BatchLoader.share``): averaged over
    ranks, as DDP averages gradients, that is the mean over the global batch even when an epoch's last batch
    splits unevenly. A share of 1.0 (every full batch) leaves ``out`` untouched."""
    if share == 1.0:
        return out
    return LossOutput(out.loss * share, {k: v * share for k, v in out.terms.items()})


def sync_buffers(module: nn.Module) -> None:
    """Give every rank rank 0's buffers. BatchNorm running statistics follow each rank's own batches during an
    epoch; synced before evaluation, every rank evaluates the model rank 0 saves."""
    if not is_distributed():
        return
    for buf in module.buffers():
        dist.broadcast(buf, src=0)


def mean_across_ranks(t: Tensor) -> Tensor:
    """The element-wise mean of ``t`` over ranks (``t`` itself with one process)."""
    if not is_distributed():
        return t
    t = t.detach().clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / dist.get_world_size()


def sum_across_ranks(t: Tensor) -> Tensor:
    """The element-wise sum of ``t`` over ranks (``t`` itself with one process)."""
    if not is_distributed():
        return t
    t = t.detach().clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_sizes(n: int, device: torch.device | str = "cpu") -> list[int]:
    """Every rank's ``n`` (e.g. its batch size: an epoch's last batch may split unevenly), in rank order."""
    if not is_distributed():
        return [n]
    parts = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, torch.tensor([n], dtype=torch.long, device=device))
    return [int(p) for p in parts]  # one host sync


def gather_cat(t: Tensor, sizes: list[int] | None = None) -> Tensor:
    """Every rank's ``t`` concatenated along dim 0 in rank order; detached, no gradient.

    ``sizes``: every rank's ``t.shape[0]`` (``gather_sizes``) when they may differ; default all equal.
    """
    if not is_distributed():
        return t
    t = t.detach().contiguous()
    sizes = sizes or [t.shape[0]] * dist.get_world_size()
    if min(sizes) != max(sizes):  # all_gather needs equal shapes: pad to the largest, trim after
        t = torch.cat([t, t.new_zeros((max(sizes) - t.shape[0], *t.shape[1:]))])
    parts = [torch.empty_like(t) for _ in sizes]
    dist.all_gather(parts, t)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


def on_main(fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on rank 0 only (writing files, building a cache); ``None`` on the other ranks.

    Every rank must call it: the others wait until rank 0 is done, and if ``fn`` raised, rank 0 re-raises and
    every other rank raises a DistillError naming rank 0's error, so none is left waiting in a collective.
    """
    return _collective(fn, run_here=is_main())


def everywhere(fn: Callable[[], T]) -> T:
    """Run ``fn`` on every rank; if it raised on any rank, every rank raises (its own error, or one naming
    the failed rank's)."""
    return _collective(fn, run_here=True)  # type: ignore[return-value]


def _collective(fn: Callable[[], T], *, run_here: bool) -> T | None:
    result, error = None, None
    if run_here:
        try:
            result = fn()
        except Exception as e:  # every rank has to hear about it before anyone raises
            error = e
    if not is_distributed():
        if error is not None:
            raise error
        return result
    messages: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(messages, None if error is None else _one_line(error), group=_control)
    if error is not None:
        raise error
    for r, msg in enumerate(messages):
        if msg is not None:
            raise DistillError(f"rank {r} failed: {msg}")
    return result


def agree(value: Any, what: str) -> None:
    """Raise on every rank unless all ranks hold the same ``value`` (e.g. whether a role is finished)."""
    if not is_distributed():
        return
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value, group=_control)
    if any(v != values[0] for v in values):
        shown = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values))
        raise DistillError(f"the ranks disagree on {what} ({shown}); every node must see the same output_dir "
                           "(a shared filesystem)")


def _one_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    if isinstance(error, DistillError) and text:
        return text[0]
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
