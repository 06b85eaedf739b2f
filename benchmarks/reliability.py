"""Reliability counts for docs/BENCHMARKS.md (section ``reliability``): runs the bad-input catalogue
(tests/test_catalogue.py), the kill -9 points (tests/test_kill.py) and the recipe fuzzer (tests/test_fuzz.py) once
and counts what ran and passed, by class of failure, by CLI command, by kill point and by fuzz target.

    python benchmarks/reliability.py [--no-write]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from docs_section import replace_section

ROOT = Path(__file__).resolve().parents[1]
FILES = ("tests/test_catalogue.py", "tests/test_kill.py", "tests/test_fuzz.py")
COMMAND = "python benchmarks/reliability.py"


def run_tests() -> tuple[list[dict], str]:
    """Every test case of the three files (name, file, outcome, properties) and pytest's output."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        proc = subprocess.run([sys.executable, "-m", "pytest", *FILES, "-q", "-p", "no:cacheprovider",
                               "--hypothesis-show-statistics", f"--junitxml={xml}"],
                              cwd=ROOT, capture_output=True, text=True)
        cases = []
        for case in ET.parse(xml).getroot().iter("testcase"):
            failed = any(c.tag in ("failure", "error") for c in case)
            skipped = any(c.tag == "skipped" for c in case)
            props = {p.get("name"): p.get("value") for p in case.iter("property")}
            cases.append({"name": case.get("name"), "file": case.get("classname", ""), "props": props,
                          "outcome": "failed" if failed else "skipped" if skipped else "passed"})
    return cases, proc.stdout


def fuzz_examples(output: str) -> dict[str, int]:
    """Passing examples per fuzz test, from hypothesis' statistics (generate and shrink phases together)."""
    counts: dict[str, int] = {}
    for block in re.split(r"\n(?=tests/test_fuzz\.py::)", output):
        name = re.match(r"tests/test_fuzz\.py::(\w+)", block)
        if name:
            counts[name[1]] = sum(int(n) for n in re.findall(r"(\d+) passing[ ,]", block))
    return counts


def table(rows: list[tuple[str, int, int]], head: str) -> list[str]:
    out = [f"| {head} | cases | passed |", "|---|---:|---:|"]
    out += [f"| {name} | {n} | {ok} |" for name, n, ok in rows]
    return out


def grouped(cases: list[dict], key: str) -> list[tuple[str, int, int]]:
    total, ok = Counter(), Counter()
    for c in cases:
        total[c["props"].get(key, "?")] += 1
        ok[c["props"].get(key, "?")] += c["outcome"] == "passed"
    return [(k, total[k], ok[k]) for k in total]


def section(cases: list[dict], output: str) -> str:
    catalogue = [c for c in cases if "test_catalogue" in c["file"]]
    listed = [c for c in catalogue if "class" in c["props"]]
    kills = [c for c in cases if "test_kill" in c["file"]]
    fuzz = fuzz_examples(output)
    passed = sum(c["outcome"] == "passed" for c in cases)
    lines = [f"Command: `{COMMAND}` (runs {', '.join(f'`{f}`' for f in FILES)} once; they also run in `make test`).",
             "", f"**{passed} of {len(cases)} test cases passed.**", "",
             f"Bad-input catalogue: {len(listed)} parametrized cases, each asserting exit code 2, exactly one "
             "`error:` line, no traceback and no file changed on disk, plus "
             f"{len(catalogue) - len(listed)} further tests (a dataset failing in a DataLoader worker, a full disk, "
             "the Python door, a bug of ours staying a bug report, a valid file still loading).", ""]
    lines += table(grouped(listed, "class"), "class of failure") + [""]
    lines += table(grouped(listed, "command"), "CLI command") + [""]
    lines += [f"kill -9 points (each: the run killed at that write, `--resume`, every role's weights "
              f"bit-identical to an uninterrupted run, no temporary file left): "
              f"{sum(c['outcome'] == 'passed' for c in kills)} of {len(kills)} passed: "
              + ", ".join(re.sub(r".*\[(.*)\]", r"\1", c["name"]) for c in kills) + ".", ""]
    lines += ["| fuzz target (hypothesis) | passing examples |", "|---|---:|"]
    lines += [f"| `{name}` | {n} |" for name, n in fuzz.items()]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = ap.parse_args()
    cases, output = run_tests()
    text = section(cases, output)
    print(text)
    if not args.no_write:
        replace_section(ROOT / "docs" / "BENCHMARKS.md", "reliability", text)


if __name__ == "__main__":
    main()
