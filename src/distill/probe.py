"""Embedding probes: how good a model's features are, independent of its classifier head.

For label-free embedding distillation (the student matches the teacher's penultimate features and never sees a
label) the student's own head is untrained, so top-1 says nothing; the standard measures of a representation are
a k-nearest-neighbour classifier and a linear probe fitted on frozen embeddings of the training split (with its
true labels: evaluation only, never training) and scored on the test split.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.data import batches
from distill.errors import DistillError
from distill.models import Keys, feed
from distill.taps import FeatureTaps

PROBE_TRAIN = 10_000  # training rows the probes are fitted on (a fixed, evenly spaced subset of larger splits)


@torch.no_grad()
def embed(model: nn.Module, path: str, split: Any, *, inputs: Keys = None, batch_size: int | None = None) -> Tensor:
    """(N, D) features of ``model`` at module ``path`` (``fc:input``: the input of ``fc``) on ``split``,
    flattened per sample; a FrozenTeacher is hooked through its wrapped model. ``batch_size`` None: measured
    (``distill.batching``)."""
    if batch_size is None:
        from distill.batching import inference_batch_size

        batch_size = inference_batch_size(model, split, inputs)
    hooked = getattr(model, "model", model)
    was = model.training
    model.eval()
    out = []
    try:
        with FeatureTaps(hooked, [path]) as taps:
            for _, x in batches(split, batch_size):
                feed(model, x, inputs, "model")
                out.append(taps.feats[path].flatten(1).float().cpu())
                taps.clear()
    finally:
        model.train(was)
    return torch.cat(out)


def knn_top1(train: Tensor, y: Tensor, test: Tensor, y_test: Tensor, k: int = 20) -> float:
    """Cosine k-NN (majority of the k nearest training embeddings, k=20) top-1 on the test embeddings."""
    a, b = F.normalize(train, dim=1), F.normalize(test, dim=1)
    votes = torch.zeros(len(test), int(y.max()) + 1)
    for lo in range(0, len(test), 1000):
        nearest = (b[lo:lo + 1000] @ a.T).topk(min(k, len(train)), dim=1).indices  # (b, k)
        votes[lo:lo + 1000].scatter_add_(1, y[nearest], torch.ones(nearest.shape))
    return float((votes.argmax(1) == y_test).float().mean())


def linear_probe_top1(train: Tensor, y: Tensor, test: Tensor, y_test: Tensor) -> float:
    """A multinomial logistic regression (scikit-learn, standardised features) fitted on the training embeddings,
    top-1 on the test embeddings."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    clf.fit(train.numpy(), y.numpy())
    return float(np.mean(clf.predict(test.numpy()) == y_test.numpy()))


AGREE_ROWS = 1_000  # test rows whose pairwise similarities are compared (~500k pairs)


def agreement(student: Tensor, teacher: Tensor) -> dict[str, float]:
    """How closely (N, Ds) embeddings follow the teacher's (N, Dt) on the same sentences: the Spearman rank
    correlation of their pairwise cosine similarities (over the first AGREE_ROWS rows: every pair i < j), and,
    when the widths are equal, the mean cosine between each pair of vectors."""
    from scipy.stats import spearmanr

    n = min(AGREE_ROWS, len(student))
    iu = torch.triu_indices(n, n, offset=1)
    sims = [(F.normalize(e[:n].float(), dim=1) @ F.normalize(e[:n].float(), dim=1).T)[iu[0], iu[1]]
            for e in (student, teacher)]  # (n(n-1)/2,) each
    out = {"spearman_teacher": float(spearmanr(sims[0].numpy(), sims[1].numpy()).statistic)}
    if student.shape[1] == teacher.shape[1]:
        out["cosine_teacher"] = float(F.cosine_similarity(student.float(), teacher.float(), dim=1).mean())
    return out


def probes(model: nn.Module, path: str, data: Any, *, inputs: Keys = None, batch_size: int | None = None,
           reference: Tensor | None = None) -> dict[str, float]:
    """``{"knn_top1", "probe_top1"}`` of ``model``'s embeddings at ``path``: fitted on (up to PROBE_TRAIN rows of)
    the training split with its true labels, scored on the test split; with ``reference`` (the teacher's test
    embeddings) also its :func:`agreement` with them."""
    labels = data.full_y if data.full_y is not None else data.train.y
    if bool((labels < 0).any()):
        raise DistillError("embedding probes need the true labels of the training split")
    rows = torch.linspace(0, len(data.train) - 1, min(PROBE_TRAIN, len(data.train))).round().long()
    train = embed(model, path, data.train.subset(rows), inputs=inputs, batch_size=batch_size)
    test = embed(model, path, data.test, inputs=inputs, batch_size=batch_size)
    y, y_test = labels[rows], data.test.y
    out = {"knn_top1": knn_top1(train, y, test, y_test), "probe_top1": linear_probe_top1(train, y, test, y_test)}
    return out if reference is None else {**out, **agreement(test, reference)}
