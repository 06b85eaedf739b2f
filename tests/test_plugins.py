"""User components: the register_* decorators and entry-point plugins of installed packages."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from distill.data import DATASETS, ArrayDataset, RawSplits, build_data
from distill.errors import DistillError
from distill.extend import register_dataset, register_method, register_model
from distill.methods import METHODS, Method, build_method, labelled_cross_entropy
from distill.models import MODELS, build_model
from distill.recipe import recipe_from_dict
from distill.types import LossOutput, Needs

REGISTRIES = {"method": METHODS, "model": MODELS, "dataset": DATASETS}


def _name(prefix: str) -> str:
    """A lowercase name no other test uses."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def names() -> Iterator[list[str]]:
    """Names to fresh-register in a test; every registry forgets them afterwards."""
    made: list[str] = []
    yield made
    for reg in REGISTRIES.values():
        for n in made:
            reg._unregister(n)


def _recipe(method: str, student: dict | None = None, data: dict | None = None, **method_kwargs: object) -> dict:
    return {
        "data": data or {"name": "digits"},
        "student": student or {"name": "mlp", "hidden": [8]},
        "method": {"name": method, **method_kwargs},
    }


def _splits(n: int = 40, d: int = 4, c: int = 2) -> RawSplits:
    def part(k: int) -> ArrayDataset:
        return ArrayDataset(torch.rand(k, d), torch.arange(k) % c)

    return RawSplits(train=part(n), val=part(10), test=part(10), num_classes=c, mean=(0.5,), std=(0.25,))


class _Plain(Method):
    """Cross-entropy only, with a scale (no teacher)."""

    needs = Needs(teacher=False)

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, s, t, batch, ctx):  # type: ignore[no-untyped-def]
        loss = self.scale * labelled_cross_entropy(s.logits, batch.target)
        return LossOutput(loss, {"ce": loss})


def test_registered_method_is_usable_by_name_and_in_recipes(names: list[str]) -> None:
    name = _name("mine")
    names.append(name)
    assert register_method(name)(_Plain) is _Plain  # the decorator hands the class back
    assert METHODS.get(name) is _Plain and name in METHODS.names()
    assert build_method(name, scale=0.5).scale == 0.5
    r = recipe_from_dict(_recipe(name, scale=0.5))
    assert r.methods[0].name == name and r.methods[0].kwargs == {"scale": 0.5}
    with pytest.raises(DistillError, match=rf"method\.scal: unknown key for method '{name}'; did you mean 'scale'"):
        recipe_from_dict(_recipe(name, scal=0.5))
    with pytest.raises(DistillError, match=r"method\.scale"):
        recipe_from_dict(_recipe(name, scale="big"))


def test_module_class_without_num_classes_builds_with_its_options(names: list[str]) -> None:
    name = _name("tiny")
    names.append(name)

    @register_model(name)
    class Tiny(nn.Module):
        def __init__(self, input_shape: tuple[int, ...], width: int = 4) -> None:
            super().__init__()
            self.body = nn.Linear(input_shape[0], width)
            self.fc = nn.Linear(width, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.body(x).relu())

    model = build_model(name, num_classes=10, input_shape=(4,), width=8)
    assert isinstance(model, Tiny) and model.body.out_features == 8
    assert model(torch.randn(3, 4)).shape == (3, 10)
    with pytest.raises(DistillError, match=rf"model '{name}': unknown option 'depth'"):
        build_model(name, num_classes=10, input_shape=(4,), depth=2)
    recipe_from_dict(_recipe("ce", student={"name": name, "width": 8}))
    with pytest.raises(DistillError, match=r"student\.width"):
        recipe_from_dict(_recipe("ce", student={"name": name, "width": "wide"}))


