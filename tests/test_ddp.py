"""Data-parallel training under torchrun on CPU (gloo, 2 processes) against one process.

The end-to-end runs share one module fixture (each torchrun start imports torch, sklearn and matplotlib in two
processes: most of the time here): one process, 2 ranks, 2 ranks stopped after the student's first epoch,
and that run resumed. Digits with every label and an MLP student (no BatchNorm): equal per-rank batches, so
2 ranks must reproduce one process up to float summation order. ``data.batch_size`` 64 on 1,079 samples
leaves a last batch of 55, split 28/27: the loss weighting of uneven last batches is exercised too.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from distill.data import ArrayDataset, BatchLoader
from distill.engine import dist
from distill.engine.meter import Meter
from distill.errors import DistillError, NonFiniteLossError
from distill.io import load_weights, save_weights
from distill.methods.crd import CRD
from distill.types import Batch, ModelOutput, SetupContext, StepContext
from helpers import digits_recipe, write_recipe

ENTRY = Path(__file__).with_name("ddp_entry.py")
# Float32 weights of magnitude ~0.3 after 3 teacher + 2 student epochs of Adam: the two runs differ only in
# how gradients are summed (27/28-sample partial sums, then gloo's all-reduce, vs one 64-sample sum), so
# differences are a few float32 ulps accumulated over 85 steps (we measure ~1e-7). 1e-5 leaves room for
# another BLAS while still catching a wrong batch split, a missed sample or an un-averaged gradient (>= 1e-3).
TOL = 1e-5


def _torchrun(*args: str, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ENTRY), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def _beside_one_process(recipe: str, single_out: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``distill run recipe`` in one process into ``single_out``, overlapping ``_torchrun(*args)`` (start-up, the
    imports, is most of both); asserts the one-process run succeeded and returns the torchrun result."""
    single = subprocess.Popen([sys.executable, "-m", "distill.cli", "run", recipe, f"output_dir={single_out}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    two = _torchrun(*args, **env)
    _, err = single.communicate(timeout=240)
    assert single.returncode == 0, err
    return two


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _weights(root: Path, role: str) -> dict[str, torch.Tensor]:
    return load_weights(root / role / "model.safetensors")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("ddp")
    raw = digits_recipe(tmp, compare=False, data={"name": "digits", "batch_size": 64})  # every sample labelled
    recipe = str(write_recipe(tmp, raw))
    out = {name: tmp / name for name in ("single", "full", "stopped")}
    full = _beside_one_process(recipe, out["single"], "run", recipe, f"output_dir={out['full']}",
                               DISTILL_TEST_AUDIT=str(tmp))
    return {
        **out,
        "full": (out["full"], full),
        "stopped": (out["stopped"], _torchrun("run", recipe, f"output_dir={out['stopped']}",
                                              DISTILL_TEST_STOP="student:1")),
        "resumed": _torchrun("run", recipe, f"output_dir={out['stopped']}", "--resume", DISTILL_TEST_AUDIT=str(tmp)),
    }


def test_two_ranks_give_the_weights_of_one_process(runs: dict) -> None:
    full, proc = runs["full"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    for role in ("teacher", "student"):
        a, b = _weights(runs["single"], role), _weights(full, role)
        assert a.keys() == b.keys()
        diff = max(float((a[k] - b[k]).abs().max()) for k in a)
        print(f"{role}: max |w_1proc - w_2ranks| = {diff:.3g}")
        assert diff < TOL, f"{role}: max abs weight difference {diff:.3g} >= {TOL}"
    # the run really had two ranks, and its logged (rank-averaged) loss is the one-process loss
    assert "AUDIT rank=1" in proc.stderr
    logs = [(root / "student" / "log.csv").read_text().splitlines() for root in (runs["single"], full)]
    one, two = ([float(row["loss"]) for row in csv.DictReader(log)] for log in logs)
    assert len(one) == 2 and one == pytest.approx(two, abs=1e-5)


def test_only_rank_0_writes_and_logs(runs: dict, tmp_path: Path) -> None:
    full, proc = runs["full"]
    files = _files(full)
    assert files == _files(runs["single"])  # the same outputs as one process, each once
    assert not [f for f in files if re.search(r"rank|\.tmp|\.old", f)], files
    for run in (proc, runs["resumed"]):
        audit = re.search(r"AUDIT rank=1 writes=(\d+) reads=(\d+)", run.stderr)
        assert audit, run.stderr[-3000:]
        writes, reads = int(audit[1]), int(audit[2])
        assert writes == 0, run.stderr  # rank 1 created, replaced or removed nothing under the outputs
        assert reads > 0  # ...while the hook was live: it read the teacher cache (and the checkpoint) rank 0 wrote
    for line in ("teacher epoch 3/3", "cache: built", "student epoch 2/2", "report: "):
        assert proc.stdout.count(line) == 1, (line, proc.stdout)


def test_resume_under_ddp_is_bit_identical(runs: dict) -> None:
    stopped, proc = runs["stopped"]
    assert proc.returncode != 0  # both ranks exited right after the student's first checkpoint
    resumed = runs["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("teacher: already complete") == 1
    assert resumed.stdout.count("student: resumed from") == 1 and "after epoch 1" in resumed.stdout
    full, _ = runs["full"]
    for role in ("teacher", "student"):
        a, b = _weights(full, role), _weights(stopped, role)
        assert all(torch.equal(a[k], b[k]) for k in a), role
    assert len((stopped / "student" / "log.csv").read_text().splitlines()) == 1 + 2


# ------------------------------------------------------------------------------ in-process, no torchrun


def test_loader_splits_each_global_batch_into_rank_chunks() -> None:
    ds = ArrayDataset(torch.arange(20.0)[:, None], torch.zeros(20, dtype=torch.long))
    one = BatchLoader(ds, 6, shuffle=True, seed=3)
    one.set_epoch(2)
    whole = [b.index.tolist() for b in one]  # 6, 6, 6, 2
    for world in (2, 3):
        ranks = [BatchLoader(ds, 6, shuffle=True, seed=3, rank=r, world=world) for r in range(world)]
        for loader in ranks:
            loader.set_epoch(2)
        chunks = [[b.index.tolist() for b in loader] for loader in ranks]
        assert len({len(c) for c in chunks}) == 1 and len(ranks[0]) == len(chunks[0])  # same steps everywhere
        steps = len(chunks[0])
        assert steps == (4 if world == 2 else 3)  # a last batch of 2 cannot feed 3 ranks: dropped
        for b in range(steps):
            assert sum((c[b] for c in chunks), []) == whole[b]  # rank chunks, in rank order, are the global batch
            assert sum(loader.share(b) for loader in ranks) == pytest.approx(world)
    assert BatchLoader(ds, 6, shuffle=False, rank=1, world=2).share(3) == 1.0  # 2 samples, 1 each


def test_uneven_last_batch_shares() -> None:
    ds = ArrayDataset(torch.zeros(13, 1), torch.zeros(13, dtype=torch.long))
    loaders = [BatchLoader(ds, 10, shuffle=False, rank=r, world=2) for r in range(2)]
    assert [loader.chunk(1) for loader in loaders] == [(10, 12), (12, 13)]
    assert [loader.share(1) for loader in loaders] == [pytest.approx(4 / 3), pytest.approx(2 / 3)]


def test_ranks_with_uneven_labels_average_to_the_global_labelled_mean() -> None:
    from distill.methods.base import labelled_cross_entropy

    torch.manual_seed(0)
    y = torch.randint(0, 4, (23,))
    y[torch.randperm(23)[:15]] = -1  # a label budget: 8 labelled, spread unevenly over the rank chunks
    ds = ArrayDataset(torch.randn(23, 4), y)
    logits = torch.randn(23, 4)  # a fixed "model": logits per dataset row
    whole = BatchLoader(ds, 10, shuffle=True, seed=1)
    ranks = [BatchLoader(ds, 10, shuffle=True, seed=1, rank=r, world=2) for r in range(2)]
    for loader in (whole, *ranks):
        loader.set_epoch(0)
    differs = []
    for b, (one, *parts) in enumerate(zip(whole, *ranks)):
        want = labelled_cross_entropy(logits[one.index], one.target)
        # what DDP does: each rank's loss weighted by its share, the gradients (here the losses) averaged
        got = sum(labelled_cross_entropy(logits[p.index], p.target, p.labelled_count) * r.share(b)
                  for p, r in zip(parts, ranks)) / 2
        assert torch.allclose(got, want), b
        plain = sum(labelled_cross_entropy(logits[p.index], p.target) * r.share(b) for p, r in zip(parts, ranks)) / 2
        differs.append(not torch.allclose(plain, want))
    assert any(differs)  # without the global count, ranks holding different numbers of labels get it wrong


def test_global_batch_must_divide(monkeypatch: pytest.MonkeyPatch) -> None:
    ds = ArrayDataset(torch.zeros(8, 1), torch.zeros(8, dtype=torch.long))
    with pytest.raises(DistillError, match="divisible by the 3 processes"):
        BatchLoader(ds, 4, shuffle=True, rank=0, world=3)
    monkeypatch.setattr(dist, "world_size", lambda: 3)
    with pytest.raises(DistillError, match=r"data.batch_size=64 is the global batch and must be divisible by the 3"):
        dist.check_global_batch(64)
    dist.check_global_batch(63)


def test_one_process_is_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with dist.distributed("cpu") as device:
        assert device == "cpu" and not torch_dist.is_initialized() and dist.world_size() == 1
        assert dist.on_main(lambda: 5) == 5 and dist.everywhere(lambda: 6) == 6
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun started us, but no group was made: refuse to train
    with pytest.raises(DistillError, match="does not run distributed"):
        dist.require_group()


# ------------------------------------------------------------------------- two gloo processes, spawned


def _crd_steps(index_chunks: list[torch.Tensor], feats: list[tuple[torch.Tensor, torch.Tensor]],
               shares: list[float]) -> tuple:
    """Three CRD steps, each loss weighted by its share (as the engine does); returns (losses, embedding-head
    gradients summed over steps, the method)."""
    torch.manual_seed(0)  # banks, heads and negatives: the same draws on every rank
    crd = CRD(student_layers=["fc:input"], teacher_layers=["fc:input"], feat_dim=8, nce_k=16)
    crd.setup(SetupContext({"fc:input": (2, 6)}, {"fc:input": (2, 5)}, num_samples=40, num_classes=3))
    ctx = StepContext(epoch=0, step=0, epochs=1, steps_per_epoch=3)
    losses = []
    for index, (fs, ft), share in zip(index_chunks, feats, shares):
        batch = Batch(torch.zeros(len(index), 1), torch.zeros(len(index), dtype=torch.long), index)
        out = crd(ModelOutput(torch.zeros(len(index), 3), {"fc:input": fs}),
                  ModelOutput(torch.zeros(len(index), 3), {"fc:input": ft}), batch, ctx)
        (out.loss * share).backward()
        losses.append(float(out.loss.detach()) * share)
    grads = torch.cat([p.grad.flatten() for p in crd.parameters()])
    return losses, grads, crd


def _worker(rank: int, store: str) -> None:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(1)
    sizes = [12, 12, 11]  # global batches; the last splits 6/5 like an epoch's uneven last batch
    index = [torch.randperm(40, generator=gen)[:g] for g in sizes]
    feats = [(torch.randn(g, 6, generator=gen), torch.randn(g, 5, generator=gen)) for g in sizes]
    ref_losses, ref_grads, ref = _crd_steps(index, feats, [1.0] * 3)  # one process, before any group exists

    torch_dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        mine = [slice(0, 6) if rank == 0 else slice(6, g) for g in sizes]
        shares = [(m.stop - m.start) * 2 / g for m, g in zip(mine, sizes)]
        losses, grads, crd = _crd_steps([i[m] for i, m in zip(index, mine)],
                                        [(s[m], t[m]) for (s, t), m in zip(feats, mine)], shares)
        grads = dist.mean_across_ranks(grads)  # what DDP does
        losses = dist.mean_across_ranks(torch.tensor(losses))
        for name in ("memory_s", "memory_t", "nce_z"):  # identical on both ranks and equal to one process's
            assert torch.allclose(getattr(crd, name), getattr(ref, name), atol=1e-6), name
        assert torch.equal(dist.gather_cat(crd.memory_s[None])[0], dist.gather_cat(crd.memory_s[None])[1])
        assert torch.allclose(losses, torch.tensor(ref_losses), atol=1e-5), (losses, ref_losses)
        assert torch.allclose(grads, ref_grads, atol=1e-5)
        _check_failures(rank)
    finally:
        torch_dist.destroy_process_group()


def _check_failures(rank: int) -> None:
    """A failure on one rank becomes an error on every rank, never a hang."""
    def boom() -> None:
        raise DistillError("disk full")

    with pytest.raises(DistillError, match="^disk full$" if rank == 0 else "^rank 0 failed: disk full$"):
        dist.on_main(boom)
    def bad_on_rank_1() -> None:
        if rank == 1:
            raise ValueError("bad")

    with pytest.raises(DistillError if rank == 0 else ValueError, match="^rank 1 failed: ValueError: bad$|^bad$"):
        dist.everywhere(bad_on_rank_1)
    with pytest.raises(DistillError, match="the ranks disagree on the epoch"):
        dist.agree(rank, "the epoch")
    meter = Meter("student", Path("/nonexistent"), 0, 4)  # a NaN on rank 1 only stops both ranks
    meter.add(torch.tensor(float("nan") if rank == 1 else 1.0), {}, 1)
    with pytest.raises(NonFiniteLossError):
        meter.flush()


def test_crd_banks_and_failures_across_two_processes(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "store"),), nprocs=2, join=True)


@pytest.mark.parametrize("strategy", ["mutual", "multi_teacher"])
def test_strategies_under_two_ranks_give_the_weights_of_one_process(tmp_path: Path, strategy: str) -> None:
    raw = digits_recipe(tmp_path, compare=False, data={"name": "digits", "batch_size": 64})
    teacher = raw.pop("teacher")
    if strategy == "mutual":
        raw.update(strategy="mutual", method={"name": "kd", "T": 1, "alpha": 1.0, "beta": 1.0})
        roles = ("student", "student2")
    else:
        raw.update(strategy="multi_teacher", teachers={"a": teacher, "b": {**teacher, "hidden": [32]}})
        roles = ("teachers/a", "teachers/b", "student")
    recipe = str(write_recipe(tmp_path, raw))
    two = _beside_one_process(recipe, tmp_path / "one", "run", recipe, f"output_dir={tmp_path / 'two'}",
                              DISTILL_TEST_AUDIT=str(tmp_path))
    assert two.returncode == 0, two.stderr[-3000:]
    assert "AUDIT rank=1 writes=0" in two.stderr  # rank 1 wrote nothing: rank 0 alone saves every student
    for role in roles:
        a, b = _weights(tmp_path / "one", role), _weights(tmp_path / "two", role)
        assert a.keys() == b.keys()
        diff = max(float((a[k] - b[k]).abs().max()) for k in a)
        assert diff < TOL, f"{role}: max abs weight difference {diff:.3g} >= {TOL}"


def test_data_free_trains_generator_and_student_under_two_ranks(tmp_path: Path) -> None:
    """Generator and student train data-parallel, including the student-only steps that leave the generator
    without gradient (DDP must look for unused parameters); rank 0 alone writes. (Not compared with one process:
    the generator's BatchNorm and DAFL's entropy term use per-rank batch statistics, as any BN model under DDP.)"""
    from distill.models import build_model

    teacher = build_model("mlp", num_classes=10, input_shape=(1, 8, 8), hidden=[32])
    weights = tmp_path / "teacher.safetensors"
    save_weights(weights, teacher.state_dict())
    raw = digits_recipe(tmp_path, compare=False, data={"name": "digits", "batch_size": 64},
                        teacher={"name": "mlp", "hidden": [32], "weights": str(weights)},
                        strategy={"name": "data_free", "steps": 4, "student_steps": 2, "losses": {"adversarial": 1.0},
                                  "generator": {"latent": 8, "width": 16}})
    recipe = str(write_recipe(tmp_path, raw))
    two = _torchrun("run", recipe, f"output_dir={tmp_path / 'two'}", DISTILL_TEST_AUDIT=str(tmp_path))
    assert two.returncode == 0, two.stderr[-3000:]
    assert "AUDIT rank=1 writes=0" in two.stderr
    for role in ("student", "generator"):
        assert (tmp_path / "two" / role / "model.safetensors").is_file()
