"""``corpus``: a language-modelling corpus (a folder or an archive of plain-text files) as packed token blocks.

Each document is tokenised (no special tokens) and followed by the tokenizer's end-of-sequence token; the
documents of a split are concatenated and cut into blocks of ``seq_len`` tokens. Sample i of a split is the block
``ids[i S : (i + 1) S]`` (``input_ids``, with an ``attention_mask`` of ones) and its targets are the next tokens,
``ids[i S + 1 : (i + 1) S + 1]`` ((N, S) targets instead of (N,) labels: the engine then trains and evaluates per
token). The last, partial block of a split is padded: its padding has attention 0 and target -100, the Hugging
Face convention for tokens that count for nothing.

The held-out split is fixed (seed 0, whatever the run's seed) and by document ("by work"): with at least three
documents, ``holdout / 2`` of them (at least one each) are validation and as many test, so no text is in two
splits; with fewer, the token stream is cut at the same fractions. ``train_tokens`` / ``eval_tokens`` cap the
training split and each evaluation split (evaluation of a large teacher on a CPU is what they keep affordable)
with blocks drawn evenly from the whole split (a fixed draw), so a cap does not keep only the first documents.
Line endings are normalised (``\r\n`` -> ``\n``): a corpus mixing both would otherwise teach two formats.
"""

from __future__ import annotations

import fnmatch
import tarfile
import zipfile
from pathlib import Path

import torch
from torch import Tensor

from distill.data.base import DATASETS, ArrayDataset, RawSplits, check_int
from distill.errors import DistillError

IGNORE = -100  # the target of a padding position
_ARCHIVES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".zip")
_SPLIT_SEED = 0


@DATASETS.register("corpus")
def corpus(*, seed: int, path: str, tokenizer: str | None = None, tokenizers: dict[str, str] | None = None,
           seq_len: int = 128, pattern: str = "*.txt", exclude: list[str] | None = None, holdout: float = 0.1,
           train_tokens: int | None = None, eval_tokens: int | None = 16384) -> RawSplits:
    """The ``pattern`` files (minus those matching a pattern of ``exclude``) of folder or archive ``path`` as
    blocks of ``seq_len`` tokens of ``tokenizer`` (a local transformers tokenizer folder, or a ``.gguf`` file
    whose tokenizer transformers reads), split by document (module docstring). ``num_classes`` is the
    tokenizer's vocabulary size. ``tokenizers: {teacher: A, student: B}``: two tokenisations of the same text
    (``distill.data.corpus_pair``), for a teacher and student with different vocabularies."""
    from distill.data.text import load_tokenizer

    if (tokenizer is None) == (tokenizers is None):
        raise DistillError("dataset 'corpus': give exactly one of 'tokenizer' or 'tokenizers' ({teacher: A, "
                           "student: B}: a teacher and a student with different vocabularies)")

    check_int("data.seq_len (corpus)", seq_len, minimum=2)
    for key, value in (("train_tokens", train_tokens), ("eval_tokens", eval_tokens)):
        if value is not None:
            check_int(f"data.{key} (corpus)", value, minimum=seq_len)
    if not 0.0 < holdout < 1.0:
        raise DistillError(f"data.holdout (corpus): a fraction in (0, 1), got {holdout!r}")
    docs = read_documents(path, pattern, exclude or [])
    if tokenizers is not None:
        from distill.data.corpus_pair import paired_corpus

        return paired_corpus(split_documents(docs, holdout), tokenizers, seq_len, (train_tokens, eval_tokens))
    tok = load_tokenizer(path=tokenizer)
    parts = [_ids(tok, texts) for texts in split_documents(docs, holdout)]
    caps = (train_tokens, eval_tokens, eval_tokens)
    train, val, test = (blocks(ids, seq_len, cap, _pad_id(tok)) for ids, cap in zip(parts, caps))
    return RawSplits(train, val, test, num_classes=len(tok), mean=(0.0,), std=(1.0,))


def read_documents(path: str, pattern: str = "*.txt", exclude: list[str] | None = None) -> list[tuple[str, str]]:
    """(name, text) of every non-empty file matching ``pattern`` and none of ``exclude`` (by file name) in a
    folder (recursively) or a tar / zip archive, sorted by name; line endings normalised to ``\n``."""
    from distill.build import resolve_path

    root = resolve_path(path)
    if root.is_dir():
        files = sorted(f for f in root.rglob("*") if f.is_file() and fnmatch.fnmatch(f.name, pattern))
        docs = [(str(f.relative_to(root)), _decode(f.read_bytes())) for f in files]
    elif root.is_file() and root.name.endswith(_ARCHIVES):
        docs = _archive(root, pattern)
    elif root.exists():
        raise DistillError(f"dataset 'corpus': {path} is neither a folder nor an archive ({', '.join(_ARCHIVES)})")
    else:
        raise DistillError(f"dataset 'corpus': no such file or folder: {path}")
    docs = [(n, t.replace("\r\n", "\n")) for n, t in docs if t.strip()
            and not any(fnmatch.fnmatch(Path(n).name, x) for x in exclude or [])]
    if not docs:
        raise DistillError(f"dataset 'corpus': {path} has no text (no non-empty file matching {pattern!r})")
    return docs