def test_model_without_fixed_arguments_and_builder_functions(names: list[str]) -> None:
    bare, fn, bad = _name("bare"), _name("fn"), _name("bad")
    names += [bare, fn, bad]

    @register_model(bare)
    class Bare(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.fc = nn.Linear(4, width)

    @register_model(fn)
    def linear(*, num_classes: int, input_shape: tuple[int, ...], bias: bool = True) -> nn.Module:
        return nn.Linear(input_shape[0], num_classes, bias=bias)

    register_model(bad)(lambda: "not a module")
    assert build_model(bare, num_classes=3, input_shape=(4,), width=5).fc.out_features == 5
    with pytest.raises(DistillError, match=rf"model '{bare}' needs option 'width'"):
        build_model(bare, num_classes=3, input_shape=(4,))
    m = build_model(fn, num_classes=7, input_shape=(5,), bias=False)
    assert (m.in_features, m.out_features, m.bias) == (5, 7, None)
    with pytest.raises(DistillError, match="returned str, not an nn.Module"):
        build_model(bad, num_classes=3, input_shape=(4,))


def test_dataset_builder_with_and_without_seed(names: list[str]) -> None:
    plain, seeded = _name("plain"), _name("seeded")
    names += [plain, seeded]
    seen: list[int] = []

    @register_dataset(plain)
    def make(n: int = 40) -> RawSplits:
        return _splits(n)

    @register_dataset(seeded)
    def make_seeded(*, seed: int) -> RawSplits:
        seen.append(seed)
        return _splits()

    data = build_data(plain, seed=3, n=30, labels_per_class=5)
    assert len(data.train) == 30 and data.num_classes == 2
    assert int((data.train.y >= 0).sum()) == 10
    with pytest.raises(DistillError, match="unknown option 'm'"):
        build_data(plain, m=3)
    build_data(seeded, seed=11)
    assert seen == [11]
    recipe_from_dict(_recipe("ce", data={"name": plain, "n": 30}))
    with pytest.raises(DistillError, match=r"data\.n"):
        recipe_from_dict(_recipe("ce", data={"name": plain, "n": "many"}))


def test_bad_registrations_raise_distill_errors(names: list[str]) -> None:
    name = _name("x")
    names.append(name)
    with pytest.raises(DistillError, match="model 'mlp' is already registered"):
        register_model("mlp")(lambda *, num_classes, input_shape: nn.Linear(1, 1))
    with pytest.raises(DistillError, match="method 'kd' is already registered"):
        register_method("kd")(_Plain)
    with pytest.raises(DistillError, match="lowercase"):
        register_method("Mine")
    for obj in (nn.Linear, object, len, 3):
        with pytest.raises(DistillError, match=rf"register_method\('{name}'\): .* is not a distill.methods.Method"):
            register_method(name)(obj)
    with pytest.raises(DistillError, match=rf"register_model\('{name}'\): .*neither a model builder"):
        register_model(name)(dict)
    with pytest.raises(DistillError, match=rf"register_model\('{name}'\): 3 is not callable"):
        register_model(name)(3)
    with pytest.raises(DistillError, match=rf"register_dataset\('{name}'\): 'data' is not callable"):
        register_dataset(name)("data")
    assert all(name not in reg for reg in REGISTRIES.values())  # nothing half-registered


def _install(root: Path, module: str, source: str, entries: dict[str, dict[str, str]]) -> None:
    """Lay out an installed distribution in ``root``: ``module.py`` plus a dist-info with entry points."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    text = "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) for group, eps in entries.items())
    (info / "entry_points.txt").write_text(text)


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, names: list[str]) -> Iterator[str]:
    """A fresh module name on sys.path (tmp_path); the registries scan their entry points again."""
    module = _name("plug")
    monkeypatch.syspath_prepend(str(tmp_path))
    for reg in REGISTRIES.values():
        monkeypatch.setattr(reg, "_plugins_loaded", False)
    yield module
    sys.modules.pop(module, None)


PLUGIN = """
    import torch
    from torch import nn
    from distill.data import ArrayDataset, RawSplits
    from distill.methods import Method, labelled_cross_entropy
    from distill.types import LossOutput, Needs

    class Net(nn.Module):
        def __init__(self, input_shape, width: int = 4):
            super().__init__()
            self.fc = nn.Linear(input_shape[0], width)
        def forward(self, x):
            return self.fc(x)
    class Scaled(Method):
        needs = Needs(teacher=False)

        def __init__(self, scale: float = 1.0):
            super().__init__()
            self.scale = scale
        def forward(self, s, t, batch, ctx):
            loss = self.scale * labelled_cross_entropy(s.logits, batch.target)
            return LossOutput(loss, {"ce": loss})
    def blobs(n: int = 40):
        part = lambda k: ArrayDataset(torch.rand(k, 4), torch.arange(k) % 4)
        return RawSplits(part(n), part(8), part(8), num_classes=4, mean=(0.5,), std=(0.25,))
    NOT_A_METHOD = 42
"""


def test_entry_points_load_lazily_and_are_usable(tmp_path: Path, plugins: str, names: list[str]) -> None:
    net, meth, data = _name("net"), _name("meth"), _name("data")
    names += [net, meth, data]
    _install(tmp_path, plugins, PLUGIN, {
        "distill.models": {net: f"{plugins}:Net"},
        "distill.methods": {meth: f"{plugins}:Scaled"},
        "distill.datasets": {data: f"{plugins}:blobs"},
    })
    assert plugins not in sys.modules  # nothing imported before a lookup
    assert net in MODELS and plugins in sys.modules
    assert build_model(net, num_classes=4, input_shape=(4,), width=4)(torch.randn(2, 4)).shape == (2, 4)
    with pytest.raises(DistillError, match=rf"model '{net}': unknown option 'depth'"):
        build_model(net, num_classes=4, input_shape=(4,), depth=1)
    assert METHODS.get(meth) is sys.modules[plugins].Scaled
    assert len(build_data(data, n=12).train) == 12
    r = recipe_from_dict(_recipe(meth, student={"name": net, "width": 4}, data={"name": data, "n": 12}, scale=2.0))
    assert (r.data.name, r.student.name, r.methods[0].kwargs) == (data, net, {"scale": 2.0})
    with pytest.raises(DistillError, match=r"method\.scael: unknown key"):
        recipe_from_dict(_recipe(meth, scael=2.0))


def test_broken_plugins_fail_alone_with_one_line(tmp_path: Path, plugins: str, names: list[str]) -> None:
    good, missing, crash, wrong, upper = (_name(p) for p in ("good", "missing", "crash", "wrong", "upper"))
    names += [good, missing, crash, wrong, upper.capitalize()]
    _install(tmp_path, plugins, PLUGIN, {
        "distill.models": {good: f"{plugins}:Net", missing: "no_such_pkg_xyz.models:Net",
                           upper.capitalize(): f"{plugins}:Net"},
        "distill.methods": {wrong: f"{plugins}:NOT_A_METHOD"},
    })
    (tmp_path / f"{crash}_mod.py").write_text("raise RuntimeError('boom\\nsecond line')\n")
    with open(tmp_path / f"{plugins}-1.0.dist-info" / "entry_points.txt", "a") as f:
        f.write(f"[distill.datasets]\n{crash} = {crash}_mod:make\n")
    assert good in MODELS.names() and missing not in MODELS.names()
    with pytest.raises(DistillError) as e:
        MODELS.get(missing)
    assert str(e.value) == (f"plugin '{missing}' (entry point distill.models): cannot load no_such_pkg_xyz.models:Net "
                            "(ModuleNotFoundError: No module named 'no_such_pkg_xyz')")
    with pytest.raises(DistillError, match=rf"^plugin '{crash}' \(entry point distill.datasets\): cannot load "
                                           rf"{crash}_mod:make \(RuntimeError: boom\)$"):
        build_data(crash)
    with pytest.raises(DistillError, match=rf"plugin '{wrong}' \(entry point distill.methods\): 42 is not a distill"):
        recipe_from_dict(_recipe(wrong))
    with pytest.raises(DistillError, match="model names are lowercase"):
        MODELS.get(upper.capitalize())
    assert build_model(good, num_classes=4, input_shape=(4,)) is not None  # the others still work
    assert "kd" in METHODS and "digits" in DATASETS.names()
    sys.modules.pop(f"{crash}_mod", None)


def test_self_registering_and_clashing_plugins(tmp_path: Path, plugins: str, names: list[str]) -> None:
    own = _name("own")
    names.append(own)
    source = PLUGIN + f"""
    from distill.extend import register_model
    register_model({own!r})(Net)
    """
    _install(tmp_path, plugins, source, {"distill.models": {own: f"{plugins}:Net", "mlp": f"{plugins}:Net"}})
    with pytest.warns(UserWarning, match=r"plugin 'mlp' \(entry point distill.models\): ignored, model 'mlp' is"):
        assert own in MODELS
    assert MODELS.get(own).__wrapped__ is sys.modules[plugins].Net  # registered once, by the module itself
    assert MODELS.get("mlp").__module__ == "distill.models.mlp"  # the built-in wins
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MODELS.names()  # loaded once: no second warning


def test_import_distill_survives_a_broken_plugin(tmp_path: Path) -> None:
    _install(tmp_path, "brokenplug", "raise ImportError('missing native lib')\n",
             {"distill.models": {"brokenmodel": "brokenplug:Net"}})
    code = ("import distill\n"
            "from distill.models import MODELS\n"
            "assert 'mlp' in MODELS.names() and 'brokenmodel' not in MODELS.names()\n"
            "try:\n    MODELS.get('brokenmodel')\nexcept distill.DistillError as e:\n    print(e)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ("plugin 'brokenmodel' (entry point distill.models): cannot load brokenplug:Net "
                                  "(ImportError: missing native lib)")
