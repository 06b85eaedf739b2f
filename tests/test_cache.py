"""Teacher-output cache: exact losses from stored logits, fingerprints, corruption, and runs that use it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.cache import build_cache, cache_fingerprint, densify, open_cache
from distill.errors import DistillError, StaleCacheError
from distill.methods.kd import KD, kd_loss_topk
from distill.types import Batch, ModelOutput, StepContext
from helpers import cli, digits_recipe, write_recipe

CTX = StepContext(epoch=0, step=0, epochs=1, steps_per_epoch=1)


def _teacher(seed: int = 0, classes: int = 7) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, classes)).eval()


def _build(tmp: Path, teacher: nn.Module, x: torch.Tensor, *, k: int, dtype: str = "fp32",
           temps: tuple[float, ...] = (1.0, 4.0), name: str = "cache"):
    fp = cache_fingerprint(teacher=teacher, teacher_spec={"name": "t"}, inputs=x, augment=None, views=1, k=k,
                           dtype=dtype, temperatures=list(temps))
    return build_cache(tmp / name, teacher=teacher, inputs=x, fingerprint=fp, batch_size=16, log=lambda _: None), fp


@pytest.mark.parametrize("dtype,tol", [("fp32", 1e-6), ("fp16", 2e-3)])
def test_cached_kd_equals_live_kd_with_all_classes(tmp_path: Path, dtype: str, tol: float) -> None:
    teacher, x = _teacher(), torch.randn(50, 12)
    cache, _ = _build(tmp_path, teacher, x, k=7, dtype=dtype)
    index = torch.tensor([3, 41, 0, 17, 17, 29])
    student = torch.randn(6, 7, requires_grad=True)
    batch = Batch(input=x[index], target=torch.tensor([1, -1, 2, -1, 0, 6]), index=index)
    kd = KD(T=4.0, alpha=0.3, beta=0.7)
    with torch.no_grad():
        live = kd(ModelOutput(student), ModelOutput(teacher(x[index])), batch, CTX).loss
    cached = kd(ModelOutput(student), cache.lookup(index, 0), batch, CTX).loss
    assert torch.allclose(cached, live, rtol=tol, atol=tol)


def test_topk_kd_is_the_kl_over_topk_classes_plus_one_tail_bin(tmp_path: Path) -> None:
    teacher, x = _teacher(classes=9), torch.randn(30, 12)
    cache, _ = _build(tmp_path, teacher, x, k=3, temps=(1.0, 2.5))
    index = torch.arange(8)
    s = torch.randn(8, 9, dtype=torch.float64)
    got = kd_loss_topk(s.float(), cache.lookup(index, 0).topk, 2.5)
    # independent: coarse-grain both full distributions to {each of the teacher's top 3, everything else}
    with torch.no_grad():
        t = teacher(x[index]).double()
    q, p = F.softmax(t / 2.5, dim=1), F.softmax(s / 2.5, dim=1)
    want = 0.0
    for i in range(8):
        top = torch.topk(t[i], 3).indices.tolist()
        rest = [c for c in range(9) if c not in top]
        qb = [q[i, c] for c in top] + [q[i, rest].sum()]
        pb = [p[i, c] for c in top] + [p[i, rest].sum()]
        want += sum(float(a * torch.log(a / b)) for a, b in zip(qb, pb))
    assert got.item() == pytest.approx(want / 8 * 2.5**2, rel=1e-4)


def test_densify_restores_all_logits_and_spreads_the_tail_mass(tmp_path: Path) -> None:
    teacher, x = _teacher(), torch.randn(20, 12)
    with torch.no_grad():
        logits = teacher(x)
    dense, _ = _build(tmp_path, teacher, x, k=7)
    assert torch.allclose(dense.lookup(torch.arange(20), 0).logits, logits, atol=1e-6)
    sparse, _ = _build(tmp_path, teacher, x, k=2, name="sparse")
    rebuilt = sparse.lookup(torch.arange(20), 0)
    probs = torch.softmax(rebuilt.logits, dim=1)
    true = torch.softmax(logits, dim=1)
    top = logits.topk(2, dim=1).indices
    assert torch.allclose(probs.gather(1, top), true.gather(1, top), atol=1e-5)  # top-k mass exact
    tail = true.sum(1) - true.gather(1, top).sum(1)
    assert torch.allclose(probs.sum(1) - probs.gather(1, top).sum(1), tail, atol=1e-5)  # tail mass exact
    assert torch.equal(densify(rebuilt.topk), rebuilt.logits)


def test_stale_cache_names_what_differs(tmp_path: Path) -> None:
    x = torch.randn(20, 12)
    _, fp = _build(tmp_path, _teacher(0), x, k=2)
    other = cache_fingerprint(teacher=_teacher(1), teacher_spec={"name": "t"}, inputs=x, augment=None, views=1,
                              k=3, dtype="fp32", temperatures=[1.0, 4.0])
    with pytest.raises(StaleCacheError) as err:
        open_cache(tmp_path / "cache", other)
    assert "teacher_weights" in err.value.diff and "k (cache 2, now 3)" in err.value.diff
    assert "dataset" not in err.value.diff
    open_cache(tmp_path / "cache", fp)  # the matching fingerprint opens


def test_truncated_and_corrupt_shards_are_refused(tmp_path: Path) -> None:
    _build(tmp_path, _teacher(), torch.randn(20, 12), k=3)
    shard = sorted((tmp_path / "cache").glob("*.values.npy"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[:-4])
    with pytest.raises(DistillError, match="truncated"):
        open_cache(tmp_path / "cache")
    shard.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(DistillError, match="corrupt"):
        open_cache(tmp_path / "cache")
    shard.unlink()
    with pytest.raises(DistillError, match="missing"):
        open_cache(tmp_path / "cache")


def test_manifest_records_layout_and_size(tmp_path: Path) -> None:
    cache, _ = _build(tmp_path, _teacher(classes=300), torch.randn(10, 12), k=5, dtype="fp16")
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    # fp16 values + int16 indices per stored class, fp32 lse per temperature
    assert manifest["bytes_per_sample_view"] == 5 * (2 + 2) + 4 * 2
    assert np.load(next((tmp_path / "cache").glob("*.indices.npy"))).dtype == np.int16
    assert cache.lookup(torch.tensor([4]), 0).topk.values.shape == (1, 5)


def _digits(tmp: Path, **changes: object) -> Path:
    return write_recipe(tmp, digits_recipe(tmp, compare=False, **changes))


def test_cached_run_matches_live_run(tmp_path: Path, capsys) -> None:
    recipe = _digits(tmp_path)
    code, out, err = cli(capsys, "run", str(recipe), "cache.mode=off", f"output_dir={tmp_path / 'live'}")
    assert code == 0, err
    assert "cache:" not in out
    weights = f"teacher.weights={tmp_path / 'live/teacher/model.safetensors'}"
    code, out, err = cli(capsys, "run", str(recipe), "cache.k=all", "cache.dtype=fp32",
                         f"output_dir={tmp_path / 'cached'}", weights)
    assert code == 0, err
    assert "cache: built" in out
    from distill.io import load_weights

    live, cached = (load_weights(tmp_path / d / "student" / "model.safetensors") for d in ("live", "cached"))
    for key in live:  # same teacher logits up to float rounding -> same training
        assert torch.allclose(live[key], cached[key], atol=1e-4), key
    code, out, _ = cli(capsys, "run", str(recipe), "cache.k=all", "cache.dtype=fp32",
                       f"output_dir={tmp_path / 'cached'}", weights)
    assert code == 0 and "cache: using" in out  # a current cache is reused, not rebuilt


def test_feature_methods_fall_back_to_the_live_teacher(tmp_path: Path, capsys) -> None:
    fitnet = {"name": "fitnet", "student_layers": ["fc:input"], "teacher_layers": ["fc:input"]}
    recipe = _digits(tmp_path, method=fitnet)
    code, out, err = cli(capsys, "run", str(recipe))
    assert code == 0, err
    assert "cache: live teacher (fitnet need(s) the live teacher's features)" in out
    assert not (tmp_path / "out" / "cache").exists()
    code, _, err = cli(capsys, "run", str(recipe), "cache=required")
    assert code == 2 and err.count("\n") == 1 and "cache.mode is required" in err


def test_stale_and_corrupt_caches_are_refused_by_the_cli(tmp_path: Path, capsys) -> None:
    recipe, path = _digits(tmp_path), tmp_path / "shared-cache"
    code, out, err = cli(capsys, "cache", "build", str(recipe), f"cache.path={path}", "cache.k=5")
    assert code == 0, err
    assert "OK" in out and "k=5" in out
    code, out, err = cli(capsys, "cache", "verify", str(path), "--recipe", str(recipe), f"cache.path={path}",
                         "cache.k=5")
    assert code == 0 and "OK" in out, err
    code, _, err = cli(capsys, "run", str(recipe), f"cache.path={path}", "cache.k=3")
    assert code == 2 and err.count("\n") == 1
    assert "is stale: k (cache 5, now 3)" in err
    # the teacher trained by `cache build`, given as weights: same fingerprint, only the data changes
    code, _, err = cli(capsys, "cache", "verify", str(path), "--recipe", str(recipe), f"cache.path={path}",
                       "cache.k=5", f"teacher.weights={tmp_path / 'out/teacher/model.safetensors'}",
                       "data.normalize={mean: [1.0], std: [2.0]}")
    assert code == 2 and "stale" in err and "dataset" in err and err.count("\n") == 1
    shard = next(path.glob("*.values.npy"))
    raw = bytearray(shard.read_bytes())
    raw[-3] ^= 0x55
    shard.write_bytes(bytes(raw))
    for argv in (("cache", "verify", str(path)), ("run", str(recipe), f"cache.path={path}", "cache.k=5")):
        code, _, err = cli(capsys, *argv)
        assert code == 2 and err.count("\n") == 1 and "is corrupt" in err, argv
    code, _, err = cli(capsys, "cache", "verify", str(tmp_path / "nope"))
    assert code == 2 and "no such directory" in err


def test_augmented_views_replay_exactly_what_the_teacher_labelled(tmp_path: Path) -> None:
    from distill.cache import obtain_cache
    from distill.data import BatchLoader
    from distill.plan import plan_from_recipe
    from distill.recipe import load_recipe

    recipe = load_recipe(_digits(tmp_path, data={"name": "digits", "augment": {"shift": 2, "flip": True}}),
                         ["cache.views=3", "cache.k=all", "cache.dtype=fp32"])
    plan = plan_from_recipe(recipe)
    data = plan.data
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    cache = obtain_cache(plan, teacher, log=lambda _: None)
    loader = BatchLoader(data.train, 50, shuffle=True, seed=7, augment=plan.augment, views=cache.views)
    seen = set()
    for epoch in range(4):
        loader.set_epoch(epoch)
        batch = next(iter(loader))
        seen.add(batch.view)
        with torch.no_grad():
            want = teacher(batch.input)  # the teacher on the exact view the student trains on
        assert torch.allclose(cache.lookup(batch.index, batch.view).logits, want, atol=1e-5)
    assert seen == {0, 1, 2}
    index = torch.arange(20)
    assert not torch.equal(cache.lookup(index, 0).logits, cache.lookup(index, 1).logits)


def test_augmented_data_without_views_cannot_be_cached(tmp_path: Path, capsys) -> None:
    recipe = _digits(tmp_path, data={"name": "digits", "augment": {"shift": 1}})
    code, _, err = cli(capsys, "run", str(recipe), "cache=required")
    assert code == 2 and "cache.views" in err


@pytest.mark.parametrize(("edit", "needle"), [
    (lambda m: [m], "should be a JSON object, got list"),
    (lambda m: {k: v for k, v in m.items() if k != "files"}, "has no valid 'files'"),
    (lambda m: {**m, "files": {}}, "does not list the size and sha256 of v0000-s0000.values.npy"),
    (lambda m: {**m, "shards": [{"view": 0}]}, "has a malformed shard entry"),
    (lambda m: {**m, "k": "5"}, "has no valid 'k'"),
])
def test_a_hand_edited_manifest_is_refused(tmp_path: Path, edit, needle: str) -> None:
    """An emptied `files` map used to let `cache verify` pass shards it never checked."""
    _build(tmp_path, _teacher(), torch.randn(20, 12), k=3)
    mf = tmp_path / "cache" / "manifest.json"
    mf.write_text(json.dumps(edit(json.loads(mf.read_text()))))
    with pytest.raises(DistillError, match=needle):
        open_cache(tmp_path / "cache")


def test_the_report_reads_the_teachers_test_logits_from_the_cache(tmp_path: Path, capsys, monkeypatch) -> None:
    """The cache stores the teacher's test logits; a rerun's report (and the first run's) and its diagnosis never
    run the teacher again, and its teacher row and agreement column are what the live teacher gives."""
    import importlib

    runner = importlib.import_module("distill.run")  # the module: `distill.run` is also the function
    recipe = write_recipe(tmp_path, digits_recipe(tmp_path, compare=False))
    assert cli(capsys, "run", str(recipe))[0] == 0
    first = json.loads((tmp_path / "out" / "report.json").read_text())["models"]
    manifest = json.loads((tmp_path / "out" / "cache" / "manifest.json").read_text())
    assert manifest["eval"]["test"]["rows"] == 359 and "eval-test.npy" in manifest["files"]
    seen: list[int] = []
    predict = runner.predict
    monkeypatch.setattr(runner, "predict", lambda model, data, *a, **k: seen.append(len(data)) or predict(
        model, data, *a, **k))
    assert cli(capsys, "run", str(recipe), "--resume")[0] == 0
    # neither the report (the test split) nor the diagnosis (the cached test logits) runs anything again; what
    # remains is the dry run's miniature plan (16 samples per split), which has no cache
    assert seen and all(n == 16 for n in seen)
    again = json.loads((tmp_path / "out" / "report.json").read_text())["models"]
    for role in ("teacher", "student"):
        assert again[role]["top1"] == first[role]["top1"] and again[role]["agreement"] == first[role]["agreement"]


def test_the_cache_batch_comes_from_the_rule_and_is_recorded(tmp_path: Path) -> None:
    from distill.batching import cache_batch_size

    teacher, x = _teacher(), torch.randn(2100, 12)
    fp = cache_fingerprint(teacher=teacher, teacher_spec={"name": "t"}, inputs=x, augment=None, views=1, k=7,
                           dtype="fp32", temperatures=[4.0])
    ruled = build_cache(tmp_path / "a", teacher=teacher, inputs=x, fingerprint=fp, log=lambda _: None)
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["batch_size"] == cache_batch_size(teacher, x[:1]) == 1024  # a tiny MLP: the largest candidate
    again = build_cache(tmp_path / "b", teacher=teacher, inputs=x, fingerprint=fp, batch_size=1024, log=lambda _: None)
    index = torch.arange(len(x))
    assert torch.equal(ruled.lookup(index, 0).topk.values, again.lookup(index, 0).topk.values)
