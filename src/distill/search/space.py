"""The search space of ``distill auto``: the recipe's ``search`` section, sampled into one trial's recipe.

A space maps dotted recipe paths to distributions: a list is a set of choices, ``{low, high, log, int}`` a
range. Three keys are special:

* ``method``: method name -> that method's own sub-space (its arguments); the chosen method replaces the
  recipe's first method entry (its other arguments are kept only when the name is unchanged);
* ``student.width`` / ``student.depth``: multipliers of the student's width and depth for zoo families
  (``mlp``: hidden widths / hidden layers; ``cnn``: channels / stages; ``wrn``: widen factor / blocks;
  ``resnet<N>``: depth only, by the nearest registered depth).

With no ``search.space`` the default searches the method (kd, dkd, dist with their T; logit standardisation for
kd and dkd), kd's alpha, the learning rate (a factor of 4 around the recipe's) and, for the families above, the
student's width and depth.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from distill.errors import DistillError

TEMPERATURES = [1, 2, 4, 8]  # choices, not a range: the shared teacher cache stores each one's log-sum-exp
_RESNET_DEPTHS = [8, 14, 20, 32, 44, 56, 110]


class RangeSpec(BaseModel):
    """A numeric range: uniform (or log-uniform) in [low, high]; ``int``: integers only."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)
    low: float
    high: float
    log: bool = False
    integer: bool = Field(False, alias="int")


Dist = RangeSpec | list[Any]


class SearchSpec(BaseModel):
    """``search``: what ``distill auto`` varies and how long each trial trains."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    space: dict[str, Any] | None = None  # None: the default space (module doc)
    epochs: int | None = Field(None, ge=1)  # epochs per trial (default the recipe's); the final run keeps them
    trials: int = Field(20, ge=1)


def parse(space: dict[str, Any]) -> dict[str, Any]:
    """A written space (lists and ``{low, high}`` dicts) as choices and RangeSpecs; a problem is one DistillError
    naming its key (checked with the recipe, before anything runs)."""
    if not space:
        raise DistillError("search.space is empty: nothing to search (leave it out for the default space)")
    return {k: (_method_space(v) if k == "method" else _dist(k, v)) for k, v in space.items()}


def _dist(key: str, value: Any) -> Dist:
    where = f"search.space.{key}"
    if isinstance(value, list):
        if not value:
            raise DistillError(f"{where}: an empty list of choices")
        return value
    if isinstance(value, dict):
        from distill.recipe import validate_part

        spec = validate_part(RangeSpec, {k: float(v) if k in ("low", "high") and isinstance(v, int)
                                         and not isinstance(v, bool) else v for k, v in value.items()}, where)
        if spec.high < spec.low or (spec.log and spec.low <= 0):
            raise DistillError(f"{where}: needs low <= high (and low > 0 with log), got {value}")
        return spec
    raise DistillError(f"{where}: give a list of choices or {{low, high}} (got {value!r})")


def _method_space(value: Any) -> dict[str, dict[str, Dist]]:
    if not isinstance(value, dict) or not value:
        raise DistillError("search.space.method: give method names, each with its arguments' space "
                           "({kd: {T: [1, 4]}, dkd: {}})")
    for name, args in value.items():
        if not isinstance(args, dict) and args is not None:
            raise DistillError(f"search.space.method.{name}: give its arguments' space as a mapping (got {args!r})")
    return {name: {k: _dist(f"method.{name}.{k}", v) for k, v in (args or {}).items()}
            for name, args in value.items()}


def default_space(raw: dict[str, Any]) -> dict[str, Any]:
    """The space searched when the recipe gives none (see the module doc)."""
    lr = float(((raw.get("train") or {}).get("optimizer") or {}).get("lr", 0.05))
    space: dict[str, Any] = {
        # logit standardisation (Sun et al. 2024) for kd and dkd: what `distill run` suggests for a teacher whose
        # soft targets are nearly one-hot
        "method": {"kd": {"T": TEMPERATURES, "alpha": RangeSpec(low=0.0, high=1.0), "standardize": [False, True]},
                   "dkd": {"T": TEMPERATURES, "standardize": [False, True]}, "dist": {"T": TEMPERATURES}},
        "train.optimizer.lr": RangeSpec(low=lr / 4, high=lr * 4, log=True)}
    student = raw.get("student") or {}
    # a pruned student's size is its target (search student.target_params), not a zoo family's width
    family = None if student.get("from_teacher") else _family(str(student.get("name", "")))
    if family in ("mlp", "cnn", "wrn"):
        space["student.width"] = RangeSpec(low=0.5, high=2.0)
    if family is not None:
        space["student.depth"] = [0.5, 1.0, 2.0]
    return space


def sample(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
    """One trial's values by space key (method: ``{"method": name, "method.<name>.<arg>": value}``)."""
    values: dict[str, Any] = {}
    for key, dist in space.items():
        if key != "method":
            values[key] = _suggest(trial, key, dist)
            continue
        name = trial.suggest_categorical("method", sorted(dist))
        values["method"] = name
        for arg, d in dist[name].items():
            values[f"method.{name}.{arg}"] = _suggest(trial, f"{name}.{arg}", d)
    return values


