"""``distill`` CLI entry for the torchrun tests in ``test_ddp.py``, with two test-only instruments.

``DISTILL_TEST_AUDIT=<dir>``: on every rank but 0, a ``sys.addaudithook`` hook records each file operation on a
path under ``<dir>``: opened for writing, created, renamed, removed, chmod-ed (writes) or opened for reading
(reads). At exit the rank prints ``AUDIT rank=<r> writes=<n> reads=<m>`` and the first writes to stderr.
The hook sees every write the engine makes (atomic writes all go through ``tempfile.mkstemp`` and
``os.replace``), so ``writes=0`` with ``reads>0`` means the rank read what rank 0 wrote and wrote nothing.

``DISTILL_TEST_STOP=<role>:<epoch>``: every rank exits with code 3 right after epoch ``<epoch>`` of ``<role>``
was checkpointed (a crash between two epochs, for the resume test).
"""

from __future__ import annotations

import atexit
import os
import sys

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
WRITE_EVENTS = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.chmod", "os.truncate",
                "os.link", "os.symlink", "os.utime"}


def _audit(root: str, rank: int) -> None:
    root = os.path.realpath(root) + os.sep
    writes: list[str] = []
    reads = [0]

    def under(path: object) -> bool:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        return isinstance(path, (str, os.PathLike)) and (os.path.realpath(path) + os.sep).startswith(root)

    def hook(event: str, args: tuple) -> None:
        if event == "open" and args and under(args[0]):
            mode, flags = args[1], args[2] if len(args) > 2 else 0
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & WRITE_FLAGS)
            if writing:
                writes.append(f"open {args[0]} {mode or flags}")
            else:
                reads[0] += 1
        elif event in WRITE_EVENTS and any(under(a) for a in args[:2]):
            writes.append(f"{event} {args[:2]}")

    def report() -> None:
        print(f"AUDIT rank={rank} writes={len(writes)} reads={reads[0]}", *writes[:5], sep="\n", file=sys.stderr)

    sys.addaudithook(hook)
    atexit.register(report)


def _stop_after(spec: str) -> None:
    import distill.engine.loop as loop
    from helpers import track_dry_run

    role, epoch = spec.split(":")
    describe = loop.describe_epoch
    rehearsing = track_dry_run()

    def stop(desc: str, stats: dict) -> str:
        # every rank calls describe_epoch after rank 0's checkpoint of that epoch is on disk (not in the dry run)
        if desc == role and stats["epoch"] == int(epoch) and not rehearsing[0]:
            sys.stdout.flush()
            os._exit(3)
        return describe(desc, stats)

    loop.describe_epoch = stop


if __name__ == "__main__":
    rank = int(os.environ.get("RANK", "0"))
    if os.environ.get("DISTILL_TEST_AUDIT") and rank != 0:
        _audit(os.environ["DISTILL_TEST_AUDIT"], rank)
    if os.environ.get("DISTILL_TEST_STOP"):
        _stop_after(os.environ["DISTILL_TEST_STOP"])
    from distill.cli import main

    sys.exit(main(sys.argv[1:]))
