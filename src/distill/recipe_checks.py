"""The recipe checks that need the registries: component names and arguments, and preprocessing keys."""

from __future__ import annotations

from typing import TYPE_CHECKING

from distill.errors import DistillError
from distill.spec_check import check_kwargs, check_method_numbers

if TYPE_CHECKING:
    from distill.recipe import Recipe


def check_components(recipe: Recipe, singular: bool) -> None:
    """Every named component (dataset, models, methods, strategy) exists and takes the recipe's arguments, and
    the teacher's preprocessing keys apply; one DistillError naming the key otherwise."""
    from distill.data import DATASETS
    from distill.methods import METHODS
    from distill.models import MODELS

    d = recipe.data
    check_kwargs(DATASETS.get(d.name), d.kwargs, "data", f"dataset '{d.name}'", skip=("seed",))
    if recipe.search is not None and recipe.search.space is not None:
        from distill.search.space import parse

        parse(recipe.search.space)  # what `distill auto` samples: every distribution well formed
    from distill.pruned import check_recipe

    check_recipe(recipe)  # students built from the teacher (from_teacher) take no builder arguments
    for role in ("teacher", "student"):
        spec = getattr(recipe, role)
        if spec is not None and spec.from_teacher is None:
            check_kwargs(MODELS.get(spec.name), spec.kwargs, role, f"model '{spec.name}'",
                         skip=("num_classes", "input_shape"))
    from distill.strategies import STRATEGIES

    for group in ("teachers", "peers"):
        for key, spec in (getattr(recipe, group) or {}).items():
            if spec.from_teacher is None:
                check_kwargs(MODELS.get(spec.name), spec.kwargs, f"{group}.{key}", f"model '{spec.name}'",
                             skip=("num_classes", "input_shape"))
    for i, m in enumerate(recipe.methods):
        cls = METHODS.get(m.name)
        where = "method" if singular else f"methods.{i}"
        check_kwargs(cls, m.kwargs, where, f"method '{m.name}'")
        check_method_numbers(m.kwargs, m.weight, where, f"method '{m.name}'", m.allow_negative)
    strategy = STRATEGIES.get(recipe.strategy.name)
    check_kwargs(strategy, recipe.strategy.kwargs, "strategy", f"strategy '{recipe.strategy.name}'")
    strategy(**recipe.strategy.kwargs).check(recipe)
    _check_preprocessing(recipe)
    _check_labelled_per_batch(recipe)


def _check_labelled_per_batch(recipe: Recipe) -> None:
    """``data.labelled_per_batch`` fits in a batch and has a label budget to draw from."""
    d = recipe.data
    if d.labelled_per_batch is None:
        return
    if d.labelled_per_batch >= d.batch_size:
        raise DistillError(f"data.labelled_per_batch {d.labelled_per_batch}: must be below data.batch_size "
                           f"{d.batch_size} (the rest of each batch is the transfer set)")
    if not d.labels_per_class:
        raise DistillError("data.labelled_per_batch needs a label budget (data.labels_per_class >= 1): without "
                           "one every training sample is labelled, or none is")


def _check_preprocessing(recipe: Recipe) -> None:
    """normalize / resize / resize_margin apply to a pretrained teacher only."""
    for spec in (recipe.teacher, *(recipe.teachers or {}).values()):
        if spec and spec.pretrained and spec.train is not None:
            raise DistillError("teacher.pretrained: true uses the teacher as built, so it has no train section")
        spec = spec if spec is None or not spec.pretrained else spec.model_copy(update={"weights": "pretrained"})
        if spec and spec.weights is None and spec.normalize is not None:
            raise DistillError("teacher.normalize applies to a pretrained teacher (teacher.weights); "
                               "a teacher trained here uses data.normalize")
        if spec and spec.weights is None and spec.resize is not None:
            raise DistillError("teacher.resize applies to a pretrained teacher (teacher.weights); "
                               "a teacher trained here sees the data at its own size")
        if spec and spec.resize_margin is not None and (spec.resize is None or
                                                        2 * spec.resize_margin >= min(spec.resize)):
            raise DistillError(f"teacher.resize_margin {spec.resize_margin}: needs teacher.resize, more than twice "
                               "the margin in every dimension")
    if any(spec.pretrained for spec in (recipe.student, *(recipe.peers or {}).values())):
        raise DistillError("student.pretrained: only a teacher is used as built; a student always trains (its "
                           "starting weights: student.weights, or the builder's own, e.g. an hf path)")
    if recipe.student.resize is not None or recipe.student.resize_margin is not None:
        raise DistillError("student.resize / resize_margin: only a teacher is fed resized inputs (the student reads "
                           "the data as is)")
