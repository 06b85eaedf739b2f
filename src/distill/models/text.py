"""Non-transformer students over token ids: a static-embedding model and a BiLSTM.

Both read the dict batch an ``hf`` model reads (``input_ids`` and ``attention_mask``, also under a role prefix,
see :func:`distill.models.hf.fields`), so they take the teacher's tokenisation and distil from a transformer.

- ``static`` (Model2Vec's kind of model, trained here by distillation): a token-embedding table and a masked mean
  (``pool``, tapped as the sentence embedding), no attention; a Linear head ``fc`` unless ``head: false``.
- ``bilstm`` (Tang et al. 2019, "Distilling Task-Specific Knowledge from BERT into Simple Neural Networks"): token
  embeddings, a one-layer bidirectional LSTM, max-pooling over the real tokens, a ReLU hidden layer and ``fc``.

``init: <hf model folder>`` (``pkg:`` paths too) starts the embedding table from that transformer's input word
embeddings (its vocabulary size and width), so a student begins where its teacher's tokens begin; otherwise
``vocab_size`` (that of the tokenizer: 30,522 for BERT's uncased WordPiece) and ``dim`` set a seeded random table.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from distill.errors import DistillError
from distill.models.base import MODELS
from distill.models.hf import POOLINGS, Pool, fields


def _embedding(vocab_size: int, dim: int, init: str | None) -> nn.Embedding:
    """A (vocab_size, dim) table, or the word embeddings of the transformer at ``init``."""
    if init is None:
        if vocab_size < 1 or dim < 1:
            raise DistillError(f"vocab_size and dim must be >= 1, got {vocab_size} and {dim}")
        return nn.Embedding(vocab_size, dim, padding_idx=0)
    from distill.models.hf import _load

    table = _load(init, None).get_input_embeddings().weight.detach().clone()  # (vocab, width)
    return nn.Embedding.from_pretrained(table, freeze=False, padding_idx=0)


def _ids(kwargs: dict[str, Tensor], vocab: int) -> tuple[Tensor, Tensor]:
    """(B, T) token ids and a (B, T) mask of real tokens; an id outside the table is a DistillError."""
    f = fields(kwargs)
    ids = f["input_ids"]
    if ids.numel() and int(ids.max()) >= vocab:
        raise DistillError(f"token id {int(ids.max())} is outside the embedding table ({vocab} rows): set "
                           "vocab_size to the tokenizer's vocabulary size (or init from the teacher)")
    mask = f.get("attention_mask")
    return ids, torch.ones_like(ids) if mask is None else mask


class StaticEmbedding(nn.Module):
    """Token ids (B, T) -> masked mean of their embeddings (B, D) at ``pool`` -> ``fc`` logits (or the embedding)."""

    def __init__(self, table: nn.Embedding, num_classes: int, pooling: str, head: bool) -> None:
        super().__init__()
        self.embed = table
        self.pool = Pool(pooling)
        self.fc = nn.Linear(table.embedding_dim, num_classes) if head else None

    def forward(self, **kwargs: Tensor) -> Tensor:
        ids, mask = _ids(kwargs, self.embed.num_embeddings)
        pooled = self.pool(self.embed(ids), mask)  # (B, D)
        return pooled if self.fc is None else self.fc(pooled)


class BiLSTM(nn.Module):
    """Token ids (B, T) -> embeddings -> BiLSTM (B, T, 2H) -> masked max over time at ``pool`` -> ReLU layer
    -> ``fc`` logits."""

    def __init__(self, table: nn.Embedding, num_classes: int, hidden: int) -> None:
        super().__init__()
        self.embed = table
        self.lstm = nn.LSTM(table.embedding_dim, hidden, batch_first=True, bidirectional=True)
        self.pool = Pool("max")
        self.hidden = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU())
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, **kwargs: Tensor) -> Tensor:
        ids, mask = _ids(kwargs, self.embed.num_embeddings)
        states, _ = self.lstm(self.embed(ids))  # (B, T, 2H)
        return self.fc(self.hidden(self.pool(states, mask)))


@MODELS.register("static")
def static(*, num_classes: int, input_shape: tuple[int, ...], vocab_size: int = 30522, dim: int = 256,
           init: str | None = None, pooling: Literal["mean", "cls", "max"] = "mean",
           head: bool = True) -> nn.Module:
    """A static-embedding model: a token table (``vocab_size`` x ``dim``, or ``init``'s word embeddings) and
    a pooling; ``head: false`` returns the sentence embedding (embedding distillation)."""
    if pooling not in POOLINGS:
        raise DistillError(f"model 'static': pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    return StaticEmbedding(_embedding(vocab_size, dim, init), num_classes, pooling, head)


@MODELS.register("bilstm")
def bilstm(*, num_classes: int, input_shape: tuple[int, ...], vocab_size: int = 30522, dim: int = 300,
           hidden: int = 300, init: str | None = None) -> nn.Module:
    """Tang et al.'s BiLSTM student (300-d embeddings, 300 hidden units per direction by default)."""
    if hidden < 1:
        raise DistillError(f"model 'bilstm': hidden must be >= 1, got {hidden}")
    return BiLSTM(_embedding(vocab_size, dim, init), num_classes, hidden)
