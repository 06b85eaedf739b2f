"""Datasets held in memory, the dataset registry, a fast batch loader and replayable augmentation.

Importing this package registers every dataset (``digits``, ``mnist``, ``mnist1d``, ``arrays``,
``folder``) in ``DATASETS``.
"""

from distill.data import builtin, corpus, sensors, text, user  # noqa: F401  (imported for their registrations)
from distill.data.augment import Augment
from distill.data.base import (
    DATASETS,
    ArrayDataset,
    DataSplits,
    RawSplits,
    apply_label_budget,
    channel_stats,
    denormalize,
    normalize,
    stratified_split,
)
from distill.data.loader import BatchLoader
from distill.data.splits import build_data, python_data
from distill.data.stream import StreamDataset, as_split, batches, head

__all__ = [
    "DATASETS",
    "ArrayDataset",
    "Augment",
    "BatchLoader",
    "DataSplits",
    "RawSplits",
    "StreamDataset",
    "as_split",
    "batches",
    "head",
    "python_data",
    "apply_label_budget",
    "build_data",
    "channel_stats",
    "denormalize",
    "normalize",
    "stratified_split",
]
