"""YAML as recipes and argument files are read: safe, strict about duplicate keys, bounded in size, and every
failure one ``DistillError`` naming the file and line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from distill.errors import DistillError, first_line

MAX_NODES = 1_000_000  # values after alias expansion; a recipe has hundreds, a "billion laughs" file billions


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``5e-4`` as a float (YAML 1.1 insists on ``5.0e-4``) and refuses a key given
    twice in one mapping (plain YAML keeps the last: a second ``train:`` block would silently replace the first)."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:  # type: ignore[override]
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Mark] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first is not key_node.start_mark:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first given at line {first.line + 1})",
                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$|^[-+]?(?:\d+\.\d*|\.\d+)$|^[-+]?\.(?:inf|Inf|INF)$"
               r"|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def _bounded(obj: Any, source: str) -> None:
    """Count the values ``obj`` expands to, stopping at MAX_NODES: aliases share one object, so a few hundred bytes
    of YAML can stand for billions of values that validation would then walk for ever."""
    stack, seen = [obj], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise DistillError(f"{source}: expands to more than {MAX_NODES:,} values (nested aliases?); "
                               "not a recipe")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def load_yaml(text: str, source: str = "YAML") -> Any:
    """Parse ``text``; raises ``yaml.YAMLError`` for malformed YAML and DistillError for an alias bomb."""
    obj = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    _bounded(obj, source)
    return obj


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file written by a person: not UTF-8, malformed, a duplicate key or an alias bomb is one
    DistillError naming the file (and line)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DistillError(f"{path}: not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}); "
                           "save it as UTF-8") from None
    except OSError as e:
        raise DistillError(f"{path}: cannot read it ({e.strerror or e})") from None
    try:
        return load_yaml(text, str(path))
    except yaml.YAMLError as e:
        mark, position = getattr(e, "problem_mark", None), getattr(e, "position", None)  # a ReaderError: position
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else \
            f" at character {position}" if position is not None else ""
        raise DistillError(f"{path}: malformed YAML{where}: {getattr(e, 'problem', None) or first_line(e)}") from None
