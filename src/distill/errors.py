"""User-facing errors: the CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import functools
import os
import re
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class DistillError(Exception):
    """A problem with the user's input (recipe, data, weights, arguments).

    The CLI catches it, prints ``error: <message>`` on one line and exits with 2.
    Raise it with a message that names the offending key, file or value.
    """


class NonFiniteLossError(DistillError):
    """Training produced a NaN/Inf loss; the last good checkpoint is kept."""


class StaleCacheError(DistillError):
    """A teacher cache whose fingerprint differs from the run's; ``diff`` names the keys that differ."""

    def __init__(self, message: str, diff: str) -> None:
        super().__init__(message)
        self.diff = diff


def first_line(e: BaseException) -> str:
    """An exception's first message line, or its type name when the message is empty (an empty file's EOFError)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def single_line(e: object) -> str:
    """An error (or message) as the one line the CLI prints: a message that spans lines has them joined."""
    return " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__


def os_error_message(e: OSError) -> str:
    """A file-system refusal as one line: ``<file>: <reason>`` (``No space left on device``, ...)."""
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{e.strerror or first_line(e)}"


# Failures of these kinds are about a file's content, whatever reads it (our loaders name the file themselves).
_FILE_KINDS = (UnicodeDecodeError,)
_FILE_MODULES = {"json", "pickle", "_pickle", "safetensors", "safetensors_rust", "PIL", "yaml"}
# Code that is neither ours nor the user's: an exception that never passed through other code is a bug of ours.
_LIBRARIES = {"torch", "numpy", "safetensors", "tqdm", "yaml", "pydantic", "pydantic_core", "PIL", "matplotlib",
              "sklearn", "scipy", "transformers", "tokenizers", "accelerate", "onnx", "onnxruntime", "onnxscript",
              "typing_extensions", "gguf", "optuna", "torch_pruning", "hypothesis"}
_WORKER = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


def known_failure(e: BaseException) -> DistillError | None:
    """The one-line ``DistillError`` for a failure of a known kind, or None for what must be a bug of ours.

    Known kinds: a ``DistillError``; the file system saying no (``OSError``); a file whose content cannot be
    read (JSON, pickle, safetensors, Pillow, YAML, text encoding); an exception raised in the user's own code
    (an external model, dataset or plugin), found by walking the traceback from the innermost frame of ours;
    an exception in a DataLoader worker reading the user's dataset.
    """
    if isinstance(e, DistillError):
        return e
    if isinstance(e, OSError):
        return DistillError(os_error_message(e))
    worker = _worker_failure(e)
    if worker is not None:
        return DistillError(worker)
    where = user_frame(e)
    if where is not None:
        return DistillError(f"{where} raised {type(e).__name__}: {first_line(e)}")
    if isinstance(e, _FILE_KINDS) or type(e).__module__.split(".")[0] in _FILE_MODULES:
        return DistillError(f"unreadable file content ({type(e).__name__}): {first_line(e)}")
    return None


def user_frame(e: BaseException) -> str | None:
    """``module.function (file:line)`` of the first frame of user code below the innermost frame of distill
    in ``e``'s traceback, or None when the exception was raised by distill or a library it called."""
    frames = list(traceback.walk_tb(e.__traceback__))
    ours = [i for i, (f, _) in enumerate(frames) if _top(f) == "distill"]
    for frame, line in frames[ours[-1] + 1 if ours else 0:]:
        top = _top(frame)
        if top != "distill" and top not in _LIBRARIES and top not in sys.stdlib_module_names:
            name = frame.f_globals.get("__name__", "?")
            code = frame.f_code
            return f"{name}.{getattr(code, 'co_qualname', code.co_name)} ({code.co_filename}:{line})"
    return None


def _top(frame: Any) -> str:
    return str(frame.f_globals.get("__name__", "")).split(".")[0]


def _worker_failure(e: BaseException) -> str | None:
    """A DataLoader worker's exception, re-raised by torch with the worker's traceback as text: the dataset
    code that raised it and its last line."""
    text = str(e)
    if not (text.startswith("Caught ") and "DataLoader worker" in text and "Original Traceback" in text):
        return None
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    user = [m for m in _WORKER.finditer(text) if not any(f"{os.sep}{lib}{os.sep}" in m.group(1)
                                                        for lib in ("torch", "distill"))]
    where = f" in {user[-1].group(3)} ({user[-1].group(1)}:{user[-1].group(2)})" if user else ""
    return f"the dataset failed in a DataLoader worker{where}: {lines[-1].strip()}"


def error_boundary(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate a public entry point (``distill.fit``, ``DistillationModel``): a failure of a known kind
    anywhere inside (see ``known_failure``) is re-raised as that one-line DistillError, the original attached as
    ``__cause__``; anything else passes through unchanged."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except DistillError:
            raise
        except Exception as e:
            known = known_failure(e)
            if known is None:
                raise
            raise known from e
    return wrapper
