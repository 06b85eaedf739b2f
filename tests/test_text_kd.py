"""Text distillation beyond logits: the ``embedding`` and ``tinybert`` losses against their formulas, attention
probabilities tapped by ``:1``, the ``static`` and ``bilstm`` students end to end, embedding agreement metrics,
and the bad inputs of each."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import distill
from distill.errors import DistillError
from distill.methods import EmbeddingDistillation, TinyBERT
from distill.models import build_model
from distill.probe import agreement
from distill.taps import FeatureTaps, split_path
from distill.types import ModelOutput, SetupContext, StepContext

pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
from test_hf import SMALL, TINY, _tokens  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CTX = StepContext(epoch=0, step=0, epochs=1, steps_per_epoch=1)


def _ctx(s: dict, t: dict) -> SetupContext:
    return SetupContext(student_shapes=s, teacher_shapes=t, num_samples=10, num_classes=4)


def _out(logits: torch.Tensor, **feats: torch.Tensor) -> ModelOutput:
    return ModelOutput(logits=logits, feats=dict(feats))


def test_tap_paths_select_an_input_an_output_element_or_refuse() -> None:
    assert split_path("a.b") == ("a.b", None) and split_path("fc:input") == ("fc", "input")
    assert split_path("x.attention.self:1") == ("x.attention.self", 1)
    with pytest.raises(DistillError, match="after ':' comes 'input' or an output index"):
        split_path("fc:inputs")


def test_attention_probabilities_are_tapped_with_eager_attention_and_refused_without() -> None:
    x, _ = _tokens(3)
    eager = build_model("hf", num_classes=2, input_shape=(1,), config=TINY, attn_implementation="eager").eval()
    path = "backbone.encoder.layer.1.attention.self:1"
    with FeatureTaps(eager, [path]) as taps:
        eager(**x)
    att = taps.feats[path]  # (B, heads, T, T), T: the batch's longest sentence
    t = int(x["attention_mask"].sum(1).max())
    assert att.shape == (3, 2, t, t)
    assert torch.allclose(att.sum(-1), torch.ones(3, 2, t), atol=1e-5)  # rows are distributions
    pad = x["attention_mask"][:, :t] == 0
    assert bool(pad.any()) and float(att.detach().permute(0, 1, 3, 2)[pad.nonzero(as_tuple=True)[0], :,
                                     pad.nonzero(as_tuple=True)[1]].abs().max()) < 1e-6  # padding: no attention
    sdpa = build_model("hf", num_classes=2, input_shape=(1,), config=TINY, attn_implementation="sdpa").eval()
    with pytest.raises(DistillError, match="attn_implementation: eager"), FeatureTaps(sdpa, [path]):
        sdpa(**x)


def test_embedding_loss_equals_its_three_formulas() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    m = EmbeddingDistillation(mse=2.0, cosine=3.0, similarity=5.0)
    m.setup(_ctx({"pool": (5, 4)}, {"pool": (5, 4)}))
    out = m(_out(s, pool=s), _out(t, pool=t), None, CTX)
    us, ut = F.normalize(s, dim=1), F.normalize(t, dim=1)
    assert torch.isclose(out.terms["embedding_mse"], 2 * ((s - t) ** 2).mean())
    assert torch.isclose(out.terms["embedding_cosine"], 3 * (1 - (us * ut).sum(1)).mean())
    assert torch.isclose(out.terms["embedding_similarity"], 5 * ((us @ us.T - ut @ ut.T) ** 2).mean())
    assert torch.isclose(out.loss, sum(out.terms.values()))
    # widths differ: a Linear connector for mse/cosine only; the similarity term alone needs none
    wide = EmbeddingDistillation(mse=1.0)
    wide.setup(_ctx({"pool": (5, 3)}, {"pool": (5, 4)}))
    assert isinstance(wide.connectors[0][0] if len(list(wide.connectors[0].children())) else wide.connectors[0],
                      torch.nn.Linear)
    rel = EmbeddingDistillation(mse=0.0, similarity=1.0)
    rel.setup(_ctx({"pool": (5, 3)}, {"pool": (5, 4)}))
    assert not any(p.numel() for p in rel.parameters())


def test_embedding_bad_settings_are_one_line() -> None:
    with pytest.raises(DistillError, match="every term's weight is 0"):
        EmbeddingDistillation(mse=0.0)
    with pytest.raises(DistillError, match="cosine is a weight >= 0"):
        EmbeddingDistillation(cosine=-1.0)
    m = EmbeddingDistillation(student_layers=["backbone.encoder.layer.0"], teacher_layers=["pool"])
    with pytest.raises(DistillError, match=r"taps must be \(B, D\) embeddings"):
        m.setup(_ctx({"backbone.encoder.layer.0": (2, 10, 8)}, {"pool": (2, 8)}))


def test_tinybert_terms_equal_their_formulas() -> None:
    torch.manual_seed(0)
    m = TinyBERT(student_layers=[0], teacher_layers=[1], T=2.0)
    a_s, a_t = torch.softmax(torch.randn(2, 2, 5, 5), -1), torch.softmax(torch.randn(2, 2, 5, 5), -1)
    h_s, h_t, e_s, e_t = torch.randn(2, 5, 3), torch.randn(2, 5, 3), torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    z_s, z_t = torch.randn(2, 4), torch.randn(2, 4)
    p = "backbone.encoder.layer"
    s_feats = {f"{p}.0.attention.self:1": a_s, f"{p}.0": h_s, "backbone.embeddings": e_s}
    t_feats = {f"{p}.1.attention.self:1": a_t, f"{p}.1": h_t, "backbone.embeddings": e_t}
    m.setup(_ctx({k: tuple(v.shape) for k, v in s_feats.items()}, {k: tuple(v.shape) for k, v in t_feats.items()}))
    out = m(_out(z_s, **s_feats), _out(z_t, **t_feats), None, CTX)
    assert torch.isclose(out.terms["tinybert_attention"], ((a_s - a_t) ** 2).mean())
    assert torch.isclose(out.terms["tinybert_hidden"], ((h_s - h_t) ** 2).mean())  # equal widths: no W_h
    assert torch.isclose(out.terms["tinybert_embedding"], ((e_s - e_t) ** 2).mean())
    soft = -(torch.softmax(z_t / 2, 1) * torch.log_softmax(z_s / 2, 1)).sum(1).mean()
    assert torch.isclose(out.terms["tinybert_logits"], soft)
    # the paper's two stages: intermediate layers alone, then the prediction loss alone
    staged = TinyBERT(student_layers=[0], teacher_layers=[1], pretrain_epochs=2)
    staged.setup(_ctx({k: tuple(v.shape) for k, v in s_feats.items()}, {k: tuple(v.shape) for k, v in t_feats.items()}))
    assert set(staged.pretrain_loss(_out(z_s, **s_feats), _out(z_t, **t_feats), None, CTX).terms) == \
        {"tinybert_attention", "tinybert_hidden", "tinybert_embedding"}
    assert set(staged(_out(z_s, **s_feats), _out(z_t, **t_feats), None, CTX).terms) == {"tinybert_logits"}


def test_a_student_that_cannot_be_tapped_as_asked_is_refused_before_training(tmp_path: Path) -> None:
    x, y = _tokens(40)
    teacher = build_model("hf", num_classes=2, input_shape=(1,), config=TINY, attn_implementation="eager")
    fewer_heads = {**SMALL, "num_attention_heads": 1}
    student = build_model("hf", num_classes=2, input_shape=(1,), config=fewer_heads, attn_implementation="eager")
    kw = dict(teacher=teacher, train=(x, y), epochs=1, latency=False, log=lambda _: None)
    with pytest.raises(DistillError, match="student's layer has 1 heads"):
        distill.fit(student=student, methods=[{"name": "tinybert", "student_layers": [0], "teacher_layers": [1]}],
                    output_dir=tmp_path / "heads", **kw)
    with pytest.raises(DistillError, match="no module 'backbone.encoder.layer.3'"):
        distill.fit(student=student, methods=[{"name": "tinybert", "student_layers": [3], "teacher_layers": [1]}],
                    output_dir=tmp_path / "depth", **kw)
    with pytest.raises(DistillError, match="paired by position"):
        TinyBERT(student_layers=[0, 1], teacher_layers=[1])
    assert not (tmp_path / "heads" / "student" / "model.safetensors").exists()


def test_a_tinybert_student_with_another_width_trains_through_w_h(tmp_path: Path) -> None:
    x, y = _tokens(200)
    torch.manual_seed(0)
    teacher = build_model("hf", num_classes=2, input_shape=(1,), config=TINY, attn_implementation="eager")
    student = build_model("hf", num_classes=2, input_shape=(1,), config=SMALL, attn_implementation="eager")
    r = distill.fit(teacher=teacher, student=student, train=(x, y), epochs=1, latency=False, log=lambda _: None,
                    methods=[{"name": "tinybert", "student_layers": [0], "teacher_layers": [1]}],
                    output_dir=tmp_path / "tb")
    log = (tmp_path / "tb" / "student" / "log.csv").read_text().splitlines()
    header, row = log[0].split(","), log[1].split(",")
    for term in ("tinybert_attention", "tinybert_hidden", "tinybert_embedding", "tinybert_logits"):
        assert float(row[header.index(term)]) > 0
    assert r.metrics["student"]["params"] == sum(p.numel() for p in student.parameters())  # W_h is not deployed
    tb = TinyBERT(student_layers=[0], teacher_layers=[1], attention=0.0)
    tb.setup(_ctx({"backbone.encoder.layer.0": (2, 10, 16), "backbone.embeddings": (2, 10, 16)},
                  {"backbone.encoder.layer.1": (2, 10, 32), "backbone.embeddings": (2, 10, 32)}))
    assert [type(c).__name__ for c in tb.connectors["hidden"]] == ["Linear"]  # W_h: 16 -> 32 features per token


@pytest.mark.parametrize("name", ["static", "bilstm"])
def test_text_students_learn_from_a_bert_teacher_beyond_their_labels(name: str, tmp_path: Path) -> None:
    x, y = _tokens(600)
    torch.manual_seed(0)
    teacher = build_model("hf", num_classes=2, input_shape=(1,), config=TINY)
    opt = torch.optim.Adam(teacher.parameters(), 3e-3)
    for _ in range(60):
        loss = F.cross_entropy(teacher(**x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.manual_seed(1)
    student = build_model(name, num_classes=2, input_shape=(1,), vocab_size=64, dim=16,
                          **({"hidden": 16} if name == "bilstm" else {}))
    m = distill.fit(teacher=teacher, student=student, train=(x, y), labels_per_class=5, epochs=15,
                    methods=["kd"], training={"optimizer": {"name": "adam", "lr": 1e-2}},
                    output_dir=tmp_path / name, latency=False, log=lambda _: None).metrics
    assert m["student"]["top1"] > m["scratch"]["top1"] + 0.05, m


def test_text_students_refuse_token_ids_outside_their_table() -> None:
    x, _ = _tokens(4)
    for name in ("static", "bilstm"):
        model = build_model(name, num_classes=2, input_shape=(1,), vocab_size=10, dim=4)
        with pytest.raises(DistillError, match="outside the embedding table"):
            model(**x)
    with pytest.raises(DistillError, match="pooling must be one of"):
        build_model("static", num_classes=2, input_shape=(1,), pooling="sum")


def test_agreement_is_one_for_the_teacher_itself_and_low_for_noise() -> None:
    torch.manual_seed(0)
    t = torch.randn(200, 8)
    same = agreement(2 * t, t)  # a rescaled copy: same directions, same similarities
    assert same["spearman_teacher"] == pytest.approx(1.0) and same["cosine_teacher"] == pytest.approx(1.0)
    noise = agreement(torch.randn(200, 5), t)
    assert abs(noise["spearman_teacher"]) < 0.1 and "cosine_teacher" not in noise  # widths differ: no cosine


def _text_recipe(tmp_path: Path, **over: object) -> dict:
    from test_text import BERT, WORDS, _corpus, _tokenizer

    tok = _tokenizer(tmp_path / "tok", WORDS)
    raw = {"name": "t", "output_dir": str(tmp_path / "out"), "eval": {"latency": False},
           "data": {"name": "text", "path": str(_corpus(tmp_path / "c.jsonl")), "tokenizer": tok,
                    "labels_per_class": 5, "batch_size": 32},
           "teacher": {"name": "hf", "config": BERT, "attn_implementation": "eager", "pretrained": True},
           "student": {"name": "hf", "config": {**BERT, "num_attention_heads": 1}, "attn_implementation": "eager"},
           "method": {"name": "tinybert", "student_layers": [0], "teacher_layers": [1]},
           "train": {"epochs": 1}}
    return {**raw, **over}


def test_cli_refuses_a_student_that_cannot_be_tapped_as_asked_before_training(tmp_path: Path, capsys) -> None:
    from helpers import cli, write_recipe

    code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, _text_recipe(tmp_path))))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "student's layer has 1 heads" in err and "teacher's 2" in err
    assert not (tmp_path / "out" / "student" / "model.safetensors").exists()
    assert not (tmp_path / "out" / "teacher").exists()  # pretrained: true, so no teacher was trained either


def test_a_pretrained_teacher_is_used_as_built_and_only_a_teacher_can_be(tmp_path: Path, capsys) -> None:
    from helpers import cli, write_recipe

    raw = _text_recipe(tmp_path, method={"name": "kd"}, student={"name": "hf", "config": SMALL | {"vocab_size": 32}})
    code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, raw)))
    assert code == 0, err
    assert not (tmp_path / "out" / "teacher").exists()  # nothing trained: the teacher as built
    bad = [({"teacher": {**raw["teacher"], "train": {"epochs": 1}}}, "teacher.pretrained: true uses the teacher"),
           ({"student": {**raw["student"], "pretrained": True}}, "student.pretrained: only a teacher")]
    for over, message in bad:
        code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, {**raw, **over})))
        assert code == 2 and message in err and err.count("\n") == 1, err


def test_inspect_probes_a_text_model_on_real_token_fields(tmp_path: Path, capsys) -> None:
    from helpers import cli, write_recipe

    raw = _text_recipe(tmp_path)
    code, out, err = cli(capsys, "inspect", str(write_recipe(tmp_path, raw)), "--role", "teacher")
    assert code == 0, err
    assert "backbone.encoder.layer.1.attention.self" in out and "pool " in out
    assert "input input_ids (B, " in out and "attention_mask (B, " in out


def test_group_by_length_sorts_chunks_of_50_batches_and_keeps_every_row_once() -> None:
    from distill.data.base import ArrayDataset
    from distill.data.loader import BatchLoader, token_lengths

    x, y = _tokens(1000, t=12)
    ds = ArrayDataset(x, y)
    lengths = token_lengths(ds)
    assert torch.equal(lengths, x["attention_mask"].sum(1))
    plain = BatchLoader(ds, 4, shuffle=True, seed=3)
    grouped = BatchLoader(ds, 4, shuffle=True, seed=3, lengths=lengths)
    a, b = plain.order(), grouped.order()
    assert sorted(a.tolist()) == sorted(b.tolist()) == list(range(1000))  # a permutation: every row once
    for lo in range(0, 1000, 200):  # each chunk of 50 batches: the same rows, longest first
        assert set(a[lo:lo + 200].tolist()) == set(b[lo:lo + 200].tolist())
        assert bool((lengths[b[lo:lo + 200]].diff() <= 0).all())
    spread = [float(lengths[batch.index].max() - lengths[batch.index].min()) for batch in grouped]
    assert sum(spread) < 0.2 * sum(float(lengths[batch.index].max() - lengths[batch.index].min()) for batch in plain)
    small = BatchLoader(ArrayDataset({k: v[:40] for k, v in x.items()}, y[:40]), 8, shuffle=True, seed=0,
                        epoch_size=400, lengths=lengths[:40])
    for batch in small:  # a 40-row labelled set repeated to 400 samples: sorted per repetition
        assert len(set(batch.index.tolist())) == len(batch.index)
    grouped.set_epoch(1)
    assert not torch.equal(grouped.order(), b)  # still reshuffled per epoch
    with pytest.raises(DistillError, match="group_by_length needs token fields"):
        token_lengths(ArrayDataset(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long)))
