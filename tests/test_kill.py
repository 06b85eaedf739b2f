"""kill -9 at every kind of write a run makes, then ``--resume``: the final weights are bit-identical to an
uninterrupted run's and no temporary file or staging folder is left (README, "Failures"; counts in
docs/BENCHMARKS.md, "Reliability"). ``tests/kill_at.py`` kills the process at an exact rename, so no timing is
involved; ``tests/test_integration.py`` also kills a run by the clock between epochs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill.io import _STALE_FILE, STALE_DIRS, load_weights
from helpers import digits_recipe, write_recipe
from kill_at import MOMENTS

ROLES = ("teacher", "scratch", "student")
RUNNER = Path(__file__).with_name("kill_at.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(*argv: str, moment: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(RUNNER), moment, *argv] if moment else [sys.executable, "-m", "distill.cli", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)


def _recipe(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    raw = digits_recipe(root)
    raw["teacher"]["train"]["epochs"] = 2
    return write_recipe(root, raw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same recipe run once without a kill."""
    root = tmp_path_factory.mktemp("reference")
    done = _run("run", str(_recipe(root)))
    assert done.returncode == 0, done.stderr
    return root / "out"


def leftovers(out: Path) -> list[Path]:
    """Temporary files, staging folders and empty files anywhere under ``out``."""
    return [p for p in out.rglob("*") if (p.is_file() and (_STALE_FILE.match(p.name) or p.stat().st_size == 0))
            or (p.is_dir() and p.name in STALE_DIRS)]


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_kill_at_a_write_then_resume_is_bit_identical(tmp_path: Path, reference: Path, moment: str) -> None:
    recipe = _recipe(tmp_path)
    killed = _run("run", str(recipe), moment=moment)
    assert killed.returncode == -9, f"not killed at {moment}: {killed.returncode} {killed.stderr[-2000:]}"
    resumed = _run("run", str(recipe), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    out = tmp_path / "out"
    for role in ROLES:
        a, b = load_weights(reference / role / "model.safetensors"), load_weights(out / role / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{moment}: {role} differs"
    assert not leftovers(out), f"{moment}: left behind {leftovers(out)}"
    assert (out / "report.md").is_file()
