"""data.labelled_per_batch: every training batch of a split with a label budget holds that many labelled rows,
drawn in turn from the labelled set; a split that is all labelled (or all unlabelled) is batched as before."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import distill
from distill.data.base import ArrayDataset
from distill.data.loader import BatchLoader
from distill.errors import DistillError
from distill.recipe import recipe_from_dict
from helpers import cli, digits_recipe, write_recipe


def _split(n: int = 100, labelled: int = 6) -> ArrayDataset:
    y = torch.full((n,), -1)
    y[:labelled] = torch.arange(labelled) % 3
    return ArrayDataset(torch.randn(n, 3), y)


def test_every_batch_leads_with_k_labelled_rows_each_drawn_in_turn() -> None:
    ds = _split()
    loader = BatchLoader(ds, 16, shuffle=True, seed=3, labelled_per_batch=4)
    batches = list(loader)
    assert len(batches) == len(BatchLoader(ds, 16, shuffle=True, seed=3))  # as many steps as without it
    assert sum(len(b.index) for b in batches) == 100
    heads = torch.cat([b.index[:4] for b in batches])
    assert bool((ds.y[heads] >= 0).all())
    counts = torch.bincount(heads, minlength=6)[:6]
    assert int(counts.max() - counts.min()) <= 1  # successive permutations: each label as often as the others
    rest = torch.cat([b.index[4:] for b in batches])
    assert len(set(rest.tolist())) == len(rest)  # the other places follow one permutation: no row twice


def test_the_order_is_a_function_of_seed_and_epoch() -> None:
    a = BatchLoader(_split(), 16, shuffle=True, seed=3, labelled_per_batch=4)
    b = BatchLoader(_split(), 16, shuffle=True, seed=3, labelled_per_batch=4)
    a.set_epoch(2)
    b.set_epoch(2)
    assert torch.equal(a.order(), b.order())  # a resumed run sees the batches it would have seen
    b.set_epoch(1)
    assert not torch.equal(a.order(), b.order())


@pytest.mark.parametrize("labelled", [0, 100])
def test_a_split_without_a_label_budget_is_batched_as_before(labelled: int) -> None:
    plain = BatchLoader(_split(labelled=labelled), 16, shuffle=True, seed=1)
    mixed = BatchLoader(_split(labelled=labelled), 16, shuffle=True, seed=1, labelled_per_batch=4)
    assert torch.equal(plain.order(), mixed.order())


def test_the_distilled_student_sees_k_labels_per_batch_in_a_run(tmp_path: Path, monkeypatch) -> None:
    raw = digits_recipe(tmp_path, data={"name": "digits", "labels_per_class": 2, "batch_size": 32,
                                        "labelled_per_batch": 8})
    plan = distill.plan_from_recipe(recipe_from_dict(raw))
    seen: list[int] = []
    original = BatchLoader.__iter__

    def spy(self: BatchLoader):  # the batches every role trains on
        for batch in original(self):
            seen.append(int((batch.target >= 0).sum()))
            yield batch

    monkeypatch.setattr(BatchLoader, "__iter__", spy)
    distill.execute(plan, log=lambda _: None)
    assert plan.labelled_per_batch == 8 and min(seen) >= 8  # teacher, scratch (all labelled) and student


@pytest.mark.parametrize(("data", "message"), [
    ({"labels_per_class": 2, "batch_size": 32, "labelled_per_batch": 32}, "data.labelled_per_batch 32: must be below"),
    ({"batch_size": 32, "labelled_per_batch": 8}, "data.labelled_per_batch needs a label budget"),
    ({"labels_per_class": 2, "labelled_per_batch": 0}, "data.labelled_per_batch"),
])
def test_a_labelled_per_batch_that_cannot_apply_is_one_line(tmp_path: Path, capsys, data: dict,
                                                             message: str) -> None:
    raw = digits_recipe(tmp_path, data={"name": "digits", **data})
    code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, raw)))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_the_python_door_takes_it_too() -> None:
    with pytest.raises(DistillError, match="labelled_per_batch must be in"):
        BatchLoader(_split(), 16, shuffle=True, labelled_per_batch=16)
