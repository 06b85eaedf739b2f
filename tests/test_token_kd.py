"""Token-level divergences (``distill.methods.token_kd``): each equals its formula on fixed tensors, the chunked
gradient equals plain autograd's, masked tokens count for nothing, and no (tokens x vocabulary) fp32 tensor is
kept for backward."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.methods.token_kd import DIVERGENCES, TokenKD, token_divergence
from distill.types import Batch, ModelOutput, StepContext


def _logits(seed: int = 0, shape: tuple[int, ...] = (2, 5, 11)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * 2, torch.randn(*shape, generator=g) * 2


def _reference(name: str, s: torch.Tensor, t: torch.Tensor, T: float, beta: float, skew: float) -> torch.Tensor:
    """The per-token divergences written out from probabilities (no shared code), mean over tokens."""
    p, q = F.softmax(t / T, -1), F.softmax(s / T, -1)  # teacher, student

    def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * (a.log() - b.log())).sum(-1)

    if name == "jsd":  # TRL's generalized_jsd_loss, mixture via logsumexp
        ls, lt = q.log(), p.log()
        m = torch.logsumexp(torch.stack([ls + math.log(1 - beta), lt + math.log(beta)]), dim=0)
        per = beta * (p * (lt - m)).sum(-1) + (1 - beta) * (q * (ls - m)).sum(-1)
    else:
        per = {"fkl": kl(p, q), "rkl": kl(q, p), "tv": 0.5 * (p - q).abs().sum(-1),
               "skl": kl(p, skew * p + (1 - skew) * q), "srkl": kl(q, skew * q + (1 - skew) * p)}[name]
    return per.mean()


@pytest.mark.parametrize("name", DIVERGENCES)
@pytest.mark.parametrize("T", [1.0, 2.5])
def test_each_divergence_equals_its_formula(name: str, T: float) -> None:
    s, t = _logits()
    got = token_divergence(s, t, name=name, T=T, beta=0.3, skew=0.2)
    assert torch.allclose(got, _reference(name, s, t, T, 0.3, 0.2), atol=1e-6, rtol=1e-5)
    assert got.item() > 0


def test_jsd_ends_are_forward_and_reverse_kl_and_its_middle_is_symmetric() -> None:
    s, t = _logits(1)
    assert torch.equal(token_divergence(s, t, name="jsd", beta=0.0), token_divergence(s, t, name="fkl"))
    assert torch.equal(token_divergence(s, t, name="jsd", beta=1.0), token_divergence(s, t, name="rkl"))
    assert torch.allclose(token_divergence(s, t, name="jsd", beta=0.5), token_divergence(t, s, name="jsd", beta=0.5))
    assert token_divergence(t, t, name="jsd").abs().item() < 1e-6


@pytest.mark.parametrize("name", DIVERGENCES)
@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_the_chunked_gradient_equals_plain_autograd(name: str, chunk: int) -> None:
    s, t = _logits(2)
    s1, s2 = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    token_divergence(s1, t, name=name, chunk=chunk).backward()
    _reference(name, s2, t, 1.0, 0.5, 0.1).backward()
    assert torch.allclose(s1.grad, s2.grad, atol=1e-6)


def test_masked_tokens_count_for_nothing() -> None:
    s, t = _logits(3)
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 0, 0, 1, 1]], dtype=torch.bool)
    x = s.clone().requires_grad_(True)
    loss = token_divergence(x, t, name="rkl", mask=mask, chunk=2)
    loss.backward()
    assert torch.allclose(loss, token_divergence(s[mask], t[mask], name="rkl"))
    assert x.grad[~mask].abs().sum() == 0 and x.grad[mask].abs().sum() > 0
    empty = token_divergence(s, t, mask=torch.zeros(2, 5, dtype=torch.bool))
    assert empty.item() == 0.0


def test_no_tokens_by_vocabulary_fp32_tensor_is_kept_for_backward() -> None:
    s, t = _logits(4, (4, 16, 1000))
    s = s.to(torch.bfloat16).requires_grad_(True)
    saved: list[tuple[torch.dtype, int]] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append((x.dtype, x.numel())) or x, lambda x: x):
        loss = token_divergence(s, t, name="jsd", chunk=8)
    loss.backward()
    assert s.grad is not None and s.grad.dtype == torch.bfloat16
    assert not [n for dtype, n in saved if dtype == torch.float32 and n > 8 * 1000]


def test_the_method_masks_ignored_targets_and_adds_its_cross_entropy() -> None:
    s, t = _logits(5)
    target = torch.randint(0, 11, (2, 5))
    target[0, :2] = -100
    batch = Batch(torch.zeros(2, 5), target, torch.zeros(2))
    out = TokenKD(divergence="tv", alpha=0.5)(ModelOutput(s), ModelOutput(t), batch,
                                             StepContext(epoch=0, step=0, epochs=1, steps_per_epoch=1))
    keep = target != -100
    assert torch.allclose(out.terms["tv"], token_divergence(s[keep], t[keep], name="tv"))
    assert torch.allclose(out.terms["ce"], 0.5 * F.cross_entropy(s[keep], target[keep]))
    with pytest.raises(ValueError, match="divergence must be one of"):
        TokenKD(divergence="kl")


def test_a_recipe_distils_with_each_divergence_and_the_cache_serves_it(tmp_path, capsys) -> None:
    """From a recipe, through the teacher cache (k = all classes): the student learns from the teacher's
    distribution alone (no label term), and its agreement with the teacher beats chance by far."""
    import json

    from helpers import cli, digits_recipe, write_recipe

    for name in ("jsd", "srkl"):
        raw = digits_recipe(tmp_path / name, method={"name": "token_kd", "divergence": name, "T": 2.0},
                            compare=False)
        raw["train"]["epochs"] = 4
        assert cli(capsys, "run", str(write_recipe(tmp_path, raw, f"{name}.yaml")))[0] == 0
        report = json.loads((tmp_path / name / "out" / "report.json").read_text())
        assert name in report["histories"]["student"][-1]
        assert report["models"]["student"]["agreement"] > 0.5
        assert (tmp_path / name / "out" / "cache" / "manifest.json").is_file()


def _sparse(t: torch.Tensor, k: int, T: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the sparse teacher cache stores: fp16 top-k values, int32 ids, the log-sum-exp at T."""
    top = t.topk(k, dim=-1)
    return top.values.half(), top.indices.int(), torch.logsumexp(t / T, dim=-1)