def _suggest(trial: Any, key: str, dist: Dist) -> Any:
    if isinstance(dist, RangeSpec):
        if dist.integer:
            return trial.suggest_int(key, int(dist.low), int(dist.high), log=dist.log)
        return trial.suggest_float(key, dist.low, dist.high, log=dist.log)
    # Optuna's choices are scalars: lists (e.g. hidden widths) travel as their JSON text
    encoded = [json.dumps(c) for c in dist]
    return json.loads(trial.suggest_categorical(key, encoded))


def recipe_params(raw: dict[str, Any], space: dict[str, Any]) -> dict[str, Any]:
    """The recipe as written, in the space's terms (Optuna parameter names and values): the search's first trial,
    so that what it chooses is never worse on validation than the recipe it started from. Dimensions whose
    recipe value the space cannot express are left out (Optuna samples them)."""
    from distill.recipe import recipe_from_dict

    recipe = recipe_from_dict({k: v for k, v in raw.items() if k != "search"}, source="search")
    params: dict[str, Any] = {}
    for key, dist in space.items():
        if key == "method":
            first = recipe.methods[0]
            if first.name in dist:
                params["method"] = first.name
                args = _method_args(first)
                for arg, d in dist[first.name].items():
                    _express(params, f"{first.name}.{arg}", d, args.get(arg))
            continue
        now = 1.0 if key in ("student.width", "student.depth") else _at_path(recipe.model_dump(), key)
        _express(params, key, dist, now)
    return params


def _method_args(spec: Any) -> dict[str, Any]:
    """A recipe's method entry's arguments, its class defaults filled in."""
    import inspect

    from distill.methods import METHODS

    sig = inspect.signature(METHODS.get(spec.name))
    defaults = {k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}
    return {**defaults, **spec.kwargs}


