"""Fuzzing the recipe door with hypothesis: whatever text, structure or dotted override comes in, the loader either
returns a Recipe or raises DistillError (one line for the CLI), never anything else (README, "Failures"; the
example counts are in docs/BENCHMARKS.md, "Reliability")."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distill.errors import DistillError
from distill.recipe import apply_overrides, load_recipe, recipe_from_dict
from helpers import digits_recipe

BASE = digits_recipe(Path("/tmp/distill-fuzz"))
# where recipes have keys: the fuzzer replaces or adds values at these paths (and at random new ones)
PATHS = ["name", "seed", "output_dir", "device", "compare", "data", "data.name", "data.batch_size",
         "data.labels_per_class", "data.augment", "teacher", "teacher.name", "teacher.hidden", "teacher.train",
         "teacher.train.epochs", "teacher.weights", "student", "student.name", "student.hidden", "method",
         "method.name", "method.T", "method.alpha", "method.beta", "methods", "train", "train.epochs",
         "train.optimizer", "train.optimizer.lr", "train.optimizer.name", "train.schedule", "train.grad_clip",
         "cache", "cache.k", "strategy", "eval", "eval.latency", "teachers", "peers"]
SETTINGS = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["kd", "mlp", "digits", "auto", "off", "sgd", "cuda",
                                                           "offline", "mutual", "dkd", "fitnet", "-1", "1e9"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=8)


def _validate_or_refuse(make: Any) -> None:
    try:
        make()
    except DistillError as e:
        assert str(e).strip() and "\n" not in str(e).strip(), repr(str(e))


def _set(raw: dict[str, Any], path: str, value: Any) -> None:
    node = raw
    *parents, last = path.split(".")
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[last] = value


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(PATHS) | st.text(max_size=10), values), min_size=1, max_size=4))
def test_any_structure_is_a_recipe_or_one_distill_error(changes: list[tuple[str, Any]]) -> None:
    raw = copy.deepcopy(BASE)
    for path, value in changes:
        _set(raw, path or "x", value)
    _validate_or_refuse(lambda: recipe_from_dict(raw))


overrides = st.one_of(
    st.builds(lambda p, v: f"{p}={v}", st.sampled_from(PATHS) | st.text(max_size=12),
              st.text(max_size=16) | st.sampled_from(["[1, 2]", "{a: 1}", ".nan", "-.inf", "null", "&a [*a]",
                                                      "!!python/object:os.system", "1e400", "[", "'"])),
    st.text(max_size=20))


@SETTINGS
@given(st.lists(overrides, max_size=4))
def test_any_dotted_override_is_applied_or_one_distill_error(items: list[str]) -> None:
    _validate_or_refuse(lambda: recipe_from_dict(apply_overrides(copy.deepcopy(BASE), items)))


@SETTINGS
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200),
                 st.builds(lambda a, b: a + b, st.sampled_from(["name: x\n", "train: {epochs: 1}\n",
                                                                "a: &a [1]\nb: *a\n", "- 1\n", "!!binary AAAA\n"]),
                           st.text(max_size=60))))
def test_any_file_content_is_a_recipe_or_one_distill_error(tmp_path_factory: Any, content: str | bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "recipe.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    _validate_or_refuse(lambda: load_recipe(path))
