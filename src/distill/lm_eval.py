"""Evaluation of language models: perplexity, next-token top-1, agreement with the teacher, generation speed.

A test split of N blocks of S tokens has N x S x V logits (5 GB at V = 49,152 for 200 blocks of 128): they are
never gathered. Each batch's logits are reduced at once to the negative log-likelihood of the targets, the arg-max
token and, against a reference (the teacher's arg-max tokens, (N, S) int64), the agreement; only positions whose
target is not -100 count.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from distill.data import DataSplits
    from distill.models import Keys
    from distill.plan import Plan
    from distill.run import Trained

IGNORE = -100


@torch.inference_mode()
def token_scores(model: nn.Module, split: Any, batch_size: int, inputs: Any = None,
                 reference: Tensor | None = None) -> tuple[dict[str, float], Tensor]:
    """({nll, ppl, top1, agreement (with ``reference``; None without)}, the model's arg-max tokens (N, S)) on
    ``split`` (N blocks with (N, S) targets), in eval mode, batch by batch."""
    from distill.evaluate import _device_of, _eval_mode, _logits_of, _to
    from distill.models.teacher import feed

    device = _device_of(model, torch.device("cpu"))
    nll = correct = agree = count = 0.0
    argmax: list[Tensor] = []
    with _eval_mode(model):
        for lo in range(0, len(split), batch_size):
            rows = torch.arange(lo, min(len(split), lo + batch_size))
            logits = _logits_of(feed(model, _to(split.take(rows), device), inputs)).float()  # (B, S, V)
            y = split.y[rows].to(device)  # (B, S)
            mask = y != IGNORE
            nll += float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="sum"))
            top = logits.argmax(dim=-1)  # (B, S)
            correct += float(((top == y) & mask).sum())
            if reference is not None:
                agree += float(((top == reference[rows].to(device)) & mask).sum())
            count += float(mask.sum())
            argmax.append(top.cpu())
    mean = nll / max(count, 1.0)
    scores = {"nll": mean, "ppl": math.exp(min(mean, 700.0)), "top1": correct / max(count, 1.0),
              "agreement": agree / max(count, 1.0) if reference is not None else None}
    return scores, torch.cat(argmax)


@torch.inference_mode()
def generation_speed(model: nn.Module, prompt: Tensor, new_tokens: int = 32) -> float | None:
    """Tokens per second of greedy generation of ``new_tokens`` after ``prompt`` (1, P) ids, batch 1, with the
    model's KV cache (a ``distill.models.causal_lm.CausalLM``; None for any other model)."""
    lm = getattr(model, "lm", None)
    if lm is None or not hasattr(lm, "generate"):
        return None
    from distill.evaluate import _eval_mode

    prompt = prompt.to(next(lm.parameters()).device)
    args = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                pad_token_id=0, attention_mask=torch.ones_like(prompt))
    with _eval_mode(model):
        lm.generate(prompt[:, :8], **{**args, "max_new_tokens": 2, "min_new_tokens": 2})  # warm-up
        start = time.perf_counter()
        lm.generate(prompt, **args)
        return new_tokens / (time.perf_counter() - start)


LM_EVAL_BATCH = 8  # evaluation batch of a language model when none is set: its logits are B x S x V


def lm_epoch_eval(data: DataSplits, batch_size: int, inputs: Keys, model: nn.Module) -> dict[str, float]:
    """Next-token top-1 and perplexity of a language model on the validation and test splits."""
    out: dict[str, float] = {}
    for split in ("val", "test"):
        scores, _ = token_scores(model, getattr(data, split), batch_size, inputs)
        out[f"{split}_top1"], out[f"{split}_ppl"] = scores["top1"], scores["ppl"]
    return out


def lm_metrics(plan: Plan, trained: dict[str, Trained], teacher: nn.Module | None) -> dict[str, dict[str, Any]]:
    """Test metrics of every trained language model: perplexity, next-token top-1 (last / best epoch), agreement
    of its arg-max token with the teacher's, parameters, size and generation speed (``eval.latency``). When the
    teacher reads its own tokenisation (``data.paired``), its perplexity and the agreement are not comparable with
    the students' and are left out."""
    from distill.evaluate import _from_history
    from distill.run import _main_stage as main_stage

    test, bs = plan.data.test, plan.eval_batch_size or LM_EVAL_BATCH
    scored = teacher is not None and not plan.data.paired
    t_scores, ref = token_scores(teacher, test, bs) if scored else (None, None)  # the teacher runs once
    first = test.take(torch.arange(1))
    models: dict[str, dict] = {}
    for role, t in trained.items():
        model, keys = (t.frozen, None) if t.frozen is not None else (t.model, t.inputs)
        if model is teacher:
            scores = {**t_scores, "agreement": 1.0} if t_scores else {"top1": None}
            keys = getattr(plan.teacher, "inputs", None)
        else:
            scores = token_scores(model, test, bs, keys, reference=ref)[0]
        prompt = _ids(first, keys)[:, :16]
        history = main_stage(t.history)
        last, best, epoch = _from_history(history) if history else (None, None, None)
        models[role] = {**scores, "top1_last": scores["top1"] if last is None else last,
                        "top1_best": best if best is not None else scores["top1"], "best_epoch": epoch,
                        "params": sum(p.numel() for p in t.model.parameters()),
                        "size_bytes": t.weights.stat().st_size if t.weights is not None else None,
                        "tokens_per_s": generation_speed(t.model, prompt) if plan.latency else None}
    return models


def _ids(x: dict[str, Tensor], keys: Any) -> Tensor:
    """The token ids a model reading ``keys`` (None, or a prefix such as ``teacher``) gets from input ``x``."""
    prefix = f"{keys}." if isinstance(keys, str) else ""
    return next(v for k, v in x.items() if k.endswith("input_ids") and k.startswith(prefix))