def _archive(file: Path, pattern: str) -> list[tuple[str, str]]:
    try:
        if file.name.endswith(".zip"):
            with zipfile.ZipFile(file) as z:
                names = sorted(n for n in z.namelist() if fnmatch.fnmatch(Path(n).name, pattern))
                return [(n, _decode(z.read(n))) for n in names if not n.endswith("/")]
        with tarfile.open(file) as t:
            members = sorted((m for m in t.getmembers() if m.isfile() and fnmatch.fnmatch(Path(m.name).name, pattern)),
                             key=lambda m: m.name)
            return [(m.name, _decode(t.extractfile(m).read())) for m in members]  # type: ignore[union-attr]
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise DistillError(f"dataset 'corpus': cannot read the archive {file}: {e}") from None


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # old plain-text corpora (Project Gutenberg files among them)


def split_documents(docs: list[tuple[str, str]], holdout: float) -> tuple[list[str], list[str], list[str]]:
    """(train, val, test) texts: whole documents with a fixed shuffle when there are at least three, else the
    concatenated text cut at ``1 - holdout`` and ``1 - holdout / 2`` of its length."""
    if len(docs) >= 3:
        order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(_SPLIT_SEED)).tolist()
        k = max(1, round(len(docs) * holdout / 2))
        k = min(k, (len(docs) - 1) // 2)  # leave at least one document to train on
        pick = lambda idx: [docs[i][1] for i in sorted(idx)]  # noqa: E731 (document order within a split)
        return pick(order[2 * k:]), pick(order[:k]), pick(order[k:2 * k])
    text = "\n\n".join(t for _, t in docs)
    a, b = int(len(text) * (1 - holdout)), int(len(text) * (1 - holdout / 2))
    return [text[:a]], [text[a:b]], [text[b:]]


def _ids(tok: object, texts: list[str]) -> Tensor:
    """Every text's token ids, each followed by the end-of-sequence id (when the tokenizer has one): (L,)."""
    eos = getattr(tok, "eos_token_id", None)
    out: list[int] = []
    for ids in tok(texts, add_special_tokens=False, verbose=False)["input_ids"]:  # type: ignore[operator]
        out.extend(ids)
        if eos is not None:
            out.append(int(eos))
    return torch.tensor(out, dtype=torch.long)


def _pad_id(tok: object) -> int:
    pad = getattr(tok, "pad_token_id", None)
    return int(pad) if pad is not None else 0


def capped(n: int, seq_len: int, cap: int | None) -> Tensor | None:
    """The blocks a cap of ``cap`` tokens keeps of ``n``, drawn evenly with a fixed seed (sorted); None: all."""
    keep = cap // seq_len if cap is not None else n
    if keep >= n:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(_SPLIT_SEED))[:keep].sort().values


def blocks(ids: Tensor, seq_len: int, cap: int | None, pad_id: int) -> ArrayDataset:
    """(L,) token ids -> blocks of ``seq_len`` inputs and next-token targets, the last one padded; at most
    ``cap`` tokens (whole blocks, drawn evenly over the split with a fixed seed) when given."""
    n = max(1, -(-(len(ids) - 1) // seq_len))  # ceil((L - 1) / S): every token but the last is an input
    if len(ids) < 2:
        raise DistillError("dataset 'corpus': a split has fewer than two tokens; add text or lower data.holdout")
    x = torch.full((n * seq_len + 1,), pad_id, dtype=torch.long)
    y = torch.full((n * seq_len + 1,), IGNORE, dtype=torch.long)
    x[: len(ids)], y[: len(ids)] = ids, ids
    mask = torch.zeros(n * seq_len + 1, dtype=torch.long)
    mask[: len(ids) - 1] = 1  # inputs that have a next token
    inputs = x[:-1].view(n, seq_len)  # (N, S)
    ds = ArrayDataset({"input_ids": inputs, "attention_mask": mask[:-1].view(n, seq_len)},
                      y[1:].view(n, seq_len))  # (N, S) next tokens
    pick = capped(n, seq_len, cap)  # (keep,)
    return ds if pick is None else ds.subset(pick)
