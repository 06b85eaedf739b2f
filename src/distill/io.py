"""Atomic file writes and safe weight loading (never unpickle user files)."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from distill.errors import DistillError, first_line

T = TypeVar("T")


def cache_root() -> Path:
    """Where files derived once and kept across runs live (converted GGUF models, decoded datasets):
    ``$DISTILL_CACHE`` or ``~/.cache/distill``."""
    return Path(os.environ.get("DISTILL_CACHE") or Path.home() / ".cache" / "distill")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``.

    On error the temporary file is removed, so ``path`` is either the old file or the complete
    new one, never half-written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600 files; give the result the usual umask-based permissions
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# what a kill -9 can leave: atomic_path's `.<name>.<8 random chars>.tmp` files, the staging folders of a checkpoint
# or a cache build (`checkpoint.tmp`, `cache.tmp`), a cache being replaced (`cache.old`) and a dry run's folder.
# (`checkpoint.old` is not stale: a kill during the checkpoint swap leaves the last complete checkpoint there.)
_STALE_FILE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
STALE_DIRS = ("checkpoint.tmp", "cache.tmp", "cache.old", "dry_run.tmp")


ALIASES = "distill_aliases"  # safetensors metadata: {entry stored once under another name: that name}

def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete, directly in ``folder``, the temporary files and staging folders of a write that a kill cut short;
    returns what was removed. Nothing else is touched (the names are ours alone)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    gone = []
    for entry in folder.iterdir():
        if entry.is_file() and _STALE_FILE.match(entry.name):
            entry.unlink(missing_ok=True)
            gone.append(entry)
        elif entry.is_dir() and entry.name in STALE_DIRS:
            shutil.rmtree(entry, ignore_errors=True)
            gone.append(entry)
    return gone


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write ``text`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


MIN_FREE_BYTES = 64 << 20  # below this a run cannot write its checkpoints and report; found before training


def _main_process() -> bool:
    """Rank 0 under torchrun (RANK is set before the process group exists), or the only process."""
    return os.environ.get("RANK", "0") == "0"


def check_output_dir(path: str | os.PathLike, what: str = "output_dir") -> None:
    """One DistillError, before anything trains, when ``path`` cannot hold a run's outputs: a component name over
    255 bytes, an existing file in its place or above it, a folder this process cannot write (tried by creating
    and removing a temporary folder: permission bits alone say nothing for root or for /proc), or a nearly full
    disk. Creates nothing that stays."""
    path = Path(path)
    for part in path.parts:
        if len(part.encode()) > 255:
            raise DistillError(f"{what}: the name {part[:32]!r}... is {len(part.encode())} bytes; file systems allow "
                               "255")
    if path.exists() and not path.is_dir():
        raise DistillError(f"{what}: {path} exists and is a file, not a folder")
    ancestor = path.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise DistillError(f"{what}: {path} is under {ancestor}, which is a file, not a folder")
    try:
        if _main_process():  # under torchrun rank 0 alone touches the outputs, this probe included
            os.rmdir(tempfile.mkdtemp(prefix=".distill-write-check-", dir=ancestor))
    except OSError as e:
        raise DistillError(f"{what}: cannot write in {ancestor} ({e.strerror or first_line(e)})") from None
    free = shutil.disk_usage(ancestor).free
    if free < MIN_FREE_BYTES:
        raise DistillError(f"{what}: only {free >> 20} MiB free on the disk of {ancestor}; a run needs room for its "
                           f"checkpoints and report (at least {MIN_FREE_BYTES >> 20} MiB)")


def read_json(path: str | os.PathLike, what: str, fix: str) -> dict[str, Any]:
    """A JSON object this project wrote (``what``); anything else, a truncated or hand-edited file, or one that is
    not readable, is one DistillError naming the file and ``fix``."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DistillError(f"{path}: {what} is unreadable ({type(e).__name__}: {first_line(e)}); "
                           f"{fix}") from None
    if not isinstance(obj, dict):
        raise DistillError(f"{path}: {what} should be a JSON object, got {type(obj).__name__}; {fix}")
    return obj


def save_weights(path: str | os.PathLike, state: dict[str, torch.Tensor]) -> None:
    """Atomically save a state dict as safetensors (tensors made contiguous and detached). Entries that are the
    same tensor (tied weights: a language model's input embedding and output layer) are stored once; the file's
    metadata names the aliases and ``load_weights`` restores them."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, tuple[int, ...], tuple[int, ...], torch.dtype], str] = {}
    for k in sorted(state):
        v = state[k].detach()
        key = (v.data_ptr(), tuple(v.shape), tuple(v.stride()), v.dtype)
        if v.numel() and key in seen:
            aliases[k] = seen[key]
            continue
        seen[key] = k
        tensors[k] = v.cpu().contiguous()
    meta = {ALIASES: json.dumps(aliases)} if aliases else None
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """Atomically ``torch.save`` our own state (optimizer, RNG); read back with ``load_torch``."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path: str | os.PathLike) -> Any:
    """Load a torch file with ``weights_only=True``; refused pickles become a DistillError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise DistillError(f"{path}: refused to unpickle (weights_only=True): {first_line(e)}") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise DistillError(f"{path}: not a readable torch file ({first_line(e)})") from None


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path))
            with safe_open(str(path), "pt") as f:
                aliases = json.loads((f.metadata() or {}).get(ALIASES, "{}"))
            for alias, kept in aliases.items():
                state[alias] = state[kept]
            return state
        except (SafetensorError, OSError, json.JSONDecodeError, KeyError, AttributeError) as e:
            raise DistillError(f"{path}: not a valid safetensors file ({e})") from None
    state = load_torch(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DistillError(f"{path}: does not hold a state dict of tensors")
    return state


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` strictly into ``model``; mismatches name missing/unexpected/mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shaped = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shaped:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        if shaped:
            parts.append("shape mismatch " + _few(
                [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shaped]))
        raise DistillError(f"{source} does not match the model: " + "; ".join(parts))
    model.load_state_dict(state)


def _few(items: list[str], n: int = 5) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return "[" + ", ".join(items[:n]) + "]" + more
