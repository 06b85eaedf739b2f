"""Sampled sparse teacher targets (``cache.select: sample``, Random Sampling KD): the draws estimate the teacher's
distribution without bias, forward KL on them has the dense loss's gradient in expectation, the cache's draws do
not depend on the batch size that built it, and a method the targets would bias is refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from distill.cache.sample import PAD, draw, uniforms
from distill.methods.token_kd import token_divergence
from distill.methods.token_sparse import token_divergence_topk


def _teacher(n: int, v: int) -> torch.Tensor:
    """(n, V) copies of one row of logits with a long tail."""
    row = torch.linspace(3.0, -3.0, v)
    return row.expand(n, v).clone()


def test_draws_are_distinct_ids_with_frequencies_and_estimate_the_teacher() -> None:
    n, v, k, T = 20000, 12, 8, 2.0
    logits = _teacher(n, v)
    logw, ids = draw(logits, uniforms(1, n, (), k)[0], T)  # (n, k) (n, k)
    w = torch.where(logw > PAD, logw.exp(), torch.zeros_like(logw))
    assert all(len(set(r.tolist())) == k for r in ids[:200])  # distinct slots
    torch.testing.assert_close(w.sum(-1), torch.ones(n))  # k draws in all
    torch.testing.assert_close((w * k).round(), w * k)  # whole counts
    estimate = torch.zeros(n, v).scatter_(1, ids, w).mean(0)
    assert (estimate - F.softmax(logits[0] / T, -1)).abs().max() < 0.005  # unbiased: the mean is p
    top = torch.zeros(n, v).scatter_(1, logits.topk(k, -1).indices, 1.0)  # a row's top-k support, for contrast
    assert bool((ids[:, 0] != 0).any()) and not torch.equal(torch.zeros(n, v).scatter_(1, ids, 1.0), top)


def test_forward_kl_on_sampled_targets_has_the_dense_gradient_in_expectation() -> None:
    n, v, k = 4000, 12, 8
    t = _teacher(n, v)
    s = torch.randn(v, generator=torch.Generator().manual_seed(1)).expand(n, v).clone()
    logw, ids = draw(t, uniforms(1, n, (), k)[0], 1.0)
    x = s.clone().requires_grad_(True)
    token_divergence_topk(x, logw, ids, torch.zeros(n), sampled=True).backward()
    y = s.clone().requires_grad_(True)
    token_divergence(y, t).backward()
    # every row is the same student and teacher: the summed gradient is q - mean(p_hat) against q - p
    assert (x.grad.sum(0) - y.grad.sum(0)).abs().max() < 0.01
    assert (x.grad.sum(0) - y.grad.sum(0)).abs().max() < 0.2 * y.grad.sum(0).abs().max()


def test_a_sampled_cache_is_the_same_at_every_batch_size_and_is_not_a_top_k_cache(tmp_path: Path) -> None:
    from distill.cache.build import build_cache, cache_fingerprint
    from distill.models import FrozenTeacher, build_model

    torch.manual_seed(0)
    teacher = FrozenTeacher(build_model("mlp", num_classes=10, input_shape=(16,), hidden=[32]))
    x = torch.randn(300, 16)
    fp = cache_fingerprint(teacher=teacher, teacher_spec={}, inputs=x, augment=None, views=1, k=4, dtype="fp16",
                           temperatures=[1.0], sample_T=1.0)
    a = build_cache(tmp_path / "a", teacher=teacher, inputs=x, fingerprint=fp, batch_size=7, log=print)
    b = build_cache(tmp_path / "b", teacher=teacher, inputs=x, fingerprint=fp, batch_size=128, log=print)
    index = torch.arange(300)
    ta, tb = a.lookup(index, 0).topk, b.lookup(index, 0).topk
    assert ta.sampled and torch.equal(ta.indices, tb.indices) and torch.equal(ta.values, tb.values)
    top_fp = cache_fingerprint(teacher=teacher, teacher_spec={}, inputs=x, augment=None, views=1, k=4,
                               dtype="fp16", temperatures=[1.0])
    assert fp["select"] == "sample" and "select" not in top_fp  # a top-k cache never serves a sampled run
    from distill.cache.build import open_cache
    from distill.errors import StaleCacheError

    with pytest.raises(StaleCacheError, match="select"):
        open_cache(tmp_path / "a", top_fp)
    dense = a.lookup(index[:5], 0).logits  # (5, 10): the empirical distribution as logits
    torch.testing.assert_close(F.softmax(dense, -1).gather(1, ta.indices[:5]),
                               torch.where(ta.values[:5] > PAD, ta.values[:5].exp(), 0.0), atol=2e-3, rtol=0)


@pytest.mark.parametrize(("method", "message"), [
    ({"name": "kd"}, "kd cannot train on them"),
    ({"name": "token_kd", "divergence": "rkl"}, "tokenkd cannot train on them"),
])
def test_a_method_that_sampled_targets_would_bias_is_refused(tmp_path: Path, capsys, method: dict,
                                                             message: str) -> None:
    from helpers import cli, digits_recipe, write_recipe

    raw = digits_recipe(tmp_path, method=method, compare=False, cache={"k": 4, "select": "sample"})
    code, out, err = cli(capsys, "run", str(write_recipe(tmp_path, raw, "r.yaml")))
    assert code == 2 and err.count("\n") == 1 and message in err and "cache.select=sample" in err
    assert not (tmp_path / "out" / "cache").exists()


def test_a_recipe_distils_from_a_sampled_cache(tmp_path: Path, capsys) -> None:
    import json

    from helpers import cli, digits_recipe, write_recipe

    raw = digits_recipe(tmp_path, method={"name": "token_kd", "T": 2.0}, compare=False,
                        cache={"k": 4, "select": "sample"})
    raw["train"]["epochs"] = 4
    assert cli(capsys, "run", str(write_recipe(tmp_path, raw, "r.yaml")))[0] == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    manifest = json.loads((tmp_path / "out" / "cache" / "manifest.json").read_text())
    assert manifest["select"] == "sample" and manifest["fingerprint"]["sample_T"] == 2.0
    assert report["models"]["student"]["agreement"] > 0.4  # chance: 0.1, and no label is used
