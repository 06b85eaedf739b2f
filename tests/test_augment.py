"""Tests of replayable augmentation views: ``Augment``, its recipe section and ``BatchLoader``'s views."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

from distill.build import fingerprint
from distill.data import ArrayDataset, Augment, BatchLoader, build_data
from distill.data import augment as augment_module
from distill.errors import DistillError
from distill.recipe import recipe_from_dict
from distill.types import Batch
from helpers import cli, digits_recipe, track_dry_run, write_recipe


def _images(n: int = 12, shape: tuple[int, ...] = (1, 28, 28), seed: int = 0) -> Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def _reference(x: Tensor, aug: Augment, index: Tensor, view: int) -> Tensor:
    """Per-sample re-derivation with plain Python: replicate padding by clamped edge indices, then a slice."""
    s = aug.shift
    spatial = x.shape[2:]
    offsets, flips = aug.params(index, view, len(spatial))
    out = []
    for i in range(x.shape[0]):
        sample = x[i]  # (C, *spatial)
        for d, size in enumerate(spatial):
            edge = [min(max(j - s, 0), size - 1) for j in range(size + 2 * s)]  # padded position -> source row
            sample = sample.index_select(1 + d, torch.tensor(edge))
            start = int(offsets[i, d])
            sample = sample.narrow(1 + d, start, size)
        if flips[i]:
            sample = sample.flip(-1)
        out.append(sample)
    return torch.stack(out)


# ----------------------------------------------------------------------------------------- Augment


def test_identity_returns_input_unchanged() -> None:
    x = _images(4)
    for aug in (Augment(), Augment(shift=0, flip=False, seed=7)):
        assert aug.identity and aug(x, torch.arange(4), 3) is x
    assert not Augment(shift=1).identity and not Augment(flip=True).identity
    assert Augment(shift=2, flip=True, seed=5).spec() == {"shift": 2, "flip": True, "seed": 5}
    assert json.dumps(Augment(shift=1).spec())


def test_bad_values_name_the_recipe_key() -> None:
    with pytest.raises(DistillError, match=r"data\.augment\.shift must be an integer >= 0"):
        Augment(shift=-1)
    with pytest.raises(DistillError, match=r"data\.augment\.flip"):
        Augment(flip=1)  # type: ignore[arg-type]
    with pytest.raises(DistillError, match=r"data\.augment\.seed"):
        Augment(seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(DistillError, match=r"\(C, L\) or \(C, H, W\)"):
        Augment(shift=1)(torch.zeros(2, 5), torch.arange(2), 0)


@pytest.mark.parametrize("shape", [(1, 40), (1, 28, 28), (3, 9, 7)])
def test_output_matches_per_sample_reference(shape: tuple[int, ...]) -> None:
    aug = Augment(shift=3, flip=True, seed=11)
    x = _images(16, shape).to(torch.float64)
    index = torch.randperm(100, generator=torch.Generator().manual_seed(1))[:16]
    for view in (0, 1, 5):
        y = aug(x, index, view)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert torch.equal(y, _reference(x, aug, index, view))
    offsets, _ = aug.params(index, 0, len(shape) - 1)
    assert (offsets != aug.shift).any(), "some sample must actually move"


def test_same_sample_same_view_whatever_the_batch() -> None:
    aug = Augment(shift=2, flip=True, seed=3)
    data = _images(40)
    index = torch.tensor([5, 17, 2, 33, 8])
    alone = aug(data[index], index, 4)
    flipped = aug(data[index.flip(0)], index.flip(0), 4)
    assert torch.equal(flipped, alone.flip(0))  # reversed order: each sample's output unchanged
    bigger = torch.cat([torch.tensor([0, 39, 12]), index, torch.tensor([21])])
    inside = aug(data[bigger], bigger, 4)[3:8]
    assert torch.equal(inside, alone)
    one_by_one = torch.cat([aug(data[i:i + 1], torch.tensor([i]), 4) for i in index.tolist()])
    assert torch.equal(one_by_one, alone)


def test_params_are_a_function_of_seed_index_and_view() -> None:
    index = torch.arange(256)
    aug = Augment(shift=4, flip=True, seed=0)
    off, flips = aug.params(index, 0)
    assert off.shape == (256, 2) and off.dtype == torch.int64 and flips.shape == (256,) and flips.dtype == torch.bool
    assert int(off.min()) == 0 and int(off.max()) == 8  # the whole range [0, 2 * shift] is used
    assert 0.35 < flips.float().mean() < 0.65
    assert not torch.equal(off[:, 0], off[:, 1])  # the two dims are independent streams
    again_off, again_flips = Augment(shift=4, flip=True, seed=0).params(index, 0)
    assert torch.equal(off, again_off) and torch.equal(flips, again_flips)
    other_view = aug.params(index, 1)
    other_seed = Augment(shift=4, flip=True, seed=1).params(index, 0)
    for o, f in (other_view, other_seed):
        assert (o != off).any(dim=1).float().mean() > 0.8 and (f != flips).any()
    assert torch.equal(aug.params(index, 0, ndim=1)[0][:, 0], off[:, 0])  # 1-D uses dim 0's stream


def test_flip_only_mirrors_the_flagged_samples() -> None:
    aug = Augment(flip=True, seed=2)
    x = _images(64, (1, 6, 5))
    index = torch.arange(64)
    y = aug(x, index, 0)
    _, flips = aug.params(index, 0)
    assert flips.any() and not flips.all()
    assert torch.equal(y[flips], x[flips].flip(-1)) and torch.equal(y[~flips], x[~flips])


def test_shift_keeps_the_border_background() -> None:
    x = torch.zeros(8, 1, 28, 28)
    x[:, :, 10:18, 10:18] = 1.0  # a blob in the middle of a background image
    y = Augment(shift=3, seed=0)(x, torch.arange(8), 0)
    assert set(y.unique().tolist()) == {0.0, 1.0} and torch.equal(y.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)))


# ---------------------------------------------------------------------------------- BatchLoader


def _loader(views: int | None, augment: Augment | None = None) -> BatchLoader:
    ds = ArrayDataset(_images(20, (1, 10)), torch.arange(20) % 3)
    return BatchLoader(ds, 6, shuffle=True, seed=0, augment=augment or Augment(shift=2, seed=1), views=views)


def _epoch(loader: BatchLoader, epoch: int) -> list[Batch]:
    loader.set_epoch(epoch)
    return list(loader)


def test_loader_cycles_views_and_replays_them() -> None:
    loader = _loader(views=3)
    assert [loader.view_of(e) for e in range(5)] == [0, 1, 2, 0, 1]
    assert [_loader(views=None).view_of(e) for e in range(4)] == [0, 1, 2, 3]
    for epoch in range(5):
        batches = _epoch(loader, epoch)
        assert {b.view for b in batches} == {epoch % 3}
        for b in batches:
            assert torch.equal(b.input, loader.augment(loader.ds.x[b.index], b.index, b.view))
    first = _epoch(loader, 1)
    _epoch(loader, 2)
    again = _epoch(_loader(views=3), 1)  # a fresh loader (a resumed run) jumping to epoch 1
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a.index, b.index) and torch.equal(a.input, b.input) and a.view == b.view


def test_loader_without_augmentation_is_view_zero_and_unchanged() -> None:
    for loader in (_loader(views=3, augment=Augment()), BatchLoader(_loader(None).ds, 6, shuffle=True)):
        for b in _epoch(loader, 4):
            assert b.view == 0 and torch.equal(b.input, loader.ds.x[b.index])
            assert b.to("cpu").view == 0
    moved = _epoch(_loader(views=3), 2)[0].to("cpu")
    assert moved.view == 2
    with pytest.raises(DistillError, match="views must be an integer >= 1"):
        _loader(views=0)


# ----------------------------------------------------------------------------------------- recipe


def test_recipe_augment_section(tmp_path: Path) -> None:
    raw = digits_recipe(tmp_path)
    raw["data"]["augment"] = {"shift": 2, "flip": True}
    recipe = recipe_from_dict(raw)
    assert recipe.data.augment is not None and recipe.data.augment.shift == 2 and recipe.data.augment.seed == 0
    assert "augment" not in recipe.data.kwargs
    plain = recipe_from_dict(digits_recipe(tmp_path))
    assert plain.data.augment is None
    for role in ("teacher", "scratch", "student"):
        assert fingerprint(recipe, role) != fingerprint(plain, role)
    raw["data"]["augment"] = {"shift": 2, "flip": True, "seed": 1}
    assert fingerprint(recipe_from_dict(raw), "student") != fingerprint(recipe, "student")


@pytest.mark.parametrize(("augment", "needles"), [
    ({"shfit": 1}, ["unknown key 'data.augment.shfit'", "did you mean 'shift'", "allowed: shift, flip, seed"]),
    ({"shift": "2"}, ["data.augment.shift", "valid integer"]),
    ({"shift": -1}, ["data.augment.shift", "greater than or equal to 0"]),
    ({"flip": "yes"}, ["data.augment.flip", "valid boolean"]),
])
def test_recipe_rejects_bad_augment(tmp_path: Path, augment: dict, needles: list[str]) -> None:
    raw = digits_recipe(tmp_path)
    raw["data"]["augment"] = augment
    with pytest.raises(DistillError) as err:
        recipe_from_dict(raw)
    assert all(n in str(err.value) for n in needles), str(err.value)


def test_digits_run_with_shift_trains_on_augmented_views(tmp_path: Path, capsys, monkeypatch) -> None:
    views: list[int] = []
    original, rehearsing = augment_module.Augment.__call__, track_dry_run(monkeypatch)

    def spy(self: Augment, x: Tensor, index: Tensor, view: int) -> Tensor:
        if not rehearsing[0]:  # the dry run's few batches are not the run's
            views.append(view)
        return original(self, x, index, view)

    monkeypatch.setattr(augment_module.Augment, "__call__", spy)
    # the loss-scale check off: it would peek (and augment) two more batches of the student's first epoch
    raw = digits_recipe(tmp_path, train={"epochs": 2, "optimizer": {"name": "adam", "lr": 0.003},
                                         "loss_scale": {"check": False}})
    raw["data"]["augment"] = {"shift": 1}
    raw["teacher"]["train"]["epochs"] = 1
    code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, raw)))
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["recipe"]["data"]["augment"] == {"shift": 1, "flip": False, "seed": 0}
    assert all(0.0 <= m["top1_last"] <= 1.0 for m in report["models"].values())
    # Every training batch is augmented: teacher 1 epoch, scratch and student 2 epochs each (fresh view per epoch).
    per_epoch = math.ceil(len(build_data("digits").train) / 64)
    assert views.count(0) == 3 * per_epoch and views.count(1) == 2 * per_epoch and len(views) == 5 * per_epoch