@pytest.mark.parametrize("name", DIVERGENCES)
def test_the_sparse_teacher_is_exact_on_its_support_plus_one_bucket(name: str) -> None:
    from distill.methods.token_sparse import token_divergence_topk

    s, t = _logits(6, (3, 4, 13))
    t = t.half().float()  # the values the cache holds, so the check is of the loss, not of fp16 rounding
    T, k = 2.0, 5
    values, indices, lse = _sparse(t, k, T)
    x = s.clone().requires_grad_(True)
    got = token_divergence_topk(x, values, indices, lse, name=name, T=T, beta=0.3, skew=0.2, chunk=5)
    got.backward()
    # the reference: both distributions coarsened to the teacher's top k plus the rest, the divergence by hand
    y = s.clone().requires_grad_(True)
    p, q = F.softmax(t / T, -1), F.softmax(y / T, -1)
    i = indices.long()

    def coarse(d: torch.Tensor) -> torch.Tensor:
        top = d.gather(-1, i)
        return torch.cat([top, 1 - top.sum(-1, keepdim=True)], dim=-1)  # (..., k + 1)

    want = _reference(name, coarse(q).log() * T, coarse(p).log() * T, T, 0.3, 0.2)  # log-probs as logits at T
    want.backward()
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)
    assert torch.allclose(x.grad, y.grad, atol=1e-6)
    # every token stored: the dense divergence
    dense = token_divergence_topk(s, *_sparse(t, 13, T), name=name, T=T, beta=0.3, skew=0.2)
    assert torch.allclose(dense, token_divergence(s, t, name=name, T=T, beta=0.3, skew=0.2), atol=1e-5)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_the_cross_entropy_fused_into_the_chunked_pass_has_both_values_and_every_gradient(sparse: bool,
                                                                                           T: float) -> None:
    """With ``ce``, one pass gives the divergence and the cross-entropy; the gradient of any mix of the two (the
    loss's own, or one term alone as the loss-scale check takes it) equals autograd's over the separate terms."""
    from distill.methods.token_sparse import token_divergence_topk

    s, t = _logits(6, (2, 6, 11))
    target = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(1))
    target[1, :3] = -100
    keep = target != -100
    alpha = 0.3
    opts = dict(name="jsd", mask=keep, T=T, chunk=3)

    def run(x: torch.Tensor, ce=None) -> torch.Tensor:
        if sparse:
            return token_divergence_topk(x, *_sparse(t, 4, T), ce=ce, **opts)
        return token_divergence(x, t, ce=ce, **opts)

    for a, b in [(1.0, alpha), (1.0, 0.0), (0.0, alpha), (0.7, -2.0)]:
        x, y = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
        both = run(x, (target, alpha))
        assert both.shape == (2,)
        (a * both[0] + b * both[1]).backward()
        div, ce = run(y), F.cross_entropy(y[keep], target[keep])
        (a * div + b * ce).backward()
        assert torch.allclose(both[0], div, atol=1e-6) and torch.allclose(both[1], ce, atol=1e-6)
        assert torch.allclose(x.grad, y.grad, atol=1e-6), (a, b)
    # the method's terms through the fused path equal the separate ones
    batch = Batch(torch.zeros(2, 6), target, torch.zeros(2))
    ctx = StepContext(epoch=0, step=0, epochs=1, steps_per_epoch=1)
    out = TokenKD(divergence="fkl", alpha=alpha)(ModelOutput(s), ModelOutput(t), batch, ctx)
    assert torch.allclose(out.terms["ce"], alpha * F.cross_entropy(s[keep], target[keep]), atol=1e-6)
    assert torch.allclose(out.terms["fkl"], token_divergence(s, t, mask=keep), atol=1e-6)
