"""Run the distill CLI and kill this process with SIGKILL at one named moment of a write (kill -9 tests).

    python tests/kill_at.py MOMENT distill-args...

MOMENT names the rename that completes one file or folder write, and whether the kill comes just before it
(the temporary file or staging folder is complete but not in place) or just after it; see ``MOMENTS``. Nothing is
patched but ``os.replace`` / ``os.rename``, so the code under test runs as shipped.
"""

from __future__ import annotations

import os
import signal
import sys

# moment -> (path suffix of the rename's destination, which occurrence, kill before (True) or after the rename)
MOMENTS: dict[str, tuple[str, int, bool]] = {
    "dry-run": ("dry_run.tmp/teacher/checkpoint.tmp/meta.json", 1, True),
    "teacher-checkpoint-file": ("teacher/checkpoint.tmp/weights.safetensors", 2, True),
    "cache-shard": ("cache.tmp/v0000-s0000.values.npy", 1, True),
    "cache-swap": ("/cache", 1, True),
    "student-checkpoint-file": ("student/checkpoint.tmp/state.pt", 2, True),
    "student-checkpoint-swap": ("student/checkpoint.old", 1, False),
    "student-record": ("student/model.json", 1, True),
    "report": ("report.json", 1, True),
}


def arm(moment: str) -> None:
    """Patch the renames so that the process dies at ``moment``."""
    suffix, nth, before = MOMENTS[moment]
    seen = [0]

    def wrap(rename):  # noqa: ANN001, ANN202
        def renamed(src, dst, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            dst_text = str(dst)
            # the run's own writes (a dry run, which rehearses every role first, has a moment of its own)
            hit = dst_text.endswith(suffix) and not str(src).endswith(suffix) and \
                (moment == "dry-run") == (f"{os.sep}dry_run.tmp{os.sep}" in dst_text)
            seen[0] += hit
            if hit and seen[0] == nth and before:
                os.kill(os.getpid(), signal.SIGKILL)
            result = rename(src, dst, *args, **kwargs)
            if hit and seen[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        return renamed

    os.replace, os.rename = wrap(os.replace), wrap(os.rename)


if __name__ == "__main__":
    arm(sys.argv[1])
    from distill.cli import main

    code = main(sys.argv[2:])
    sys.exit(f"the run ended (exit {code}) without reaching the moment {sys.argv[1]!r}")
