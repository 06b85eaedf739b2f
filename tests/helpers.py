"""Shared helpers for CLI and integration tests: tiny recipes written to a temporary folder."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from distill.cli import main


def digits_recipe(tmp: Path, **changes: object) -> dict:
    """A seconds-long digits recipe (teacher trained here, KD into a small MLP)."""
    raw: dict = {
        "name": "t", "seed": 0, "output_dir": str(tmp / "out"),
        "data": {"name": "digits", "labels_per_class": 10, "batch_size": 64},
        "teacher": {"name": "mlp", "hidden": [64], "train": {"epochs": 3, "optimizer": {"name": "adam", "lr": 0.003}}},
        "student": {"name": "mlp", "hidden": [16]},
        "method": {"name": "kd", "T": 4, "alpha": 0.5, "beta": 0.5},
        "train": {"epochs": 2, "optimizer": {"name": "adam", "lr": 0.003}},
        "eval": {"latency": False},
    }
    raw.update(changes)
    return raw


def write_recipe(tmp: Path, raw: dict, name: str = "recipe.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(raw))
    return path


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def tiny_convnet() -> torch.nn.Module:
    """An importable user model for 1x8x8 inputs and 10 classes (for the ``external`` model tests)."""
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 10))


def killed_then_resumed(full: Path, killed: Path, out_full: Path, out_killed: Path, role: str = "student",
                        weights: tuple[str, ...] = ("student/model.safetensors",)) -> str:
    """Run recipe ``full`` to the end; run ``killed``, SIGKILL it (and its DataLoader workers) as soon as its
    ``role`` (a folder under the output directory) wrote a checkpoint, then ``--resume`` it. Asserts that every
    file of ``weights`` (final weights, relative to the output directory) is bit-identical between the two runs;
    returns the resumed run's stdout."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from distill.io import load_weights

    cmd = [sys.executable, "-m", "distill.cli", "run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*cmd, str(full)], check=True, capture_output=True, env=env, timeout=300)
    proc = subprocess.Popen([*cmd, str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    meta = out_killed / role / "checkpoint" / "meta.json"
    deadline = time.time() + 240
    while not meta.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    # kill at once: the next epoch has just started (or this epoch's checkpoint swap is finishing: also safe)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out_killed / role / "model.safetensors").exists()
    resumed = subprocess.run([*cmd, str(killed), "--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    for rel in weights:
        a, b = load_weights(out_full / rel), load_weights(out_killed / rel)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), rel
    return resumed.stdout


def track_dry_run(monkeypatch=None) -> list[bool]:  # noqa: ANN001
    """Patch the runner's dry run so that the returned flag's ``[0]`` is True while it rehearses: spies that count
    batches or forwards of the real run skip the dry run's few. Without ``monkeypatch`` (a script such as
    ``ddp_entry.py``) the patch lasts for the process."""
    import importlib

    run_module = importlib.import_module("distill.run")  # the module: `distill.run` is also the function
    rehearse, flag = run_module.dry_run, [False]

    def dry(*args: object) -> object:
        flag[0] = True
        try:
            return rehearse(*args)
        finally:
            flag[0] = False

    if monkeypatch is None:
        run_module.dry_run = dry
    else:
        monkeypatch.setattr(run_module, "dry_run", dry)
    return flag


def tiny_lm_parts(tmp: Path) -> dict:
    """Recipe parts of a tiny language-model run: a word-level tokenizer, six short documents of a small grammar
    (``corpus`` data), a 2-layer Llama teacher trained here and a 1-layer Llama student, ``token_kd``."""
    import random

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = "the cat sat on a mat and dog ran to big red house in sun".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[PAD]", "[UNK]", "[EOS]", *words])},
                                     unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                            eos_token="[EOS]").save_pretrained(tmp / "tok")
    rng = random.Random(0)
    (tmp / "texts").mkdir(parents=True, exist_ok=True)
    for i in range(6):
        lines = [f"the {a} sat on {b} and the {b} ran to {a}"
                 for a, b in ((rng.choice(words[:4]), rng.choice(words[4:])) for _ in range(100))]
        (tmp / "texts" / f"work{i}.txt").write_text("\n".join(lines))
    llama = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64}
    return {"data": {"name": "corpus", "path": str(tmp / "texts"), "tokenizer": str(tmp / "tok"), "seq_len": 32,
                     "batch_size": 8},
            "teacher": {"name": "causal_lm", "config": llama, "train": {"epochs": 1}},
            "student": {"name": "causal_lm", "config": {**llama, "num_hidden_layers": 1}},
            "method": {"name": "token_kd"}}
