"""Two tokenisations of one corpus, aligned by text: a teacher and a student with different vocabularies.

The student's tokens define the blocks, as for one tokenizer (``student.input_ids``, ``student.attention_mask``,
and the targets: the student's next tokens). Each block covers a span of characters; the teacher's tokens inside
that span are its ``teacher.input_ids`` (padded on the right to the longest such block, ``teacher.attention_mask``
0 there). ``align`` (N, S) maps each student position to the teacher position that has read exactly the same text
(its token ends at the same character), -1 where no teacher token ends there: the positions where both models
predict what follows the same prefix. Cross-tokenizer methods (``uld``) compare the two there.

A split's documents are joined by a blank line and tokenised whole by each tokenizer with character offsets
(transformers' fast tokenizers); no special tokens are added.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from distill.data.base import ArrayDataset, RawSplits
from distill.errors import DistillError

IGNORE = -100


def paired_corpus(texts: tuple[list[str], list[str], list[str]], tokenizers: dict[str, str], seq_len: int,
                  caps: tuple[int | None, int | None]) -> RawSplits:
    """(train, val, test) texts -> RawSplits of aligned student / teacher blocks (module docstring)."""
    from distill.data.corpus import capped
    from distill.data.text import load_tokenizer

    if set(tokenizers) != {"teacher", "student"}:
        raise DistillError(f"dataset 'corpus': tokenizers names the teacher's and the student's, {{teacher: A, "
                           f"student: B}}; got {sorted(tokenizers)}")
    toks = {role: load_tokenizer(path) for role, path in tokenizers.items()}
    streams = [{role: _offsets(tok, "\n\n".join(split), role) for role, tok in toks.items()} for split in texts]
    spans = [_spans(s["student"][1], seq_len) for s in streams]
    picks = [capped(len(sp), seq_len, cap) for sp, cap in zip(spans, (caps[0], caps[1], caps[1]))]
    spans = [sp if p is None else sp[p] for sp, p in zip(spans, picks)]
    layouts = [_layout(s, sp, seq_len) for s, sp in zip(streams, spans)]
    width = max(int(rows.diff(dim=1).max()) for _, _, rows in layouts)  # the longest teacher block
    pad = getattr(toks["teacher"], "pad_token_id", None) or 0
    out = [_split(s["teacher"], *lay, width, pad) for s, lay in zip(streams, layouts)]
    return RawSplits(*out, num_classes=len(toks["student"]), mean=(0.0,), std=(1.0,))


def _offsets(tok: Any, text: str, role: str) -> tuple[Tensor, Tensor]:
    """(L,) token ids and (L, 2) character offsets of ``text``."""
    if not getattr(tok, "is_fast", False):
        raise DistillError(f"dataset 'corpus': the {role}'s tokenizer has no character offsets (a 'fast' "
                           "tokenizer is needed to align two tokenisations)")
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    if len(enc["input_ids"]) < 2:
        raise DistillError("dataset 'corpus': a split has fewer than two tokens; add text or lower data.holdout")
    return torch.tensor(enc["input_ids"], dtype=torch.long), torch.tensor(enc["offset_mapping"], dtype=torch.long)


def _spans(offsets: Tensor, seq_len: int) -> Tensor:
    """(N, 2) student token ranges [first, first + S + 1) of each full block: S inputs and the next token."""
    n = (len(offsets) - 1) // seq_len
    first = torch.arange(n) * seq_len
    return torch.stack([first, first + seq_len + 1], dim=1)


def _teacher_rows(t_off: Tensor, spans_chars: Tensor) -> Tensor:
    """(N, 2) teacher token ranges [i0, i1) lying inside each block's character span."""
    return torch.stack([torch.searchsorted(t_off[:, 0].contiguous(), spans_chars[:, 0].contiguous()),
                        torch.searchsorted(t_off[:, 1].contiguous(), spans_chars[:, 1].contiguous(), right=True)],
                       dim=1)


def _layout(stream: dict[str, tuple[Tensor, Tensor]], spans: Tensor, seq_len: int) -> tuple[Tensor, Tensor, Tensor]:
    """(student ids (N, S + 1), the character each student input token ends at (N, S), the teacher's token range
    of each block (N, 2))."""
    s_ids, s_off = stream["student"]
    index = spans[:, :1] + torch.arange(seq_len + 1)  # (N, S + 1) student token positions
    ends = s_off[index[:, :-1], 1]  # (N, S)
    chars = torch.stack([s_off[index[:, 0], 0], ends[:, -1]], dim=1)  # (N, 2) the text the inputs cover
    return s_ids[index], ends, _teacher_rows(stream["teacher"][1], chars)


def _split(teacher: tuple[Tensor, Tensor], ids: Tensor, ends: Tensor, rows: Tensor, width: int,
           pad: int) -> ArrayDataset:
    """The aligned blocks of one split (module docstring)."""
    t_ids, t_off = teacher
    n, seq_len = ends.shape
    t_in = torch.full((n, width), pad, dtype=torch.long)
    t_mask = torch.zeros(n, width, dtype=torch.long)
    align = torch.full((n, seq_len), -1, dtype=torch.long)
    t_end = t_off[:, 1].contiguous()
    for b, (i0, i1) in enumerate(rows.tolist()):
        t_in[b, : i1 - i0], t_mask[b, : i1 - i0] = t_ids[i0:i1], 1
        at = torch.searchsorted(t_end, ends[b]).clamp(max=len(t_end) - 1)  # (S,) first teacher token ending there
        hit = (t_end[at] == ends[b]) & (at >= i0) & (at < i1)
        align[b] = torch.where(hit, at - i0, -1)
    x = {"student.input_ids": ids[:, :-1], "student.attention_mask": torch.ones_like(ids[:, :-1]),
         "teacher.input_ids": t_in, "teacher.attention_mask": t_mask, "align": align}
    return ArrayDataset(x, ids[:, 1:].clone())  # (N, S) the student's next tokens