def _at_path(tree: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(tree, list) and part.isdigit() and int(part) < len(tree):
            tree = tree[int(part)]
        elif isinstance(tree, dict):
            tree = tree.get(part)
        else:
            return None
    return tree


def _express(params: dict[str, Any], name: str, dist: Dist, value: Any) -> None:
    """Set ``params[name]`` to ``value`` as the distribution encodes it, when it can hold it."""
    if value is None:
        return
    if isinstance(dist, RangeSpec):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and dist.low <= value <= dist.high:
            params[name] = int(value) if dist.integer else float(value)
        return
    for choice in dist:
        if choice == value and isinstance(choice, bool) == isinstance(value, bool):  # True is not the choice 1
            params[name] = json.dumps(choice)
            return


def temperatures(space: dict[str, Any]) -> list[float] | None:
    """Every T the space can choose (for one shared cache), or None when some T is a continuous range."""
    found: set[float] = set()
    for args in (space.get("method") or {}).values():
        t = args.get("T")
        if isinstance(t, RangeSpec):
            return None
        found |= {float(v) for v in (t or [])}
    for key, dist in space.items():
        if key.startswith("method") and key.endswith(".T"):
            if isinstance(dist, RangeSpec):
                return None
            found |= {float(v) for v in dist}
    return sorted(found)


def trial_recipe(raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The base recipe (raw dict) with one trial's values applied; ``search`` removed."""
    from distill.recipe import apply_overrides

    out = copy.deepcopy(raw)
    out.pop("search", None)
    if "method" in out:  # the one-method sugar, as the list form the search edits
        out["methods"] = [out.pop("method")]
    if "method" in values:
        name = values["method"]
        first = out["methods"][0] if out.get("methods") else {}
        kept = {k: v for k, v in first.items() if k != "name"} if first.get("name") == name else {}
        args = {k.split(".", 2)[2]: v for k, v in values.items() if k.startswith(f"method.{name}.")}
        out["methods"] = [{"name": name, **kept, **args}, *out.get("methods", [])[1:]]
    width, depth = values.get("student.width"), values.get("student.depth")
    if width is not None or depth is not None:
        try:
            out["student"] = scale_student(out.get("student") or {}, width or 1.0, depth or 1.0)
        except DistillError as e:
            raise DistillError(f"search.space: student.width / student.depth: {e}; search the student's own "
                               "arguments instead (e.g. student.hidden: [[16], [32]])") from None
    paths = [f"{k}={json.dumps(v)}" for k, v in values.items()
             if not k.startswith("method") and k not in ("student.width", "student.depth")]
    return apply_overrides(out, paths)


def _family(name: str) -> str | None:
    if name in ("mlp", "cnn", "wrn"):
        return name
    return "resnet" if re.fullmatch(r"resnet\d+", name) else None


def scale_student(spec: dict[str, Any], width: float, depth: float) -> dict[str, Any]:
    """A zoo student's spec with its width and depth multiplied (module doc); other families are refused."""
    from distill.models.base import MODELS, options_of

    name = str(spec.get("name", ""))
    family = _family(name)
    if family is None:
        raise DistillError(f"width / depth multipliers apply to the zoo families mlp, cnn, wrn and resnet<N>, not "
                           f"'{name}'")
    defaults = {k: p.default for k, p in options_of(MODELS.get(name)).items()}
    out = dict(spec)
    if family == "resnet":
        if width != 1.0:
            raise DistillError("search.space: student.width: resnet<N> has fixed widths; search student.depth")
        now = int(name[6:])
        out["name"] = f"resnet{min(_RESNET_DEPTHS, key=lambda d: abs(d - now * depth))}"
        return out
    if family == "wrn":
        out["width"] = max(1, round(int(spec.get("width", defaults["width"])) * width))
        blocks = (int(spec.get("depth", defaults["depth"])) - 4) // 6
        out["depth"] = 6 * max(1, round(blocks * depth)) + 4
        return out
    key = "hidden" if family == "mlp" else "channels"
    widths = [max(1, round(int(w) * width)) for w in spec.get(key, defaults[key])]
    n = max(1, round(len(widths) * depth)) if widths else 0
    out[key] = (widths + [widths[-1]] * n)[:n] if widths else widths
    if family == "cnn" and int(spec.get("hidden", defaults["hidden"])) > 0:
        out["hidden"] = max(1, round(int(spec.get("hidden", defaults["hidden"])) * width))
    return out


# a teacher's keys that describe its weights and preprocessing, not its architecture
_NOT_ARCHITECTURE = ("weights", "classes", "resize", "resize_margin", "normalize", "train", "pretrained", "inputs")


def scaled_from_teacher(spec: dict[str, Any], teacher: Any) -> dict[str, Any]:
    """``student: {from_teacher: scale, width: w, depth: d}``: the teacher's zoo architecture with its width and
    depth multiplied (``scale_student``), as a plain named student spec (randomly initialised)."""
    where = "student.from_teacher: scale"
    if not isinstance(teacher, dict) or not isinstance(teacher.get("name"), str):
        raise DistillError(f"{where} needs a teacher section naming its model")
    factors = {k: spec.get(k, 1.0) for k in ("width", "depth")}
    for k, v in factors.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise DistillError(f"student.{k}: a positive multiplier of the teacher's {k} (got {v!r})")
    rest = {k: v for k, v in spec.items() if k not in ("from_teacher", "width", "depth", "name")}
    arch = {k: v for k, v in teacher.items() if k not in _NOT_ARCHITECTURE}
    try:
        return {**scale_student(arch, float(factors["width"]), float(factors["depth"])), **rest}
    except DistillError as e:
        raise DistillError(f"{where}: {e}") from None
