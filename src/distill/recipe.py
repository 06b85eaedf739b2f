"""Recipes: YAML validated into a strict, frozen schema, plus dotted command-line overrides.

Unknown keys and wrong types fail with a ``DistillError`` naming the key path. Dataset, model and method
arguments sit flat next to ``name`` and are checked against the registered builder's signature.
"""

from __future__ import annotations

import math
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from distill.errors import DistillError, single_line
from distill.registry import closest
from distill.search.space import SearchSpec, scaled_from_teacher
from distill.spec_check import numbers_in, printable_key
from distill.yaml_io import load_yaml, read_yaml


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _Open(BaseModel):
    """A named component whose extra keys are the builder's keyword arguments."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)
    name: str

    @property
    def kwargs(self) -> dict[str, Any]:
        """The builder arguments: every key except the schema's own."""
        return dict(self.model_extra or {})


class NormSpec(_Strict):
    mean: list[float]
    std: list[float]

    def pair(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return tuple(self.mean), tuple(self.std)


class OptimSpec(_Strict):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)


class ScheduleSpec(_Strict):
    name: Literal["constant", "step", "cosine"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    milestones: list[int] = []
    gamma: float = Field(0.1, gt=0)
    min_lr: float = Field(0.0, ge=0)


class LossScaleSpec(_Strict):
    """``train.loss_scale``: each loss term's gradient norm on the student, measured on the first ``batches`` batches
    before training (``distill.engine.scale``): ``check`` warns about a term over ``max_ratio`` times the
    cross-entropy's; a method with ``weight: auto`` is weighted to ``target`` times it."""

    check: bool = True
    max_ratio: float = Field(10.0, gt=0)
    target: float = Field(1.0, gt=0)
    batches: int = Field(2, ge=1)


class TrainSpec(_Strict):
    epochs: int = Field(10, ge=1)
    optimizer: OptimSpec = OptimSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    grad_clip: float | None = Field(None, gt=0)
    log_every: int = Field(20, ge=1)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast; fp16 (with a GradScaler) needs CUDA
    channels_last: bool = False  # NHWC layout for 2-D conv nets
    compile: bool = False  # torch.compile the student's forward pass
    loss_scale: LossScaleSpec | None = None  # None: the defaults
    accumulate: int = Field(1, ge=1)  # gradient accumulation: an optimizer step every `accumulate` batches

    @model_serializer(mode="wrap")
    def _unset_left_out(self, dump: Any) -> Any:
        # loss_scale and accumulate came after runs were made: left out while unset, so their fingerprints and
        # recipes stay
        out = dump(self)
        if self.loss_scale is None and isinstance(out, dict):
            out.pop("loss_scale", None)
        if self.accumulate == 1 and isinstance(out, dict):
            out.pop("accumulate", None)
        return out


class AugmentSpec(_Strict):
    """``data.augment``: random shift (pixels, replicate padding) and horizontal flip of training inputs,
    replayable per (sample, view) from ``seed`` (see ``distill.data.augment``)."""

    shift: int = Field(0, ge=0)
    flip: bool = False
    seed: int = 0


class DataSpec(_Open):
    labels_per_class: int | None = None
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int | None = Field(None, ge=1)  # None: the fastest, measured (distill.batching)
    normalize: NormSpec | None = None
    augment: AugmentSpec | None = None
    workers: int | None = Field(None, ge=0)  # DataLoader workers for streamed datasets (default: 2)
    classes: list[int] | None = None  # keep these classes only, relabelled 0..n-1 (a task of its own)
    # text: batches of similar length (shuffled chunks of 50 batches, sorted by token count), less padding
    group_by_length: bool | None = None
    # a transfer set with few labels: this many labelled samples in every training batch (distill.data.loader)
    labelled_per_batch: int | None = Field(None, ge=1)


class ModelSpec(_Open):
    weights: str | None = None
    classes: int | None = Field(None, ge=1)  # outputs; default the dataset's (a teacher of another task: its own)
    resize: list[int] | None = None  # a teacher fed inputs resized to (H, W) (a teacher of another domain)
    resize_margin: int | None = Field(None, ge=1)  # ...content resized to (H, W) - 2 margin, in a black border
    normalize: NormSpec | None = None
    train: TrainSpec | None = None
    inputs: str | list[str] | None = None  # dict inputs: the key(s) this model reads (default: the whole input)
    # a teacher built with its trained weights (an hf `path`, an external model that loads its own): used as is
    pretrained: bool | None = None
    # a student built from the teacher: `prune` is a pruned copy of it at one of the targets (distill.pruned); its
    # `init: pruned | random` stays among the extra keys, which are builder arguments otherwise (static's `init`).
    # (`from_teacher: scale` never reaches here: the recipe resolves it into a named zoo student, search.space)
    from_teacher: Literal["prune"] | None = None
    target_params: int | None = Field(None, ge=1)
    target_macs: int | None = Field(None, ge=1)

    @model_serializer(mode="wrap")
    def _unset_left_out(self, dump: Any) -> Any:
        # from_teacher and its targets came after runs were made: left out while unset, so fingerprints stay
        out = dump(self)
        for key in ("from_teacher", "target_params", "target_macs"):
            if getattr(self, key) is None and isinstance(out, dict):
                out.pop(key, None)
        return out


class MethodSpec(_Open):
    weight: float | Literal["auto"] = 1.0  # auto: set from measured gradient norms (train.loss_scale.target)
    teacher: str | None = None  # strategy multi_teacher: the named teacher this method reads (default: the ensemble)
    allow_negative: bool = False  # opt-in for negative loss weights (gradient ascent on a term)

    @field_validator("weight", mode="before")
    @classmethod
    def _number_or_auto(cls, w: Any) -> Any:
        if w != "auto" and (isinstance(w, bool) or not isinstance(w, (int, float))):
            raise ValueError("must be a number or 'auto'")
        return w


class StrategySpec(_Open):
    """``strategy``: who teaches whom (``distill.strategies``); ``strategy: mutual`` is short for
    ``{name: mutual}``. Extra keys are the strategy's arguments."""

    name: str = "offline"


class CacheSpec(_Strict):
    """The teacher-output cache (see distill.cache.plan); ``cache: auto`` is short for ``{mode: auto}``."""

    mode: Literal["auto", "off", "required"] = "auto"
    path: str | None = None  # default <output_dir>/cache
    k: int | Literal["all"] = 10  # top-k logits stored per sample and view (all: dense)
    views: int | None = Field(None, ge=1)  # augmented views stored per sample (needed with data.augment)
    dtype: Literal["fp16", "fp32"] = "fp16"
    # which k tokens: the teacher's most probable (top), or k draws from its distribution (sample: unbiased
    # sparse targets, Anshumann et al. 2025; distill.cache.sample)
    select: Literal["top", "sample"] = "top"

    @field_validator("k")
    @classmethod
    def _positive_k(cls, k: int | str) -> int | str:
        if k != "all" and int(k) < 1:
            raise ValueError("must be >= 1 or 'all'")
        return k


def _cache_shorthand(value: Any) -> Any:
    """``cache: auto`` means ``cache: {mode: auto}``; YAML 1.1 reads a bare ``off`` as False, so take it back."""
    words = {False: "off", True: "auto"}
    if isinstance(value, (str, bool)):
        return {"mode": words.get(value, value)}
    if isinstance(value, dict) and isinstance(value.get("mode"), bool):
        return {**value, "mode": words[value["mode"]]}
    return value


class RobustnessSpec(_Strict):
    """``eval.robustness``: FGSM and PGD top-1 of every model on the test split (``distill.robustness``); ``eps``,
    ``step_size`` and ``range`` in raw input units, before the dataset's normalisation (MNIST: pixels in [0, 1])."""

    eps: float = Field(0.1, ge=0)
    steps: int = Field(10, ge=1)  # PGD steps
    step_size: float | None = Field(None, gt=0)  # None: 2.5 * eps / steps
    range: list[float] | None = Field(None, min_length=2, max_length=2)  # [lo, hi]; None: the test inputs' min, max
    samples: int | None = Field(None, ge=1)  # the first N test samples; None: the whole test split

    @field_validator("range")
    @classmethod
    def _ordered(cls, r: list[float] | None) -> list[float] | None:
        if r is not None and not r[0] < r[1]:
            raise ValueError("must be [lo, hi] with lo < hi")
        return r


class EvalSpec(_Strict):
    latency: bool = True
    # embedding probes (k-NN and linear probe on frozen features) per side: {teacher: <tap path>, student: <path>}
    embeddings: dict[Literal["teacher", "student"], str] | None = None
    robustness: RobustnessSpec | None = None  # adversarial top-1 in the report (distill.robustness); None: off

    @field_validator("robustness", mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        # `robustness: true` is short for the defaults, `false` for off
        return ({} if value else None) if isinstance(value, bool) else value

    @model_serializer(mode="wrap")
    def _unset_left_out(self, dump: Any) -> Any:
        # robustness came after runs were made: left out while unset, so their recorded recipes stay as they were
        out = dump(self)
        if self.robustness is None and isinstance(out, dict):
            out.pop("robustness", None)
        return out


class Recipe(_Strict):
    name: str = "run"
    seed: int = 0
    output_dir: str | None = None
    device: str = "cpu"
    compare: bool = True
    data: DataSpec
    teacher: ModelSpec | None = None
    teachers: dict[str, ModelSpec] | None = None  # several named teachers (strategy multi_teacher)
    student: ModelSpec
    peers: dict[str, ModelSpec] | None = None  # students trained beside `student` (strategy mutual)
    strategy: StrategySpec = StrategySpec()
    methods: list[MethodSpec] = Field(min_length=1)
    train: TrainSpec = TrainSpec()
    cache: CacheSpec = CacheSpec()
    eval: EvalSpec = EvalSpec()
    search: SearchSpec | None = None  # what `distill auto` varies (distill.search.space); `run` ignores it

    @model_validator(mode="before")
    @classmethod
    def _student_from_teacher(cls, raw: Any) -> Any:
        # a student built from the teacher (from_teacher) has the teacher's architecture: its name, unless given
        teacher = raw.get("teacher") if isinstance(raw, dict) else None
        name = teacher.get("name") if isinstance(teacher, dict) and isinstance(teacher.get("name"), str) else ""

        def named(spec: Any) -> Any:
            if isinstance(spec, dict) and spec.get("from_teacher") == "scale":
                return scaled_from_teacher(spec, teacher)
            unnamed = isinstance(spec, dict) and "from_teacher" in spec and "name" not in spec
            return {"name": name, **spec} if unnamed else spec
        if isinstance(raw, dict) and "student" in raw:
            raw = {**raw, "student": named(raw["student"])}
        if isinstance(raw, dict) and isinstance(raw.get("peers"), dict):
            raw = {**raw, "peers": {k: named(v) for k, v in raw["peers"].items()}}
        return raw

    @model_validator(mode="before")
    @classmethod
    def _single_method(cls, raw: Any) -> Any:
        # `method: {...}` is sugar for a one-element `methods` list (so `method.T=2` overrides work).
        if isinstance(raw, dict) and "method" in raw:
            if "methods" in raw:
                raise ValueError("give either 'method' or 'methods', not both")
            raw = dict(raw)
            raw["methods"] = [raw.pop("method")]
        if isinstance(raw, dict) and "cache" in raw:
            raw = {**raw, "cache": _cache_shorthand(raw["cache"])}
        if isinstance(raw, dict) and isinstance(raw.get("strategy"), str):
            raw = {**raw, "strategy": {"name": raw["strategy"]}}
        return raw

    @property
    def out(self) -> Path:
        """The output directory (``runs/<name>`` unless ``output_dir`` is set)."""
        return Path(self.output_dir or f"runs/{self.name}")


def parse_value(text: str) -> Any:
    """Parse a command-line override value as YAML (``3`` -> int, ``[1, 2]`` -> list, ``5e-4`` -> float)."""
    try:
        return load_yaml(text)
    except (yaml.YAMLError, DistillError):
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a raw recipe dict (list items by index: ``methods.0.T=2``)."""
    for item in overrides:
        if "=" not in item:
            raise DistillError(f"override {item!r} is not of the form key.path=value")
        path, value = item.split("=", 1)
        node: Any = raw
        parts = path.strip().split(".")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise DistillError(f"override {path}: {part!r} is not an index of {'.'.join(parts[:i])}")
                part = int(part)  # type: ignore[assignment]
            elif not isinstance(node, dict):
                raise DistillError(f"override {path}: {'.'.join(parts[:i])} is not a mapping")
            if last:
                node[part] = parse_value(value)
                if i == 0 and part in ("method", "methods"):  # one replaces the other
                    raw.pop("methods" if part == "method" else "method", None)
            else:
                if isinstance(node, dict) and node.get(part) is None:
                    node[part] = {}
                if i == 0 and part in ("strategy", "cache") and isinstance(node[part], (str, bool)):
                    # `strategy: mutual` / `cache: auto` are shorthands: `strategy.copies=3` extends them
                    node[part] = {"name": node[part]} if part == "strategy" else _cache_shorthand(node[part])
                node = node[part]
    return raw


def read_recipe_dict(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """A recipe file with ``overrides`` applied, as a raw dict, not yet validated; a missing file or one that is
    not a mapping raises one DistillError line."""
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"recipe not found: {path}")
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise DistillError(f"{path}: a recipe must be a mapping of keys, got {type(raw).__name__}")
    return apply_overrides(raw, overrides or [])


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file; any problem raises one DistillError line."""
    return recipe_from_dict(read_recipe_dict(path, overrides), source=str(path))


def recipe_from_dict(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    """Validate a raw dict into a Recipe, then check component arguments against the registries."""
    singular = "method" in raw
    for key, value in numbers_in(raw, ""):
        if math.isnan(value):
            raise DistillError(f"{source}: {key.lstrip('.')}: NaN is not a usable value")
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as e:
        raise DistillError(f"{source}: {_explain(e)}") from None
    from distill.recipe_checks import check_components

    check_components(recipe, singular)
    return recipe


def _explain(e: ValidationError, root: Any = None, prefix: str = "") -> str:
    """One line naming the first problem of a validation error; ``root``/``prefix`` for a part of a recipe."""
    err = e.errors()[0]
    loc = [str(p) for p in err["loc"]]
    key = ".".join([prefix] * bool(prefix) + loc) or "recipe"
    key = printable_key(key)  # a key holding a newline stays on the error's one line
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1], root or Recipe)
        return (f"unknown key '{key}'{closest(loc[-1], allowed)} (allowed: {', '.join(allowed)})")
    if err["type"] == "missing":
        return f"missing required key '{key}'"
    got = repr(err.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    return f"{key}: {single_line(err['msg']).lower()} (got {got})"


def _allowed_keys(loc: list[str], root: Any) -> list[str]:
    model: Any = root
    for part in loc:
        if part.isdigit():
            continue
        ann = model.model_fields[part].annotation
        for arg in (*typing.get_args(ann), ann):
            inner = typing.get_args(arg)[0] if typing.get_origin(arg) is list else arg
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                model = inner
                break
    return list(model.model_fields)


def validate_part(cls: type[BaseModel], raw: Any, key: str) -> Any:
    """Validate one section of a recipe (``TrainSpec``, ``ModelSpec``, ...) given from Python; a problem is one
    DistillError naming ``key`` and the offending field."""
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        raise DistillError(_explain(e, cls, key)) from None
