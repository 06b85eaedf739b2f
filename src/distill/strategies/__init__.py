"""Strategies: who teaches whom. One file per strategy, registered by name in ``STRATEGIES``.

- ``offline`` (default): one frozen teacher teaches one student.
- ``multi_teacher``: several teachers, ensembled per sample (mean, fixed, confidence or entropy weights), or
  each read by the methods that name it.
- ``mutual``: students trained together, each distilling from the others (deep mutual learning).
- ``born_again``: generation g (same architecture) teaches generation g+1.
- ``cross_modal``: the teacher reads one field of a dict input (a modality), the student another.
- ``cross_task``: a teacher of another task (other classes) teaches through features and their relations.
- ``gkd``: a language-model student also learns on its own samples, scored by the teacher (on-policy
  distillation), or on the teacher's (sequence-level KD).
- ``data_free``: no training input: a generator synthesises batches against the teacher (DAFL, DeepInversion,
  DFAD/ZSKT losses) and the student distils on them.
"""

from distill.strategies import born_again, cross_modal, cross_task, data_free, gkd, multi_teacher, mutual, offline
from distill.strategies.base import STRATEGIES, Strategy, build_strategy

__all__ = ["STRATEGIES", "Strategy", "born_again", "build_strategy", "cross_modal", "cross_task", "data_free", "gkd",
           "multi_teacher",
           "mutual", "offline"]
