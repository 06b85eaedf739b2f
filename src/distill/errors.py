"""User-facing errors: the CLI prints them as one line and exits with code 2."""

from __future__ import annotations


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


def os_error_message(e: OSError) -> str:
    """A file-system refusal as one line: ``<file>: <reason>`` (``No space left on device``, ...)."""
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{e.strerror or first_line(e)}"
