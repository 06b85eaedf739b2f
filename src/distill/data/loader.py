"""``BatchLoader``: mini-batches of a split (in-memory ``ArrayDataset`` or streamed ``StreamDataset``) with
resume-safe shuffling, rank sharding and replayable augmentation views."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from distill.data.augment import Augment
from distill.data.base import ArrayDataset
from distill.data.stream import StreamDataset
from distill.errors import DistillError
from distill.types import Batch


class BatchLoader:
    """Iterates a split as ``distill.types.Batch`` (input, target, index, view).

    In memory: no torch DataLoader, gathering rows of in-memory tensors by index is much faster. Streamed: one
    DataLoader with the split's workers (persistent, prefetching; ``pin_memory`` on CUDA) reads exactly the
    batches this class decides, so a streamed split and the same data in memory give identical batches.

    shuffle: a fresh random order per epoch, a function of ``(seed, epoch)`` only, so a resumed run
        sees exactly the batches it would have seen. Call ``set_epoch`` before iterating each epoch;
        iterating twice without it repeats the same order.
    epoch_size: samples per epoch (default ``len(ds)``). Larger than ``len(ds)``: successive
        independent permutations are concatenated (a 1,000-sample labelled set can take as many steps
        per epoch as a 50,000-sample transfer set). Smaller: a random subset each epoch.
    Without shuffle the order is sequential (wrapping around when ``epoch_size > len(ds)``).
    augment: inputs become ``augment(x, index, view)`` with ``view = view_of(epoch)``; each batch carries its
        view. ``views``: cycle through views ``0 .. views-1`` (the ones a teacher cache stores); default a
        fresh view every epoch. Without augment (or with an identity one) every batch is view 0, unchanged.
    lengths: (N,) token counts per row (``data.group_by_length``): each shuffled chunk of 50 batches of a
        permutation is sorted by length before it is cut into batches, so a batch pads to its own longest text,
        not the split's (Hugging Face Trainer's ``group_by_length``); the order stays a function of
        ``(seed, epoch)``, and a split smaller than the epoch is sorted per repetition (no duplicate rows in a
        batch).
    rank, world: data-parallel training. ``batch_size`` stays the global batch and must be divisible by
        ``world``; every rank computes the same global order and batches and yields the ``rank``-th of
        ``world`` contiguous chunks of each (the DistributedSampler idea, without its padding), so every rank
        takes the same number of steps. A last, partial global batch of ``b`` samples is split as evenly as
        it goes (chunk sizes differ by at most one; ``share`` says by how much, for the loss weighting that
        keeps DDP's average the global mean); with ``b < world`` it is dropped (no rank gets an empty batch).
    """

    def __init__(self, ds: ArrayDataset | StreamDataset, batch_size: int, *, shuffle: bool, seed: int = 0,
                 epoch_size: int | None = None, drop_last: bool = False, augment: Augment | None = None,
                 views: int | None = None, rank: int = 0, world: int = 1, pin_memory: bool = False,
                 lengths: Tensor | None = None, labelled_per_batch: int = 0) -> None:
        if len(ds) == 0:
            raise DistillError("cannot batch an empty dataset")
        if batch_size < 1:
            raise DistillError(f"batch_size must be >= 1, got {batch_size}")
        if world < 1 or not 0 <= rank < world:
            raise DistillError(f"rank must be in [0, world) with world >= 1, got rank {rank}, world {world}")
        if batch_size % world:
            raise DistillError(f"batch_size {batch_size} is the global batch and must be divisible by the "
                               f"{world} processes")
        if epoch_size is not None and epoch_size < 1:
            raise DistillError(f"epoch_size must be >= 1, got {epoch_size}")
        if not 0 <= labelled_per_batch < batch_size:
            raise DistillError(f"labelled_per_batch must be in [0, batch_size {batch_size}), got {labelled_per_batch}")
        if views is not None and (isinstance(views, bool) or not isinstance(views, int) or views < 1):
            raise DistillError(f"views must be an integer >= 1, got {views!r}")
        self.ds = ds
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch_size = len(ds) if epoch_size is None else epoch_size
        self.drop_last = drop_last
        self.augment = augment
        self.views = views
        self.rank, self.world = rank, world
        self.epoch = 0
        self.pin_memory = pin_memory
        self.lengths = lengths
        self.labelled_per_batch = labelled_per_batch
        self._stream: Any = None  # the streamed split's DataLoader, made on first use
        self._sampler: Any = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields (and tell a dataset that draws per epoch)."""
        self.epoch = epoch
        if hasattr(self.ds, "set_epoch"):
            self.ds.set_epoch(epoch)

    def view_of(self, epoch: int) -> int:
        """The augmentation view epoch ``epoch`` sees: ``epoch % views``, or ``epoch`` when ``views`` is unset."""
        return epoch % self.views if self.views is not None else epoch

    def order(self) -> Tensor:
        """(epoch_size,) long tensor of dataset rows for the current epoch."""
        n = len(self.ds)
        reps = math.ceil(self.epoch_size / n)
        if not self.shuffle:
            return torch.arange(n).repeat(reps)[: self.epoch_size]
        # SeedSequence mixes (seed, epoch) into a well-spread 64-bit seed: neighbouring pairs
        # give unrelated orders, and nothing else (global RNG, past epochs) affects it.
        words = np.random.SeedSequence([self.seed % 2**63, self.epoch % 2**63]).generate_state(2)
        gen = torch.Generator().manual_seed(int(words[0]) << 31 | int(words[1]) >> 1)
        perms = [torch.randperm(n, generator=gen) for _ in range(reps)]
        if self.lengths is not None:  # per permutation: a batch never holds two copies of a small split's row
            perms = [by_length(p, self.lengths, 50 * self.batch_size) for p in perms]
        order = torch.cat(perms)[: self.epoch_size]
        return self._with_labelled(order, gen) if self.labelled_per_batch else order

    def _with_labelled(self, order: Tensor, gen: torch.Generator) -> Tensor:
        """``order`` (epoch_size,) with ``labelled_per_batch`` labelled rows at the head of every batch."""
        y = self.ds.y
        labelled = (y >= 0).nonzero().squeeze(1) if y.ndim == 1 else torch.empty(0, dtype=torch.long)  # (L,)
        if len(labelled) in (0, len(self.ds)):
            return order
        k, sizes = self.labelled_per_batch, self._batch_sizes()
        taken = sum(min(k, b) for b in sizes)
        draws = torch.cat([labelled[torch.randperm(len(labelled), generator=gen)]
                           for _ in range(math.ceil(taken / len(labelled)))])
        parts, used_l, used_o = [], 0, 0
        for size in sizes:
            n_l = min(k, size)
            parts += [draws[used_l:used_l + n_l], order[used_o:used_o + size - n_l]]
            used_l, used_o = used_l + n_l, used_o + size - n_l
        return torch.cat(parts)

    def _batch_sizes(self) -> list[int]:
        """The size of every global batch of an epoch (the last one may be partial)."""
        full, rest = divmod(self.epoch_size, self.batch_size)
        return [self.batch_size] * full + ([rest] if rest else [])

    def __len__(self) -> int:
        """Batches (optimizer steps) per epoch; the same on every rank."""
        full, rest = divmod(self.epoch_size, self.batch_size)
        return full + int(not self.drop_last and rest >= self.world)

    def chunk(self, b: int) -> tuple[int, int]:
        """Positions ``[lo, hi)`` in the epoch's order of this rank's part of global batch ``b``."""
        start = b * self.batch_size
        per, extra = divmod(min(self.epoch_size, start + self.batch_size) - start, self.world)
        lo = start + self.rank * per + min(self.rank, extra)  # the first `extra` ranks take one more
        return lo, lo + per + int(self.rank < extra)

    def share(self, b: int) -> float:
        """This rank's part of global batch ``b`` relative to an equal split: 1.0 except in an uneven last batch.

        A rank's mean loss times its share, averaged over ranks (what DDP does to gradients), is the mean
        over the global batch."""
        lo, hi = self.chunk(b)
        start = b * self.batch_size
        return (hi - lo) * self.world / (min(self.epoch_size, start + self.batch_size) - start)

    def _inputs(self, chunks: list[Tensor]) -> Iterator[Any]:
        """The batched inputs of ``chunks``: gathered in memory, or read by the streamed split's workers (one
        DataLoader for the whole run, its batch sampler following the current epoch)."""
        if not isinstance(self.ds, StreamDataset):
            yield from (self.ds.take(index) for index in chunks)
            return
        if self._stream is None:
            self._sampler = _EpochBatches()
            self._stream = self.ds.loader(self._sampler, pin_memory=self.pin_memory, persistent=True)
        self._sampler.chunks = [c.tolist() for c in chunks]
        yield from self._stream

    def __iter__(self) -> Iterator[Batch]:
        augment = None if self.augment is None or self.augment.identity else self.augment
        view = self.view_of(self.epoch) if augment is not None else 0
        order = self.order()
        chunks = [order[slice(*self.chunk(b))] for b in range(len(self))]
        for b, (index, x) in enumerate(zip(chunks, self._inputs(chunks))):
            if augment is not None:
                if isinstance(x, dict):
                    raise DistillError("data.augment shifts and flips one input tensor; this data has dict inputs")
                x = augment(x, index, view)
            yield Batch(input=x, target=self.ds.y[index], index=index, view=view,
                        labelled_count=self.labelled_count(order, b) if self.world > 1 else None)

    def labelled_count(self, order: Tensor, b: int) -> float:
        """The cross-entropy divisor of this rank's part of global batch ``b``: the global batch's labelled count
        times this rank's share of its samples. With ``share`` weighting the rank's loss, the ranks' average is
        then the global batch's labelled mean (every rank sees the whole order, so no communication)."""
        start = b * self.batch_size
        stop = min(self.epoch_size, start + self.batch_size)
        lo, hi = self.chunk(b)
        labelled = int((self.ds.y[order[start:stop]] >= 0).sum())
        return labelled * (hi - lo) / (stop - start)


def by_length(order: Tensor, lengths: Tensor, chunk: int) -> Tensor:
    """``order`` with each run of ``chunk`` positions sorted by ``lengths`` of its rows, longest first (stable)."""
    parts = [order[i:i + chunk] for i in range(0, len(order), chunk)]
    return torch.cat([p[torch.sort(lengths[p], descending=True, stable=True).indices] for p in parts])


def token_lengths(ds: Any) -> Tensor:
    """(N,) real tokens per row: the largest attention-mask count over the split's token fields."""
    x = getattr(ds, "x", None)
    masks = [v for k, v in x.items() if k.replace("/", ".").rsplit(".", 1)[-1] == "attention_mask"] \
        if isinstance(x, dict) else []
    if not masks:
        raise DistillError("data.group_by_length needs token fields with an attention_mask (a text dataset held in "
                           "memory)")
    return torch.stack([m.sum(1) for m in masks]).amax(0)


class _EpochBatches:
    """A batch sampler whose batches are set before each epoch (a DataLoader with persistent workers keeps it)."""

    def __init__(self) -> None:
        self.chunks: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)
