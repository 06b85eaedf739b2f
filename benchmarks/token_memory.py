"""Peak memory of one training step of an LM head with a token-level distillation loss, chunked against plain.

The step: hidden states (B x S, H) through a student LM head (H -> V) to logits, the divergence against teacher
logits of the same shape, backward to the head's weights and the hidden states. ``plain`` writes the divergence
with ordinary autograd over the whole (B x S, V) at once (as a hand-written GKD loss does); ``chunked`` is
``distill.methods.token_kd.token_divergence`` (chunks of 256 tokens). Each variant runs in its own process and
reports its peak resident memory above the memory it had just before the step (``ru_maxrss``), so allocator
caches of one variant never hide the other's.

    python benchmarks/token_memory.py [--vocab 49152] [--tokens 2048] [--hidden 256] [--no-write]

Writes the table into docs/BENCHMARKS.md (section ``token-memory``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def step(variant: str, vocab: int, tokens: int, hidden: int, name: str) -> dict:
    """One step in this process; peak RSS growth (MiB) and seconds."""
    import torch
    import torch.nn.functional as F

    from distill.methods.token_kd import divergence, token_divergence

    torch.manual_seed(0)
    h = torch.randn(tokens, hidden, requires_grad=True)
    head = torch.nn.Linear(hidden, vocab, bias=False)
    teacher = torch.randn(tokens, vocab)
    F.log_softmax(torch.randn(4, 8), -1)  # load the kernels before the baseline
    base = _rss_mib()
    t0 = time.perf_counter()
    logits = head(h)  # (N, V)
    if variant == "plain":
        loss = divergence(name)(F.log_softmax(logits, -1), F.log_softmax(teacher, -1)).mean()  # all at once
    else:
        loss = token_divergence(logits, teacher, name=name, chunk=256)
    loss.backward()
    return {"peak_mib": _rss_mib() - base, "seconds": time.perf_counter() - t0, "loss": loss.item()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--tokens", type=int, default=2048, help="batch x sequence")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--divergence", default="jsd")
    ap.add_argument("--child", choices=["plain", "chunked"], help=argparse.SUPPRESS)
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(step(args.child, args.vocab, args.tokens, args.hidden, args.divergence)))
        return
    rows = {}
    for variant in ("plain", "chunked"):
        out = subprocess.run([sys.executable, __file__, "--child", variant, "--vocab", str(args.vocab), "--tokens",
                              str(args.tokens), "--hidden", str(args.hidden), "--divergence", args.divergence],
                             check=True, capture_output=True, text=True).stdout
        rows[variant] = json.loads(out.strip().splitlines()[-1])
    logits_mib = args.tokens * args.vocab * 4 / 2**20
    cmd = (f"python benchmarks/token_memory.py --vocab {args.vocab} --tokens {args.tokens} --hidden {args.hidden} "
           f"--divergence {args.divergence}")
    text = "\n".join([
        f"Command: `{cmd}` (one fp32 (tokens x vocabulary) tensor: {logits_mib:,.0f} MiB).", "",
        "| loss | peak memory of the step above its start (MiB) | in logits tensors | seconds | loss value |",
        "|---|---:|---:|---:|---:|",
        *(f"| {v} | {r['peak_mib']:,.0f} | {r['peak_mib'] / logits_mib:.1f} | {r['seconds']:.2f} | {r['loss']:.6f} |"
          for v, r in rows.items()), "",
        f"Chunked over plain, peak memory: {rows['chunked']['peak_mib'] / rows['plain']['peak_mib']:.2f}x."])
    print(text)
    if not args.no_write:
        sys.path.insert(0, str(Path(__file__).parent))
        from docs_section import replace_section

        replace_section(ROOT / "docs" / "BENCHMARKS.md", "token-memory", text)


if __name__ == "__main__":
    main()
