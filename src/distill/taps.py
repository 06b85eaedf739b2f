"""Feature taps: forward hooks by module path on an unmodified model, and a shape probe.

A path such as ``layer2.0.bn2`` captures that module's output; ``layer2.0.bn2:input`` captures its
first positional input (``fc:input`` is the penultimate embedding of every zoo model); ``attention.self:1``
captures element 1 of a tuple output (a transformers attention module returns ``(context, probabilities)``; its
probabilities are there with ``attn_implementation: eager``).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from distill.errors import DistillError
from distill.registry import closest

INPUT_SUFFIX = ":input"


def first_tensor(value: Any) -> Tensor | None:
    """The tensor itself, or the first tensor inside a (nested) tuple/list; None if there is none."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            found = first_tensor(item)
            if found is not None:
                return found
    return None


def split_path(path: str) -> tuple[str, str | int | None]:
    """``'a.b:input'`` -> ('a.b', 'input'); ``'a.b:1'`` -> ('a.b', 1): element 1 of a tuple output;
    ``'a.b'`` -> ('a.b', None): the output (its first tensor)."""
    name, sep, sel = path.rpartition(":")
    if not sep:
        return path, None
    if sel == INPUT_SUFFIX[1:]:
        return name, "input"
    if sel.isdigit():
        return name, int(sel)
    raise DistillError(f"tap {path!r}: after ':' comes 'input' or an output index (':1'), not {sel!r}")


def resolve_path(model: nn.Module, path: str) -> tuple[nn.Module, str | int | None]:
    """Split a tap path into (module, selector: 'input', an output index or None); unknown modules raise with
    the closest paths."""
    name, selector = split_path(path)
    modules = dict(model.named_modules())
    if name not in modules:
        names = [n for n in modules if n]
        hint = closest(name, names) or f"; top-level modules: {', '.join(n for n in names if '.' not in n)}"
        raise DistillError(f"no module {name!r} to tap in {type(model).__name__}{hint}")
    return modules[name], selector


def _select(args: tuple[Any, ...], output: Any, selector: str | int | None) -> Tensor | None:
    if selector == "input":
        return first_tensor(args[:1])
    if isinstance(selector, int):
        if not isinstance(output, (tuple, list)) or selector >= len(output):
            return None
        return first_tensor(output[selector])
    return first_tensor(output)


def last_linear(model: nn.Module) -> str | None:
    """The module path of ``model``'s last Linear layer (its head; its input is the penultimate features), or
    None when it has none."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


class FeatureTaps:
    """Forward hooks by module path on an unmodified model, as a context manager that always removes its
    hooks. A path captures the module's output; ``'path:input'`` captures its first positional input.

    Tensors are stored as produced (autograd graph kept), keyed by the path as given. A module called
    several times per forward keeps its latest call. Use ``clear()`` between forwards.
    """

    def __init__(self, model: nn.Module, paths: Sequence[str]) -> None:
        self.model = model
        self.paths = list(dict.fromkeys(paths))  # de-duplicated, order kept
        self._targets = {p: resolve_path(model, p) for p in self.paths}  # validate before any hook
        self._handles: list[RemovableHandle] = []
        self._feats: dict[str, Tensor] = {}

    def attach(self) -> FeatureTaps:
        """Register the hooks (``__enter__`` does this)."""
        if self._handles:
            raise RuntimeError("FeatureTaps are already attached")
        for path, (module, selector) in self._targets.items():
            self._handles.append(module.register_forward_hook(self._hook(path, selector)))
        return self

    def remove(self) -> None:
        """Remove every hook; idempotent. Captured features stay readable."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, path: str, selector: str | int | None) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            value = _select(args, output, selector)
            if value is None:
                what = {"input": "positional tensor input", None: "tensor output"}.get(
                    selector, f"tensor at output index {selector} (attention probabilities of a transformers "
                              "model need attn_implementation: eager)")  # type: ignore[call-overload]
                raise DistillError(f"tap {path!r}: {type(module).__name__} produced no {what}")
            self._feats[path] = value

        return hook

    def __enter__(self) -> FeatureTaps:
        return self.attach()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.remove()

    @property
    def feats(self) -> dict[str, Tensor]:
        """Captured tensors by path, filled by the latest forward."""
        return self._feats

    def clear(self) -> None:
        """Forget captured tensors (and the graphs they hold)."""
        self._feats = {}


def probe(model: nn.Module, sample: Tensor | dict[str, Tensor]) -> dict[str, tuple[int, ...]]:
    """Dry-run ``model`` on ``sample`` (a batch, or a dict of batched fields passed as keyword arguments) in eval
    mode without grad; return {path: output shape}.

    Every submodule that runs is listed in first-call order (a container before its children); the root
    and modules that never run are left out. Tuple outputs report their first tensor. Each module's
    train/eval flag is restored afterwards.
    """
    modes = {m: m.training for m in model.modules()}
    shapes: dict[str, tuple[int, ...] | None] = {}
    handles: list[RemovableHandle] = []
    for name, module in model.named_modules():
        if name:
            # The pre-hook fixes the listing order at call start; the forward hook fills in the shape.
            handles.append(module.register_forward_pre_hook(lambda m, a, n=name: shapes.setdefault(n, None)))
            handles.append(module.register_forward_hook(lambda m, a, o, n=name: _record(shapes, n, o)))
    try:
        model.eval()
        with torch.no_grad():
            model(**sample) if isinstance(sample, dict) else model(sample)  # a dict of fields: token ids, ...
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode
    return {k: v for k, v in shapes.items() if v is not None}  # drop modules without a tensor output


def _record(shapes: dict[str, tuple[int, ...] | None], name: str, output: Any) -> None:
    tensor = first_tensor(output)
    if tensor is not None and shapes.get(name) is None:  # a module called again keeps its first shape
        shapes[name] = tuple(tensor.shape)


def format_probe(shapes: dict[str, tuple[int, ...]], model: nn.Module | None = None) -> str:
    """An aligned table of path and output shape; with ``model`` also module class and parameter count."""
    modules = dict(model.named_modules()) if model is not None else {}
    rows = [["path", "output"] + (["module", "params"] if model is not None else [])]
    for path, shape in shapes.items():
        row = [path, "(" + ", ".join(map(str, shape)) + ")"]
        if model is not None:
            module = modules.get(path)
            known = module is not None
            row += [type(module).__name__ if known else "?",
                    f"{sum(p.numel() for p in module.parameters()):,}" if known else "?"]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    # Parameter counts right-aligned so their digits line up; everything else left-aligned.
    align = [str.ljust, str.ljust, str.ljust, str.rjust]
    lines = ["  ".join(align[i](c, widths[i]) for i, c in enumerate(r)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)
